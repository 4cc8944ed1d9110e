"""Timestep weighting (Jeong et al. 2025): the weights file, the fit, the scorer, the CLI and the harness run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner
from conftest import harness_eval

from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.cli import main as cli
from diffcls_plugin.config import DiffclsConfig, load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import BaselineOptions
from diffcls_plugin.weighting import TimestepWeights, accuracy, fit_weights, load_weights, weights_for


def synthetic(n: int, n_classes: int = 5, n_t: int = 8, informative: int = 5, seed: int = 0):
    """Errors where only timestep ``informative`` carries the class (the true class is lower by 1)
    and every other timestep is noise 3x as wide: uniform weights drown the signal."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    errors = 3.0 * torch.rand(n, n_classes, n_t, generator=g, dtype=torch.float64)
    errors[:, :, informative] = torch.rand(n, n_classes, generator=g, dtype=torch.float64)
    errors[torch.arange(n), labels, informative] -= 1.0
    return errors + 5.0, labels.tolist()


def test_weights_are_checked_and_interpolated():
    w = TimestepWeights.normalised([100, 300, 500], [1.0, 2.0, 3.0])
    assert w.weights == (0.5, 1.0, 1.5)  # mean 1
    assert w.at(0) == 0.5 and w.at(999) == 1.5  # clamped at the ends
    assert w.at(200) == pytest.approx(0.75) and w.at(300) == 1.0
    assert w.digest != TimestepWeights.normalised([100, 300, 500], [1.0, 2.0, 4.0]).digest
    with pytest.raises(DiffclsError, match="strictly increasing"):
        TimestepWeights((300, 100), (1.0, 1.0))
    with pytest.raises(DiffclsError, match="positive and finite"):
        TimestepWeights((100, 300), (1.0, -1.0))
    with pytest.raises(DiffclsError, match=r"lie in \[0, 1000\)"):
        TimestepWeights((100, 1000), (1.0, 1.0))


def test_weights_files_round_trip_and_bad_files_are_named(tmp_path):
    w = TimestepWeights.normalised([10, 20], [1.0, 3.0], meta={"dataset": "wds/x"})
    path = w.save(tmp_path / "w.json")
    back = load_weights(path)
    assert back == w and back.meta == {"dataset": "wds/x"} and back.digest == w.digest
    with pytest.raises(DiffclsError, match="does not exist.*diffcls fit-weights"):
        load_weights(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"timesteps": [1], "weights": [1]}))
    with pytest.raises(DiffclsError, match="is not a diffcls-timestep-weights/1 file"):
        load_weights(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DiffclsError, match="is not a JSON weights file"):
        load_weights(tmp_path / "broken.json")


def test_a_missing_or_mismatched_weights_file_is_refused_before_any_weights_load(tmp_path, monkeypatch):
    missing = tmp_path / "nope.json"
    config = load_config(None, [f"timestep_weights={missing}"])  # a config names the file; it reads no files itself
    with pytest.raises(DiffclsError, match="timestep_weights: the file .* does not exist"):
        weights_for(config.timestep_weights, 1000)
    loaded = []
    monkeypatch.setattr("diffcls_plugin.adapters.load_adapter", lambda *a, **k: loaded.append(1))
    with pytest.raises(DiffclsError, match="timestep_weights: the file .* does not exist"):
        load_classifier("diffusion-baseline", "tiny-digits", config=config)
    assert not loaded  # refused before the model's weights load
    path = TimestepWeights((0, 100), (1.0, 1.0), num_train_timesteps=500).save(tmp_path / "short.json")
    with pytest.raises(DiffclsError, match="500-step schedule, this model has 1000"):
        weights_for(str(path), 1000)
    with pytest.raises(DiffclsError, match="500-step schedule, this model has 1000"):  # read from the folder's scheduler config
        load_classifier("diffusion-baseline", "tiny-digits", config=load_config(None, [f"timestep_weights={path}"]))
    assert not loaded
    assert weights_for(str(path), None).num_train_timesteps == 500  # a length not known yet is not checked
    assert weights_for(None, 1000) is None and weights_for("cosmap", 1000) is None  # schemes come from the adapter


def test_fit_finds_the_informative_timestep_and_it_carries_to_new_images():
    errors, labels = synthetic(200, seed=0)
    grid = [62 + 125 * k for k in range(8)]
    w = fit_weights(errors, labels, grid, steps=200)
    assert max(range(8), key=lambda k: w.weights[k]) == 5
    assert not w.meta["kept_uniform"]
    assert w.meta["accuracy"]["held_out_weighted"] > w.meta["accuracy"]["held_out_uniform"]
    test_errors, test_labels = synthetic(300, seed=1)  # images the fit never saw
    weights = torch.tensor(w.weights, dtype=torch.float64)
    uniform, weighted = accuracy(test_errors, torch.tensor(test_labels)), accuracy(test_errors, torch.tensor(test_labels), weights)
    assert weighted > uniform + 0.2, (uniform, weighted)
    poly = fit_weights(errors, labels, grid, method="poly", degree=3, steps=200)
    assert poly.meta["method"] == "poly" and poly.meta["degree"] == 3


def test_fit_keeps_uniform_weights_when_no_step_beats_them_on_held_out_images():
    errors, labels = synthetic(80, n_t=1, informative=0)
    errors = errors.expand(-1, -1, 6).clone()  # six identical timesteps: weights cannot change any ranking
    w = fit_weights(errors, labels, list(range(0, 600, 100)), steps=50)
    assert w.meta["kept_uniform"] and w.weights == (1.0,) * 6


def test_fit_checks_its_input():
    with pytest.raises(DiffclsError, match="at least 4 labelled images"):
        fit_weights(torch.zeros(2, 3, 4), [0, 1], [0, 1, 2, 3])
    with pytest.raises(DiffclsError, match=r"errors must be \(images, classes, timesteps\)"):
        fit_weights(torch.zeros(8, 3, 4), [0] * 8, [0, 1, 2])
    with pytest.raises(DiffclsError, match="method must be one of"):
        fit_weights(torch.zeros(8, 3, 4), [0] * 8, [0, 1, 2, 3], method="cosine")


def test_the_scorer_multiplies_each_error_by_its_timesteps_weight(tmp_path):
    from diffcls_plugin.data.digits import CLASSNAMES, TEMPLATES, load_split

    path = TimestepWeights.normalised([100, 900], [1.0, 3.0]).save(tmp_path / "w.json")
    weights = load_weights(path)
    models = {}
    for name, file in (("plain", None), ("weighted", str(path))):
        config = DiffclsConfig(baseline=BaselineOptions(n_timesteps=4), timestep_weights=file, resume=False)
        models[name] = load_classifier("diffusion-baseline", "tiny-digits", config=config, progress=False, store=False)
        models[name].prepare(CLASSNAMES, TEMPLATES)
    images, _ = load_split("test")
    pixels = torch.stack([models["plain"].transform(im) for im in images[:2]])
    triples = ([0, 0, 1, 1], [0, 3, 2, 9], [50, 500, 700, 950], [0, 0, 0, 0])
    plain = models["plain"].scorer(pixels)(*triples)
    weighted = models["weighted"].scorer(pixels)(*triples)
    for p, q, t in zip(plain, weighted, triples[2]):
        assert q == pytest.approx(p * weights.at(t), rel=1e-9)
    assert models["plain"].run_description()["timestep_weights"] is None
    assert models["weighted"].run_description()["timestep_weights"] == weights.digest  # a different resume-store key


def test_fit_weights_cli_then_a_harness_run_records_the_weights(tmp_path):
    env = {**os.environ, "DIFFCLS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "DIFFCLS_RESUME": "0"}
    out = tmp_path / "weights.json"
    result = CliRunner().invoke(
        cli,
        [
            "fit-weights",
            "--pretrained",
            "tiny-digits",
            "--dataset",
            "wds/digits",
            "--split",
            "test",
            "--subset-per-class",
            "2",
            "--n-timesteps",
            "4",
            "--num-workers",
            "0",
            "--out",
            str(out),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    weights = load_weights(out)
    assert weights.timesteps == (125, 375, 625, 875) and weights.meta["n_images"] == 20
    assert weights.meta["dataset"] == "wds/digits" and weights.meta["split"] == "test"
    # a run on the split the weights were fitted on is flagged, and the result names the weights
    (tmp_path / "run.yaml").write_text(f"timestep_weights: {out}\nbaseline: {{n_timesteps: 4}}\n")
    root = env["DIFFCLS_CACHE"] + "/digits"
    run = harness_eval(
        "diffusion-baseline",
        "tiny-digits",
        "wds/digits",
        root,
        tmp_path / "result.json",
        "--num_workers",
        0,
        "--batch_size",
        120,
        env={**env, "DIFFCLS_CONFIG": str(tmp_path / "run.yaml")},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "were fitted on wds/digits split 'test', the split evaluated here" in run.stderr
    block = json.loads((tmp_path / "result.json").read_text())["diffcls"]
    assert block["config"]["timestep_weights"]["sha256"] == weights.digest


def test_fit_weights_cli_refuses_bad_input_before_loading_anything(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["fit-weights", "--dataset", "wds/digits", "--n-timesteps", "1", "--out", str(tmp_path / "w.json")])
    assert result.exit_code != 0 and "--n-timesteps must be at least 2" in result.output
    result = runner.invoke(cli, ["fit-weights", "--dataset", "wds/digits", "--out", str(tmp_path / "no" / "w.json")])
    assert result.exit_code != 0 and "does not exist; create it first" in result.output


@pytest.mark.parametrize("scheme", ["cosmap", "sigma_sqrt"])
def test_sd3_loss_weightings_follow_the_flow_matching_sigmas(tiny_sd3, scheme):
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    config = DiffclsConfig(timestep_weights=scheme, resume=False)
    model = load_classifier("diffusion-baseline", str(tiny_sd3), config=config, progress=False, store=False)
    w = model.timestep_weights
    assert w.meta["scheme"] == scheme and len(w.timesteps) == 1000
    steps = torch.tensor([0, 250, 500, 999])
    expected = compute_loss_weighting_for_sd3(scheme, model.adapter.sigma(steps).double().clamp_min(1e-6)).double()
    got = torch.tensor([w.at(int(t)) for t in steps], dtype=torch.float64)
    assert torch.allclose(got / got[2], expected / expected[2], rtol=1e-6)  # the same curve, up to the mean-1 scale
    assert w.at(0) > w.at(999)  # both emphasise the clean end of the flow


def test_sd3_loss_weightings_are_refused_for_an_epsilon_model_before_it_loads(tmp_path):
    (tmp_path / "run.yaml").write_text("timestep_weights: cosmap\n")
    run = harness_eval("diffusion-baseline", "tiny-digits", "wds/digits", tmp_path, tmp_path / "r.json", env={"DIFFCLS_CONFIG": str(tmp_path / "run.yaml")})
    assert run.returncode != 0
    assert "cosmap is a weighting of SD3's flow-matching loss" in run.stderr and "'sd' model" in run.stderr
    assert "diffcls: cost:" not in run.stderr  # stopped by the pre-run checks, before their last note (and before any weights load)
