"""The cost of a run, said before it is spent: exact evaluation counts for fixed schedules, a range
for the samplers that spend by difficulty, a time from a measured rate, and --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CLASSNAMES, TEMPLATES, random_images

from diffcls_plugin import plan as plan_module
from diffcls_plugin.cli import main
from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.plan import Cost, evals_per_image, known_rate, rate_key, record_rate

ROOT = Path(__file__).resolve().parents[1]


def no_weights(monkeypatch):
    monkeypatch.setattr("diffcls_plugin.harness.patches.load_classifier", lambda *a, **k: pytest.fail("weights loaded in a dry run"))


def test_the_dry_run_of_ci_smoke_states_the_evaluations_its_runs_spent(tmp_path, monkeypatch):
    """The plan's per-image counts equal what the committed ci-smoke reference measured: exactly for
    baseline, adaptive and hierarchical; the race's measured mean lies inside its range."""
    no_weights(monkeypatch)
    result = CliRunner().invoke(main, ["run", str(ROOT / "benchmark_configs" / "ci-smoke.yaml"), "--output", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: 4 of 4 cells would run; nothing was computed" in result.output
    assert list((tmp_path / "out").glob("*.json")) == []
    reference = json.loads((ROOT / "benchmark_configs" / "ci-smoke.reference.json").read_text())
    measured = {e["label"].split()[0]: e["metrics"]["unet_evals_per_image"] for e in reference["entries"]}
    lines = {line.split("cost: ")[1].split()[0]: line for line in result.output.splitlines() if "cost: " in line}
    for model in ("diffusion-baseline", "diffusion-adaptive", "diffusion-hier"):
        assert f"100 images x 10 classes, {measured[model]:,.0f} UNet evaluations per image (fixed schedule)" in lines[model]
    assert "40 to 320 UNet evaluations per image (clear to ambiguous images), 4,000 to 32,000 in all" in lines["diffusion-race"]
    assert 40 <= measured["diffusion-race"] <= 320


def test_eval_dry_run_plans_every_run_and_computes_nothing(tmp_path, monkeypatch, tiny_sd):
    from diffcls_plugin.data.wds_writer import write_wds_classification

    no_weights(monkeypatch)
    root = write_wds_classification(tmp_path / "ds", random_images(12), [i % 6 for i in range(12)], CLASSNAMES, TEMPLATES, n_shards=1)
    args = ["eval", "--dry-run", "--model", "diffusion-baseline", "--model", "diffusion-ttest", "--pretrained", str(tiny_sd)]
    args += ["--dataset", "wds/ds", "--dataset-root", str(root), "--num-workers", "0", "--output", str(tmp_path / "{model}.json"), "--subset-per-class", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "cost: diffusion-baseline on wds/ds: 6 images x 6 classes, 192 UNet evaluations per image (fixed schedule), 1,152 in all" in result.output
    assert "cost: diffusion-ttest on wds/ds: 6 images x 6 classes, 48 to 192 UNet evaluations per image" in result.output
    assert not list(tmp_path.glob("*.json"))


def test_a_run_prints_its_cost_first_and_keeps_its_rate_for_the_next_estimate(tmp_path, monkeypatch, tiny_sd):
    from diffcls_plugin.data.wds_writer import write_wds_classification
    from diffcls_plugin.harness import run_harness

    monkeypatch.setenv("DIFFCLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(plan_module, "MIN_MEASURED_SECONDS", 0.0)
    root = write_wds_classification(tmp_path / "ds", random_images(6), [i % 6 for i in range(6)], CLASSNAMES, TEMPLATES, n_shards=1)
    argv = ["clip_benchmark", "eval", "--model", "diffusion-hier", "--pretrained", str(tiny_sd), "--dataset", "wds/ds", "--dataset_root", str(root)]
    argv += ["--num_workers", "0", "--output", str(tmp_path / "r.json")]
    run_harness(argv, DiffclsConfig())
    result = json.loads((tmp_path / "r.json").read_text())
    rates = json.loads((tmp_path / "cache" / "rates.json").read_text())
    ((key, entry),) = rates.items()
    assert str(tiny_sd) in key and entry["unet_evals_per_s"] > 0
    run_harness(argv, DiffclsConfig(), dry_run=True)
    # the plan's count is what the run spent, and its time uses the measured rate
    per_image = result["diffcls"]["unet_evals_per_image"]
    assert evals_per_image("hierarchical", DiffclsConfig().sampler_options("hierarchical"), 6) == (per_image, per_image)
    assert known_rate(key)[0] == entry["unet_evals_per_s"]


def test_the_cost_line_names_its_rate_and_when_a_gpu_is_needed(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFCLS_CACHE", str(tmp_path))
    cpu = plan_module.plan("diffusion-hier", "cifar10", "hierarchical", DiffclsConfig(), 10, 10_000, device="cpu")
    assert cpu.gpu_needed and cpu.rate is None
    line = cpu.line()
    assert "10,000 images x 10 classes, 124 UNet evaluations per image (fixed schedule), 1,240,000 in all" in line
    assert "a GPU is needed in practice" in line and "--subset-per-class 5" in line
    monkeypatch.setattr(plan_module, "device_kind", lambda device: "cuda")
    monkeypatch.setattr(plan_module, "device_name", lambda device: "NVIDIA H200")
    gpu = plan_module.plan("diffusion-baseline", "cifar10", "baseline", DiffclsConfig(), 10, 10_000, family="sd", device="cuda")
    assert "about 2.9 h at 302.0 evaluations/s (estimate: SD 2 base on one H200, bf16" in gpu.line() and not gpu.gpu_needed
    record_rate(rate_key(None, DiffclsConfig(), "cuda"), 600_000, 1000.0)
    measured = plan_module.plan("diffusion-baseline", "cifar10", "baseline", DiffclsConfig(), 10, 10_000, device="cuda")
    assert "about 89 min at 600.0 evaluations/s (measured on this device on " in measured.line()
    assert Cost("m", "d", None, 3, 10, 20).line().startswith("cost: m on d: ? images x 3 classes, 10 to 20 UNet evaluations per image")


def test_the_rates_file_stays_small_and_a_damaged_one_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFCLS_CACHE", str(tmp_path))
    for i in range(plan_module.MAX_RATES + 20):
        record_rate(f"key-{i}", 100, 2.0)
    rates = json.loads((tmp_path / "rates.json").read_text())
    assert len(rates) == plan_module.MAX_RATES and "key-0" not in rates and known_rate(f"key-{plan_module.MAX_RATES + 19}")[0] == 50.0
    record_rate("short", 100, 0.1)  # too short to say anything
    assert known_rate("short") is None
    (tmp_path / "rates.json").write_text("{not json")
    assert known_rate("key-119") is None
    record_rate("after", 100, 2.0)  # a damaged file is replaced
    assert known_rate("after")[0] == 50.0
