"""The speed options change no result: the denoiser's passes cut, padded to fixed sizes and
compiled give every sampler the same rankings and evaluation counts as eager passes, and the
run's ``denoiser_calls`` record counts every pass (issue 23)."""

from __future__ import annotations

import pytest
import torch
from conftest import CLASSNAMES, TEMPLATES, random_images

from diffcls_plugin.adapters import compiled
from diffcls_plugin.calls import CallLog, buckets, padded, split
from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.config import load_config

UNET_BATCH = 16  # buckets 1, 2, 4, 6, ..., 16: odd passes are padded
SAMPLERS = {
    "diffusion-baseline": ["baseline.n_timesteps=4"],
    "diffusion-adaptive": ["adaptive.n_samples=[4, 8]", "adaptive.to_keep=[3, 1]"],
    "diffusion-hier": ["hierarchical.n_timesteps=8"],
    "diffusion-ttest": ["ttest.min_samples=2", "ttest.max_samples=6"],
    "diffusion-race": ["race.min_slots=2"],
}


def test_split_cuts_equal_passes_of_at_most_the_batch():
    assert split(640, 256) == [214, 213, 213]
    assert split(64, 64) == [64]
    assert split(65, 64) == [33, 32]
    assert split(0, 8) == []
    for n in range(1, 200):
        sizes = split(n, 17)
        assert sum(sizes) == n and max(sizes) <= 17 and max(sizes) - min(sizes) <= 1


def test_buckets_are_eighths_of_the_batch_and_small_powers_of_two():
    assert buckets(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    assert buckets(256) == (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256)
    assert buckets(100) == (1, 2, 4, 8, 12, 24, 36, 48, 60, 72, 84, 96, 100)
    assert buckets(1) == (1,) and buckets(6) == (1, 2, 3, 4, 5, 6)
    assert [padded(n, buckets(64)) for n in (1, 3, 5, 9, 33, 64)] == [1, 4, 8, 16, 40, 64]
    assert padded(7, None) == 7
    with pytest.raises(ValueError):
        buckets(0)


def test_call_log_counts_by_round_and_size_and_round_trips():
    log = CallLog()
    log.add(0, 64)
    log.add(0, 64)
    log.add(1, 5, 8)
    other = CallLog()
    other.add(1, 5, 8)
    log.merge(other)
    data = log.to_dict()
    assert data["calls"] == 4 and data["inputs"] == 138 and data["padded_inputs"] == 144
    assert data["by_size"] == {"5": 2, "64": 2}
    assert data["by_round"] == {"0": {"64": 2}, "1": {"5": 2}}
    assert CallLog.from_dict(data).to_dict() == data


def _classify(model_name: str, folder, overrides: list[str], images):
    config = load_config(None, [f"unet_batch_size={UNET_BATCH}", "resume=false", *overrides])
    model = load_classifier(model_name, str(folder), config=config, progress=False)
    model.prepare(CLASSNAMES[:5], TEMPLATES)
    x = torch.stack([model.transform(img) for img in images])
    return model.classify(x), model.result_block()


@pytest.mark.parametrize("model_name", sorted(SAMPLERS))
def test_padded_passes_give_every_sampler_the_same_results(tiny_sd, monkeypatch, model_name):
    """``compile: true`` pads every pass to a bucket; here without compiling (the compiled path is the next test)."""
    monkeypatch.setattr(compiled, "compile_denoiser", lambda module, mode, **kw: module)
    monkeypatch.setattr("diffcls_plugin.adapters.stable_diffusion.compile_denoiser", lambda module, mode, **kw: module)
    images = random_images(3, seed=4)
    eager, eager_block = _classify(model_name, tiny_sd, SAMPLERS[model_name], images)
    padded_results, block = _classify(model_name, tiny_sd, [*SAMPLERS[model_name], "compile=true"], images)
    for a, b in zip(eager, padded_results):
        assert a.ranking == b.ranking
        assert a.n_evals == b.n_evals
        assert a.scores == pytest.approx(b.scores, rel=1e-5, abs=1e-7)
    assert block["unet_evals_per_image"] == eager_block["unet_evals_per_image"]
    calls, eager_calls = block["denoiser_calls"], eager_block["denoiser_calls"]
    # the same passes of real inputs; the padded ones run at a bucket size
    assert calls["by_round"] == eager_calls["by_round"]
    assert calls["inputs"] == eager_calls["inputs"] == block["computed"]["unet_evals"]
    assert eager_calls["padded_inputs"] == eager_calls["inputs"]
    expected = sum(n * padded(int(size), buckets(UNET_BATCH)) for size, n in calls["by_size"].items())
    assert calls["padded_inputs"] == expected >= calls["inputs"]
    if model_name == "diffusion-baseline":  # one round of 3 x 5 x 4 = 60 inputs: passes of 15, run at 16
        assert calls["by_size"] == {"15": 4} and calls["padded_inputs"] == 64


def test_the_compiled_denoiser_compiles_once_per_bucket_and_ranks_the_same(tiny_sd, monkeypatch):
    """A counting torch.compile backend: every graph it is handed is one compilation. The race's
    rounds shrink from 5 classes to 1, yet no pass shape outside the buckets is ever compiled."""
    shapes: list[tuple[int, ...]] = []

    def counting_backend(gm, example_inputs):
        shapes.append(tuple(next(t.shape for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 4)))
        return gm.forward

    monkeypatch.setenv("DIFFCLS_COMPILE_BACKEND", "aot_eager")  # overridden below; a real backend name for the loader
    monkeypatch.setattr(
        "diffcls_plugin.adapters.stable_diffusion.compile_denoiser",
        lambda module, mode, **kw: compiled.compile_denoiser(module, mode, backend=counting_backend),
    )
    torch._dynamo.reset()
    images = random_images(3, seed=5)
    overrides = ["race.min_slots=2"]
    eager, _ = _classify("diffusion-race", tiny_sd, overrides, images)
    fast, block = _classify("diffusion-race", tiny_sd, [*overrides, "compile=true"], images)
    torch._dynamo.reset()
    for a, b in zip(eager, fast):
        assert a.ranking == b.ranking and a.n_evals == b.n_evals
    run_sizes = {padded(int(size), buckets(UNET_BATCH)) for size in block["denoiser_calls"]["by_size"]}
    assert len(run_sizes) >= 2  # the rounds did shrink
    batch_sizes = [shape[0] for shape in shapes]
    assert set(batch_sizes) <= set(buckets(UNET_BATCH))
    assert set(batch_sizes) == run_sizes
    assert len(batch_sizes) == len(set(batch_sizes))  # one compilation per bucket, never a recompile of one


def test_compile_option_takes_true_false_or_graphs():
    assert load_config(None, ["compile=graphs"]).compile == "graphs"
    from diffcls_plugin.errors import DiffclsError

    with pytest.raises(DiffclsError, match="compile must be true, false or graphs, got 'fast'"):
        load_config(None, ["compile=fast"]).validate()


def test_compile_modes_reach_torch_compile(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: seen.append(kw) or module)
    module = torch.nn.Linear(2, 2)
    assert compiled.compile_denoiser(module, False) is module and seen == []
    monkeypatch.delenv("DIFFCLS_COMPILE_BACKEND", raising=False)
    compiled.compile_denoiser(module, True)
    compiled.compile_denoiser(module, "graphs")
    compiled.compile_denoiser(module, True, backend="aot_eager")
    assert seen == [
        {"dynamic": False, "mode": None},
        {"dynamic": False, "mode": "reduce-overhead"},  # CUDA graphs
        {"dynamic": False, "backend": "aot_eager"},
    ]


def test_auto_dtype_is_bf16_on_ampere_and_fp16_before(monkeypatch):
    assert compiled.best_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert compiled.best_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert compiled.best_dtype("cuda") == torch.float16
