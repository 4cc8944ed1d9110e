"""`diffcls check`: binomial tolerances, pass and fail on fixtures, deliberate --update."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffcls_plugin.cli import main
from diffcls_plugin.workflows.regression import binomial_tolerance

RESULTS = Path(__file__).parent / "fixtures" / "results"


def test_binomial_tolerance_is_three_standard_errors():
    p, n = 0.9, 100
    p_adj = (p * n + 2) / (n + 4)
    assert binomial_tolerance(p, n) == pytest.approx(3 * math.sqrt(p_adj * (1 - p_adj) / (n + 4)))
    assert binomial_tolerance(1.0, 50) > 0.03  # a perfect score on 50 images is not a zero tolerance
    assert binomial_tolerance(0.9, 400) < binomial_tolerance(0.9, 100)


def make_reference(tmp_path):
    ref = tmp_path / "ref.json"
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref), "--update"])
    assert result.exit_code == 0, result.output
    return ref


def test_update_then_check_passes(tmp_path):
    ref = make_reference(tmp_path)
    data = json.loads(ref.read_text())
    entry = next(e for e in data["entries"] if e["label"] == "diffusion-hier tiny-digits" and e["dataset"] == "wds/digits")
    assert entry["metrics"]["acc1"] == 0.92 and entry["n_images"] == 400
    data["entries"] = [e for e in data["entries"] if "RN50" not in e["label"]]  # no n_images for plain results
    ref.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref)])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output


def test_a_drop_beyond_tolerance_fails_and_names_old_new_and_tolerance(tmp_path):
    ref = make_reference(tmp_path)
    data = json.loads(ref.read_text())
    data["entries"] = [e for e in data["entries"] if e["label"] == "diffusion-hier tiny-digits" and e["dataset"] == "wds/digits"]
    tol = binomial_tolerance(0.97, 400)
    data["entries"][0]["metrics"]["acc1"] = 0.97  # the stored value was higher than the new 0.92
    data["entries"][0]["metrics"]["unet_evals_per_image"] = 15.0  # now 17.4: +16 % > 5 %
    ref.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref)])
    assert result.exit_code == 1
    assert 0.97 - 0.92 > tol
    assert f"REGRESSION diffusion-hier tiny-digits / wds/digits / acc1: old 0.97, new 0.92, tolerance ±{tol:.4g}" in result.output
    assert "unet_evals_per_image: old 15, new 17.4, tolerance ±0.75 (5% relative)" in result.output


def test_a_drop_within_tolerance_and_an_improvement_pass(tmp_path):
    ref = make_reference(tmp_path)
    data = json.loads(ref.read_text())
    data["entries"] = [e for e in data["entries"] if e["label"] == "diffusion-hier tiny-digits" and e["dataset"] == "wds/digits"]
    data["entries"][0]["metrics"]["acc1"] = 0.95  # new 0.92: 3 points, inside 3 SE at n = 400
    data["entries"][0]["metrics"]["unet_evals_per_image"] = 30.0  # new 17.4: cheaper, improved
    ref.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref)])
    assert result.exit_code == 0, result.output
    assert "IMPROVED" in result.output


def test_missing_result_and_explicit_tolerances(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(
        json.dumps(
            {
                "tolerances": {"acc1": {"abs": 0.001}, "seconds_per_image": {"rel": 0.5}},
                "entries": [
                    {"label": "diffusion-hier tiny-digits", "dataset": "wds/digits", "n_images": 400, "metrics": {"acc1": 0.925, "seconds_per_image": 0.02}},
                    {"label": "nobody", "dataset": "wds/digits", "metrics": {"acc1": 0.5}},
                ],
            }
        )
    )
    only = tmp_path / "r"
    only.mkdir()
    shutil.copy(RESULTS / "digits_hier.json", only)
    result = CliRunner().invoke(main, ["check", str(only), "--reference", str(ref)])
    assert result.exit_code == 1
    assert "REGRESSION diffusion-hier tiny-digits / wds/digits / acc1: old 0.925, new 0.92, tolerance ±0.001 (absolute)" in result.output
    assert "seconds_per_image: old 0.02, new 0.05, tolerance ±0.01 (50% relative)" in result.output
    assert "MISSING    nobody / wds/digits / acc1" in result.output


def test_bad_reference_file(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"entries": [], "tolerance": {}}))
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref)])
    assert result.exit_code == 1 and "unknown key(s) tolerance" in result.output


def test_a_result_on_another_setup_is_a_mismatch_not_a_pass(tmp_path):
    """The reference was measured on 400 images; a result on 360 (or another subset, options, seed)
    is not comparable, whatever its numbers."""
    ref = make_reference(tmp_path)
    data = json.loads(ref.read_text())
    data["entries"] = [e for e in data["entries"] if e["label"] == "diffusion-hier tiny-digits" and e["dataset"] == "wds/digits"]
    assert data["entries"][0]["setup"]["n_images"] == 400  # --update records the setup
    data["entries"][0]["setup"]["n_images"] = 100
    ref.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref)])
    assert result.exit_code == 1
    assert "MISMATCH" in result.output and "n_images 400 (reference: 100)" in result.output
    # an older reference without a setup still compares its n_images
    del data["entries"][0]["setup"]
    data["entries"][0]["n_images"] = 100
    ref.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref)])
    assert result.exit_code == 1 and "n_images 400 (reference: 100)" in result.output


def test_an_empty_reference_fails_instead_of_passing_zero_checks(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"entries": []}))
    result = CliRunner().invoke(main, ["check", str(RESULTS), "--reference", str(ref)])
    assert result.exit_code == 1 and "the reference has no entries, so nothing would be checked" in result.output


def test_hidden_files_in_a_results_folder_are_not_results(tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(RESULTS, folder)
    (folder / ".templates-wds_digits.json").write_text(json.dumps({"wds/digits": ["a photo of a {c}."]}))
    ref = make_reference(tmp_path)
    data = json.loads(ref.read_text())
    data["entries"] = [e for e in data["entries"] if "RN50" not in e["label"]]  # no n_images for plain results
    ref.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["check", str(folder), "--reference", str(ref)])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output


def test_an_option_added_after_the_reference_matches_only_at_its_default():
    # a reference written before the race had a beam records no beam_factor / min_beam: a result run
    # with them at their defaults (the race as it was) is on the same setup; with a beam it is not
    from types import SimpleNamespace

    from diffcls_plugin.samplers.race import RaceOptions
    from diffcls_plugin.workflows.regression import setup_differences

    def result(options):
        return SimpleNamespace(diffcls={"n_images": 100, "sampler": "race", "seed": 0, "config": {"sampler": options.to_dict()}})

    older = {k: v for k, v in RaceOptions().to_dict().items() if k not in ("beam_factor", "min_beam")}
    expected = {"n_images": 100, "sampler": "race", "options": older, "seed": 0}
    assert setup_differences(expected, result(RaceOptions())) == []
    assert setup_differences(expected, result(RaceOptions(min_beam=2))) == []  # 2 is the default
    assert len(setup_differences(expected, result(RaceOptions(beam_factor=1.5)))) == 1
    assert len(setup_differences(expected, result(RaceOptions(alpha=0.1)))) == 1  # a recorded option still counts
    # a key the reference records but the result lacks is a difference too
    assert len(setup_differences({**expected, "options": {**older, "gone": 1}}, result(RaceOptions()))) == 1


def _race_result(options: dict):
    from types import SimpleNamespace

    return SimpleNamespace(
        label="diffusion-race tiny-digits",
        dataset="wds/digits",
        value=lambda metric: 0.98,
        diffcls={"n_images": 100, "sampler": "race", "seed": 0, "config": {"sampler": options}},
    )


def test_an_option_removed_after_the_reference_matches_only_at_its_former_default():
    # the race's n_noises, max_slots and screen went (RaceOptions.REMOVED): a reference that recorded
    # them at their former defaults (the race as it runs now) is on the same setup; at another value
    # it is a MISMATCH that says the option was removed
    from diffcls_plugin.samplers.race import RaceOptions
    from diffcls_plugin.workflows.regression import check, setup_differences

    older = {**RaceOptions().to_dict(), "n_noises": 1, "max_slots": None, "screen": 1.0}
    expected = {"n_images": 100, "sampler": "race", "options": older, "seed": 0}
    assert setup_differences(expected, _race_result(RaceOptions().to_dict())) == []
    assert setup_differences({**expected, "options": {**older, "screen": 1}}, _race_result(RaceOptions().to_dict())) == []  # 1 == 1.0
    screened = setup_differences({**expected, "options": {**older, "screen": 0.5}}, _race_result(RaceOptions().to_dict()))
    assert len(screened) == 1 and "options.screen 0.5 (reference), but race.screen was removed" in screened[0]
    assert "as it did at screen 1.0" in screened[0]
    # two removed options off their defaults and a kept option changed: a line each, and the options line
    both = setup_differences({**expected, "options": {**older, "max_slots": 16, "n_noises": 2}}, _race_result(RaceOptions(alpha=0.1).to_dict()))
    assert [line.split(" ")[0] for line in both] == ["options.max_slots", "options.n_noises", "options"]
    # a key the reference records that the sampler never had is a plain difference
    assert setup_differences({**expected, "options": {**older, "gone": 1}}, _race_result(RaceOptions().to_dict())) == [
        f"options {RaceOptions().to_dict()!r} (reference: { ({**older, 'gone': 1})!r})"
    ]

    reference = {
        "entries": [
            {
                "label": "diffusion-race tiny-digits",
                "dataset": "wds/digits",
                "metrics": {"acc1": 0.98},
                "n_images": 100,
                "setup": {**expected, "options": {**older, "screen": 0.5}},
            }
        ]
    }
    (mismatch,) = check([_race_result(RaceOptions().to_dict())], reference)
    assert mismatch.status == "mismatch" and "race.screen was removed" in mismatch.line()
    reference["entries"][0]["setup"] = expected
    (ok,) = check([_race_result(RaceOptions().to_dict())], reference)
    assert ok.status == "ok"


def test_the_committed_ci_smoke_reference_is_the_setup_a_run_of_today_records():
    # benchmark_configs/ci-smoke.yaml runs the hierarchical sampler and the race at their defaults;
    # its reference was written before the race gained its beam and lost n_noises, max_slots and
    # screen, and must still match (unchanged) what a run records now
    from types import SimpleNamespace

    from diffcls_plugin.samplers import SAMPLERS
    from diffcls_plugin.workflows.regression import setup_differences

    reference = json.loads((Path(__file__).parents[1] / "benchmark_configs" / "ci-smoke.reference.json").read_text())
    samplers = set()
    for entry in reference["entries"]:
        setup = entry["setup"]
        cls = SAMPLERS.get(setup["sampler"]).options_cls
        if setup["sampler"] in ("race", "hierarchical"):  # run at their defaults
            options = cls()
        else:  # run with the options ci-smoke.yaml gives them
            options = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in setup["options"].items()})
        result = SimpleNamespace(
            diffcls={
                "n_images": setup["n_images"],
                "subset": {"indices_sha256": setup["subset_sha256"]},
                "sampler": setup["sampler"],
                "seed": setup["seed"],
                "config": {"sampler": options.to_dict()},
            }
        )
        assert setup_differences(setup, result) == [], entry["label"]
        samplers.add(setup["sampler"])
    assert {"race", "hierarchical"} <= samplers
    assert {"n_noises", "max_slots", "screen"} <= set(next(e for e in reference["entries"] if e["setup"]["sampler"] == "race")["setup"]["options"])


@pytest.mark.parametrize(
    ("top", "rule", "named"),
    [
        ({}, {"abs": math.nan}, "tolerance acc1.abs"),
        ({}, {"rel": -0.1}, "tolerance acc1.rel"),
        ({}, {"binomial": math.inf}, "tolerance acc1.binomial"),
        ({}, {"abs": "Infinity"}, "tolerance acc1.abs"),
        ({"z": math.nan}, None, "reference z"),
    ],
)
def test_a_tolerance_that_is_not_a_finite_number_is_refused_instead_of_passing_everything(tmp_path, top, rule, named):
    """NaN compares false with everything: a NaN tolerance (or z) passed a drop from 0.98 to 0.50."""
    ref = tmp_path / "ref.json"
    entry = {"label": "diffusion-hier tiny-digits", "dataset": "wds/digits", "n_images": 400, "metrics": {"acc1": 0.99}}
    ref.write_text(json.dumps({**top, **({"tolerances": {"acc1": rule}} if rule else {}), "entries": [entry]}))
    only = tmp_path / "r"
    only.mkdir()
    shutil.copy(RESULTS / "digits_hier.json", only)
    result = CliRunner().invoke(main, ["check", str(only), "--reference", str(ref)])
    assert result.exit_code == 1
    assert f"{named} must be a finite number >= 0" in result.output, result.output
    assert "0 failed" not in result.output
