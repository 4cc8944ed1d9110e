"""``diffcls tune``: choose the sampler, its settings and timestep weights for one model and data set.

The tune computes baseline-32's errors once on a labelled subset (every class at every timestep of
the 32-point grid, one noise; committed to the resume store image by image, so an interrupted
tune resumes), then chooses among every tunable sampler's configurations, with and without
timestep weights fitted inside the folds, by the rule of :mod:`diffcls_plugin.tuning` and checks
the choice by K-fold cross-validation (:func:`~diffcls_plugin.tuning.tune_table`). It writes a
config file for ``DIFFCLS_CONFIG`` per budget, with a ``tuned:`` block recording how it was chosen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import BaselineOptions
from diffcls_plugin.tuning import FAMILIES, SUBGRIDS, Pick, TuneResult, candidates, check_budgets
from diffcls_plugin.weighting import fit_weights

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def parse_budgets(values: Sequence[str]) -> tuple[float, ...]:
    """``("0.125", "1/16,0.25")`` -> ``(0.125, 0.0625, 0.25)``: fractions as decimals or ``a/b``, comma-separated or repeated.

    Raises:
        DiffclsError: a value that is not a fraction, or out of (0, 1].
    """
    out = []
    for value in values:
        for part in str(value).split(","):
            num, _, den = part.strip().partition("/")
            try:
                out.append(float(num) / float(den) if den else float(num))
            except (ValueError, ZeroDivisionError):
                raise DiffclsError(f"--budget {part.strip()!r} is not a fraction such as 0.125 or 1/8") from None
    return check_budgets(out)


def out_paths(out: str | Path, budgets: Sequence[float]) -> list[Path]:
    """The config file of each budget: ``out`` itself for one budget, ``<stem>-<budget><suffix>`` for several."""
    out = Path(out)
    if len(budgets) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{b:g}{out.suffix}") for b in budgets]


def check_request(budgets, families, k: int, out, plot, config: DiffclsConfig, subset) -> tuple[float, ...]:
    """Every input of a tune that can be checked before any weights or data load.

    Raises:
        DiffclsError: the first bad input, naming it and the fix.
    """
    budgets = check_budgets(budgets)
    if families is not None:
        families = tuple(families)
        if not families:
            raise DiffclsError(f"--sampler restricts the choice to some of {', '.join(FAMILIES)}; give at least one")
        next(iter(candidates(families)))  # an unknown sampler is refused by name
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise DiffclsError(f"--folds must be an integer >= 2, got {k!r}")
    if subset is not None and subset.per_class is not None and subset.per_class < k:
        raise DiffclsError(
            f"--subset-per-class {subset.per_class} is smaller than --folds {k}: every fold needs an image of every class; "
            f"raise --subset-per-class (20 is a good start) or lower --folds"
        )
    out = Path(out)
    if out.suffix.lower() not in CONFIG_SUFFIXES:
        raise DiffclsError(f"--out {str(out)!r} must be a config file ending in {', '.join(CONFIG_SUFFIXES)}, e.g. tuned.yaml")
    if not out.parent.is_dir():
        raise DiffclsError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not exist; create it first")
    if plot is not None:
        plot = Path(plot)
        if not plot.parent.is_dir():
            raise DiffclsError(f"--plot {str(plot)!r}: the folder {str(plot.parent)!r} does not exist; create it first")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DiffclsError("--plot needs matplotlib: pip install 'diffcls-plugin[plot]' (or drop --plot)") from None
    if config.timestep_weights is not None:
        raise DiffclsError(
            f"the config sets timestep_weights: {config.timestep_weights!r}; the tune fits its own inside its folds: "
            "drop timestep_weights from the config (or --set timestep_weights=null)"
        )
    if config.prefilter is not None:
        raise DiffclsError("the config sets a CLIP prefilter; the tune chooses among all classes: drop prefilter from the config (or --set prefilter=null)")
    return budgets


def _fingerprint(checkpoint) -> str:
    from diffcls_plugin.keys import checkpoint_fingerprint

    return hashlib.sha256(json.dumps(checkpoint_fingerprint(checkpoint), sort_keys=True).encode()).hexdigest()


def eval_command(pick: Pick, path: Path, pretrained: str, dataset: str, root: str) -> str:
    """The ``clip_benchmark eval`` command that runs a tuned config (on the split to report: ``test``)."""
    return (
        f"DIFFCLS_CONFIG={shlex.quote(str(path))} clip_benchmark eval --model {pick.config.model} --pretrained {shlex.quote(str(pretrained))} "
        f"--dataset {shlex.quote(dataset)} --dataset_root {shlex.quote(str(root))} --split test"
    )


def tuned_document(pick: Pick, result: TuneResult, config: DiffclsConfig, meta: dict[str, Any], weights_file: str | None) -> dict[str, Any]:
    """The config file of one pick: the run's own options, the chosen sampler's section, the
    weights file if weights won, and the ``tuned:`` record."""
    defaults = DiffclsConfig().to_dict()
    given = config.to_dict()
    doc: dict[str, Any] = {k: v for k, v in given.items() if k not in ("tuned", "samplers") and not isinstance(v, dict) and v != defaults.get(k)}
    doc["timestep_weights"] = weights_file
    doc[pick.config.sampler] = pick.config.options.to_dict()
    base = result.baseline
    doc["tuned"] = {
        "model": pick.config.model,
        "sampler": pick.config.sampler,
        **meta,
        "budget": pick.budget,
        "weights": pick.config.weighted,
        "evals_per_image": round(pick.evals_per_image, 3),
        "evals_ratio": round(pick.ratio, 4),
        "accuracy_in_sample": round(pick.top1, 4),
        "cv_accuracy": round(pick.cv_top1, 4),
        "cv_interval_95": [round(x, 4) for x in pick.cv_interval],
        "cv_evals_per_image": round(pick.cv_evals_per_image, 3),
        "baseline32_accuracy": round(base.top1, 4),
        "baseline32_evals_per_image": round(base.evals_per_image, 3),
        "cv_gap_to_baseline32": round(pick.cv_gap, 4),
        "cv_gap_se": round(pick.cv_gap_se, 4),
        "cv_mcnemar_p": round(pick.cv_p, 4),
        "folds": result.k,
        "folds_agreeing": pick.agree,
        "folds_same_sampler": pick.same_sampler,
        "candidates": len(result.configs),
        "diffcls_plugin": metadata.version("diffcls-plugin"),
    }
    return doc


def tune_on_dataset(
    pretrained: str,
    dataset: str,
    root: str,
    split: str,
    *,
    out: str | Path,
    budgets: Sequence[float] = (0.125,),
    subset=None,
    families: Sequence[str] | None = None,
    k: int = 5,
    weights: bool = True,
    config: DiffclsConfig | None = None,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 2,
    workers: int = 1,
    device: str | None = None,
    plot: str | Path | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> tuple[TuneResult, list[Path]]:
    """Tune on a labelled harness dataset and write one config file per budget (``diffcls tune``).

    Returns:
        ``(result, written config files)``.

    Raises:
        DiffclsError: bad inputs (before any weights load), a split without labelled images or
            with too few per class (before any UNet evaluation).
    """
    import torch

    from diffcls_plugin.classifier import load_classifier
    from diffcls_plugin.harness.datasets import check_labelled, labelled_dataset
    from diffcls_plugin.tuning import ErrorTable, check_labels, tune_table
    from diffcls_plugin.workflows.fit_weights import collect_errors

    config = config or DiffclsConfig()
    budgets = check_request(budgets, families, k, out, plot, config, subset)
    check_labelled(dataset, root, split)
    run_config = dataclasses.replace(config, samplers={**dict(config.samplers), "baseline": BaselineOptions(n_timesteps=32)})
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_classifier("diffusion-baseline", pretrained, device=device, config=run_config, seed=seed, progress=False)
    info: dict[str, Any] = {}
    data, classes, templates = labelled_dataset(dataset, root, split, model.transform, subset, info)
    if info.get("n_images") == 0:
        raise DiffclsError(f"--dataset {dataset} split {split!r} has no labelled images: tune on a labelled split (e.g. --split train)")
    if info.get("labels") is not None:
        check_labels(info["labels"], len(classes), k, classes)
    model.prepare(classes, templates)
    n_images = info.get("n_images")
    size = f"{n_images} images" if n_images else "the images"
    echo(
        f"tune: baseline-32's errors on {size} x {len(classes)} classes x 32 timesteps"
        f"{f' = {n_images * len(classes) * 32:,} UNet evaluations' if n_images else ''} (images already in the store are read back), "
        f"then {len(list(candidates(families)))} configurations{' with and without timestep weights' if weights else ''}, {k}-fold"
    )
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers)
    counts: dict[str, int] = {}
    errors, labels, grid = collect_errors(model, loader, progress, counts, total=n_images)
    echo(f"tune: {counts['computed']} images computed, {counts['from_store']} read from the store")
    check_labels(labels, len(classes), k, classes)
    table = ErrorTable(errors, grid)
    n_train = model.adapter.num_train_timesteps
    result = tune_table(table, labels, budgets, families=families, k=k, seed=seed, weights=weights, num_train_timesteps=n_train, workers=workers, echo=echo)
    meta = {
        "pretrained": str(pretrained),
        "checkpoint_sha256": _fingerprint(model.identity().checkpoint),
        "dataset": dataset,
        "split": split,
        "subset": info.get("subset"),
        "n_images": table.n_images,
        "n_classes": table.n_classes,
        "seed": seed,
    }
    written = []
    for pick, path in zip(result.picks, out_paths(out, budgets)):
        if pick.config is None:
            echo(f"tune: budget {pick.budget:g}: no configuration costs that little on these images; nothing written for it")
            continue
        write_pick(pick, result, config, meta, path, errors, labels, grid, n_train, seed)
        written.append(path)
        echo(summary(pick, result, path))
        echo(f"  run it:  {eval_command(pick, path, pretrained, dataset, root)}")
    if plot is not None:
        plot_frontier(result, plot)
        echo(f"tune: frontier plot written to {plot}")
    return result, written


def write_pick(
    pick: Pick, result: TuneResult, config: DiffclsConfig, meta: dict[str, Any], path: Path, errors, labels, grid, n_train: int, seed: int
) -> Path | None:
    """Write one pick's config file (and, if weights won, the weights fitted on all the tune's
    images beside it, ``<stem>-weights.json``).

    Returns:
        the weights file, or ``None``.
    """
    from diffcls_plugin.jsonio import write_json_atomic

    weights_path = None
    if pick.config.weighted:
        fitted = fit_weights(errors, labels, grid, num_train_timesteps=n_train, seed=seed, meta={**meta, "fitted_by": "diffcls tune"})
        weights_path = path.with_name(f"{path.stem}-weights.json")
        fitted.save(weights_path)
    doc = tuned_document(pick, result, config, meta, None if weights_path is None else str(weights_path))
    if path.suffix.lower() == ".json":
        write_json_atomic(path, doc, indent=2)
    else:
        _write_yaml(path, doc)
    return weights_path


def _write_yaml(path: Path, doc: dict[str, Any]) -> None:
    import os
    import tempfile

    import yaml

    text = "# written by `diffcls tune`: use with DIFFCLS_CONFIG=<this file> clip_benchmark eval --model <tuned.model> ...\n"
    text += yaml.safe_dump(doc, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=path.resolve().parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def summary(pick: Pick, result: TuneResult, path: Path) -> str:
    """The lines a tune prints for one budget's pick."""
    c = pick.config
    options = json.dumps(c.options.to_dict(), sort_keys=True)
    return (
        f"tune: budget {pick.budget:g} -> {c.model}{' with fitted timestep weights' if c.weighted else ''}: {options}\n"
        f"  {pick.evals_per_image:.1f} evaluations per image ({100 * pick.ratio:.1f}% of baseline-32's {result.baseline.evals_per_image:.0f}); "
        f"cross-validated accuracy {100 * pick.cv_top1:.1f}% [95%: {100 * pick.cv_interval[0]:.1f}, {100 * pick.cv_interval[1]:.1f}] "
        f"against baseline-32's {100 * result.baseline.top1:.1f}% on the same {result.n_images} images\n"
        f"  {pick.confidence()}\n  wrote {path}"
    )


def plot_frontier(result: TuneResult, path: str | Path) -> None:
    """Each candidate's accuracy (on the tune's images) against its evaluations per image, per
    sampler, with the baseline on 1 .. 32 of the grid's timesteps and each budget's pick marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"adaptive": "tab:green", "hierarchical": "tab:blue", "ttest": "tab:purple", "race": "tab:red", "baseline": "black"}
    for weighted, marker in ((False, "o"), (True, "^")):
        for sampler, colour in colours.items():
            rows = [
                (o.evals_per_image, 100 * o.top1)
                for key, o in result.outcomes.items()
                if result.configs[key].sampler == sampler and result.configs[key].weighted == weighted
            ]
            if rows and sampler != "baseline":
                xs, ys = zip(*rows)
                ax.scatter(xs, ys, s=10, marker=marker, color=colour, alpha=0.45, label=f"{sampler}{' + weights' if weighted else ''}")
    grid = sorted(result.subgrids)
    xs, ys = [result.subgrids[g].evals_per_image for g in grid], [100 * result.subgrids[g].top1 for g in grid]
    ax.plot(xs, ys, "k--", marker="s", ms=4, lw=1, label=f"baseline on {SUBGRIDS[0]}..{SUBGRIDS[-1]} of the timesteps")
    for g, x, y in zip(grid, xs, ys):
        ax.annotate(str(g), (x, y), textcoords="offset points", xytext=(0, 5), fontsize=7, ha="center")
    by_key: dict[str, list[Pick]] = {}
    for pick in result.picks:
        ax.axvline(pick.budget * result.baseline.evals_per_image, color="grey", lw=0.8, ls=":")
        if pick.config is not None:
            by_key.setdefault(pick.config.key, []).append(pick)
    for picks in by_key.values():
        pick = picks[0]
        budgets = ", ".join(f"{p.budget:g}" for p in picks)
        ax.scatter([pick.evals_per_image], [100 * pick.top1], s=110, facecolors="none", edgecolors="k", linewidths=1.5, zorder=5)
        ax.annotate(
            f"pick for {budgets}: {pick.config.sampler}, CV {100 * pick.cv_top1:.1f}%",
            (pick.evals_per_image, 100 * pick.top1),
            textcoords="offset points",
            xytext=(8, -14),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("UNet evaluations per image (log)")
    ax.set_ylabel(f"top-1 accuracy on the {result.n_images} tune images (%)")
    ax.set_title(f"diffcls tune: {len(result.configs)} configurations, {result.n_classes} classes")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
