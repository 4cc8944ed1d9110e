"""bench/gpu_check.py, smoke-tested as the GPU call will run it but on this CPU with tiny random
models: every part writes its rows, every sampler runs end to end through the classifier, and
each is priced by the simulator's rate curve beside its measurement.

The flags keep it to about 35 s on 2 shared cores: 8 images in harness batches of 4 (so the
first is excluded as warm-up), 2 classes, one batch size, 0.01 timed seconds. Two choices are
for this CPU only: ``--compile-backend eager``, because inductor's C++ build of the tiny
denoisers takes minutes here (the first, cold, ran past 10 minutes), where dynamo's tracing
alone (the eager backend) takes about 2 s for the MMDiT; and ``--compile-archs sd3-medium``,
because tracing each tiny UNet (SD 2, SDXL) takes another 10-15 s. Every arch is still built and
timed eager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPT = BENCH / "gpu_check.py"
sys.path.insert(0, str(BENCH))

from gpu_simulate import RateCurve, load_curves  # noqa: E402

from diffcls_plugin.calls import CallLog  # noqa: E402

ARCHS = ("sd2-base", "sdxl-base", "sd3-medium")
CLASSES, IMAGES, HARNESS_BATCH, ADAPTIVE_IMAGES = 2, 8, 4, 1
FLAGS = [
    *("--images", str(IMAGES), "--harness-batch", str(HARNESS_BATCH), "--adaptive-images", str(ADAPTIVE_IMAGES), "--classes", str(CLASSES)),
    *("--batch-sizes", "2", "--large-batch-sizes", "2", "--seconds", "0.01"),
    *("--compile-backend", "eager", "--compile-archs", "sd3-medium"),
]
SAMPLERS = ("race", "ttest", "hierarchical", "race eighth", "baseline-32", "adaptive")
CPU = not torch.cuda.is_available()


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = run("--tiny", "--allow-cpu", "--out", str(out), *FLAGS)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def test_the_run_is_complete_and_says_where_it_ran(checked):
    _, data = checked
    env = data["environment"]
    assert data["complete"] and data["elapsed_s"] > 0
    assert env["torch"] == torch.__version__ and env["device"] and env["flags"]["tiny"] is True
    assert env["dtype"] == ("fp32" if CPU else "bf16") and env["e2e_mode"] == "eager"
    assert not [r for r in data["raw"] + data["e2e"] if "error" in r or "skipped" in r and "CUDA graphs" not in r["skipped"]]


def test_raw_rows_for_every_arch_and_mode_that_ran(checked):
    out, data = checked
    measured = {(r["arch"], r["mode"]): r for r in data["raw"] if "evals_per_s" in r}
    assert set(measured) == {*((a, "eager") for a in ARCHS), ("sd3-medium", "compiled"), *([] if CPU else [("sd3-medium", "graphs")])}
    for row in measured.values():
        assert row["batch_size"] == 2 and row["evals_per_s"] > 0 and row["gflops_per_eval"] > 0 and row["achieved_tflops"] > 0
        assert (row.get("compile_seconds", 0) > 0) == (row["mode"] != "eager")  # the first call of a compiled module, timed
    if CPU:
        assert [r["skipped"] for r in data["raw"] if r["mode"] == "graphs"] == ["CUDA graphs need a GPU"]
    # the same rows in bench/gpu_throughput.py's format, which bench/gpu_simulate.py reads
    curves, meta = load_curves(out / "gpu_throughput.json", dtype=data["environment"]["dtype"], compile="off")
    assert set(curves) == set(ARCHS) and meta["source"] == "bench/gpu_check.py"
    assert set(load_curves(out / "gpu_throughput.json", dtype=data["environment"]["dtype"], compile="on")[0]) == {"sd3-medium"}


def test_every_sampler_is_measured_and_predicted(checked):
    _, data = checked
    rows = {r["sampler"]: r for r in data["e2e"]}
    assert tuple(rows) == SAMPLERS  # cheap and important first, adaptive last
    eager = RateCurve.from_rates({r["batch_size"]: r["evals_per_s"] for r in data["raw"] if r["arch"] == "sd2-base" and r["mode"] == "eager"})
    for name, r in rows.items():
        assert r["unet_evals_per_image"] > 0 and r["seconds_per_image"] > 0 and r["evals_per_s"] > 0 and r["pct_of_raw_eager"] > 0
        calls = r["denoiser_calls"]
        assert calls["inputs"] == pytest.approx(r["unet_evals_per_image"] * r["images"]) and calls["calls"] > 0
        assert r["prediction_mode"] == "eager"
        assert r["predicted_seconds_per_image"]["eager"] == pytest.approx(eager.seconds_of(CallLog.from_dict(calls)) / r["images"])
        assert r["measured_over_predicted"] == pytest.approx(r["seconds_per_image"] / r["predicted_seconds_per_image"]["eager"])
        assert r["time_ratio"] > 0 and r["predicted_time_ratio"] > 0 and r["eval_ratio"] > 0
        if name == "adaptive":  # fewer images: one batch, nothing to exclude
            assert r["images"] == ADAPTIVE_IMAGES and r["warm_up"] is None
        else:  # two harness batches: the first is the warm-up, measured apart
            assert r["images"] == IMAGES - HARNESS_BATCH and r["warm_up"]["images"] == HARNESS_BATCH
            assert r["stopped"] == "all images"
    baseline = rows["baseline-32"]
    assert baseline["unet_evals_per_image"] == 32 * CLASSES
    assert baseline["time_ratio"] == baseline["eval_ratio"] == baseline["predicted_time_ratio"] == 1.0
    assert rows["race eighth"]["overrides"] == ["race.preset=eighth"]
    assert rows["adaptive"]["eval_ratio"] > 10  # its default costs many times baseline-32's


def test_the_markdown_has_the_three_tables(checked):
    out, data = checked
    md = (out / "gpu_check.md").read_text()
    for heading in ("## Raw denoiser rate", "## End to end: SD 2 base through the classifier", "## Predicted and measured GPU seconds per image"):
        assert heading in md
    assert "| predicted s/img (eager) | measured / predicted | predicted with host s/img | time ratio | predicted time ratio | eval ratio |" in md
    host = data["host_cost"]  # fitted on the samplers' runs together
    assert host["fitted_on"] == len(SAMPLERS) and host["per_pass_s"] >= 0 and host["per_input_s"] >= 0
    assert "Host cost fitted on the 6 runs together" in md
    for name in SAMPLERS:
        assert sum(line.startswith(f"| {name} |") for line in md.splitlines()) == 2  # measured, and predicted beside it
    for arch in ARCHS:
        assert f"| {arch} | eager | {data['environment']['dtype']} | 2 |" in md
    assert "CUDA graphs need a GPU" in md or not CPU


def test_a_smoke_test_refuses_the_committed_record():
    done = run("--tiny", "--allow-cpu")
    assert done.returncode == 2 and "committed record" in done.stderr


@pytest.mark.skipif(not CPU, reason="a machine with CUDA runs the check")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    done = run("--out", str(tmp_path / "out"))
    assert done.returncode == 0 and "no CUDA device" in done.stdout and not (tmp_path / "out").exists()
