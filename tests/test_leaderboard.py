"""Leaderboard tables from result files: golden Markdown, CSV equal to `clip_benchmark build`."""

from __future__ import annotations

import csv
import io
import math
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffcls_plugin.cli import main
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.workflows.leaderboard import build_table, read_results, render

FIXTURES = Path(__file__).parent / "fixtures"
RESULTS = FIXTURES / "results"


def test_markdown_matches_the_golden_table():
    result = CliRunner().invoke(main, ["table", str(RESULTS), "--recall"])
    assert result.exit_code == 0, result.output
    assert result.output == (FIXTURES / "leaderboard.md").read_text()


def test_two_runs_of_one_row_are_refused_instead_of_the_last_argument_winning(tmp_path):
    import json

    data = json.loads((RESULTS / "digits_hier_b4.json").read_text())
    data["diffcls"].update(n_images=360, seed=1)
    other = tmp_path / "again.json"
    other.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["table", str(RESULTS), str(other)])
    assert result.exit_code != 0
    assert "two results for 'diffusion-hier b=4 tiny-digits' on wds/digits" in result.output
    assert "50 images" in result.output and "360 images" in result.output
    same = CliRunner().invoke(main, ["table", str(RESULTS), str(RESULTS / "digits_hier_b4.json")])  # one file named twice is one result
    assert same.exit_code == 0, same.output


def test_rows_are_grouped_by_checkpoint_with_the_baseline_first_and_clip_last():
    table = build_table(read_results([RESULTS]))
    assert table.rows == [
        "diffusion-baseline tiny-digits",
        "diffusion-adaptive tiny-digits",
        "diffusion-hier tiny-digits",
        "diffusion-hier b=4 tiny-digits",
        "RN50 openai",
    ]
    cell = table.cells[("diffusion-hier b=4 tiny-digits", "wds/digits")]
    assert cell.speedup == pytest.approx(0.40 / 0.04) and cell.eval_ratio == pytest.approx(320 / 12.5)
    # the other hier row ran on 400 images, the baseline on 50: another run, so no speed-up against it
    other = table.cells[("diffusion-hier tiny-digits", "wds/digits")]
    assert other.speedup is None and other.eval_ratio is None
    assert table.cells[("RN50 openai", "wds/digits")].speedup is None


def test_csv_gives_the_same_numbers_as_clip_benchmark_build(tmp_path):
    files = sorted(RESULTS.glob("*.json"))
    subprocess.run(["clip_benchmark", "build", *map(str, files), "--output", str(tmp_path / "b.csv")], check=True, capture_output=True)
    with open(tmp_path / "b.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["model_fullname"], r["dataset"]) for r in rows]
    built = {k: r for k, r in zip(keys, rows) if keys.count(k) == 1}
    ours = list(csv.DictReader(io.StringIO(render(build_table(read_results(files)), "csv"))))
    assert len(ours) == len(files)
    compared = 0
    for row in ours:
        ref = built.get((f"{row['model_name']} {row['pretrained']}", row["dataset"]))
        if ref is None:
            continue  # two variants of one model: build cannot tell them apart, we keep them apart
        compared += 1
        for metric in ("acc1", "acc5", "mean_per_class_recall"):
            a, b = float(row[metric]), float(ref[metric])
            assert (math.isnan(a) and math.isnan(b)) or a == b, (row["model"], metric)
    assert compared == len(files) - 2


def test_latex_is_a_booktabs_tabular():
    text = render(build_table(read_results([RESULTS])), "latex")
    assert text.startswith(r"\begin{tabular}{l") and r"\midrule" in text and text.rstrip().endswith(r"\end{tabular}")
    assert r"$\uparrow$" in text and "diffusion-hier tiny-digits & 92.0" in text


def test_bad_inputs(tmp_path):
    (tmp_path / "x.json").write_text('{"dataset": "d"}')
    with pytest.raises(DiffclsError, match="not a CLIP_benchmark result"):
        read_results([tmp_path / "x.json"])
    with pytest.raises(DiffclsError, match="no result files"):
        read_results([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])
    with pytest.raises(DiffclsError, match="unknown table format"):
        render(build_table(read_results([RESULTS])), "html")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": {"acc1": "0.98"}}, r"metric 'acc1' must be a number, got '0.98'"),
        ({"metrics": None}, r"'metrics' must be a mapping of metric names to numbers, got NoneType"),
        ({"diffcls": [1, 2]}, r"the 'diffcls' block must be a mapping, got list"),
    ],
)
def test_a_damaged_result_is_named_not_a_traceback(tmp_path, change, message):
    import json

    data = {**json.loads((RESULTS / "digits_hier_b4.json").read_text()), **change}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    for command in (["table", str(tmp_path)], ["check", str(tmp_path), "--reference", str(tmp_path / "none.json")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert re.search(message, result.output), result.output


def test_a_hand_edited_cost_that_does_not_add_up_is_refused(tmp_path):
    """A block claiming 10 evaluations per image while recording 4131 computed for 100 images passed
    `check` as IMPROVED and showed a 26x speed-up."""
    import json

    data = json.loads((RESULTS / "digits_hier_b4.json").read_text())
    block = {"n_images": 100, "unet_evals_per_image": 41.31, "stop_reasons": {"beam": 100}}
    block["computed"] = {"n_images": 100, "n_images_from_store": 0, "unet_evals": 4131, "seconds": 3.3}
    data["diffcls"].update(block)
    (tmp_path / "honest.json").write_text(json.dumps(data))
    assert CliRunner().invoke(main, ["table", str(tmp_path)]).exit_code == 0
    data["diffcls"]["unet_evals_per_image"] = 10.0
    (tmp_path / "honest.json").write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["table", str(tmp_path)])
    assert result.exit_code == 1
    assert "does not add up: 10 UNet evaluations per image for 100 images is 1,000, but it records 4,131 computed" in result.output


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"unet_evals_per_image": 10.0}, r"10 UNet evaluations per image for 100 images is 1,000, fewer than the 2,065 it computed for 50 of them"),
        (
            {"computed": {"n_images": 50, "n_images_from_store": 40, "unet_evals": 2065, "seconds": 1.6}},
            r"50 images computed and 40 from the store are not its n_images 100",
        ),
        ({"distributed": {"world_size": 2, "images_per_rank": [30, 20]}}, r"its ranks' images \[30, 20\] count 50, its n_images is 100"),
        ({"unet_evals_by_image": [10] * 100}, r"its 100 per-image evaluations sum to 1,000, but 41.31 per image for 100 images is 4,131"),
        (
            {"denoiser_calls": {"calls": 1, "inputs": 64, "padded_inputs": 64, "by_size": {"64": 1}, "by_round": {"0": {"64": 1}}}},
            r"its denoiser passes hold 64 inputs, but it records 2,065 UNet evaluations computed",
        ),
    ],
)
def test_a_hand_edited_cost_of_a_resumed_run_is_refused(tmp_path, edit, message):
    """With images from the resume store the cost cannot be recomputed from the file, but it can
    never be below what the run computed itself, and the counts of images must agree."""
    import json

    data = json.loads((RESULTS / "digits_hier_b4.json").read_text())
    block = {"n_images": 100, "unet_evals_per_image": 41.31, "stop_reasons": {"beam": 100}}
    block["computed"] = {"n_images": 50, "n_images_from_store": 50, "unet_evals": 2065, "seconds": 1.6}
    block["distributed"] = {"world_size": 2, "images_per_rank": [60, 40]}
    data["diffcls"].update(block)
    (tmp_path / "resumed.json").write_text(json.dumps(data))
    assert CliRunner().invoke(main, ["table", str(tmp_path)]).exit_code == 0
    data["diffcls"].update(edit)
    (tmp_path / "resumed.json").write_text(json.dumps(data))
    for command in (["table", str(tmp_path)], ["check", str(tmp_path), "--reference", str(tmp_path / "none.json")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and re.search(message, result.output), result.output
