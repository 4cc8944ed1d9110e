"""`diffcls tune`: the cross-validated choice on planted tables, its bad inputs, the config it
writes, and the whole path on the embedded tiny-digits model through the unmodified harness."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import harness_eval

from diffcls_plugin.cli import main
from diffcls_plugin.config import config_from_dict, load_config
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.harness.preflight import check_tuned
from diffcls_plugin.samplers import li_timesteps
from diffcls_plugin.store import OutcomeStore
from diffcls_plugin.tuning import ErrorTable, check_budgets, check_labels, choose, tune_table, wilson_interval
from diffcls_plugin.weighting import load_weights
from diffcls_plugin.workflows.tune import parse_budgets, write_pick

GRID = li_timesteps(1000, 32)


def planted(n_per_class: int, n_classes: int, seed: int = 0, noisy_half: bool = False) -> tuple[ErrorTable, list[int]]:
    """Errors with the true class lower by a margin at every timestep; with ``noisy_half`` every
    other timestep carries no signal and large noise (weights that drop them win, whatever the
    order a sampler visits the timesteps in)."""
    g = torch.Generator().manual_seed(seed)
    labels = [c for c in range(n_classes) for _ in range(n_per_class)]
    errors = 1.0 + 0.05 * torch.rand(len(labels), n_classes, 32, generator=g, dtype=torch.float64)
    for i, y in enumerate(labels):  # with noise, one timestep alone is weak: only the average of the clean ones decides
        errors[i, y, 0::2] -= 0.015 if noisy_half else 0.04
        errors[i, y, 1::2] -= 0.0 if noisy_half else 0.04
    if noisy_half:
        errors[:, :, 1::2] += 2.0 * torch.rand(len(labels), n_classes, 16, generator=g, dtype=torch.float64)
    return ErrorTable(errors, GRID), labels


def test_the_pick_stays_within_each_budget_and_its_cross_validated_accuracy_is_read_on_held_out_folds():
    table, labels = planted(6, 4)
    result = tune_table(table, labels, [1 / 8, 1 / 2], families=["hierarchical", "race"], k=3, weights=False)
    assert [p.budget for p in result.picks] == [0.125, 0.5]
    for pick in result.picks:
        assert pick.config is not None and pick.ratio <= pick.budget + 1e-9
        # redo the nested choice by hand: choose on each fold's training images, read its held-out ones
        correct = [None] * len(labels)
        for fold, key in zip(result.folds, pick.fold_keys):
            train = {k: [o.subset(fold.train)] for k, o in result.outcomes.items()}
            assert key == choose(train, [result.baseline.subset(fold.train)], pick.budget, strict=True)
            for i in fold.held_out:
                correct[i] = result.outcomes[key].correct[i]
        assert pick.cv_top1 == pytest.approx(sum(correct) / len(correct))
        assert pick.cv_interval[0] <= pick.cv_top1 <= pick.cv_interval[1]
        assert pick.agree == sum(k == pick.config.key for k in pick.fold_keys)


@pytest.fixture(scope="module")
def noisy_half():
    """A tune on a table where every other timestep is noise: (table, labels, result)."""
    table, labels = planted(8, 4, noisy_half=True)
    return table, labels, tune_table(table, labels, [1.0], families=["hierarchical"], k=4)


def test_weights_fitted_in_the_folds_win_where_half_the_timesteps_are_noise(noisy_half):
    _, _, result = noisy_half
    pick = result.picks[0]
    assert result.baseline_weighted.top1 > result.baseline.top1 + 0.15  # cross-fitted: no image's weights saw it
    assert pick.config.weighted and pick.cv_top1 > result.baseline.top1 + 0.1
    assert len(result.fold_weights) == 4
    w = result.fold_weights[0]
    assert sum(w.weights[0::2]) > sum(w.weights[1::2])  # the signal half weighs more


@pytest.mark.parametrize("budget", [0, -0.5, 1.5, float("nan"), True])
def test_a_budget_out_of_range_is_refused(budget):
    with pytest.raises(DiffclsError, match=r"--budget .* is out of range: give a fraction"):
        check_budgets([budget])


def test_budgets_parse_as_decimals_or_fractions():
    assert parse_budgets(["1/8,0.25", "1/16"]) == (0.125, 0.25, 0.0625)
    with pytest.raises(DiffclsError, match=r"'eighth' is not a fraction"):
        parse_budgets(["eighth"])


def test_too_few_images_of_a_class_for_the_folds_is_refused_naming_the_class():
    with pytest.raises(DiffclsError, match=r"class 'dog' has 2 labelled image\(s\) .* --folds 3 needs at least 3"):
        check_labels([0, 0, 0, 1, 1], 2, 3, ["cat", "dog"])


def test_the_wilson_interval_against_hand_computed_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_a_weighted_pick_writes_a_valid_config_with_its_weights_file_beside_it(tmp_path, noisy_half):
    table, labels, result = noisy_half
    pick = result.picks[0]
    meta = {"pretrained": "p", "dataset": "wds/x", "split": "val", "n_images": table.n_images}
    path = tmp_path / "tuned.yaml"
    weights = write_pick(pick, result, load_config(None, ["loss=l1"]), meta, path, table.tensor(), labels, GRID, 1000, 0)
    assert weights == tmp_path / "tuned-weights.json"
    config = load_config(path)  # a valid DIFFCLS_CONFIG
    assert config.loss == "l1" and config.timestep_weights == str(weights)
    assert config.sampler_options("hierarchical") == pick.config.options
    record = config.tuned.to_dict()
    assert record["model"] == "diffusion-hier" and record["weights"] is True and record["split"] == "val"
    assert record["cv_accuracy"] == round(pick.cv_top1, 4) and len(record["cv_interval_95"]) == 2
    assert load_weights(weights).meta["fitted_by"] == "diffcls tune"


def test_the_frontier_plot_is_written(tmp_path, noisy_half):
    from diffcls_plugin.workflows.tune import plot_frontier

    plot_frontier(noisy_half[2], tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tuned_block_names_a_diffusion_model_and_a_run_on_its_split_warns():
    with pytest.raises(DiffclsError, match=r"tuned.model must name the diffusion model"):
        config_from_dict({"tuned": {"model": "RN50"}})
    config = config_from_dict({"tuned": {"model": "diffusion-race", "dataset": "wds/digits", "split": "val"}})
    assert config.to_dict()["tuned"]["model"] == "diffusion-race"
    notes = check_tuned(config, "diffusion-race", "wds/digits", "val")
    assert len(notes) == 1 and notes[0].startswith("WARNING: this config was tuned")
    assert check_tuned(config, "diffusion-race", "wds/digits", "test") == []
    assert "was tuned for --model diffusion-race" in check_tuned(config, "diffusion-hier", "wds/digits", "test")[0]


def test_error_rows_survive_in_the_store_and_a_torn_row_is_recomputed(tmp_path):
    store = OutcomeStore(tmp_path / "s.sqlite")
    rows = torch.arange(6, dtype=torch.float64).view(2, 3)
    store.put_errors("run", "img", rows)
    assert torch.equal(store.get_errors("run", ["img", "other"])["img"], rows)
    store._db.execute("UPDATE error_rows SET errors = ? WHERE image = 'img'", (b"\0" * 5,))
    assert store.get_errors("run", ["img"]) == {}


def invoke(args, tmp_path):
    result = CliRunner().invoke(main, ["tune", "--pretrained", "tiny-digits", "--dataset", "wds/digits", "--split", "val", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], r"--budget 0.0 is out of range"),
        (["--budget", "1.5"], r"--budget 1.5 is out of range"),
        (["--subset-per-class", "2"], r"--subset-per-class 2 is smaller than --folds 5"),
        (["--sampler", "racer"], r"unknown sampler family to tune 'racer'.*race"),
        (["--split", "train"], r"no train/nshards.txt"),
        (["--set", "timestep_weights=w.json"], r"the tune fits its own"),
    ],
)
def test_bad_inputs_give_one_line_errors_before_any_weights_load(args, message, tmp_path, monkeypatch):
    import diffcls_plugin.classifier as classifier

    monkeypatch.setattr(classifier, "load_classifier", lambda *a, **k: pytest.fail("weights loaded before the input was checked"))
    code, output = invoke([*args, "--out", str(tmp_path / "t.yaml")], tmp_path)
    assert code != 0
    error = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and re.search(message, error[0]), output


def test_a_split_without_labelled_images_is_refused_before_any_unet_work(tmp_path, monkeypatch):
    from diffcls_plugin.data.wds_writer import write_wds_classification

    root = write_wds_classification(tmp_path / "ds", [], [], ["cat", "dog"], ["a photo of a {c}."], n_shards=1)
    import diffcls_plugin.workflows.fit_weights as fw

    monkeypatch.setattr(fw, "collect_errors", lambda *a, **k: pytest.fail("UNet work before the split was checked"))
    result = CliRunner().invoke(
        main, ["tune", "--pretrained", "tiny-digits", "--dataset", "wds/ds", "--dataset-root", str(root), "--split", "test", "--out", str(tmp_path / "t.yaml")]
    )
    assert result.exit_code != 0
    assert "no labelled images" in result.output, result.output


@pytest.mark.skipif(sys.platform == "win32", reason="forked replays")
def test_tune_then_the_unmodified_harness_runs_the_tuned_config(tmp_path, monkeypatch):
    """The whole path on the embedded model: tune on 30 validation digits (errors committed to the
    store), rerun (every image read back, the same file), then clip_benchmark eval with the file."""
    monkeypatch.setenv("DIFFCLS_RESUME", "1")
    monkeypatch.setenv("DIFFCLS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "tuned.yaml"
    # two samplers without weights keep it short: the weighted replays are tested above
    args = ["--subset-per-class", "3", "--folds", "3", "--sampler", "hierarchical", "--sampler", "race", "--no-weights", "--budget", "1/8"]
    args += ["--set", "unet_batch_size=320"]
    code, output = invoke([*args, "--out", str(out)], tmp_path)
    assert code == 0, output
    assert "30 images x 10 classes x 32 timesteps = 9,600 UNet evaluations" in output
    assert "tune: 30 images computed, 0 read from the store" in output
    # off a terminal the errors' progress is plain log lines (the classifier's display), no bar
    assert re.search(r"errors: 30/30 images in \d+:\d\d:\d\d, [\d.]+ UNet evals/s, 320\.0 evals/img, 0 from store", output), output
    assert "\r" not in output and "\x1b" not in output and "it/s" not in output
    first = out.read_text()
    doc = yaml.safe_load(first)
    tuned = doc["tuned"]
    assert tuned["model"] in ("diffusion-hier", "diffusion-race") and tuned["split"] == "val" and tuned["n_images"] == 30
    assert tuned["evals_per_image"] <= 0.125 * 320 and 0 <= tuned["cv_interval_95"][0] <= tuned["cv_accuracy"] <= tuned["cv_interval_95"][1]
    assert tuned["subset"]["per_class"] == 3 and len(tuned["checkpoint_sha256"]) == 64
    command = re.search(r"run it:  (DIFFCLS_CONFIG=.*)", output).group(1)
    assert f"--model {tuned['model']}" in command and "--split test" in command

    code, output = invoke([*args, "--out", str(out)], tmp_path)
    assert code == 0 and "tune: 0 images computed, 30 read from the store" in output, output
    assert "errors: 30/30 images in" in output and "30 from store" in output
    assert out.read_text() == first  # the same errors, the same choice

    root = re.search(r"--dataset_root (\S+)", command).group(1)
    run = harness_eval(tuned["model"], "tiny-digits", "wds/digits", root, tmp_path / "r.json", "--split", "val", env={"DIFFCLS_CONFIG": str(out)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "WARNING: this config was tuned (`diffcls tune`) on wds/digits split 'val'" in run.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    sampler = tuned["sampler"]
    assert result["diffcls"]["config"]["sampler"] == doc[sampler]
    assert result["diffcls"]["config"]["full"]["tuned"] == tuned
    assert result["metrics"]["acc1"] > 0.8
