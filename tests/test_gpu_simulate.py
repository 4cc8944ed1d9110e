"""bench/gpu_simulate.py: the rate curve, the host-cost fit, and the replay that records the same
forward passes as the real scorer (issue 23)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import CLASSNAMES, TEMPLATES, random_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from gpu_simulate import HostCost, NearestTable, RateCurve, fit_host_cost, load_curves, replay  # noqa: E402

from diffcls_plugin.calls import CallLog  # noqa: E402
from diffcls_plugin.classifier import load_classifier  # noqa: E402
from diffcls_plugin.config import load_config  # noqa: E402
from diffcls_plugin.samplers import RaceOptions  # noqa: E402
from diffcls_plugin.workflows.fit_weights import collect_errors  # noqa: E402


def test_the_rate_curve_passes_through_the_measured_points_and_extrapolates_a_line():
    curve = RateCurve.from_rates({8: 271.6, 32: 328.5, 64: 336.6})
    for b, rate in ((8, 271.6), (32, 328.5), (64, 336.6)):
        assert curve.pass_seconds(b) == pytest.approx(b / rate)
    slope = (32 / 328.5 - 8 / 271.6) / 24
    assert curve.overhead == pytest.approx(8 / 271.6 - 8 * slope)
    assert curve.pass_seconds(1) == pytest.approx(curve.overhead + slope)  # below 8: the line through 8 and 32
    assert curve.pass_seconds(16) == pytest.approx(8 / 271.6 + (32 / 328.5 - 8 / 271.6) / 3)
    assert curve.pass_seconds(128) == pytest.approx(2 * 64 / 336.6)
    sizes = [curve.pass_seconds(b) for b in range(1, 129)]
    assert sizes == sorted(sizes)
    log = CallLog()
    log.add(0, 64)
    log.add(1, 5)
    assert curve.seconds_of(log) == pytest.approx(curve.pass_seconds(64) + curve.pass_seconds(5))
    assert curve.seconds_of(log, (1, 2, 4, 8, 64)) == pytest.approx(curve.pass_seconds(64) + curve.pass_seconds(8))


def test_the_committed_throughput_table_gives_every_architecture_a_curve():
    curves, meta = load_curves()
    assert set(curves) == {"sd2-base", "sdxl-base", "sd3-medium"} and "H200" in meta["device"]
    assert all(c.overhead >= 0 and c.sizes == (8, 32, 64) for c in curves.values())


def test_the_host_cost_fit_recovers_planted_costs():
    curve = RateCurve.from_rates({8: 271.6, 32: 328.5, 64: 336.6})
    planted = HostCost(per_pass=0.004, per_input=0.0003)
    runs = []
    for rounds in ([64] * 5, [33, 17, 5, 5, 2], [48, 12], [64, 64, 1]):
        log = CallLog()
        for r, size in enumerate(rounds):
            log.add(r, size)
        runs.append((log, curve.seconds_of(log, host=planted)))
    fitted = fit_host_cost(runs, curve)
    assert fitted.per_pass == pytest.approx(planted.per_pass) and fitted.per_input == pytest.approx(planted.per_input)
    # faster than the curve: no negative cost
    assert fit_host_cost([(log, 0.5 * curve.seconds_of(log)) for log, _ in runs], curve) == HostCost(0.0, 0.0)


def test_the_replay_records_the_passes_a_real_run_makes(tiny_sd):
    """The race on 5 images of a tiny pipeline, harness batches of 3, UNet batch 7: the passes the
    classifier recorded are the passes the simulator replays from the same images' error table."""
    images = random_images(5, seed=11)
    overrides = ["unet_batch_size=7", "resume=false"]
    table_model = load_classifier("diffusion-baseline", str(tiny_sd), config=load_config(None, [*overrides, "baseline.n_timesteps=32"]), progress=False)
    table_model.prepare(CLASSNAMES, TEMPLATES)
    pixels = torch.stack([table_model.transform(img) for img in images])
    errors, _, grid = collect_errors(table_model, [(pixels, torch.arange(5) % 6)], progress=False)
    race = load_classifier("diffusion-race", str(tiny_sd), config=load_config(None, overrides), progress=False)
    race.prepare(CLASSNAMES, TEMPLATES)
    real = [r for start in (0, 3) for r in race.classify(pixels[start : start + 3])]
    log, n_evals, _ = replay("race", RaceOptions(), NearestTable(errors, grid), [0] * 5, harness_batch=3, unet_batch=7)
    assert log.to_dict() == race.result_block()["denoiser_calls"]
    assert n_evals == [r.n_evals for r in real]
