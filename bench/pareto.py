"""Accuracy against UNet evaluations per image for the three samplers on the embedded model.

Every configuration sees the same images and the same noises (each image's noise is fixed per
(timestep, draw)), so the comparison is paired. Errors are computed once and shared between
configurations (``CachedScorer``); each configuration is charged its own distinct evaluations.

The shipped ``diffusion-hier`` defaults are chosen here on the VALIDATION split: the fewest
evaluations per image among the hierarchical configurations that stay within 0.5 points of the
32-timestep baseline and spend at most a quarter of its evaluations. All numbers reported in the
README come from the TEST split, measured once with the chosen configuration.

    python bench/pareto.py                 # writes bench/results/pareto.{json,md,png}
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from common import RESULTS, CachedScorer, environment, evaluate, split_pixels, tiny_digits, write
from diffcls_plugin.samplers import AdaptiveOptions, BaselineOptions, HierarchicalOptions

BASELINE_N = (1, 2, 4, 8, 16, 32)
# Li et al.'s adaptive elimination, scaled down from their CIFAR10 schedule (to_keep [5, 1],
# n_samples [50, 500]): the same two stages, keeping 5 (or 3) classes after the first, with
# n_samples (n1, n2) on the baseline's grids, from (1, 2) (15 evaluations per image) to (8, 32).
ADAPTIVE = [
    AdaptiveOptions(to_keep=keep, n_samples=n)
    for keep in ((5, 1), (3, 1))
    for n in ((1, 2), (1, 4), (2, 4), (1, 8), (2, 8), (2, 16), (4, 16), (3, 32), (8, 32))
]
HIER = [
    HierarchicalOptions(n_timesteps=n, beam_factor=b, patience=p, direction=d)
    for n, b, p, d in itertools.product((8, 16, 32), (1.25, 1.5, 2.0, 3.0), (None, 1, 2, 4), ("ascending", "descending", "center-out"))
]
TOLERANCE = 0.005  # within 0.5 points of the 32-timestep baseline
BUDGET = 0.25  # at most a quarter of its evaluations


def sweep(model, split: str) -> tuple[list[dict], int]:
    pixels, labels = split_pixels(model, split)
    scorer = CachedScorer(model, pixels)
    rows = []
    for options in [BaselineOptions(n_timesteps=n) for n in BASELINE_N]:
        rows.append(evaluate(model, "baseline", options, scorer, labels))
    for options in ADAPTIVE:
        rows.append(evaluate(model, "adaptive", options, scorer, labels))
    for options in HIER:
        rows.append(evaluate(model, "hierarchical", options, scorer, labels))
    for row in rows:
        row["split"] = split
    return rows, scorer.computed


def choose(val_rows: list[dict]) -> dict:
    base = next(r for r in val_rows if r["sampler"] == "baseline" and r["options"]["n_timesteps"] == 32)
    hier = [r for r in val_rows if r["sampler"] == "hierarchical" and r["evals_per_image"] <= BUDGET * base["evals_per_image"]]
    good = [r for r in hier if r["top1"] >= base["top1"] - TOLERANCE - 1e-12]
    if good:
        return min(good, key=lambda r: (r["evals_per_image"], -r["top1"]))
    return max(hier, key=lambda r: (r["top1"], -r["evals_per_image"]))


def key(row: dict) -> str:
    return f"{row['sampler']} {row['options']}"


def frontier(rows: list[dict]) -> list[dict]:
    """The configurations no other one beats on both accuracy and cost."""
    out = []
    for r in sorted(rows, key=lambda r: (r["evals_per_image"], -r["top1"])):
        if not out or r["top1"] > out[-1]["top1"]:
            out.append(r)
    return out


def plot(test_rows, chosen_test, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {"baseline": ("tab:blue", "o"), "adaptive": ("tab:orange", "s"), "hierarchical": ("tab:green", "^")}
    for sampler, (color, marker) in styles.items():
        rows = [r for r in test_rows if r["sampler"] == sampler]
        ax.scatter([r["evals_per_image"] for r in rows], [100 * r["top1"] for r in rows], s=10, alpha=0.25, color=color, marker=marker)
        front = frontier(rows)
        ax.plot([r["evals_per_image"] for r in front], [100 * r["top1"] for r in front], color=color, marker=marker, label=f"{sampler} (frontier)")
    ax.scatter([chosen_test["evals_per_image"]], [100 * chosen_test["top1"]], s=120, facecolors="none", edgecolors="black", linewidths=1.5, label="diffusion-hier defaults", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("UNet evaluations per image (log)")
    ax.set_ylabel("top-1 accuracy (%), held-out test split")
    ax.set_title("tiny-digits: accuracy vs cost (same images, same noises)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    model = tiny_digits()
    val_rows, val_evals = sweep(model, "val")
    chosen = choose(val_rows)
    test_rows, test_evals = sweep(model, "test")
    by_key = {key(r): r for r in test_rows}
    chosen_test = by_key[key(chosen)]
    base_val = next(r for r in val_rows if r["sampler"] == "baseline" and r["options"]["n_timesteps"] == 32)
    base_test = by_key[key(base_val)]
    # Li et al.'s adaptive schedule at the same budget: the scaled schedule (Li et al.'s ratios)
    # whose evaluations per image on validation are closest to the chosen hierarchical ones
    li = [r for r in val_rows if r["sampler"] == "adaptive" and r["options"]["to_keep"] == [5, 1]]
    li_same = min(li, key=lambda r: abs(r["evals_per_image"] - chosen["evals_per_image"]))
    li_test = by_key[key(li_same)]
    summary = {
        "chosen_on_val": chosen,
        "test": {
            "baseline_32": base_test,
            "hierarchical_default": chosen_test,
            "adaptive_li_same_budget": li_test,
            "top1_gap_points": 100 * (base_test["top1"] - chosen_test["top1"]),
            "eval_ratio": base_test["evals_per_image"] / chosen_test["evals_per_image"],
        },
        "val": {"baseline_32": base_val, "adaptive_li_same_budget": li_same},
        "rule": f"fewest evaluations among hierarchical configurations with val top-1 >= baseline-32 - {100 * TOLERANCE:g} points "
                f"and evaluations <= {BUDGET:g} x baseline-32 (else the most accurate within the budget)",
        "adaptive_scaling": "Li et al.'s CIFAR10 schedule (to_keep [5, 1], n_samples [50, 500]) with its two stages and to_keep kept "
                            "and n_samples scaled down to (n1, n2) on the baseline's grids; the one whose validation cost is "
                            "closest to the hierarchical default's",
    }
    data = {"environment": environment(), "unet_evals_computed": {"val": val_evals, "test": test_evals},
            "seconds": time.perf_counter() - start, "summary": summary, "val": val_rows, "test": test_rows}
    lines = ["# Pareto sweep on tiny-digits", "",
             f"Chosen on validation ({summary['rule']}):", "", f"`{chosen['options']}`", "",
             "## Test split (360 images, measured once)", "",
             "| sampler | options | top-1 % ↑ | UNet evals / image ↓ |", "|---|---|---:|---:|"]
    for name, r in (("baseline (32 timesteps)", base_test), ("hierarchical (defaults)", chosen_test), ("adaptive, Li et al. scaled to the same budget", li_test)):
        lines.append(f"| {name} | `{r['options']}` | {100 * r['top1']:.1f} | {r['evals_per_image']:.1f} |")
    lines += ["", f"Evaluation ratio baseline / hierarchical: {summary['test']['eval_ratio']:.1f}x; top-1 gap {summary['test']['top1_gap_points']:+.1f} points.", "",
              "## Frontier on the test split", "", "| sampler | options | top-1 % | evals / image |", "|---|---|---:|---:|"]
    for sampler in ("baseline", "adaptive", "hierarchical"):
        for r in frontier([r for r in test_rows if r["sampler"] == sampler]):
            lines.append(f"| {sampler} | `{r['options']}` | {100 * r['top1']:.1f} | {r['evals_per_image']:.1f} |")
    lines += ["", "## Direction of travel (test split): best top-1 within a budget", "",
              "| direction | <= 15 evals | <= 25 evals | <= 40 evals | <= 80 evals |", "|---|---:|---:|---:|---:|"]
    for direction in ("ascending", "descending", "center-out"):
        rows = [r for r in test_rows if r["sampler"] == "hierarchical" and r["options"]["direction"] == direction]
        cells = []
        for budget in (15, 25, 40, 80):
            within = [r for r in rows if r["evals_per_image"] <= budget]
            cells.append(f"{100 * max(r['top1'] for r in within):.1f}" if within else "–")
        lines.append(f"| {direction} | " + " | ".join(cells) + " |")
    summary["directions"] = lines[-3:]
    write(Path(args.out), "pareto", data, "\n".join(lines) + "\n")
    plot(test_rows, chosen_test, Path(args.out) / "pareto.png")
    print("\n".join(lines[:14]))


if __name__ == "__main__":
    main()
