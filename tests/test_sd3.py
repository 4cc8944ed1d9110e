"""The SD3 (flow matching) adapter on tiny seeded components built from configs, loaded from a folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import CLASSNAMES, harness_eval, random_images
from torch import nn

from diffcls_plugin.adapters import family_of, load_adapter
from diffcls_plugin.adapters.sd3 import StableDiffusion3Adapter
from diffcls_plugin.classifier import DiffusionClassifier
from diffcls_plugin.config import load_config
from diffcls_plugin.samplers import li_timesteps
from diffcls_plugin.zoo import resolve_checkpoint


def test_folder_family_prompts_and_the_flow_matching_forward_process(tiny_sd3):
    checkpoint = resolve_checkpoint(str(tiny_sd3))
    assert family_of(checkpoint) == "sd3"
    adapter = load_adapter(checkpoint)
    assert isinstance(adapter, StableDiffusion3Adapter) and adapter.native_image_size == 16
    # prompts: the pipeline's own encode_prompt, pooled embedding packed as a last row
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3), text_encoder_3=None, tokenizer_3=None)
    hidden, _, pooled, _ = pipe.encode_prompt(["a photo of a cat."], None, None, device="cpu", do_classifier_free_guidance=False)
    embeds = adapter.encode_prompts(["a photo of a cat."])
    assert torch.allclose(embeds[:, :-1], hidden) and torch.allclose(embeds[:, -1, :32], pooled)
    # the timestep grid reads the scheduler's training sigmas from clean to noisy (shift 3)
    sigma = adapter.sigma(torch.tensor(li_timesteps(1000, 32)))
    assert torch.all(sigma[1:] > sigma[:-1]) and 0 < sigma[0] < 0.1 and 0.99 < sigma[-1] <= 1
    s = 500 / 1000
    assert adapter.sigma(torch.tensor([499])).item() == pytest.approx(3 * s / (1 + 2 * s), rel=1e-5)
    # errors: x_t = (1 - sigma) x0 + sigma noise, the target is noise - x0, the transformer sees sigma * 1000
    x = torch.stack([adapter.transform(16)(im) for im in random_images(2)])
    latents = adapter.encode_images(x)
    posterior = adapter.vae.encode(x).latent_dist.mean
    assert torch.allclose(latents, (posterior - 0.0609) * 1.5035)
    noise, t = torch.randn_like(latents), torch.tensor([100, 700])
    got = adapter.errors(latents, noise, t, embeds.repeat(2, 1, 1))
    sig = adapter.sigma(t).view(-1, 1, 1, 1)
    pred = adapter.transformer(
        hidden_states=(1 - sig) * latents + sig * noise,
        encoder_hidden_states=hidden.repeat(2, 1, 1),
        pooled_projections=pooled.repeat(2, 1),
        timestep=sig.view(-1) * 1000,
    ).sample
    assert torch.allclose(got, ((pred - (noise - latents)) ** 2).flatten(1).mean(1), rtol=1e-5)


class OracleFlow(nn.Module):
    """Knows each class's clean latent; predicts the exact velocity noise - x0 for the class its prompt names."""

    def __init__(self, class_latents, class_hidden, config):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.class_latents, self.class_hidden, self.config = class_latents, class_hidden, config

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        distance = ((encoder_hidden_states[:, None] - self.class_hidden[None]) ** 2).flatten(2).sum(-1)
        x0 = self.class_latents[distance.argmin(dim=1)]
        sigma = (timestep / 1000).view(-1, 1, 1, 1)
        noise = (hidden_states - (1 - sigma) * x0) / sigma
        return SimpleNamespace(sample=noise - x0)


@pytest.mark.parametrize("model_name", ["baseline", "hierarchical"])
def test_oracle_velocity_true_class_wins(tiny_sd3, model_name):
    sd3 = load_adapter(resolve_checkpoint(str(tiny_sd3)))
    x = torch.stack([sd3.transform(16)(img) for img in random_images(4, seed=9)])
    prompts = [f"a photo of a {c}." for c in CLASSNAMES[:4]]
    oracle = OracleFlow(sd3.encode_images(x), sd3.encode_prompts(prompts)[:, :-1], sd3.transformer.config)
    sd3.transformer = sd3.unet = oracle
    model = DiffusionClassifier(sd3, model_name, load_config(None, ["baseline.n_timesteps=8"]), progress=False, store=False)
    model.prepare(CLASSNAMES[:4], ["a photo of a {c}."])
    results = model.classify(x)
    assert [r.prediction for r in results] == [0, 1, 2, 3]
    assert all(r.scores[c] < 1e-4 for c, r in enumerate(results))


def test_clip_benchmark_eval_runs_a_tiny_sd3_folder_offline(tmp_path, tiny_sd3, tiny_wds):
    root, images, _ = tiny_wds
    proc = harness_eval("diffusion-race", tiny_sd3, "wds/tiny", root, tmp_path / "r.json", "--num_workers", 0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = json.loads((tmp_path / "r.json").read_text())["diffcls"]
    assert block["family"] == "sd3" and block["prediction_type"] == "flow" and block["n_images"] == len(images)
