"""Learned timestep weights (Jeong et al. 2025) on the proxy suite: fitted on validation, read on test.

For each pair of ``bench/proxies.py``: every class's error at every timestep of the 32-timestep
grid (one noise, the run seed 0) for the validation and the test images; weights fitted on the
validation errors only (``diffcls_plugin.weighting.fit_weights``: one positive weight per
timestep, and exp of a cubic in the timestep; a quarter of the validation images held out to
pick the step); then on the test split, once: baseline-32 and the shipped hierarchical and race
defaults with uniform and with fitted weights (the samplers replayed on the same errors, so only
the weights differ), McNemar's exact p of each change, and weights fitted on each other pair
(how weights carry to another model and domain).

    python bench/timestep_weights.py      # writes bench/results/timestep_weights.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import RESULTS, environment, write
from proxies import PAIRS
from scipy.stats import binomtest
from suite import read_split

from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.config import load_config
from diffcls_plugin.samplers import SAMPLERS, HierarchicalOptions, run_samplers
from diffcls_plugin.samplers.race import RaceOptions
from diffcls_plugin.weighting import accuracy, fit_weights
from diffcls_plugin.workflows.fit_weights import collect_errors

N_TIMESTEPS = 32
SAMPLER_ROWS = (("hierarchical", HierarchicalOptions()), ("race", RaceOptions()))


class GridTable:
    """A batch scorer over precomputed (N, C, T) errors of the 32-timestep grid, times ``w(t)``."""

    def __init__(self, errors: torch.Tensor, grid: list[int], weights=None) -> None:
        self.errors, self.index, self.weights = errors, {t: k for k, t in enumerate(grid)}, weights

    def __call__(self, image_idx, class_idx, timesteps, noise_idx):
        out = []
        for i, c, t, n in zip(image_idx, class_idx, timesteps, noise_idx):
            if n != 0 or t not in self.index:
                raise KeyError(f"(t={t}, noise={n}) is not on the precomputed grid")
            e = float(self.errors[i, c, self.index[t]])
            out.append(e * self.weights.at(t) if self.weights is not None else e)
        return out


def replay(sampler: str, options, errors, grid, labels, weights=None) -> tuple[list[bool], float]:
    spec = SAMPLERS.get(sampler)
    results = run_samplers([spec.fn(errors.shape[1], options, 1000) for _ in labels], GridTable(errors, grid, weights))
    return [r.prediction == y for r, y in zip(results, labels)], sum(r.n_evals for r in results) / len(results)


def correct_baseline(errors, labels, weights=None) -> list[bool]:
    w = None if weights is None else torch.tensor(weights.weights, dtype=torch.float64)
    scores = errors if w is None else errors * w.view(1, 1, -1)
    return (scores.mean(dim=2).argmin(dim=1) == torch.tensor(labels)).tolist()


def mcnemar(a: list[bool], b: list[bool]) -> float:
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def report(data: dict) -> str:
    rows = data["rows"]
    lines = [
        "# Learned timestep weights on the proxy suite (fitted on validation, reported on test)",
        "",
        "Top-1 % on each pair's test split; weights fitted on its validation split only (`python bench/timestep_weights.py`).",
        "p: McNemar's exact test against the same sampler with uniform weights. Hierarchical and race: the shipped",
        "defaults replayed on the same errors with the per-timestep weights.",
        "",
        "| pair | test images | baseline-32 uniform | + per-timestep weights | + cubic weights | + other pairs' weights (mean) | hier uniform | hier + weights | race uniform | race + weights |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["baseline-32"]
        other = sum(b["other_pairs_per-timestep"]) / len(b["other_pairs_per-timestep"]) if b["other_pairs_per-timestep"] else float("nan")
        lines.append(
            f"| {r['pair']} | {r['n_test']} | {100 * b['uniform']:.1f} | {100 * b['per-timestep']:.1f} (p={b['per-timestep_p']:.2g}) | "
            f"{100 * b['poly']:.1f} (p={b['poly_p']:.2g}) | {100 * other:.1f} | {100 * r['hierarchical']['uniform']:.1f} | "
            f"{100 * r['hierarchical']['per-timestep']:.1f} (p={r['hierarchical']['per-timestep_p']:.2g}) | {100 * r['race']['uniform']:.1f} | "
            f"{100 * r['race']['per-timestep']:.1f} (p={r['race']['per-timestep_p']:.2g}) |"
        )
    lines += ["", f"{data['seconds']:.0f} s on {data['environment']['torch_threads']} threads (most of it computing the error tables)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=",".join(p.name for p in PAIRS))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON in --out")
    args = parser.parse_args()
    if args.render:
        data = json.loads((Path(args.out) / "timestep_weights.json").read_text())
        (Path(args.out) / "timestep_weights.md").write_text(report(data))
        return
    start = time.perf_counter()
    tables = {}
    for pair in [p for p in PAIRS if p.name in args.pairs.split(",")]:
        model = load_classifier(
            "diffusion-baseline",
            pair.pretrained,
            config=load_config(None, ["unet_batch_size=512", "resume=false", f"baseline.n_timesteps={N_TIMESTEPS}"]),
            seed=0,
            progress=False,
        )
        tables[pair.name] = {}
        for split in ("val", "test"):
            images, labels, classnames, templates = read_split(pair.root, split)
            if split == "val":
                model.prepare(classnames, templates)
            pixels = torch.stack([model.transform(im) for im in images])
            batches = [(pixels[s : s + 64], labels[s : s + 64]) for s in range(0, len(labels), 64)]
            errors, _, grid = collect_errors(model, batches, progress=False)
            tables[pair.name][split] = (errors, labels, grid)
            print(f"{pair.name}/{split}: {tuple(errors.shape)} errors ({time.perf_counter() - start:.0f} s)", flush=True)
    fitted = {}
    for name, splits in tables.items():
        errors, labels, grid = splits["val"]
        fitted[name] = {
            "per-timestep": fit_weights(errors, labels, grid, method="per-timestep", meta={"pair": name, "split": "val"}),
            "poly": fit_weights(errors, labels, grid, method="poly", degree=3, meta={"pair": name, "split": "val"}),
        }
    rows = []
    for name, splits in tables.items():
        errors, labels, grid = splits["test"]
        base = correct_baseline(errors, labels)
        row = {"pair": name, "n_test": len(labels), "baseline-32": {"uniform": sum(base) / len(base)}}
        for method, weights in fitted[name].items():
            got = correct_baseline(errors, labels, weights)
            row["baseline-32"][method] = sum(got) / len(got)
            row["baseline-32"][f"{method}_p"] = mcnemar(base, got)
            row["baseline-32"][f"{method}_kept_uniform"] = weights.meta["kept_uniform"]
            row["baseline-32"][f"{method}_val_held_out"] = weights.meta["accuracy"]
        others = [fitted[o]["per-timestep"] for o in fitted if o != name]
        row["baseline-32"]["other_pairs_per-timestep"] = [sum(correct_baseline(errors, labels, w)) / len(labels) for w in others]
        for sampler, options in SAMPLER_ROWS:
            uniform, evals = replay(sampler, options, errors, grid, labels)
            weighted, evals_w = replay(sampler, options, errors, grid, labels, fitted[name]["per-timestep"])
            row[sampler] = {
                "uniform": sum(uniform) / len(uniform),
                "per-timestep": sum(weighted) / len(weighted),
                "per-timestep_p": mcnemar(uniform, weighted),
                "evals_uniform": evals,
                "evals_weighted": evals_w,
            }
        row["check_uniform_equals_accuracy"] = accuracy(errors, torch.tensor(labels)) == row["baseline-32"]["uniform"]
        rows.append(row)
        print(name, {k: v for k, v in row.items() if k != "pair"}, flush=True)
    weights_out = {name: {m: {"timesteps": list(w.timesteps), "weights": list(w.weights), "meta": w.meta} for m, w in d.items()} for name, d in fitted.items()}
    data = {"environment": environment(), "n_timesteps": N_TIMESTEPS, "rows": rows, "weights": weights_out, "seconds": time.perf_counter() - start}
    write(Path(args.out), "timestep_weights", data, report(data))


if __name__ == "__main__":
    main()
