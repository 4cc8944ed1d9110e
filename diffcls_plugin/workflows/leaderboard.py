"""Leaderboards from harness result JSON files (ours and plain CLIP_benchmark ones alike).

Rows are models (a diffusion sampler on a checkpoint, or a CLIP model), columns datasets. For
each dataset the table shows top-1 (and mean per-class recall when asked), and for diffusion
rows the UNet evaluations per image, seconds per image and the speed-up in time against the
baseline sampler of the same checkpoint on the same dataset.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import SAMPLERS, SAMPLERS_BY_MODEL

BASELINE_SAMPLER = "baseline"  # speed-ups are against this sampler on the same checkpoint and dataset
FORMATS = ("markdown", "csv", "latex")


@dataclass(frozen=True)
class Result:
    """One harness result file."""

    path: str
    dataset: str
    model: str
    pretrained: str
    metrics: dict[str, float]
    diffcls: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The row label: the runner's label if it gave one, else ``model pretrained``."""
        return self.diffcls.get("label") or f"{self.model} {self.pretrained}"

    @property
    def is_diffusion(self) -> bool:
        return "sampler" in self.diffcls

    @property
    def checkpoint(self) -> str:
        return self.pretrained

    def value(self, key: str) -> float | None:
        """A metric (``acc1``, ``mean_per_class_recall`` ...) or a cost from the ``diffcls`` block."""
        if key in self.metrics:
            return self.metrics[key]
        value = self.diffcls.get(key)
        return float(value) if isinstance(value, (int, float)) else None


def read_results(paths: Iterable[str | os.PathLike]) -> list[Result]:
    """Read result files; a folder means every ``*.json`` file directly inside it, except hidden
    ones (``.templates-<dataset>.json`` that ``diffcls run`` writes, temporary files)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.glob("*.json") if not f.name.startswith(".")))
        elif p.is_file():
            files.append(p)
        else:
            raise DiffclsError(f"result path {str(p)!r} does not exist")
    results = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            raise DiffclsError(f"{f}: not a JSON file ({err})") from None
        if not isinstance(data, dict):
            raise DiffclsError(f"{f}: not a CLIP_benchmark result (a JSON object is expected)")
        missing = [k for k in ("dataset", "model", "pretrained", "metrics") if k not in data]
        if missing:
            raise DiffclsError(f"{f}: not a CLIP_benchmark result (missing {', '.join(missing)})")
        results.append(
            Result(str(f), str(data["dataset"]), str(data["model"]), str(data["pretrained"]), _metrics(f, data["metrics"]), _block(f, data.get("diffcls")))
        )
    if not results:
        raise DiffclsError("no result files found; pass JSON files or folders that hold them")
    return results


def _metrics(path: Path, metrics: Any) -> dict[str, float]:
    """A result's metrics: a mapping of names to numbers (``null`` and NaN kept as NaN)."""
    if not isinstance(metrics, dict):
        raise DiffclsError(f"{path}: 'metrics' must be a mapping of metric names to numbers, got {type(metrics).__name__}; the file is damaged: rerun it")
    out = {}
    for key, value in metrics.items():
        if value is None:
            out[key] = math.nan
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, (list, dict)):  # per-class values some tasks write: not a table cell
                continue
            raise DiffclsError(f"{path}: metric {key!r} must be a number, got {value!r}; the file is damaged: rerun it")
        else:
            out[key] = float(value)
    return out


def _block(path: Path, block: Any) -> dict[str, Any]:
    """A result's ``diffcls`` block: a mapping (``{}`` for a plain CLIP_benchmark result)."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise DiffclsError(f"{path}: the 'diffcls' block must be a mapping, got {type(block).__name__}; the file is damaged: rerun it")
    _check_adds_up(path, block)
    return block


def _check_adds_up(path: Path, block: dict[str, Any]) -> None:
    """A result's own counters must agree with its claims (a hand-edited cost would otherwise pass
    ``check`` and top the table): a run that took nothing from the store computed every evaluation
    it reports, so its cost per image times its images is the evaluations it records as computed;
    with images from the store, the images computed now are part of the result, so its cost is at
    least what it computed now; its stop reasons and its ranks' shares count its images; its
    denoiser passes hold the evaluations it computed."""
    computed, n = block.get("computed"), block.get("n_images")
    per_image = block.get("unet_evals_per_image")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return
    damaged = f"{path}: the 'diffcls' block does not add up"
    fix = "the file was edited or damaged: rerun it"
    if isinstance(computed, dict) and _count(computed.get("n_images_from_store")) is not None and _count(computed.get("n_images")) is not None:
        if computed["n_images"] + computed["n_images_from_store"] != n:
            raise DiffclsError(
                f"{damaged}: {computed['n_images']} images computed and {computed['n_images_from_store']} from the store are not its n_images {n}; {fix}"
            )
        evals = computed.get("unet_evals")
        if isinstance(per_image, (int, float)) and not isinstance(per_image, bool) and isinstance(evals, (int, float)) and not isinstance(evals, bool):
            total = per_image * n
            slack = max(1.0, 1e-6 * total)
            if computed["n_images_from_store"] == 0 and abs(total - evals) > slack:
                raise DiffclsError(
                    f"{damaged}: {per_image:g} UNet evaluations per image for {n} images is {total:,.0f}, but it records {evals:,} computed; {fix}"
                )
            if total < evals - slack:
                raise DiffclsError(
                    f"{damaged}: {per_image:g} UNet evaluations per image for {n} images is {total:,.0f}, fewer than the {evals:,} "
                    f"it computed for {computed['n_images']} of them; {fix}"
                )
    reasons = block.get("stop_reasons")
    if isinstance(reasons, dict) and all(_count(v) is not None for v in reasons.values()) and reasons and sum(reasons.values()) != n:
        raise DiffclsError(f"{damaged}: its stop reasons count {sum(reasons.values())} images, its n_images is {n}; {fix}")
    by_image = block.get("unet_evals_by_image")
    if isinstance(by_image, list) and all(_count(v) is not None for v in by_image) and isinstance(per_image, (int, float)):
        if len(by_image) != n or abs(sum(by_image) - per_image * n) > max(1.0, 1e-6 * per_image * n):
            raise DiffclsError(
                f"{damaged}: its {len(by_image)} per-image evaluations sum to {sum(by_image):,}, "
                f"but {per_image:g} per image for {n} images is {per_image * n:,.0f}; {fix}"
            )
    calls = block.get("denoiser_calls")
    if isinstance(calls, dict) and isinstance(computed, dict) and _count(calls.get("inputs")) is not None and _count(computed.get("unet_evals")) is not None:
        if calls["inputs"] != computed["unet_evals"]:
            raise DiffclsError(
                f"{damaged}: its denoiser passes hold {calls['inputs']:,} inputs, but it records {computed['unet_evals']:,} UNet evaluations computed; {fix}"
            )
    shares = block.get("distributed", {}).get("images_per_rank") if isinstance(block.get("distributed"), dict) else None
    if isinstance(shares, list) and shares and all(_count(v) is not None for v in shares) and sum(shares) != n:
        raise DiffclsError(f"{damaged}: its ranks' images {shares} count {sum(shares)}, its n_images is {n}; {fix}")


def _count(value: Any) -> int | None:
    """``value`` when it is a count (an int >= 0, not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class Cell:
    top1: float | None = None
    recall: float | None = None
    evals: float | None = None
    seconds: float | None = None
    speedup: float | None = None
    eval_ratio: float | None = None


@dataclass
class Table:
    rows: list[str]
    datasets: list[str]
    cells: dict[tuple[str, str], Cell]
    raw: dict[tuple[str, str], Result]


def sampler_rank(model_name: str) -> int:
    """A diffusion model's place among the samplers: registration order; unknown names last.

    Args:
        model_name: the harness model name (``diffusion-hier`` ...).

    Returns:
        its index in :data:`~diffcls_plugin.samplers.SAMPLERS_BY_MODEL`, or the number of
        registered samplers for a model no sampler registers (e.g. one of a newer plugin).
    """
    names = SAMPLERS_BY_MODEL.names()
    return names.index(model_name) if model_name in names else len(names)


def _row_key(result: Result) -> tuple:
    diffusion = result.is_diffusion
    return (
        0 if diffusion else 1,
        result.checkpoint if diffusion else "",
        sampler_rank(result.model) if diffusion else 0,
        0 if result.label == f"{result.model} {result.pretrained}" else 1,  # default options first
        result.label,
    )


def _setup(result: Result) -> tuple:
    """What makes two runs of a row comparable: the images (count and subset) and the seed."""
    d = result.diffcls
    return (d.get("n_images"), json.dumps(d.get("subset"), sort_keys=True), d.get("seed"))


def _describe(result: Result) -> str:
    n, subset, seed = _setup(result)
    return f"{n if n is not None else '?'} images, subset {subset}, seed {seed if seed is not None else '?'}"


def build_table(results: list[Result]) -> Table:
    """Arrange results into rows and columns.

    Raises:
        DiffclsError: two different files for the same row and dataset (two runs mixed: which
            one the row shows would depend on the order of the arguments).
    """
    raw: dict[tuple[str, str], Result] = {}
    order: dict[str, tuple] = {}
    for r in results:
        previous = raw.get((r.label, r.dataset))
        if previous is not None and Path(previous.path).resolve() != Path(r.path).resolve():
            raise DiffclsError(
                f"two results for {r.label!r} on {r.dataset}: {previous.path} ({_describe(previous)}) and {r.path} ({_describe(r)}); "
                "pass the results of one run per table (or give the runs distinct labels in their benchmark config)"
            )
        raw[(r.label, r.dataset)] = r
        order[r.label] = _row_key(r)
    rows = sorted(order, key=lambda label: order[label])
    datasets = sorted({r.dataset for r in results})
    cells: dict[tuple[str, str], Cell] = {}
    for (label, dataset), r in raw.items():
        cell = Cell(
            top1=r.value("acc1"),
            recall=r.value("mean_per_class_recall"),
            evals=r.value("unet_evals_per_image"),
            seconds=r.value("seconds_per_image"),
        )
        base = _baseline_for(r, raw)
        if base is not None and cell.seconds and base.value("seconds_per_image"):
            cell.speedup = base.value("seconds_per_image") / cell.seconds
        if base is not None and cell.evals and base.value("unet_evals_per_image"):
            cell.eval_ratio = base.value("unet_evals_per_image") / cell.evals
        cells[(label, dataset)] = cell
    return Table(rows, datasets, cells, raw)


def _baseline_for(result: Result, raw: dict[tuple[str, str], Result]) -> Result | None:
    if not result.is_diffusion:
        return None
    baseline_model = SAMPLERS.get(BASELINE_SAMPLER).model_name
    candidates = [
        r
        for r in raw.values()
        if r.dataset == result.dataset and r.model == baseline_model and r.checkpoint == result.checkpoint and _setup(r) == _setup(result)
    ]  # a baseline of another run (other images or seed) is no reference for this row's speed-up
    if not candidates:
        return None
    default = [r for r in candidates if r.label == f"{r.model} {r.pretrained}"]
    return (default or candidates)[0]


def _fmt(value: float | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:{spec}}{suffix}"


def _columns(recall: bool) -> list[tuple[str, str]]:
    cols = [("top1", "top-1 ↑")]
    if recall:
        cols.append(("recall", "recall ↑"))
    cols += [("evals", "evals/img ↓"), ("seconds", "s/img ↓"), ("speedup", "speed-up ↑")]
    return cols


def _display(cell: Cell, key: str) -> str:
    if key in ("top1", "recall"):
        return _fmt(getattr(cell, key), ".1f", 100)
    if key == "evals":
        return _fmt(cell.evals, ",.0f" if (cell.evals or 0) >= 100 else ".1f")
    if key == "seconds":
        return _fmt(cell.seconds, ".3g")
    return _fmt(cell.speedup, ".2f", suffix="×")


def render(table: Table, fmt: str = "markdown", recall: bool = False) -> str:
    """Render a table as Markdown (default), CSV (raw values, as ``clip_benchmark build``) or LaTeX."""
    if fmt not in FORMATS:
        raise DiffclsError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    cols = _columns(recall)
    if fmt == "csv":
        return _render_csv(table)
    header = ["model"] + [f"{d} {title}" for d in table.datasets for _, title in cols]
    body = [[row] + [_display(table.cells.get((row, d), Cell()), key) for d in table.datasets for key, _ in cols] for row in table.rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    return _render_latex(table, cols, body)


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("×", r"$\times$"),
        ("↑", r"$\uparrow$"),
        ("↓", r"$\downarrow$"),
        ("–", "--"),
    ):
        text = text.replace(a, b)
    return text


def _render_latex(table: Table, cols, body) -> str:
    n = len(cols)
    lines = [r"\begin{tabular}{l" + ("r" * n * len(table.datasets)) + "}", r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_latex_escape(d)}}}" for d in table.datasets) + r" \\")
    lines.append("model & " + " & ".join(_latex_escape(title) for _ in table.datasets for _, title in cols) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_latex_escape(c) for c in r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _render_csv(table: Table) -> str:
    """One line per result, raw values (fractions, not percent), as ``clip_benchmark build`` writes them."""
    out = io.StringIO()
    fields = [
        "model",
        "dataset",
        "model_name",
        "pretrained",
        "acc1",
        "acc5",
        "mean_per_class_recall",
        "unet_evals_per_image",
        "seconds_per_image",
        "speedup",
        "eval_ratio",
    ]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        for d in table.datasets:
            r = table.raw.get((row, d))
            if r is None:
                continue
            cell = table.cells[(row, d)]
            writer.writerow(
                {
                    "model": row,
                    "dataset": d,
                    "model_name": r.model,
                    "pretrained": r.pretrained,
                    "acc1": r.metrics.get("acc1"),
                    "acc5": r.metrics.get("acc5"),
                    "mean_per_class_recall": r.metrics.get("mean_per_class_recall"),
                    "unet_evals_per_image": r.diffcls.get("unet_evals_per_image"),
                    "seconds_per_image": r.diffcls.get("seconds_per_image"),
                    "speedup": cell.speedup,
                    "eval_ratio": cell.eval_ratio,
                }
            )
    return out.getvalue()
