"""The Stable Diffusion adapter and the classifier on tiny seeded components, loaded from folders."""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import CLASSNAMES, TEMPLATES, random_images
from torch import nn

from diffcls_plugin.adapters.stable_diffusion import StableDiffusionAdapter, load_stable_diffusion
from diffcls_plugin.classifier import DiffusionClassifier, load_classifier
from diffcls_plugin.config import DiffclsConfig, load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.scoring import make_noise
from diffcls_plugin.zoo import Checkpoint, resolve_checkpoint


def pixels(model, images):
    return torch.stack([model.transform(img) for img in images])


def test_loads_a_diffusers_folder_at_its_native_resolution(tiny_sd):
    model = load_classifier("diffusion-baseline", str(tiny_sd), progress=False)
    adapter = model.adapter
    assert adapter.native_image_size == 16  # unet sample_size 8 x VAE factor 2
    assert model.image_size == 16 and model.latent_shape == (4, 8, 8)
    assert adapter.prediction_type == "epsilon" and adapter.num_train_timesteps == 1000
    assert adapter.dtype == torch.float32
    x = pixels(model, random_images(2))
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    latents = adapter.encode_images(x)
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32


def manual_error(adapter: StableDiffusionAdapter, latents, prompt_embed, t, noise, target_kind):
    """Li et al.'s formula written out: x_t = sqrt(a) x0 + sqrt(1 - a) eps, independent of add_noise."""
    a = adapter.scheduler.alphas_cumprod[t].float()
    x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
    pred = adapter.unet(x_t, torch.tensor([t]), encoder_hidden_states=prompt_embed).sample
    target = noise if target_kind == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
    return ((pred - target) ** 2).mean().item()


@pytest.mark.parametrize("fixture, kind", [("tiny_sd", "epsilon"), ("tiny_sd_v", "v_prediction")])
def test_scores_equal_the_written_out_formula(request, fixture, kind):
    folder = request.getfixturevalue(fixture)
    config = load_config(None, ["baseline.n_timesteps=3", "baseline.n_trials=2"])
    model = load_classifier("diffusion-baseline", str(folder), config=config, seed=5, progress=False)
    assert model.adapter.prediction_type == kind
    model.prepare(CLASSNAMES[:3], TEMPLATES)
    x = pixels(model, random_images(1, seed=4))
    (result,) = model.classify(x)
    assert result.n_evals == 3 * 3 * 2
    from diffcls_plugin.scoring import image_seed

    seed = image_seed(5, x[0])
    latents = model.adapter.encode_images(x)
    embeds = model.adapter.encode_prompts([f"a photo of a {c}." for c in CLASSNAMES[:3]])
    with torch.no_grad():
        for c in range(3):
            errors = [
                manual_error(model.adapter, latents, embeds[c : c + 1], t, make_noise(seed, t, n, (4, 8, 8))[None], kind)
                for t in (166, 499, 832)
                for n in range(2)
            ]
            assert result.scores[c] == pytest.approx(sum(errors) / len(errors), rel=1e-5)


class OracleUNet(nn.Module):
    """Knows each class's clean latent; predicts the exact target for the class its prompt names."""

    def __init__(self, class_latents, class_embeds, scheduler, prediction_type):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.class_latents = class_latents  # (C, 4, h, w)
        self.class_embeds = class_embeds  # (C, L, D)
        self.alphas = scheduler.alphas_cumprod
        self.prediction_type = prediction_type
        self.config = SimpleNamespace(sample_size=8, in_channels=4)

    def forward(self, sample, timestep, encoder_hidden_states):
        distance = ((encoder_hidden_states[:, None] - self.class_embeds[None]) ** 2).flatten(2).sum(-1)  # (K, C)
        x0 = self.class_latents[distance.argmin(dim=1)]  # (K, 4, h, w)
        a = self.alphas[timestep].float().view(-1, 1, 1, 1)
        eps = (sample - a.sqrt() * x0) / (1 - a).sqrt()
        out = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("model_name", ["baseline", "adaptive", "hierarchical"])
def test_oracle_denoiser_true_class_wins(tiny_sd, prediction_type, model_name):
    from diffusers import DDPMScheduler

    sd = load_stable_diffusion(resolve_checkpoint(str(tiny_sd)))
    scheduler = DDPMScheduler.from_config(sd.scheduler.config, prediction_type=prediction_type)
    images = random_images(4, seed=9)
    x = torch.stack([sd.transform(16)(img) for img in images])
    class_latents = sd.encode_images(x)
    prompts = [f"a photo of a {c}." for c in CLASSNAMES[:4]]
    oracle = OracleUNet(class_latents, sd.encode_prompts(prompts), scheduler, prediction_type)
    adapter = StableDiffusionAdapter(oracle, sd.vae, sd.text_encoder, sd.tokenizer, scheduler)
    config = load_config(None, ["adaptive.to_keep=[2,1]", "adaptive.n_samples=[4,8]", "baseline.n_timesteps=8"])
    model = DiffusionClassifier(adapter, model_name, config, progress=False)
    model.prepare(CLASSNAMES[:4], ["a photo of a {c}."])
    results = model.classify(x)
    assert [r.prediction for r in results] == [0, 1, 2, 3]
    for c, r in enumerate(results):
        assert r.scores[c] < 1e-6  # the true class is predicted exactly
        others = [s for k, s in enumerate(r.scores) if k != c and not math.isnan(s)]  # nan: never evaluated
        assert min(others) > 1e-5  # every wrong class is clearly worse


def test_fp16_saved_checkpoint_runs_in_fp32_on_cpu(tmp_path, tiny_sd):
    from tiny_sd import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "half", dtype=torch.float16)
    from safetensors import safe_open

    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    model = load_classifier("diffusion-hier", str(folder), progress=False)
    assert model.adapter.dtype == torch.float32
    assert {p.dtype for p in model.adapter.unet.parameters()} == {torch.float32}
    model.prepare(CLASSNAMES, TEMPLATES)
    results = model.classify(pixels(model, random_images(2)))
    assert all(len(r.ranking) == len(CLASSNAMES) for r in results)


def test_bf16_compute_on_cpu(tiny_sd):
    model = load_classifier("diffusion-baseline", str(tiny_sd), config=DiffclsConfig(dtype="bf16"), progress=False)
    assert model.adapter.dtype == torch.bfloat16
    model.prepare(CLASSNAMES, TEMPLATES)
    (result,) = model.classify(pixels(model, random_images(1)))
    reference = load_classifier("diffusion-baseline", str(tiny_sd), config=DiffclsConfig(dtype="fp32"), progress=False)
    reference.prepare(CLASSNAMES, TEMPLATES)
    (exact,) = reference.classify(pixels(reference, random_images(1)))
    # bf16 keeps 8 bits of mantissa: the same errors to within a few per cent, not NaN or garbage
    assert result.scores == pytest.approx(exact.scores, rel=0.03)
    assert result.n_evals == exact.n_evals


def test_results_do_not_depend_on_batch_size_or_position(tiny_sd):
    config = load_config(None, ["unet_batch_size=5", "hierarchical.beam_factor=1.5"])
    model = load_classifier("diffusion-hier", str(tiny_sd), config=config, progress=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    x = pixels(model, random_images(4, seed=2))
    together = model.classify(x)
    alone = [model.classify(x[i : i + 1])[0] for i in range(4)]
    reversed_order = model.classify(x.flip(0))[::-1]
    for a, b, c in zip(together, alone, reversed_order):
        assert a.ranking == b.ranking == c.ranking
        assert a.n_evals == b.n_evals == c.n_evals
        assert a.scores == pytest.approx(b.scores, rel=1e-5, nan_ok=True)
    assert model.n_images == 12


def test_seed_changes_the_noise(tiny_sd):
    x = None
    scores = []
    for seed in (0, 1):
        model = load_classifier("diffusion-baseline", str(tiny_sd), config=load_config(None, ["baseline.n_timesteps=2"]), seed=seed, progress=False)
        model.prepare(CLASSNAMES, TEMPLATES)
        x = pixels(model, random_images(1)) if x is None else x
        scores.append(model.classify(x)[0].scores)
    assert scores[0] != scores[1]


def test_prompt_policies_and_cupl_templates_with_unequal_counts(tiny_sd):
    cupl = {"cat": ["a cat.", "a small cat.", "a cat on a mat."], "dog": ["a dog."], "bird": ["a bird.", "a bird in flight."]}
    x = None
    evals = {}
    for policy in ("first", "ensemble", "all"):
        config = load_config(None, [f"prompts={policy}", "baseline.n_timesteps=4"])
        model = load_classifier("diffusion-baseline", str(tiny_sd), config=config, progress=False)
        model.prepare(list(cupl), cupl)
        x = pixels(model, random_images(2)) if x is None else x
        results = model.classify(x)
        evals[policy] = model.n_unet_evals
        assert all(r.n_evals == 3 * 4 for r in results)  # sampler cost is per class
        if policy == "ensemble":
            flat = model.adapter.encode_prompts(cupl["cat"])
            assert torch.allclose(model._prompt_embeds[0], flat.mean(dim=0))
    assert evals["first"] == evals["ensemble"] == 2 * 3 * 4
    assert evals["all"] == 2 * (3 + 1 + 2) * 4  # every prompt is scored: the cost is visible
    with pytest.raises(DiffclsError, match="no prompts for class 'fish'"):
        model.prepare(["cat", "fish"], cupl)


def test_image_size_override(tiny_sd):
    model = load_classifier("diffusion-hier", str(tiny_sd), config=DiffclsConfig(image_size=32), progress=False)
    assert model.latent_shape == (4, 16, 16)
    model.prepare(CLASSNAMES, TEMPLATES)
    x = pixels(model, random_images(1))
    assert x.shape[-1] == 32
    assert len(model.classify(x)[0].ranking) == len(CLASSNAMES)
    with pytest.raises(DiffclsError, match="multiple of the VAE's downscale factor 2"):
        load_classifier("diffusion-hier", str(tiny_sd), config=DiffclsConfig(image_size=33), progress=False)


def test_wrong_image_shape_is_a_clear_error(tiny_sd):
    model = load_classifier("diffusion-hier", str(tiny_sd), progress=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    with pytest.raises(DiffclsError, match=r"images must be \(B, 3, 16, 16\)"):
        model.classify(torch.zeros(1, 3, 224, 224))


def test_pickle_only_folder_needs_the_flag(tmp_path, tiny_sd):
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_sd, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(DiffclsError, match=r"unet' has only pickle weights .*allow_pickle: true"):
        load_classifier("diffusion-hier", str(folder), progress=False)
    model = load_classifier("diffusion-hier", str(folder), config=DiffclsConfig(allow_pickle=True), progress=False)
    assert model.adapter.native_image_size == 16


def test_checkpoint_resolution_errors(tmp_path):
    with pytest.raises(DiffclsError, match=r"unknown --pretrained 'sd2base'\. Did you mean 'sd2-base'\?"):
        resolve_checkpoint("sd2base")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(DiffclsError, match=r"not a diffusers Stable Diffusion folder: missing vae/, text_encoder/, tokenizer/, scheduler/"):
        resolve_checkpoint(str(tmp_path / "half"))
    with pytest.raises(DiffclsError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nowhere"))
    assert resolve_checkpoint("sd2-base") == Checkpoint("sd2-base", "stabilityai/stable-diffusion-2-base", "main", False, "epsilon")
    assert resolve_checkpoint("sd2.1").prediction_type == "v_prediction"
    hub = resolve_checkpoint("someone/some-model")
    assert hub.source == "someone/some-model" and not hub.is_local


def test_unreachable_hub_id_is_a_clear_error():
    # named before anything loads (the hub check of load_adapter), as the harness's preflight names it
    match = r"'someone/not-cached' \(someone/not-cached\) is not in the local hub cache and HF_HUB_OFFLINE is set; .*\(hf download someone/not-cached;"
    with pytest.raises(DiffclsError, match=match):
        load_classifier("diffusion-hier", "someone/not-cached", progress=False)


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(DiffclsError, match=r"unknown diffusion model 'diffusion-hierarchical'\. Did you mean 'diffusion-hier'\?"):
        load_classifier("diffusion-hierarchical", "sd2-base")


def test_result_block_records_the_run(tiny_sd):
    model = load_classifier("diffusion-hier", str(tiny_sd), seed=3, progress=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    results = model.classify(pixels(model, random_images(3)))
    block = model.result_block()
    assert block["sampler"] == "hierarchical" and block["seed"] == 3
    assert block["config"]["sampler"]["beam_factor"] == 1.1 and block["config"]["sampler"]["direction"] == "center-out"
    assert block["config"]["sampler"]["beam"] == "progressive" and block["config"]["sampler"]["preset"] is None
    assert block["checkpoint"]["folder"] == str(tiny_sd.resolve())
    assert block["n_images"] == 3
    assert block["unet_evals_per_image"] == sum(r.n_evals for r in results) / 3
    assert block["seconds_per_image"] > 0
    from importlib import metadata

    assert block["versions"]["torch"] == metadata.version("torch")
    assert block["versions"]["diffcls-plugin"] == metadata.version("diffcls-plugin")


def test_out_of_memory_halves_the_unet_batch_and_keeps_the_size_that_worked(tiny_sd):
    config = load_config(None, ["unet_batch_size=32", "baseline.n_timesteps=8"])  # 2 images x 6 classes x 8 = 96 inputs
    reference = load_classifier("diffusion-baseline", str(tiny_sd), config=load_config(None, ["unet_batch_size=4", "baseline.n_timesteps=8"]), progress=False)
    model = load_classifier("diffusion-baseline", str(tiny_sd), config=config, progress=False)
    for m in (model, reference):
        m.prepare(CLASSNAMES, TEMPLATES)
    real_errors = model.adapter.errors
    sizes = []

    def errors_with_little_memory(latents, *args, **kwargs):
        sizes.append(len(latents))
        if len(latents) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_errors(latents, *args, **kwargs)

    model.adapter.errors = errors_with_little_memory
    x = pixels(model, random_images(2))
    results = model.classify(x)
    assert sizes[:4] == [32, 16, 8, 4]  # halved after each failure
    assert set(sizes[4:]) == {4}  # and the size that worked is kept
    assert model.unet_batch_size == 4 and model.result_block()["config"]["unet_batch_size_used"] == 4
    expected = reference.classify(x)
    assert [r.scores for r in results] == [r.scores for r in expected]  # same batches, same numbers

    def always_oom(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated")

    model.adapter.errors = always_oom
    with pytest.raises(torch.OutOfMemoryError, match="UNet batch of 1"):
        model.classify(x)


def test_the_three_losses_are_per_input_means():
    from diffcls_plugin.adapters.stable_diffusion import error

    pred = torch.tensor([[[[0.0, 2.0]]], [[[1.0, 1.0]]]])  # (2, 1, 1, 2)
    target = torch.zeros_like(pred)
    assert error(pred, target, "l2").tolist() == [2.0, 1.0]  # mean of squares
    assert error(pred, target, "l1").tolist() == [1.0, 1.0]  # mean of absolute values
    assert error(pred, target, "huber").tolist() == [0.75, 0.5]  # 0.5 x^2 below 1, |x| - 0.5 above
    with pytest.raises(DiffclsError, match="loss must be"):
        error(pred, target, "l3")
