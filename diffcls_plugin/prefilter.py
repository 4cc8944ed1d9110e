"""The CLIP-prefiltered hybrid (Li et al. 2023, Appendix B): a CLIP model keeps each image's
``top_k`` classes and the diffusion sampler decides among them.

The full ranking puts the sampler's ranking of the ``top_k`` classes first, then the other
classes in CLIP's order. CLIP scores classes as CLIP_benchmark does: the normalised mean of the
normalised text embeddings of every template of a class, against the normalised image
embedding. The image CLIP sees is the classifier's own crop (the diffusion transform's pixels),
resized to CLIP's resolution and normalised with CLIP's mean and std.

Config: ``prefilter: {model: RN50, pretrained: openai, top_k: 20}`` (any open_clip model and
pretrained tag; ``pretrained: null`` builds random weights, for tests).

This is the only module that imports ``open_clip``: loading a model, checking names and cached
weights before a run, and listing the (architecture, tag) pairs a benchmark matrix may name.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from typing import Any

from diffcls_plugin.errors import DiffclsError, did_you_mean
from diffcls_plugin.zoo import hub_cache, hub_unavailable


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


def open_clip_pretrained() -> list[tuple[str, str]]:
    """Every (architecture, pretrained tag) open_clip knows (no download)."""
    import open_clip

    return [tuple(pair) for pair in open_clip.list_pretrained()]


def load_open_clip(model_name: str, pretrained: str | None, device):
    """An open_clip model for the CLIP prefilter: (model, image size, mean, std, tokenizer).

    Raises:
        DiffclsError: an unknown model or pretrained tag, or weights that cannot be loaded (offline ...).
    """
    import open_clip
    import torch

    check_prefilter(model_name, pretrained)
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    except Exception as err:  # noqa: BLE001 - unknown tags, failed downloads, corrupt files: one message
        raise DiffclsError(f"prefilter: cannot load open_clip {model_name} / {pretrained}: {err}; check the names, or download the weights first") from None
    model.eval()
    visual = model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    mean = torch.tensor(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN, device=device)
    std = torch.tensor(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD, device=device)
    return model, size, mean, std, open_clip.get_tokenizer(model_name)


def check_prefilter(model_name: str, pretrained: str | None, cache_dir: str | None = None) -> None:
    """The prefilter's open_clip model and weights exist and are in the local cache or can be
    downloaded (:func:`check_open_clip_weights`), checked before any weights load. Raises
    :class:`DiffclsError` naming the fix."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    models = open_clip.list_models()
    if model_name not in models:
        raise DiffclsError(f"prefilter.model {model_name!r} is not an open_clip model.{did_you_mean(model_name, models)} See open_clip.list_models()")
    if pretrained is None:
        return
    if os.path.isfile(os.path.expanduser(pretrained)):
        return
    tags = oc_pretrained.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise DiffclsError(
            f"prefilter.pretrained {pretrained!r} is neither a weights file nor a pretrained tag of {model_name} "
            f"(its tags: {', '.join(tags) or 'none'}); fix the tag or the file path"
        )
    check_open_clip_weights(model_name, pretrained, cache_dir, "prefilter", "give prefilter.pretrained a local weights file")


def open_clip_weights(model_name: str, pretrained: str, cache_dir: str | None = None) -> tuple[str | None, str, str, bool]:
    """Where open_clip gets a pretrained tag's weights, as ``open_clip.pretrained.download_pretrained``
    looks for them (the hub first, its safetensors before pickles), without the network.

    Returns:
        (the cached file or ``None``, the cache folder, the hub repo id or URL they come from, whether that is the hub).
    """
    from huggingface_hub import try_to_load_from_cache
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(model_name, pretrained)
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or oc_pretrained.HF_WEIGHTS_NAME
        names = [filename]
        if filename == oc_pretrained.HF_WEIGHTS_NAME:
            names.insert(0, oc_pretrained.HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        found = [p for p in (try_to_load_from_cache(repo_id, name, cache_dir=cache_dir) for name in names) if isinstance(p, str)]
        return (found[0] if found else None), hub_cache(cache_dir), repo_id, True
    folder = cache_dir or os.path.expanduser("~/.cache/clip")
    path = os.path.join(folder, os.path.basename(cfg.get("url", "")))
    return (path if cfg.get("url") and os.path.isfile(path) else None), folder, cfg.get("url", ""), False


def check_open_clip_weights(model_name: str, pretrained: str | None, cache_dir: str | None, subject: str, alternative: str) -> None:
    """Before any weights load: a pretrained tag's open_clip weights are in the local cache, or can
    be downloaded; offline (``HF_HUB_OFFLINE``), or with the hub unreachable (one quick probe
    instead of the minutes of retries of open_clip's download), a missing file raises a
    :class:`DiffclsError` that starts with ``subject``, names the weights, the cache and the
    command that downloads them, and offers ``alternative``. Anything that is no known
    (architecture, tag) pair, or a weights file, is left to open_clip."""
    from open_clip import pretrained as oc_pretrained

    if not pretrained or os.path.isfile(os.path.expanduser(pretrained)) or not oc_pretrained.is_pretrained_cfg(model_name, pretrained):
        return
    found, folder, source, on_hub = open_clip_weights(model_name, pretrained, cache_dir)
    if found:
        return
    why = hub_unavailable(None if on_hub else source)
    if why is None:
        return  # weights that are not cached yet download when the model loads
    where = f", cache_dir={cache_dir!r}" if cache_dir else ""
    raise DiffclsError(
        f"{subject}: the open_clip weights {model_name} / {pretrained} ({source}{' on the hub' if on_hub else ''}) are not in the local cache "
        f"and {why}; download them once with "
        f'network access (python -c "import open_clip; open_clip.create_model_and_transforms({model_name!r}, pretrained={pretrained!r}{where})"; '
        f"the cache is {folder}) or {alternative}"
    )


class ClipPrefilter:
    """An open_clip model and the zero-shot classifier of one dataset's classes."""

    def __init__(self, options: PrefilterOptions, device="cpu") -> None:
        import torch

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
