"""The CLIP-prefiltered hybrid: a tiny open_clip model built offline keeps each image's top k classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CLASSNAMES, TEMPLATES, harness_eval, random_images

from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.config import DiffclsConfig, load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.prefilter import PrefilterOptions
from diffcls_plugin.samplers import BaselineOptions

TINY_CLIP = "diffcls-tiny-clip"


@pytest.fixture(scope="session", autouse=True)
def tiny_clip_config(tmp_path_factory):
    """A tiny open_clip architecture registered from a config file (random weights, no download)."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY_CLIP}.json").write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(folder)


def classifier(tiny_sd, top_k: int, n_timesteps: int = 4):
    config = DiffclsConfig(baseline=BaselineOptions(n_timesteps=n_timesteps), prefilter=PrefilterOptions(TINY_CLIP, None, top_k))
    model = load_classifier("diffusion-baseline", str(tiny_sd), config=config, progress=False, store=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    return model


def test_the_sampler_sees_only_clip_top_k_and_cost_drops_with_k(tiny_sd):
    images = random_images(3, seed=4)
    evals = {}
    for k in (2, 4, 6):
        model = classifier(tiny_sd, k)
        pixels = torch.stack([model.transform(im) for im in images])
        orders = model.prefilter.order(pixels)
        results = model.classify(pixels)
        for result, order in zip(results, orders):
            assert sorted(result.ranking) == list(range(len(CLASSNAMES)))
            assert set(result.ranking[:k]) == set(order[:k])  # the sampler ranked CLIP's top k ...
            assert result.ranking[k:] == tuple(order[k:])  # ... and the rest keep CLIP's order
            assert result.n_evals == k * 4
        block = model.result_block()
        assert block["prefilter"]["top_k"] == k and block["prefilter"]["model"] == TINY_CLIP and block["prefilter"]["clip_images"] == 6
        evals[k] = block["unet_evals_per_image"]
    assert evals == {2: 8, 4: 16, 6: 24}  # cost falls by C / top_k


def test_the_true_class_survives_the_prefilter_and_then_wins(tiny_sd, monkeypatch):
    """An oracle diffusion model with CLIP's ranking planted: the true class at CLIP's k-th place
    survives and wins; once CLIP drops it, the hybrid cannot find it."""
    from test_stable_diffusion import OracleUNet

    from diffcls_plugin.adapters.stable_diffusion import StableDiffusionAdapter

    model = classifier(tiny_sd, 3, n_timesteps=8)
    sd = model.adapter
    images = random_images(4, seed=9)
    x = torch.stack([sd.transform(16)(img) for img in images])
    oracle = OracleUNet(sd.encode_images(x), sd.encode_prompts([p[0] for p in model.prompts[:4]]), sd.scheduler, "epsilon")
    model.adapter = StableDiffusionAdapter(oracle, sd.vae, sd.text_encoder, sd.tokenizer, sd.scheduler)
    truth = [0, 1, 2, 3]  # image i is class i

    def planted(place):
        def order(pixels):
            out = []
            for i in range(len(pixels)):
                rest = [c for c in range(len(CLASSNAMES)) if c != truth[i]]
                out.append(rest[:place] + [truth[i]] + rest[place:])
            return out

        return order

    monkeypatch.setattr(model.prefilter, "order", planted(2))  # CLIP ranks the true class third: kept
    assert [r.prediction for r in model.classify(x)] == truth
    monkeypatch.setattr(model.prefilter, "order", planted(3))  # fourth: dropped
    results = model.classify(x)
    assert all(r.prediction != t and r.ranking.index(t) == 3 for r, t in zip(results, truth))


def test_prefilter_options_are_checked():
    assert load_config(None, ["prefilter={model: RN50, pretrained: openai, top_k: 20}"]).prefilter == PrefilterOptions("RN50", "openai", 20)
    with pytest.raises(DiffclsError, match=r"prefilter.top_k must be an integer >= 1, got 0"):
        load_config(None, ["prefilter={model: RN50, top_k: 0}"])
    with pytest.raises(DiffclsError, match=r"unknown key 'prefilter.topk'"):
        load_config(None, ["prefilter={model: RN50, topk: 3}"])
    from diffcls_plugin.prefilter import ClipPrefilter

    with pytest.raises(DiffclsError, match=r"prefilter.model 'RN51' is not an open_clip model"):
        ClipPrefilter(PrefilterOptions("RN51", None, 3))


def _check_in_subprocess(tmp_path, model: str, tag: str) -> subprocess.CompletedProcess:
    """check_prefilter with an empty (or planted) hub cache under HF_HOME, offline."""
    code = f"from diffcls_plugin.prefilter import check_prefilter; check_prefilter({model!r}, {tag!r}); print('ok')"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_prefilter_names_are_checked_before_anything_loads():
    from diffcls_plugin.prefilter import check_prefilter

    with pytest.raises(DiffclsError, match=r"'RN5' is not an open_clip model\. Did you mean 'RN50'\?"):
        check_prefilter("RN5", "openai")
    with pytest.raises(DiffclsError, match=r"'openia' is neither a weights file nor a pretrained tag of RN50 \(its tags: openai"):
        check_prefilter("RN50", "openia")
    check_prefilter(TINY_CLIP, None)  # random weights: nothing to find


def test_offline_prefilter_weights_must_be_in_the_local_cache(tmp_path):
    missing = _check_in_subprocess(tmp_path, "RN50", "openai")
    assert missing.returncode != 0
    assert "RN50 / openai (timm/resnet50_clip.openai on the hub) are not in the local cache and HF_HUB_OFFLINE is set" in missing.stderr
    # the same weights planted in the hub cache layout (refs/main -> a snapshot holding the file) pass
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet50_clip.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "open_clip_model.safetensors").write_bytes(b"planted")
    found = _check_in_subprocess(tmp_path, "RN50", "openai")
    assert found.returncode == 0 and found.stdout.strip() == "ok", found.stderr[-1500:]


def test_a_bad_prefilter_stops_a_harness_run_before_the_diffusion_weights_load(tmp_path, tiny_sd):
    (tmp_path / "run.yaml").write_text("prefilter: {model: RN50, pretrained: openia, top_k: 3}\n")
    run = harness_eval("diffusion-baseline", tiny_sd, "wds/tiny", tmp_path, tmp_path / "r.json", env={"DIFFCLS_CONFIG": str(tmp_path / "run.yaml")})
    assert run.returncode != 0
    assert "'openia' is neither a weights file nor a pretrained tag of RN50" in run.stderr
    assert "diffcls: cost:" not in run.stderr  # stopped by the pre-run checks, before their last note (and before any weights load)
