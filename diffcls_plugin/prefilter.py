"""The CLIP-prefiltered hybrid (Li et al. 2023, Appendix B): a CLIP model keeps each image's
``top_k`` classes and the diffusion sampler decides among them.

The full ranking puts the sampler's ranking of the ``top_k`` classes first, then the other
classes in CLIP's order. CLIP scores classes as CLIP_benchmark does: the normalised mean of the
normalised text embeddings of every template of a class, against the normalised image
embedding. The image CLIP sees is the classifier's own crop (the diffusion transform's pixels),
resized to CLIP's resolution and normalised with CLIP's mean and std.

Config: ``prefilter: {model: RN50, pretrained: openai, top_k: 20}`` (any open_clip model and
pretrained tag; ``pretrained: null`` builds random weights, for tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from diffcls_plugin.errors import DiffclsError


@dataclass(frozen=True)
class PrefilterOptions:
    """Attributes:
    model: an open_clip architecture (``RN50``, ``ViT-B-32`` ...).
    pretrained: its pretrained tag (``openai`` ...) or a local weights file; ``None``: random weights.
    top_k: classes the diffusion sampler sees per image.
    """

    model: str = "RN50"
    pretrained: str | None = "openai"
    top_k: int = 20

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise DiffclsError(f"prefilter.model must be an open_clip model name, got {self.model!r}")
        if self.pretrained is not None and not isinstance(self.pretrained, str):
            raise DiffclsError(f"prefilter.pretrained must be a pretrained tag, a file or null, got {self.pretrained!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise DiffclsError(f"prefilter.top_k must be an integer >= 1, got {self.top_k!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, data: Any, source: str = "") -> PrefilterOptions | None:
        if data is None:
            return None
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise DiffclsError(f"{where}prefilter must be a mapping (model, pretrained, top_k) or null, got {data!r}")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise DiffclsError(f"{where}unknown key 'prefilter.{unknown[0]}'. Valid keys of prefilter: {', '.join(known)}.")
        options = cls(**data)
        options.validate()
        return options


class ClipPrefilter:
    """An open_clip model and the zero-shot classifier of one dataset's classes."""

    def __init__(self, options: PrefilterOptions, device="cpu") -> None:
        import torch

        from diffcls_plugin.harness import load_open_clip

        self.options = options
        self.device = torch.device(device)
        self.model, self.image_size, self.mean, self.std, self.tokenizer = load_open_clip(options.model, options.pretrained, self.device)
        self.classifier = None  # (D, C) tensor once prepared
        self.n_images = 0
        self.seconds = 0.0

    def prepare(self, class_prompts: list[list[str]]) -> None:
        """The harness's zero-shot classifier: per class, the normalised mean of its normalised prompt embeddings."""
        import torch

        weights = []
        for prompts in class_prompts:
            with torch.no_grad():
                embeds = self.model.encode_text(self.tokenizer(prompts).to(self.device)).float()
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
            mean = embeds.mean(dim=0)
            weights.append(mean / mean.norm())
        self.classifier = torch.stack(weights, dim=1)

    def logits(self, pixels):
        """(B, 3, H, W) pixels in [-1, 1] -> (B, C) CLIP logits."""
        import torch

        start = time.perf_counter()
        x = (pixels.float() + 1) / 2
        x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        with torch.no_grad():
            features = self.model.encode_image(x.to(self.device)).float()
        features = features / features.norm(dim=-1, keepdim=True)
        out = 100.0 * features @ self.classifier
        self.n_images += len(pixels)
        self.seconds += time.perf_counter() - start
        return out.cpu()

    def order(self, pixels) -> list[list[int]]:
        """Per image, every class in CLIP's order (best first)."""
        import torch

        order = torch.argsort(self.logits(pixels), dim=1, descending=True, stable=True)
        return [row.tolist() for row in order]
