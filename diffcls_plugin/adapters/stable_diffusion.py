"""Stable Diffusion 1.x / 2.x: the only module that imports diffusers.

Follows Li et al.'s protocol: bicubic short-side resize, centre crop, RGB, [-1, 1]; latent =
VAE posterior mean x ``vae.config.scaling_factor``; forward noising with the scheduler's
``add_noise``; the error compares the UNet output with the target its ``prediction_type``
asks for (noise for epsilon, ``get_velocity`` for v-prediction, the latent for sample).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import transforms

from diffcls_plugin.adapters.compiled import best_dtype, compile_denoiser
from diffcls_plugin.data.images import to_rgb
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.zoo import Checkpoint, check_safetensors

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``auto`` is bf16 on Ampere and newer GPUs, fp16 on older ones (Li et al.) and fp32 on a
    CPU (:func:`~diffcls_plugin.adapters.compiled.best_dtype`); other names map directly."""
    if name == "auto":
        return best_dtype(device)
    return DTYPES[name]


def preprocess(image_size: int) -> transforms.Compose:
    """PIL image -> (3, image_size, image_size) float tensor in [-1, 1] (Li et al.)."""
    return transforms.Compose(
        [
            transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            to_rgb,
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )


class StableDiffusionAdapter:
    """UNet + VAE + CLIP text encoder + noise schedule of one Stable Diffusion (1.x / 2.x) checkpoint.

    Args:
        unet, vae, text_encoder, tokenizer, scheduler: the diffusers/transformers components.
            The scheduler is only read (``add_noise``, ``get_velocity``, its config), never changed.
        device: where to compute.
        dtype: compute precision of the three networks; errors are accumulated in fp32.
        compile: ``torch.compile`` the UNet: ``True``, or ``"graphs"`` with CUDA graphs
            (:func:`~diffcls_plugin.adapters.compiled.compile_denoiser`; the scorer pads its
            passes to fixed sizes).

    The UNet and VAE run channels-last with scaled-dot-product attention; on CUDA fp32 matmuls
    may use TF32.
    """

    family = "sd"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, device="cpu", dtype=torch.float32, compile=False) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        # channels-last convolutions: measured here ~1.3x faster UNet and ~2x faster VAE on a CPU
        self.unet = _to(unet, self.device, dtype).to(memory_format=torch.channels_last)
        self.vae = _to(vae, self.device, dtype).to(memory_format=torch.channels_last)
        self.text_encoder = _to(text_encoder, self.device, dtype)
        if hasattr(self.unet, "set_attn_processor"):
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch scaled-dot-product attention
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.unet = compile_denoiser(self.unet, compile)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise DiffclsError(f"scheduler prediction_type {self.prediction_type!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.native_image_size = int(unet.config.sample_size) * self.vae_scale_factor
        self.scaling_factor = float(vae.config.scaling_factor)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.vae_scale_factor:
            raise DiffclsError(f"image_size {image_size} must be a multiple of the VAE's downscale factor {self.vae_scale_factor}")
        side = image_size // self.vae_scale_factor
        return (int(self.unet.config.in_channels), side, side)

    def transform(self, image_size: int) -> transforms.Compose:
        return preprocess(image_size)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> (P, L, D) last hidden states of the text encoder, padded to max length."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids  # (P, L)
        chunks = [self.text_encoder(ids.to(self.device))[0] for ids in torch.split(tokens, batch_size)]
        return torch.cat(chunks)  # (P, L, D)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [-1, 1] -> (B, C, h, w) fp32 latents (posterior mean x scale)."""
        pixels = pixels.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        posterior = self.vae.encode(pixels).latent_dist
        return (posterior.mean * self.scaling_factor).float()

    @torch.no_grad()
    def errors(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        loss: str = "l2",
    ) -> torch.Tensor:
        """One UNet batch of errors.

        Args:
            latents: (K, C, h, w) fp32 clean latents.
            noise: (K, C, h, w) fp32 noise.
            timesteps: (K,) integer timesteps.
            prompt_embeds: (K, L, D) text conditioning.
            loss: ``l2``, ``l1`` or ``huber``.

        Returns:
            (K,) fp32 errors, mean over (C, h, w); lower is better.
        """
        timesteps = timesteps.to(self.device)
        latents = latents.to(self.device)
        noise = noise.to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)  # (K, C, h, w) fp32
        noisy = noisy.to(self.dtype).contiguous(memory_format=torch.channels_last)
        pred = self.predict(noisy, timesteps, prompt_embeds.to(self.device, self.dtype))
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = latents
        return error(pred.float(), target.float(), loss)  # (K,)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The UNet's output for noisy latents under rows of :meth:`encode_prompts` (the one step a
        family with other conditioning overrides)."""
        return self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds).sample


def _to(module, device: torch.device, dtype: torch.dtype):
    """Move a network to the compute device and precision (cast only when needed)."""
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device=device).eval()


def error(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """(K, ...) x (K, ...) -> (K,) mean error per input (Li et al.'s three losses)."""
    if loss == "l2":
        per = F.mse_loss(pred, target, reduction="none")
    elif loss == "l1":
        per = F.l1_loss(pred, target, reduction="none")
    elif loss == "huber":
        per = F.huber_loss(pred, target, reduction="none", delta=1.0)
    else:
        raise DiffclsError(f"loss must be l2, l1 or huber, got {loss!r}")
    return per.flatten(1).mean(dim=1)


def load_components(
    checkpoint: Checkpoint, *, device="cpu", dtype: str = "auto", allow_pickle: bool = False, cache_dir: str | None = None, extra: dict | None = None
) -> dict:
    """Load a Stable Diffusion-family checkpoint's UNet, VAE, text encoder, tokenizer and noise
    schedule, plus the ``extra`` components (subfolder name -> transformers class), with clear
    errors; ``torch_dtype`` is the compute precision."""
    import importlib.util

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if checkpoint.is_local:
        check_safetensors(Path(checkpoint.source), allow_pickle)
    torch_dtype = resolve_dtype(dtype, device)
    common = dict(revision=checkpoint.revision, cache_dir=cache_dir)
    weights = dict(common, use_safetensors=None if allow_pickle else True)
    # diffusers casts while loading; accelerate (optional) makes loading big checkpoints lighter
    diffusers_weights = dict(weights, torch_dtype=torch_dtype, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    try:
        parts = {
            "unet": UNet2DConditionModel.from_pretrained(checkpoint.source, subfolder="unet", **diffusers_weights),
            "vae": AutoencoderKL.from_pretrained(checkpoint.source, subfolder="vae", **diffusers_weights),
            "text_encoder": CLIPTextModel.from_pretrained(checkpoint.source, subfolder="text_encoder", **weights),
            "tokenizer": CLIPTokenizer.from_pretrained(checkpoint.source, subfolder="tokenizer", **common),
            "scheduler": DDPMScheduler.from_pretrained(checkpoint.source, subfolder="scheduler", **common),
        }
        for name, cls in (extra or {}).items():
            parts[name] = cls.from_pretrained(checkpoint.source, subfolder=name, **(common if "tokenizer" in name else weights))
    except (OSError, ValueError) as err:
        where = "folder" if checkpoint.is_local else "hub id"
        fix = (
            "check the folder's safetensors files"
            if checkpoint.is_local
            else f"download it first (hf download {checkpoint.source}) or pass a local folder; offline runs need the weights in the hub cache"
        )
        raise DiffclsError(f"could not load Stable Diffusion {where} {checkpoint.source!r}: {err}; {fix}") from err
    parts["torch_dtype"] = torch_dtype
    return parts


def load_stable_diffusion(
    checkpoint: Checkpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: str = "auto",
    allow_pickle: bool = False,
    cache_dir: str | None = None,
    compile: bool | str = False,
) -> StableDiffusionAdapter:
    """Load a checkpoint's components (safetensors only unless ``allow_pickle``; never remote code).

    Weights are cast to the compute precision whatever precision they were stored in, so an
    fp16-saved checkpoint runs in fp32 on a CPU.
    """
    parts = load_components(checkpoint, device=device, dtype=dtype, allow_pickle=allow_pickle, cache_dir=cache_dir)
    return StableDiffusionAdapter(
        parts["unet"],
        parts["vae"],
        parts["text_encoder"],
        parts["tokenizer"],
        parts["scheduler"],
        device=device,
        dtype=parts["torch_dtype"],
        compile=compile,
    )
