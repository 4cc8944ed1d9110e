"""The SDXL adapter on tiny seeded components built from configs, loaded from a saved folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import CLASSNAMES, harness_eval, random_images
from torch import nn

from diffcls_plugin.adapters import family_of, load_adapter
from diffcls_plugin.adapters.sdxl import StableDiffusionXLAdapter
from diffcls_plugin.classifier import DiffusionClassifier
from diffcls_plugin.config import load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.zoo import resolve_checkpoint


def test_the_folder_is_recognised_and_conditioned_as_diffusers_builds_sdxl(tiny_sdxl):
    checkpoint = resolve_checkpoint(str(tiny_sdxl))
    assert family_of(checkpoint) == "sdxl"
    adapter = load_adapter(checkpoint)
    assert isinstance(adapter, StableDiffusionXLAdapter)
    assert adapter.native_image_size == 8 * 2  # unet sample_size x the VAE factor
    embeds = adapter.encode_prompts(["a photo of a cat.", "a photo of a dog."])
    assert embeds.shape == (2, 77 + 1, 32 + 32)  # both encoders' hidden states, then the pooled row
    # the same conditioning as StableDiffusionXLPipeline.encode_prompt builds
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    hidden, _, pooled, _ = pipe.encode_prompt(["a photo of a cat.", "a photo of a dog."], device="cpu", do_classifier_free_guidance=False)
    assert torch.allclose(embeds[:, :-1], hidden, atol=1e-6)
    assert torch.allclose(embeds[:, -1, :16], pooled, atol=1e-6) and torch.all(embeds[:, -1, 16:] == 0)
    assert adapter.time_ids(16, 3).tolist() == [[16, 16, 0, 0, 16, 16]] * 3


def test_an_unsupported_pipeline_class_is_refused_naming_the_supported(tmp_path, tiny_sdxl):
    import shutil

    folder = tmp_path / "flux"
    shutil.copytree(tiny_sdxl, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(DiffclsError, match=r"is a FluxPipeline checkpoint; diffusion classifiers support Stable Diffusion 1.x/2.x .*SDXL .*SD3/SD3.5"):
        family_of(resolve_checkpoint(str(folder)))


class OracleXLUNet(nn.Module):
    """Knows each class's clean latent; predicts the exact noise for the class its prompt names,
    and insists on SDXL's added conditioning (pooled text embedding, size ids)."""

    def __init__(self, class_latents, class_hidden, scheduler, pooled_dim, side):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.class_latents, self.class_hidden = class_latents, class_hidden
        self.alphas = scheduler.alphas_cumprod
        self.pooled_dim, self.side = pooled_dim, side
        self.config = SimpleNamespace(sample_size=8, in_channels=4)

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs):
        k = len(sample)
        assert added_cond_kwargs["text_embeds"].shape == (k, self.pooled_dim)
        assert added_cond_kwargs["time_ids"].tolist() == [[self.side, self.side, 0, 0, self.side, self.side]] * k
        distance = ((encoder_hidden_states[:, None] - self.class_hidden[None]) ** 2).flatten(2).sum(-1)  # (K, C)
        x0 = self.class_latents[distance.argmin(dim=1)]
        a = self.alphas[timestep].float().view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(sample - a.sqrt() * x0) / (1 - a).sqrt())


@pytest.mark.parametrize("model_name", ["baseline", "hierarchical", "race"])
def test_oracle_denoiser_true_class_wins(tiny_sdxl, model_name):
    xl = load_adapter(resolve_checkpoint(str(tiny_sdxl)))
    images = random_images(4, seed=9)
    x = torch.stack([xl.transform(16)(img) for img in images])
    prompts = [f"a photo of a {c}." for c in CLASSNAMES[:4]]
    oracle = OracleXLUNet(xl.encode_images(x), xl.encode_prompts(prompts)[:, :-1], xl.scheduler, xl.pooled_dim, 16)
    adapter = StableDiffusionXLAdapter(oracle, xl.vae, xl.text_encoder, xl.text_encoder_2, xl.tokenizer, xl.tokenizer_2, xl.scheduler)
    config = load_config(None, ["baseline.n_timesteps=8", "race.n_timesteps=8"])
    model = DiffusionClassifier(adapter, model_name, config, progress=False, store=False)
    model.prepare(CLASSNAMES[:4], ["a photo of a {c}."])
    results = model.classify(x)
    assert [r.prediction for r in results] == [0, 1, 2, 3]
    for c, r in enumerate(results):
        assert r.scores[c] < 1e-6


def test_clip_benchmark_eval_runs_a_tiny_sdxl_folder_offline(tmp_path, tiny_sdxl, tiny_wds):
    root, images, _ = tiny_wds
    proc = harness_eval("diffusion-hier", tiny_sdxl, "wds/tiny", root, tmp_path / "r.json", "--num_workers", 0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = json.loads((tmp_path / "r.json").read_text())["diffcls"]
    assert block["family"] == "sdxl" and block["n_images"] == len(images) and block["n_classes"] == len(CLASSNAMES)
    assert block["config"]["image_size"] == 16
