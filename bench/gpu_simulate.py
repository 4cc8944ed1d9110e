"""What each sampler's saving of evaluations becomes in GPU time, predicted on a CPU.

A sampler's evaluations reach the denoiser as forward passes: each round of a harness batch is
one call of the scorer (every unfinished image's request), cut into passes of at most the UNet
batch (``diffcls_plugin.calls.split``). Pruning samplers shrink their rounds as classes go, and
their last rounds hold few images, so their passes are smaller than baseline's, and a GPU runs
a small pass at a lower rate. This script replays every sampler on the proxy suite's error
tables (the validation splits: errors of every class at baseline-32's 32 timesteps, one noise,
computed once through the resume store as ``bench/tune_suite.py`` does), records every pass the
real scorer would make (``calls.CallLog``, the same record a run writes under
``diffcls.denoiser_calls``), and prices each pass with a rate-by-batch-size curve measured on a
GPU (``bench/results/gpu-throughput/gpu_throughput.json``: per-pass seconds interpolated
between the measured batch sizes, and extrapolated below the smallest by the straight line
through the two smallest: a fixed cost per pass plus a cost per input).

Reported per pair, sampler and harness batch (16, 64, 256): evaluations and passes per image,
the mean pass, the predicted GPU seconds per image, and the predicted time ratio against
baseline-32 beside the evaluation ratio. Only the denoiser is priced: the VAE, the text encoder,
the host's share (noise drawing, the samplers' Python) and the harness are not.

The adaptive sampler's default (Li et al.: 50 then 500 timesteps) is not on the tables' grid:
its requests are answered with the error at the nearest grid timestep. Its pass pattern does
not depend on the errors (every class, then the best five), so its record is exact; only which
classes it keeps is approximate.

    python bench/gpu_simulate.py                           # every pair; writes bench/results/gpu-simulate/
    python bench/gpu_simulate.py --result RESULT.json      # a harness result's denoiser_calls, priced
    python bench/gpu_simulate.py --quick --out /tmp/sim    # one pair, 5 images per class: a smoke test
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, environment, write

from diffcls_plugin.calls import CallLog, buckets, padded, split
from diffcls_plugin.samplers import SAMPLERS, AdaptiveOptions, BaselineOptions, HierarchicalOptions, TTestOptions, run_samplers
from diffcls_plugin.samplers.race import RaceOptions

THROUGHPUT = RESULTS / "gpu-throughput" / "gpu_throughput.json"
NAME = "gpu_simulate"
HARNESS_BATCHES = (16, 64, 256)
UNET_BATCH = 64  # as bench/gpu_end_to_end.py and the throughput table's largest measured pass
# (label, sampler, options): every sampler's shipped default, and the race's eighth preset
SAMPLER_ROWS = (
    ("baseline-32", "baseline", BaselineOptions(n_timesteps=32)),
    ("adaptive", "adaptive", AdaptiveOptions()),
    ("hierarchical", "hierarchical", HierarchicalOptions()),
    ("ttest", "ttest", TTestOptions()),
    ("race", "race", RaceOptions()),
    ("race eighth", "race", RaceOptions(**RaceOptions.preset_values("eighth"), preset="eighth")),
)
REFERENCE = "baseline-32"
NOTES = """\
The prediction prices the denoiser alone, at the rate it runs in a tight loop. What it leaves out
is what `bench/gpu_check.py` measures beside it on a GPU: the host's work per pass and per input
(noise drawn on the CPU for every image and timestep, inputs stacked and copied; since 0.5.0 the
scorer no longer waits for each pass before preparing the next, so this overlaps the denoiser),
the first pass at each new size (kernel selection and memory; a pruning sampler meets dozens of
sizes, `compile: true` a handful), the VAE and the text encoder. The one end-to-end GPU
measurement so far (`bench/results/gpu-end-to-end/`, before 0.5.0) ran the hierarchical
sampler on SD 2 base at 29 % of the raw rate with one 10-image harness batch and 76 % with one of
60 images, both timings including the warm-up; the denoiser's passes alone would not explain that
(the prediction here is 97-100 % at harness batches of 16 and more), so the missing time is
outside the denoiser: `gpu_check.py` fits a cost per pass and per input
(`gpu_simulate.HostCost`) from its runs, which closes the gap between prediction and measurement
or shows what remains. Below a pass of 8 the curve is extrapolated, not measured;
`gpu_check.py` measures passes of 1 and 4."""


@dataclass(frozen=True)
class RateCurve:
    """Seconds per forward pass by its size, from measured ``(batch size, evaluations/s)`` points.

    Between measured sizes the pass time is interpolated linearly; below the smallest it follows
    the line through the two smallest (a fixed cost per pass plus a cost per input); above the
    largest, the largest's cost per input.
    """

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]  # per pass at each size

    @classmethod
    def from_rates(cls, rates: dict[int, float]) -> RateCurve:
        sizes = tuple(sorted(rates))
        return cls(sizes, tuple(b / rates[b] for b in sizes))

    @property
    def overhead(self) -> float:
        """The fixed cost per pass the two smallest sizes imply (seconds; >= 0)."""
        if len(self.sizes) < 2:
            return 0.0
        (b0, b1), (t0, t1) = self.sizes[:2], self.seconds[:2]
        return max(0.0, t0 - b0 * (t1 - t0) / (b1 - b0))

    def pass_seconds(self, size: int) -> float:
        sizes, secs = self.sizes, self.seconds
        if size <= sizes[0]:
            per_input = (secs[0] - self.overhead) / sizes[0]
            return self.overhead + per_input * size
        if size >= sizes[-1]:
            return secs[-1] * size / sizes[-1]
        k = bisect.bisect_left(sizes, size)
        lo, hi = k - 1, k
        w = (size - sizes[lo]) / (sizes[hi] - sizes[lo])
        return secs[lo] + w * (secs[hi] - secs[lo])

    def seconds_of(self, log: CallLog, sizes: tuple[int, ...] | None = None, host: HostCost | None = None) -> float:
        """Seconds of every pass of ``log`` on the GPU (each run at its padded size when ``sizes``
        are given), plus the host's share when ``host`` is given."""
        gpu = sum(n * self.pass_seconds(padded(size, sizes)) for size, n in log.by_size().items())
        return gpu + (host.seconds(log) if host is not None else 0.0)


@dataclass(frozen=True)
class HostCost:
    """What a pass costs outside the denoiser, where the host does not overlap it: a fixed cost
    per pass (launch, copy back) and a cost per input (its noise drawn and copied). Zero unless
    measured (``bench/gpu_check.py`` fits both from its end-to-end runs against the raw rate)."""

    per_pass: float = 0.0
    per_input: float = 0.0

    def seconds(self, log: CallLog) -> float:
        return self.per_pass * log.n_calls + self.per_input * log.n_inputs


def fit_host_cost(runs: list[tuple[CallLog, float]], curve: RateCurve) -> HostCost:
    """The host's costs that best explain measured runs (least squares, both >= 0): each run's
    measured seconds less its passes priced on ``curve`` = ``per_pass * passes + per_input * inputs``.

    Args:
        runs: ``(passes, measured seconds)`` of each run, the same images' passes and time.
        curve: the raw denoiser rate curve those passes ran at.
    """
    rows = [(float(log.n_calls), float(log.n_inputs), seconds - curve.seconds_of(log)) for log, seconds in runs]

    def alone(k: int) -> float:  # one cost explains the rest, >= 0
        den = sum(r[k] ** 2 for r in rows)
        return max(0.0, sum(r[k] * r[2] for r in rows) / den) if den else 0.0

    a11, a12, a22 = (sum(r[0] * r[0] for r in rows), sum(r[0] * r[1] for r in rows), sum(r[1] * r[1] for r in rows))
    b1, b2 = sum(r[0] * r[2] for r in rows), sum(r[1] * r[2] for r in rows)
    det = a11 * a22 - a12 * a12
    if det > 1e-12 * max(a11 * a22, 1e-300):
        per_pass, per_input = (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det
        if per_pass >= 0 and per_input >= 0:
            return HostCost(per_pass, per_input)
    candidates = [HostCost(alone(0), 0.0), HostCost(0.0, alone(1))]
    return min(candidates, key=lambda h: sum((r[2] - h.per_pass * r[0] - h.per_input * r[1]) ** 2 for r in rows))


def load_curves(path: Path = THROUGHPUT, dtype: str = "bf16", compile: str = "off") -> tuple[dict[str, RateCurve], dict]:
    """Per architecture, the rate curve measured at ``dtype`` and ``compile``; and the table's meta."""
    data = json.loads(path.read_text())
    rates: dict[str, dict[int, float]] = {}
    for row in data["rows"]:
        if row["dtype"] == dtype and row["compile"] == compile:
            rates.setdefault(row["arch"], {})[int(row["batch_size"])] = float(row["evals_per_s"])
    if not rates:
        raise SystemExit(f"{path}: no rows at dtype {dtype}, compile {compile}")
    return {arch: RateCurve.from_rates(r) for arch, r in rates.items()}, data.get("meta", {})


class NearestTable:
    """Errors from a (images, classes, timesteps) table; a timestep off its grid reads the nearest column."""

    def __init__(self, errors, grid) -> None:
        self.errors = errors.tolist()
        self.grid = [int(t) for t in grid]

    def column(self, t: int) -> int:
        k = bisect.bisect_left(self.grid, t)
        if k == len(self.grid) or (k > 0 and t - self.grid[k - 1] <= self.grid[k] - t):
            k -= 1
        return k

    def __call__(self, image_idx, class_idx, timesteps, noise_idx) -> list[float]:
        return [self.errors[i][c][self.column(int(t))] for i, c, t in zip(image_idx, class_idx, timesteps)]


def replay(sampler: str, options, table: NearestTable, labels, harness_batch: int, unet_batch: int = UNET_BATCH, n_train: int = 1000, rows: int = 1):
    """Run ``sampler`` on the table's images in harness batches, as the classifier does.

    Returns ``(log, n_evals, correct)``: the forward passes the scorer would make (each round's
    ``len(triples) * rows`` inputs cut by ``calls.split``), each image's evaluations, and
    whether its top-1 is its label.
    """
    fn = SAMPLERS.get(sampler).fn
    n_classes = len(table.errors[0])
    log, n_evals, correct = CallLog(), [], []
    for start in range(0, len(labels), harness_batch):
        idx = list(range(start, min(start + harness_batch, len(labels))))
        rounds = [0]

        def score(image_idx, class_idx, timesteps, noise_idx, idx=idx, rounds=rounds):
            for size in split(len(image_idx) * rows, unet_batch):
                log.add(rounds[0], size)
            rounds[0] += 1
            return table([idx[i] for i in image_idx], class_idx, timesteps, noise_idx)

        results = run_samplers([fn(n_classes, options, n_train) for _ in idx], score)
        n_evals += [r.n_evals * rows for r in results]
        correct += [r.prediction == labels[i] for r, i in zip(results, idx)]
    return log, n_evals, correct


def simulate_pair(name: str, errors, labels, grid, curves: dict[str, RateCurve], harness_batches=HARNESS_BATCHES, unet_batch: int = UNET_BATCH) -> list[dict]:
    """Every sampler row at every harness batch on one pair's table; times on every curve."""
    table = NearestTable(errors, grid)
    rows = []
    for hb in harness_batches:
        base = None
        for label, sampler, options in SAMPLER_ROWS:
            log, n_evals, correct = replay(sampler, options, table, labels, hb, unet_batch)
            n = len(labels)
            row = {
                "pair": name,
                "sampler": label,
                "harness_batch": hb,
                "unet_batch": unet_batch,
                "images": n,
                "top1": sum(correct) / n,
                "evals_per_image": sum(n_evals) / n,
                "passes_per_image": log.n_calls / n,
                "mean_pass": log.n_inputs / max(log.n_calls, 1),
                "calls": log.to_dict(),
                "seconds_per_image": {arch: curve.seconds_of(log) / n for arch, curve in curves.items()},
                "seconds_per_image_compiled_buckets": {arch: curve.seconds_of(log, buckets(unet_batch)) / n for arch, curve in curves.items()},
            }
            if label == REFERENCE:
                base = row
            row["eval_ratio"] = row["evals_per_image"] / base["evals_per_image"]
            row["time_ratio"] = {arch: row["seconds_per_image"][arch] / base["seconds_per_image"][arch] for arch in curves}
            rows.append(row)
    return rows


def pair_tables(quick: bool):
    """Each proxy pair's validation table through the resume store (``bench/tune_suite.py``'s
    ``split_errors`` and settings): ``[(name, errors, labels, grid)]``."""
    os.environ.setdefault("DIFFCLS_CACHE", "/tmp/diffcls-tune-suite-cache")  # shares the tune suite's stored tables
    from proxies import PAIRS
    from tune_suite import SEED, split_errors

    from diffcls_plugin.classifier import load_classifier
    from diffcls_plugin.config import load_config
    from diffcls_plugin.data.subset import SubsetSpec, select

    out = []
    for pair in PAIRS[:1] if quick else PAIRS:
        config = load_config(None, ["unet_batch_size=512", "resume=true", "baseline.n_timesteps=32"])
        model = load_classifier("diffusion-baseline", pair.pretrained, config=config, seed=SEED, progress=False)
        errors, labels, grid, counts = split_errors(model, pair.root, "val", prepare=True)
        if quick:
            keep = [int(i) for i in select(labels, SubsetSpec(per_class=5, seed=0))]
            errors, labels = errors[keep], [labels[i] for i in keep]
        print(f"{pair.name}: {tuple(errors.shape)} errors ({counts})", flush=True)
        out.append((pair.name, errors, labels, grid))
    return out


def pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def report(data: dict) -> str:
    arches = list(data["curves"])
    meta = data["throughput_meta"]
    lines = [
        f"# Predicted GPU time of every sampler, from its forward passes ({meta.get('device', 'GPU')} rates, bf16, eager)",
        "",
        "`python bench/gpu_simulate.py`: every sampler replayed on the proxy suite's validation tables, in harness batches of "
        f"{', '.join(map(str, data['harness_batches']))}, UNet batch {data['unet_batch']}; every forward pass priced with the rate "
        f"curve of `bench/results/gpu-throughput/` (the measured batch sizes {', '.join(map(str, data['curves'][arches[0]]['sizes']))}; "
        "below them a fixed cost per pass plus a cost per input). Only the denoiser is priced.",
        "",
        "Time ratio = predicted GPU seconds per image / baseline-32's at the same harness batch; evaluation ratio likewise for "
        "evaluations; efficiency = evaluation ratio / time ratio (1.0: the saving of evaluations is all saving of time). "
        "Padded time ratio: the same passes padded to `compile: true`'s fixed sizes (`calls.buckets`: 1, 2, 4, 8, 16, 24, ..., 64 at UNet batch 64), "
        "priced on the same eager curve against eager baseline-32: what the padding costs before any gain from compiling.",
        "",
        "## Summary: mean over the pairs, SD 2 base" if "sd2-base" in arches else "## Summary: mean over the pairs",
        "",
        "| sampler | harness batch | evals/img | passes/img | mean pass | eval ratio | time ratio | efficiency | padded time ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    arch = "sd2-base" if "sd2-base" in arches else arches[0]

    def base_seconds(r: dict, a: str) -> float:
        """Baseline-32's eager seconds per image on the same pair and harness batch."""
        return next(b for b in data["rows"] if b["pair"] == r["pair"] and b["harness_batch"] == r["harness_batch"] and b["sampler"] == REFERENCE)[
            "seconds_per_image"
        ][a]

    for hb in data["harness_batches"]:
        for label, _, _ in SAMPLER_ROWS:
            rows = [r for r in data["rows"] if r["sampler"] == label and r["harness_batch"] == hb]
            m = lambda f: sum(f(r) for r in rows) / len(rows)  # noqa: E731
            er, tr = m(lambda r: r["eval_ratio"]), m(lambda r: r["time_ratio"][arch])
            padded_tr = m(lambda r: r["seconds_per_image_compiled_buckets"][arch] / base_seconds(r, arch))
            lines.append(
                f"| {label} | {hb} | {m(lambda r: r['evals_per_image']):.1f} | {m(lambda r: r['passes_per_image']):.2f} | "
                f"{m(lambda r: r['mean_pass']):.1f} | {er:.3f} | {tr:.3f} | {er / tr:.2f} | {padded_tr:.3f} |"
            )
    lines += [
        "",
        "## Every pair and architecture",
        "",
        "| pair | sampler | hb | evals/img | mean pass | eval ratio | "
        + " | ".join(f"time ratio {a}" for a in arches)
        + " | "
        + " | ".join(f"ms/img {a}" for a in arches)
        + " |",
    ]
    lines.append("|---|---|---:|---:|---:|---:|" + "---:|" * (2 * len(arches)))
    for r in data["rows"]:
        lines.append(
            f"| {r['pair']} | {r['sampler']} | {r['harness_batch']} | {r['evals_per_image']:.1f} | {r['mean_pass']:.1f} | {r['eval_ratio']:.3f} | "
            + " | ".join(f"{r['time_ratio'][a]:.3f}" for a in arches)
            + " | "
            + " | ".join(f"{1000 * r['seconds_per_image'][a]:.0f}" for a in arches)
            + " |"
        )
    lines += ["", "## What this leaves out", "", NOTES, ""]
    return "\n".join(lines)


def price_result(path: Path, curves: dict[str, RateCurve]) -> None:
    """Print a harness result's recorded passes, priced on every curve."""
    block = json.loads(path.read_text()).get("diffcls") or {}
    calls = block.get("denoiser_calls")
    if not calls:
        raise SystemExit(f"{path}: no diffcls.denoiser_calls block (a result of diffcls-plugin >= 0.5.0 has one)")
    log = CallLog.from_dict(calls)
    n = max(1, block.get("computed", {}).get("n_images") or block.get("n_images") or 1)
    print(f"{path}: {log.n_calls} passes, {log.n_inputs} inputs, mean pass {log.n_inputs / max(log.n_calls, 1):.1f}, {n} images computed")
    for arch, curve in curves.items():
        print(f"  {arch}: {curve.seconds_of(log) / n:.4f} predicted GPU s/image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu-simulate")
    parser.add_argument("--throughput", type=Path, default=THROUGHPUT, help="a gpu_throughput.json (bench/gpu_throughput.py or bench/gpu_check.py)")
    parser.add_argument("--result", type=Path, help="price one harness result's diffcls.denoiser_calls instead")
    parser.add_argument("--quick", action="store_true", help="one pair, 5 validation images per class (a smoke test)")
    args = parser.parse_args()
    curves, meta = load_curves(args.throughput)
    if args.result:
        price_result(args.result, curves)
        return
    if args.quick and args.out == RESULTS / "gpu-simulate":
        parser.error("--quick writes a smoke test: give --out somewhere else than the committed record")
    rows = []
    for name, errors, labels, grid in pair_tables(args.quick):
        rows += simulate_pair(name, errors, labels, grid, curves)
    data = {
        "environment": environment(),
        "throughput_meta": meta,
        "harness_batches": list(HARNESS_BATCHES),
        "unet_batch": UNET_BATCH,
        "curves": {a: {"sizes": list(c.sizes), "seconds": list(c.seconds), "overhead": c.overhead} for a, c in curves.items()},
        "rows": rows,
    }
    write(args.out, NAME, data, report(data))


if __name__ == "__main__":
    sys.exit(main())
