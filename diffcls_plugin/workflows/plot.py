"""``diffcls plot``: top-1 against UNet evaluations per image, one panel per dataset, from result files.

Each diffusion result (a harness result JSON with a ``diffcls`` block) is a point; CLIP results
(no ``diffcls`` block) are horizontal reference lines; the non-dominated results are joined (the
accuracy-cost frontier). Under each dataset's panel, one histogram per result that records its
images' evaluations (``unet_evals_by_image``) shows how the sampler spread its spending, on the
same log axis. :func:`plot_series` is the data (pure, no matplotlib); :func:`draw` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.workflows.leaderboard import Result

MATPLOTLIB_MISSING = "needs matplotlib: pip install 'diffcls-plugin[plot]'"
SAMPLER_COLOURS = {"baseline": "black", "adaptive": "tab:green", "hierarchical": "tab:blue", "ttest": "tab:purple", "race": "tab:red"}
SPARE_COLOURS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:grey")
HIST_BINS = 160  # over the panel's x range (each about 1.7 % wide at a 10x range)
MIN_TOP1_SPAN = 2.0  # points: a saturated benchmark's differences look as small as they are
# labelled ticks of the log axis: 1-2-5 per decade (1-2-3-5 or every digit when the range is narrow)
TICK_STEPS = ((1, 2, 5), (1, 2, 3, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9))


@dataclass(frozen=True)
class Point:
    """One diffusion result: its row label, sampler, evaluations per image and top-1 (%)."""

    label: str
    sampler: str
    evals_per_image: float
    top1: float
    evals_by_image: tuple[int, ...] | None = None  # per image, when the result records them


@dataclass
class Panel:
    """One dataset: its diffusion results (cheapest first), CLIP references and the frontier."""

    dataset: str
    points: list[Point] = field(default_factory=list)
    references: list[tuple[str, float]] = field(default_factory=list)  # (CLIP label, top-1 %)

    @property
    def frontier(self) -> list[Point]:
        """The non-dominated points, cheapest first: no other point is as cheap and more accurate."""
        out: list[Point] = []
        for p in sorted(self.points, key=lambda p: (p.evals_per_image, -p.top1)):
            if not out or p.top1 > out[-1].top1:
                out.append(p)
        return out

    @property
    def histograms(self) -> list[Point]:
        return [p for p in self.points if p.evals_by_image]


def _top1(result: Result) -> float:
    top1 = result.metrics.get("acc1")
    if top1 is None or math.isnan(top1):
        raise DiffclsError(
            f"{result.path}: no top-1 accuracy ('acc1' in its metrics); diffcls plot draws zero-shot classification results: leave this file out"
        )
    return 100 * top1


def _evals_by_image(result: Result) -> tuple[int, ...] | None:
    values = result.diffcls.get("unet_evals_by_image")
    if values is None:
        return None  # written before the per-image costs were recorded: a point without a histogram
    n = result.diffcls.get("n_images")
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values) or len(values) != n:
        raise DiffclsError(f"{result.path}: 'unet_evals_by_image' must list {n} non-negative whole numbers (one per image); the file is damaged: rerun it")
    return tuple(values)


def plot_series(results: Sequence[Result]) -> list[Panel]:
    """The panels :func:`draw` draws: per dataset (in the order first seen), every diffusion
    result's top-1 (%, higher is better) against its UNet evaluations per image (lower is
    better), and every CLIP result's top-1 as a reference.

    Raises:
        DiffclsError: no diffusion results, or a result without top-1 or evaluations per image.
    """
    diffusion = [r for r in results if r.is_diffusion]
    if not diffusion:
        raise DiffclsError(
            f"no diffusion result among the {len(results)} result file(s) (a diffusion result has a 'diffcls' block with its sampler); "
            "pass the results of diffcls run, diffcls eval or diffcls demo"
        )
    panels: dict[str, Panel] = {}
    for r in results:
        panel = panels.setdefault(r.dataset, Panel(r.dataset))
        if not r.is_diffusion:
            panel.references.append((r.label, _top1(r)))
            continue
        evals = r.value("unet_evals_per_image")
        if evals is None or not evals > 0:
            raise DiffclsError(f"{r.path}: no positive 'unet_evals_per_image' in its 'diffcls' block; the file is damaged: rerun it")
        panel.points.append(Point(r.label, str(r.diffcls["sampler"]), evals, _top1(r), _evals_by_image(r)))
    out = [p for p in panels.values() if p.points]  # a dataset with CLIP results only has nothing to plot against
    for panel in out:
        panel.points.sort(key=lambda p: (p.evals_per_image, p.label))
    return out


def log_ticks(low: float, high: float) -> list[float]:
    """Tick positions for a log axis from ``low`` to ``high``: 1-2-5 per decade, or finer when
    that gives fewer than four, so that every tick can carry a plain number without overlapping."""
    ticks: list[float] = []
    for steps in TICK_STEPS:
        ticks = [s * 10**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1) for s in steps if low <= s * 10**e <= high]
        if len(ticks) >= 4:
            break
    return ticks


def tick_label(value: float) -> str:
    """A plain number: ``20``, ``1,000``, ``0.5`` (never ``2x10^1``)."""
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _colours(points: list[Point]) -> dict[str, str]:
    """A colour per result: its sampler's for the first result of a known sampler, else the next spare one."""
    out, used, spare = {}, set(), iter(SPARE_COLOURS * (1 + len(points) // len(SPARE_COLOURS)))
    for p in points:
        colour = SAMPLER_COLOURS.get(p.sampler)
        out[p.label] = colour if colour is not None and colour not in used else next(spare)
        used.add(out[p.label])
    return out


def _top1_limits(values: list[float]) -> tuple[float, float]:
    """The top-1 axis: the values with a margin, at least :data:`MIN_TOP1_SPAN` points tall, not past 100 by more than the margin."""
    low, high = min(values), max(values)
    if high - low < MIN_TOP1_SPAN:
        middle = min((low + high) / 2, 100 - MIN_TOP1_SPAN / 2)
        low, high = middle - MIN_TOP1_SPAN / 2, middle + MIN_TOP1_SPAN / 2
    margin = 0.08 * (high - low)
    return low - margin, min(high + margin, 100 + margin)


def draw(panels: list[Panel], path: str | Path):
    """Draw ``panels`` into ``path`` (PNG, SVG, PDF ... by its suffix) and return the Figure.

    Each dataset is a column: the frontier panel on top, then one histogram per result that
    records its images' evaluations, sharing the log x axis.
    """
    try:
        import matplotlib  # noqa: F401 - the package first: its absence is the error to report
        from matplotlib.figure import Figure  # without pyplot: no backend switched, no global figure left open
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    except ImportError:
        raise DiffclsError(f"diffcls plot {MATPLOTLIB_MISSING}") from None

    n_hist = max(len(p.histograms) for p in panels)
    fig = Figure(figsize=(6.8 * len(panels), 4.2 + 1.0 * n_hist))
    axes = fig.subplots(
        1 + n_hist,
        len(panels),
        gridspec_kw={"height_ratios": [4.2] + [1.0] * n_hist},
        squeeze=False,
        sharex="col",
    )
    for col, panel in enumerate(panels):
        values = [p.evals_per_image for p in panel.points] + [v for p in panel.histograms for v in p.evals_by_image if v > 0]
        low, high = min(values) / 1.3, max(values) * 1.3
        ax = axes[0][col]
        colours = _colours(panel.points)
        for p in panel.points:
            ax.scatter([p.evals_per_image], [p.top1], s=46, color=colours[p.label], zorder=3, label=f"{p.label}: {p.top1:.1f}% at {p.evals_per_image:.3g}")
        front = panel.frontier
        if len(front) > 1:
            ax.plot([p.evals_per_image for p in front], [p.top1 for p in front], color="grey", lw=1, ls="-", zorder=2, label="non-dominated")
        for i, (label, top1) in enumerate(panel.references):
            ax.axhline(top1, color="grey", ls=("--", ":", "-.")[i % 3], lw=1.2, label=f"{label} (CLIP): {top1:.1f}%")
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.xaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tick_label(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(*_top1_limits([p.top1 for p in panel.points] + [top1 for _, top1 in panel.references]))
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(panel.dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        bins = [low * (high / low) ** (i / HIST_BINS) for i in range(HIST_BINS + 1)]  # narrow: a bar sits where its images' cost is
        most = max((len(p.evals_by_image) for p in panel.histograms), default=1)
        for row in range(1, 1 + n_hist):
            hist_ax = axes[row][col]
            if row > len(panel.histograms):
                hist_ax.set_visible(False)
                continue
            p = panel.histograms[row - 1]
            evals = sorted(p.evals_by_image)
            hist_ax.hist([max(v, low) for v in evals], bins=bins, color=colours[p.label], alpha=0.8)
            hist_ax.axvline(p.evals_per_image, color="k", lw=0.8, ls=":")
            median = evals[len(evals) // 2]
            hist_ax.set_title(f"{p.label}: {len(evals)} images, median {median}, max {evals[-1]}", fontsize=7, loc="left", pad=2)
            hist_ax.set_yscale("log")  # a long tail of a few dear images stays visible beside the bulk
            hist_ax.set_ylim(0.7, 2 * most)
            hist_ax.set_ylabel("images (log)", fontsize=7)
            hist_ax.tick_params(labelsize=7)
        bottom = axes[len(panel.histograms)][col]  # the column's lowest visible panel carries the axis
        bottom.tick_params(labelbottom=True)
        bottom.set_xlabel("UNet evaluations per image (log)" + ("; dotted: each result's mean" if panel.histograms else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def plot_results(results: Sequence[Result], path: str | Path):
    """:func:`plot_series` of ``results``, drawn into ``path``; returns the Figure."""
    out = Path(path)
    if not out.parent.is_dir():
        raise DiffclsError(f"--out {str(path)!r}: the folder {str(out.parent)!r} does not exist; create it first")
    return draw(plot_series(results), out)
