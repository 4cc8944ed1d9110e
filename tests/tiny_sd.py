"""Tiny seeded Stable Diffusion components built from configs (diffusers' get_dummy_components)."""

from __future__ import annotations

from pathlib import Path

import torch


def text_config(tokenizer, **extra):
    """The tiny CLIP text tower every family's tiny pipeline uses (``extra``: e.g. ``projection_dim``)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_vae(seed: int, **extra):
    """The tiny 2-level VAE (8x8 latents for 16 px images; ``extra``: e.g. SD3's shift and scale)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        **extra,
    )


def tiny_components(prediction_type: str = "epsilon", seed: int = 0, tokenizer_dir: Path | None = None):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from diffcls_plugin.data.tokenizer import save_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = tiny_vae(seed)
    tokenizer = save_clip_tokenizer(tokenizer_dir, n_merges=1000)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(tokenizer))
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny Stable Diffusion pipeline in diffusers layout (safetensors) to ``folder``."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    components = tiny_components(prediction_type, seed, tokenizer_dir=folder.parent / f"{folder.name}-tokenizer")
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL pipeline (two text encoders, text_time added conditioning) saved in diffusers layout,
    built from configs as diffusers' own SDXL tests build theirs."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    parts = tiny_components("epsilon", seed, tokenizer_dir=folder.parent / f"{folder.name}-tokenizer")
    tokenizer = parts["tokenizer"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 16,  # six size numbers x 8, plus the pooled width
        cross_attention_dim=32 + 32,  # both encoders' hidden widths
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer, projection_dim=16))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config(tokenizer))
    pipe = StableDiffusionXLPipeline(
        vae=parts["vae"],
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=parts["scheduler"],
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_sd3(folder: Path, seed: int = 0) -> Path:
    """A tiny SD3 pipeline (MMDiT transformer, two CLIP encoders with projection, no T5, 16-channel-style
    VAE with a shift factor, flow-matching scheduler) saved in diffusers layout, as diffusers' SD3 tests
    build theirs (T5 dropped: its tiny test model lives on the hub)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from diffcls_plugin.data.tokenizer import save_clip_tokenizer

    folder = Path(folder)
    tokenizer = save_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer", n_merges=1000)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=32,
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(text_config(tokenizer, projection_dim=16))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer, projection_dim=16))
    vae = tiny_vae(seed + 3, shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
