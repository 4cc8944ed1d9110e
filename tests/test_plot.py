"""``diffcls plot``: the series it draws, its axes and labels, its bad inputs; the per-image costs
the result block records for it (unit and through the real harness CLI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import harness_eval

from diffcls_plugin.classifier.stats import RunStats
from diffcls_plugin.cli import main
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.workflows.leaderboard import read_results
from diffcls_plugin.workflows.plot import _top1_limits, log_ticks, plot_results, plot_series, tick_label

FIXTURES = Path(__file__).parent / "fixtures" / "results"
pytest.importorskip("matplotlib")


def write_result(folder: Path, name: str, sampler: str | None, acc1: float, evals_by_image: list[int] | None = None, dataset: str = "wds/digits") -> Path:
    """A result file: a diffusion one (with ``sampler``), else a plain CLIP_benchmark one."""
    data = {"dataset": dataset, "model": name, "pretrained": "tiny-digits", "task": "zeroshot_classification", "metrics": {"acc1": acc1}, "language": "en"}
    if sampler is not None:
        evals = evals_by_image or [32] * 4
        data["diffcls"] = {"sampler": sampler, "model": name, "n_images": len(evals), "unet_evals_per_image": sum(evals) / len(evals)}
        if evals_by_image is not None:
            data["diffcls"]["unet_evals_by_image"] = evals_by_image
    path = folder / f"{dataset.replace('/', '_')}__{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def race_and_baseline(tmp_path) -> Path:
    write_result(tmp_path, "diffusion-baseline", "baseline", 0.96, [320] * 6)
    write_result(tmp_path, "diffusion-race", "race", 0.97, [20, 24, 30, 30, 90, 160])
    write_result(tmp_path, "diffusion-hier", "hierarchical", 0.95)  # no per-image costs: a point, no histogram
    write_result(tmp_path, "RN50", None, 0.45)
    return tmp_path


def test_the_series_are_the_results(race_and_baseline):
    (panel,) = plot_series(read_results([race_and_baseline]))
    assert panel.dataset == "wds/digits"
    assert [(p.sampler, p.evals_per_image, p.top1) for p in panel.points] == [("hierarchical", 32, 95.0), ("race", 59, 97.0), ("baseline", 320, 96.0)]
    assert panel.references == [("RN50 tiny-digits", 45.0)]
    assert [p.sampler for p in panel.histograms] == ["race", "baseline"]
    assert [p.sampler for p in panel.frontier] == ["hierarchical", "race"]  # baseline: dearer and less accurate than the race


def test_the_figure_has_a_point_per_result_clip_lines_histograms_and_plain_tick_labels(race_and_baseline, tmp_path):
    out = tmp_path / "frontier.png"
    fig = plot_results(read_results([race_and_baseline]), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frontier, *hists = fig.axes
    assert frontier.get_title() == "wds/digits"
    assert frontier.get_xscale() == "log"
    legend = [t.get_text() for t in frontier.get_legend().get_texts()]
    assert legend == [
        "diffusion-hier tiny-digits: 95.0% at 32",
        "diffusion-race tiny-digits: 97.0% at 59",
        "diffusion-baseline tiny-digits: 96.0% at 320",
        "non-dominated",
        "RN50 tiny-digits (CLIP): 45.0%",
    ]
    assert [c.get_offsets().tolist() for c in frontier.collections] == [[[32, 95]], [[59, 97]], [[320, 96]]]
    (clip,) = [line for line in frontier.get_lines() if "(CLIP)" in line.get_label()]
    assert list(clip.get_ydata()) == [45, 45]
    assert [h.get_visible() for h in hists] == [True, True]
    assert [h.get_title(loc="left").split(":")[0] for h in hists] == ["diffusion-race tiny-digits", "diffusion-baseline tiny-digits"]
    assert sum(p.get_height() for p in hists[0].patches) == 6  # every image in the race's histogram
    labels = [t.get_text() for t in hists[-1].get_xticklabels() if t.get_text()]
    assert labels == ["20", "50", "100", "200"]  # plain numbers, never 2x10^1
    assert hists[-1].get_xlabel().startswith("UNet evaluations per image (log)")


def test_one_column_per_dataset_without_histograms(tmp_path):
    fig = plot_results(read_results([FIXTURES]), tmp_path / "fixtures.png")
    assert [ax.get_title() for ax in fig.axes] == ["wds/digits", "wds/other"]  # no result records per-image costs
    assert len(fig.axes[0].collections) == 4 and len(fig.axes[1].collections) == 2


def test_log_ticks_are_readable():
    assert log_ticks(10, 500) == [10, 20, 50, 100, 200, 500]
    assert log_ticks(30, 70) == [30, 40, 50, 60, 70]  # a narrow range: every digit
    assert [tick_label(v) for v in (0.5, 20, 1000, 20000)] == ["0.5", "20", "1,000", "20,000"]


def test_a_saturated_panel_keeps_a_two_point_top1_axis():
    low, high = _top1_limits([98.9, 99.2])
    assert high - low >= 2 and low < 98.9 and 99.2 < high <= 100.2
    assert _top1_limits([45.0, 96.0]) == pytest.approx((45 - 0.08 * 51, 96 + 0.08 * 51))


def test_bad_inputs_name_the_fix(tmp_path, monkeypatch):
    clip = write_result(tmp_path, "RN50", None, 0.45)
    with pytest.raises(DiffclsError, match="no diffusion result among the 1 result file.*diffcls run, diffcls eval or diffcls demo"):
        plot_series(read_results([clip]))
    no_top1 = write_result(tmp_path, "diffusion-race", "race", 0.9)
    data = json.loads(no_top1.read_text())
    data["metrics"] = {"image_retrieval_recall@5": 0.5}
    no_top1.write_text(json.dumps(data))
    with pytest.raises(DiffclsError, match=r"diffusion-race.json: no top-1 accuracy \('acc1' in its metrics\).*leave this file out"):
        plot_series(read_results([no_top1]))
    damaged = write_result(tmp_path, "diffusion-hier", "hierarchical", 0.9, [10, 12])
    data = json.loads(damaged.read_text())
    data["diffcls"]["unet_evals_by_image"] = [10, "12"]  # (a wrong count or sum is refused when any result is read)
    damaged.write_text(json.dumps(data))
    with pytest.raises(DiffclsError, match="'unet_evals_by_image' must list 2 non-negative whole numbers.*rerun it"):
        plot_series(read_results([damaged]))
    good = write_result(tmp_path, "diffusion-baseline", "baseline", 0.9)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(DiffclsError, match=r"diffcls plot needs matplotlib: pip install 'diffcls-plugin\[plot\]'"):
        plot_results(read_results([good]), tmp_path / "x.png")


def test_the_command_writes_the_plot_and_errors_in_one_line(race_and_baseline, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out.png"
    result = runner.invoke(main, ["plot", str(race_and_baseline), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000
    result = runner.invoke(main, ["plot", str(race_and_baseline / "wds_digits__RN50.json"), "--out", str(out)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("Error: no diffusion result")
    result = runner.invoke(main, ["plot", str(race_and_baseline), "--out", str(tmp_path / "missing" / "x.png")])
    assert result.exit_code == 1 and "the folder" in result.output and "does not exist; create it first" in result.output


@pytest.mark.parametrize("with_matplotlib", [True, False])
def test_the_demo_writes_its_plot_beside_its_results_or_says_why_not(race_and_baseline, tmp_path, monkeypatch, with_matplotlib):
    """The demo's wiring, with the matrix run replaced by the fixture's files (the real run takes minutes)."""
    from diffcls_plugin.workflows import benchmark, demo

    out = tmp_path / "demo-out"
    files = sorted(race_and_baseline.glob("*.json"))

    def run_benchmark(config, force, echo):
        Path(config.output).mkdir()  # as the real run does
        return files

    monkeypatch.setattr(benchmark, "run_benchmark", run_benchmark)
    if not with_matplotlib:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    lines: list[str] = []
    table, plot = demo.run_demo(str(out), echo=lines.append)
    assert "| diffusion-race tiny-digits |" in table
    if with_matplotlib:
        assert plot == out / "frontier.png" and plot.is_file()
        assert lines[-1].startswith(f"diffcls demo: wrote {plot} ")
    else:
        assert plot is None and not (out / "frontier.png").exists()
        assert lines[-1] == "diffcls demo: no frontier.png: the plot needs matplotlib: pip install 'diffcls-plugin[plot]'"


def test_run_stats_record_each_images_evaluations_in_order():
    stats = RunStats()

    def batch(evals):
        outcomes = [SimpleNamespace(n_unet_evals=e, seconds=0.1) for e in evals]
        results = [SimpleNamespace(n_evals=e, stop_reason="beam") for e in evals]
        stats.add(results, outcomes, len(evals), sum(evals), 0.1, [len(evals)])

    batch([40, 320, 36])
    batch([64])
    block = stats.cost_block()
    assert block["unet_evals_by_image"] == [40, 320, 36, 64]
    assert all(type(v) is int for v in block["unet_evals_by_image"])
    assert block["unet_evals_per_image"] == sum(block["unet_evals_by_image"]) / block["n_images"]
    json.dumps(block)  # stays JSON


def test_a_harness_result_records_per_image_evaluations_and_plots(tiny_sd, tiny_wds, tmp_path):
    root, _, _ = tiny_wds
    output = tmp_path / "race.json"
    run = harness_eval("diffusion-race", tiny_sd, "wds/tiny", root, output, "--batch_size", "6", "--num_workers", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    block = json.loads(output.read_text())["diffcls"]
    evals = block["unet_evals_by_image"]
    assert len(evals) == block["n_images"] == 12 and all(isinstance(v, int) and v > 0 for v in evals)
    assert sum(evals) / 12 == pytest.approx(block["unet_evals_per_image"])
    assert sum(evals) == block["computed"]["unet_evals"]
    fig = plot_results(read_results([output]), tmp_path / "race.png")
    assert [ax.get_title() for ax in fig.axes[:1]] == ["wds/tiny"] and len(fig.axes) == 2
