"""One GPU call that checks the denoiser rates, every sampler end to end, and the simulator's
predictions of them (random weights: accuracy is meaningless and not reported).

1. **Raw denoiser rate** of SD 2 base, SDXL base and SD3 medium by batch size, bf16, in three modes:
   ``eager``, ``compiled`` (``compile_denoiser(module, True)``) and ``graphs`` (CUDA graphs; not
   on a CPU): evaluations/s, TFLOP/s, % of the bf16 peak, and the compile seconds (the first call
   at each new shape). Built and timed with ``bench/gpu_throughput.py``'s functions.
2. **End to end** for every sampler on SD 2 base (a random-weight pipeline saved in diffusers
   layout by ``bench/gpu_end_to_end.py``), in process through the plugin's classifier: harness
   batches of 64 random images over the 10 digit classes, UNet batch 64. Per sampler: evaluations
   and forward passes per image (the result's ``denoiser_calls``), wall seconds per image (the
   first harness batch excluded as warm-up when there are more), evaluations/s and % of the raw
   eager rate at the UNet batch. One classifier's networks serve every sampler; before the first,
   one pass at each bucket size warms them (with ``--compile``: compiles them; timed).
3. **The simulator's prediction** (``bench/gpu_simulate.py``'s ``RateCurve``) of each sampler's
   GPU seconds per image from its recorded passes and part 1's SD 2 base curves (eager; and the
   compiled one with ``--compile``), beside the measurement; time and evaluation ratios against
   baseline-32.

The work is done in priority order, and what would run past its deadline is skipped and recorded:
the eager sweeps (and, with ``--compile``, SD 2 base in that mode) first; then the compiled and
graphs sweeps (largest, smallest, then middle sizes, both modes per size) until
``--raw-deadline-s``; then the samplers (race, t-test, hierarchical, race eighth, baseline-32,
adaptive), each for at most ``--sampler-seconds`` (always one batch) and until ``--deadline-s``;
then the raw sweeps skipped earlier if time is left. The adaptive sampler (about 8.6x
baseline-32's evaluations) gets ``--adaptive-images``. ``OUT/gpu_check.{json,md}`` and
``OUT/gpu_throughput.json`` (``bench/gpu_throughput.py``'s format, for ``bench/gpu_simulate.py
--throughput``) are rewritten after every measurement, so a run cut short keeps what it measured.

    python bench/gpu_check.py                     # one GPU: about 7.5 min (give the call 540 s); writes bench/results/gpu-check/
    python bench/gpu_check.py --compile graphs --archs sd2-base --modes eager,graphs --samplers race,baseline --out /tmp/check
    python bench/gpu_check.py --tiny --allow-cpu --compile-backend eager --out /tmp/check   # a smoke test of the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, add_gpu_flags, environment, gpu_device
from gpu_end_to_end import build_pipeline
from gpu_simulate import RateCurve, fit_host_cost
from gpu_throughput import ARCHS, build, flops_per_eval, inputs, peak_for, time_model
from PIL import Image

from diffcls_plugin.adapters.compiled import compile_denoiser
from diffcls_plugin.calls import CallLog, buckets
from diffcls_plugin.classifier import DiffusionClassifier, load_classifier
from diffcls_plugin.config import load_config
from diffcls_plugin.data.digits import CLASSNAMES, TEMPLATES
from diffcls_plugin.plan import evals_per_image
from diffcls_plugin.samplers import SAMPLERS_BY_MODEL

DEFAULT_OUT = RESULTS / "gpu-check"
MODES = {"eager": False, "compiled": True, "graphs": "graphs"}  # compile_denoiser's argument
THROUGHPUT_COMPILE = {"eager": "off", "compiled": "on", "graphs": "graphs"}  # gpu_throughput.json's compile column
E2E_MODE = {False: "eager", True: "compiled", "graphs": "graphs"}  # --compile -> the raw mode it matches
# key -> (label, model name, overrides), cheap and important first
SAMPLER_RUNS = {
    "race": ("race", "diffusion-race", ()),
    "ttest": ("ttest", "diffusion-ttest", ()),
    "hierarchical": ("hierarchical", "diffusion-hier", ()),
    "eighth": ("race eighth", "diffusion-race", ("race.preset=eighth",)),
    "baseline": ("baseline-32", "diffusion-baseline", ("baseline.n_timesteps=32",)),
    "adaptive": ("adaptive", "diffusion-adaptive", ()),
}
REFERENCE = "baseline-32"
# the first compile of a shape, until one is measured: inductor on a GPU host (a guess); dynamo tracing a tiny one on a CPU
COMPILE_GUESS_S = {"sd2-base": 60.0, "sdxl-base": 150.0, "sd3-medium": 120.0}
TINY_COMPILE_GUESS_S = 10.0
E2E_SETUP_S = 45.0  # building, saving and loading the SD 2 base pipeline on a GPU host (a guess)


def spread(sizes: list[int]) -> list[int]:
    """``sizes`` in an order whose every prefix spans them: the largest, the smallest, then the middles."""
    s = sorted(set(sizes))
    order, gaps = [len(s) - 1, 0], [(0, len(s) - 1)]
    while gaps:
        lo, hi = gaps.pop(0)
        if hi - lo > 1:
            order.append((lo + hi) // 2)
            gaps += [(lo, (lo + hi) // 2), ((lo + hi) // 2, hi)]
    return [s[i] for i in dict.fromkeys(order)] if s else []


class Check:
    """The run: its flags, device, clock and everything measured so far (saved after each measurement)."""

    def __init__(self, args, device: torch.device) -> None:
        self.args, self.device, self.start = args, device, time.perf_counter()
        self.dtype_name = "bf16" if device.type == "cuda" else "fp32"  # a CPU emulates bf16, slowly
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
        self.peak = peak_for(name) if device.type == "cuda" else None
        self.loaded: dict | None = None  # the raw part's denoiser of one arch and its compiled wrappers
        model = "tiny random-weight denoisers (smoke test)" if args.tiny else "random-weight denoisers, published configs"
        env = dict(device=name, torch=torch.__version__, cuda=torch.version.cuda, peak_dense_tflops=self.peak, dtype=self.dtype_name, model=model)
        env.update(e2e_mode=E2E_MODE[args.compile], flags=dict(vars(args)), **environment())
        self.data = {"environment": env, "complete": False, "raw": [], "e2e_setup": {}, "e2e": [], "notes": []}
        if device.type != "cuda":
            self.data["notes"].append("No GPU: a smoke test on the CPU, fp32, tiny models, one thread; the numbers mean nothing.")
        if args.compile_backend != "inductor":
            self.data["notes"].append(f"torch.compile backend {args.compile_backend} (a smoke test): compile seconds are dynamo's tracing only.")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, seconds: float, limit: float) -> bool:
        return self.elapsed() + seconds <= limit

    def late(self, seconds: float, limit: float) -> str:
        return f"skipped at {self.elapsed():.0f} s: about {seconds:.0f} s needed, deadline {limit:.0f} s"

    def record(self, part: str, row: dict) -> None:
        self.data[part].append(row)
        print(f"[{self.elapsed():.0f} s]", json.dumps({k: v for k, v in row.items() if k != "denoiser_calls"}), flush=True)
        self.save()

    def save(self) -> None:
        out, env = Path(self.args.out), self.data["environment"]
        out.mkdir(parents=True, exist_ok=True)
        self.data["elapsed_s"] = self.elapsed()
        derive(self.data, self.args.unet_batch_size)
        meta = {k: env[k] for k in ("device", "peak_dense_tflops", "torch", "cuda", "model")}
        meta.update(seconds_per_config=self.args.seconds, python=sys.version.split()[0], source="bench/gpu_check.py")
        rows = [dict(r, compile=THROUGHPUT_COMPILE[r["mode"]]) for r in self.data["raw"] if "evals_per_s" in r]
        texts = {
            "gpu_check.json": json.dumps(self.data, indent=2),
            "gpu_check.md": report(self.data),
            "gpu_throughput.json": json.dumps({"meta": meta, "rows": rows}, indent=2),
        }
        for name, text in texts.items():  # whole files only: a run killed while writing keeps the last ones
            (out / f"{name}.tmp").write_text(text + "\n")
            os.replace(out / f"{name}.tmp", out / name)

    # ------------------------------------------------------------------ part 1: raw rates
    def raw_steps(self) -> list[tuple[str, str, int]]:
        """(arch, mode, batch) in priority order; graphs on a CPU is recorded as skipped."""
        archs, modes = self.args.archs.split(","), self.args.modes.split(",")
        compile_archs = [a for a in (self.args.compile_archs or self.args.archs).split(",") if a in archs]
        sizes = {a: [int(b) for b in (self.args.batch_sizes if a == "sd2-base" else self.args.large_batch_sizes).split(",")] for a in archs}
        if "graphs" in modes and self.device.type != "cuda":
            modes.remove("graphs")
            self.data["raw"] += [dict(arch=a, mode="graphs", skipped="CUDA graphs need a GPU") for a in compile_archs]
        eager = [(a, "eager", b) for a in archs for b in sizes[a] if "eager" in modes]
        compiled = [(a, m, b) for a in compile_archs for b in spread(sizes[a]) for m in modes if m != "eager"]
        first = [s for s in compiled if s[:2] == ("sd2-base", E2E_MODE[self.args.compile])]  # the end-to-end run's curve
        return eager + first + [s for s in compiled if s not in first]

    def module(self, arch: str, mode: str):
        if self.loaded is None or self.loaded["arch"] != arch:
            self.release()
            torch.manual_seed(0)
            module, config = build(arch, self.args.tiny, self.device)
            module = module.to(dtype=self.dtype, memory_format=torch.channels_last if ARCHS[arch][0] == "unet" else torch.preserve_format)
            flops = flops_per_eval(module, inputs(arch, config, 1, self.dtype, self.device))
            self.loaded = {"arch": arch, "config": config, "flops": flops, "eager": module}
        if mode not in self.loaded:
            self.loaded[mode] = compile_denoiser(self.loaded["eager"], MODES[mode])
        return self.loaded[mode], self.loaded["config"], self.loaded["flops"]

    def release(self) -> None:
        self.loaded = None
        gc.collect()
        torch._dynamo.reset()  # frees CUDA graphs' memory; each sweep starts with compile_denoiser's n_shapes unspent
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def raw_estimate(self, arch: str, mode: str, batch: int) -> float:
        done = [r for r in self.data["raw"] if r["arch"] == arch and "evals_per_s" in r]
        near = min(done, key=lambda r: abs(r["batch_size"] - batch), default=None)
        seconds = self.args.seconds + (7 * batch / near["evals_per_s"] if near else 0.0)  # warm-up and timing
        compiles = [r["compile_seconds"] for r in done if r.get("compile_seconds")]
        if mode == "eager":
            return seconds
        return seconds + (max(compiles) if compiles else TINY_COMPILE_GUESS_S if self.args.tiny else COMPILE_GUESS_S[arch])

    def raw(self, arch: str, mode: str, batch: int, limit: float) -> bool:
        """Measure one configuration if it fits before ``limit``; ``False`` when it does not."""
        if not self.fits(self.raw_estimate(arch, mode, batch), limit):
            return False
        row = dict(arch=arch, mode=mode, dtype=self.dtype_name, batch_size=batch)
        try:
            model, config, flops = self.module(arch, mode)
            kwargs = inputs(arch, config, batch, self.dtype, self.device)
            if mode != "eager":  # the first call at a new shape compiles it
                start = time.perf_counter()
                with torch.no_grad():
                    model(**kwargs)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                row["compile_seconds"] = time.perf_counter() - start
            evals = time_model(model, kwargs, batch, self.device, self.args.seconds)
            tflops, side = flops * evals / 1e12, config["sample_size"]
            row.update(evals_per_s=evals, gflops_per_eval=flops / 1e9, achieved_tflops=tflops, fraction_of_peak=tflops / self.peak if self.peak else None)
            row["latents"] = f"{config['in_channels']}x{side}x{side}"
        except torch.OutOfMemoryError:
            row["skipped"] = "out of memory"
            self.release()
        except Exception as err:  # a check records a failure and goes on
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"[:500]
        self.record("raw", row)
        return True

    # ------------------------------------------------------------------ part 2: end to end
    def e2e(self, work: Path) -> None:
        args, keys = self.args, self.args.samplers.split(",")
        setup = 0.0 if args.tiny else E2E_SETUP_S
        if not self.fits(setup, args.deadline_s):
            for key in keys:
                self.record("e2e", dict(sampler=SAMPLER_RUNS[key][0], skipped=self.late(setup, args.deadline_s)))
            return
        start = time.perf_counter()
        self.data["e2e_setup"]["pipeline"] = build_pipeline("sd2-base", work / "sd2-base", args.tiny, self.device)
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(max(args.images, args.adaptive_images))]
        base = [f"unet_batch_size={args.unet_batch_size}", "resume=false", f"dtype={self.dtype_name}", f"compile={json.dumps(args.compile)}"]
        first = pixels = None
        for key in keys:
            label, model_name, extra = SAMPLER_RUNS[key]
            config = load_config(None, [*base, *extra])
            try:
                if first is None:
                    model = load_classifier(model_name, str(work / "sd2-base"), device=self.device, config=config, seed=0, progress=False)
                else:  # the same networks (and compiled graphs) for every sampler
                    sampler = SAMPLERS_BY_MODEL.get(model_name).name
                    model = DiffusionClassifier(first.adapter, sampler, config, checkpoint=first.checkpoint, model_name=model_name, progress=False, store=False)
                model.prepare(CLASSNAMES[: args.classes], TEMPLATES)
                if first is None:
                    first, pixels = model, torch.stack([model.transform(img) for img in images])
                    self.data["e2e_setup"]["load_seconds"] = time.perf_counter() - start
                    self.data["e2e_setup"]["warm_up_seconds_by_pass_size"] = self.warm_up(model, pixels)
                n = args.adaptive_images if key == "adaptive" else args.images
                row = self.run_sampler(model, pixels[:n], dict(sampler=label, model=model_name, overrides=list(extra)))
            except Exception as err:  # a check records a failure and goes on
                traceback.print_exc()
                row = dict(sampler=label, model=model_name, error=f"{type(err).__name__}: {err}"[:500])
            self.record("e2e", row)

    def warm_up(self, model, pixels) -> dict[str, float]:
        """Passes before any sampler, timed: one at each bucket size with ``--compile`` (compiling each), else one at the UNet batch."""
        scorer, seconds, ub = model.scorer(pixels[:1]), {}, self.args.unet_batch_size
        for size in buckets(ub) if self.args.compile else (ub,):
            start = time.perf_counter()
            scorer([0] * size, [k % model.n_classes for k in range(size)], [500] * size, [0] * size)
            seconds[str(size)] = time.perf_counter() - start
        return seconds

    def run_sampler(self, model, pixels, row: dict) -> dict:
        """Harness batches while they fit the sampler's seconds and the deadline (the first only the deadline)."""
        args, hb = self.args, self.args.harness_batch
        curve = sd2_curve(self.data, "eager")
        planned = evals_per_image(model.sampler.name, model.options, model.n_classes)[1]  # on an ambiguous image
        per_image = planned * curve.pass_seconds(args.unet_batch_size) / args.unet_batch_size if curve else 0.0
        spent = wall = 0.0
        images, row["warm_up"], row["stopped"] = 0, None, "all images"
        for k, lo in enumerate(range(0, len(pixels), hb)):
            batch = pixels[lo : lo + hb]
            need = per_image * len(batch)
            if k and spent + need > args.sampler_seconds:
                row["stopped"] = "sampler budget"
                break
            if not self.fits(need, args.deadline_s):
                row["stopped"] = "deadline"
                if not k:
                    return dict(row, skipped=self.late(need, args.deadline_s))
                break
            if k == 1:  # a second batch: the first was the warm-up, kept apart
                row["warm_up"] = dict(images=images, seconds=wall, unet_evals_per_image=model.result_block()["unet_evals_per_image"])
                model.reset_stats()
                images, wall = 0, 0.0
            start = time.perf_counter()
            model.classify(batch)  # its results are on the CPU: the device is done
            seconds = time.perf_counter() - start
            spent, wall, images, per_image = spent + seconds, wall + seconds, images + len(batch), seconds / len(batch)
        block = model.result_block()
        calls = block["denoiser_calls"]
        row.update(images=images, unet_evals_per_image=block["unet_evals_per_image"], passes_per_image=calls["calls"] / images)
        row.update(mean_pass=calls["mean_batch"], seconds_per_image=wall / images, evals_per_s=calls["inputs"] / wall, denoiser_calls=calls)
        return row


# ---------------------------------------------------------------------- part 3 and the report
def sd2_curve(data: dict, mode: str) -> RateCurve | None:
    """SD 2 base's measured rate curve in ``mode`` (``None`` before a point is measured)."""
    rates = {r["batch_size"]: r["evals_per_s"] for r in data["raw"] if r["arch"] == "sd2-base" and r["mode"] == mode and "evals_per_s" in r}
    return RateCurve.from_rates(rates) if rates else None


def derive(data: dict, unet_batch: int) -> None:
    """Each end-to-end row's % of the raw eager rate at the UNet batch (the curve's, where that size
    was not measured), its predictions, and its ratios to baseline-32, from what is measured so far."""
    mode = data["environment"]["e2e_mode"]
    curves = {m: c for m in dict.fromkeys(("eager", mode)) if (c := sd2_curve(data, m))}
    rows = [r for r in data["e2e"] if "seconds_per_image" in r]
    for r in rows:
        log = CallLog.from_dict(r["denoiser_calls"])
        eager = curves.get("eager")
        r["pct_of_raw_eager"] = 100 * r["evals_per_s"] * eager.pass_seconds(unet_batch) / unet_batch if eager else None
        r["predicted_seconds_per_image"] = {m: c.seconds_of(log, None if m == "eager" else buckets(unet_batch)) / r["images"] for m, c in curves.items()}
        r["prediction_mode"] = mode if mode in curves else "eager" if curves else None
        pred = r["predicted_seconds_per_image"].get(r["prediction_mode"])
        r["measured_over_predicted"] = r["seconds_per_image"] / pred if pred else None
    # the host's share (a cost per pass and per input), fitted on every sampler's run together
    curve = curves.get(mode)
    runs = [(CallLog.from_dict(r["denoiser_calls"]), r["seconds_per_image"] * r["images"]) for r in rows]
    host = fit_host_cost(runs, curve) if curve and len(rows) >= 2 else None
    data["host_cost"] = None if host is None else {"per_pass_s": host.per_pass, "per_input_s": host.per_input, "fitted_on": len(rows)}
    for r, (log, _) in zip(rows, runs):
        sizes = None if mode == "eager" else buckets(unet_batch)
        r["predicted_with_host_seconds_per_image"] = curve.seconds_of(log, sizes, host) / r["images"] if host else None
    ref = next((r for r in rows if r["sampler"] == REFERENCE), None)
    ref_pred = ref and ref["predicted_seconds_per_image"].get(ref["prediction_mode"])
    for r in rows:
        pred = r["predicted_seconds_per_image"].get(r["prediction_mode"])
        r["eval_ratio"] = r["unet_evals_per_image"] / ref["unet_evals_per_image"] if ref else None
        r["time_ratio"] = r["seconds_per_image"] / ref["seconds_per_image"] if ref else None
        r["predicted_time_ratio"] = pred / ref_pred if pred and ref_pred else None


def fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def line(*cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def report(data: dict) -> str:
    env, flags, setup = data["environment"], data["environment"]["flags"], data["e2e_setup"]
    done = [r for r in data["e2e"] if "seconds_per_image" in r]
    modes = list(dict.fromkeys(m for r in done for m in r["predicted_seconds_per_image"]))
    warm = ", ".join(f"{k}: {v:.2f}" for k, v in setup.get("warm_up_seconds_by_pass_size", {}).items()) or "–"
    out = [
        f"# GPU check: {env['model']} on {env['device']}",
        "",
        f"`python bench/gpu_check.py` ({data['elapsed_s']:.0f} s{'' if data['complete'] else ', cut short'}); torch {env['torch']}, "
        f"{env['dtype']}, dense bf16 peak {env['peak_dense_tflops'] or 'unknown'} TFLOP/s. Flags: "
        + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in flags.items()),
        "",
        "## Raw denoiser rate",
        "",
        line("arch", "mode", "dtype", "batch", "evals/s", "GFLOP/eval", "TFLOP/s", "% of peak", "compile s", "note"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["raw"]:
        if "evals_per_s" not in r:
            out.append(line(r["arch"], r["mode"], "", r.get("batch_size", ""), *[""] * 5, r.get("skipped") or r.get("error")))
            continue
        pct, comp = fmt(r["fraction_of_peak"] and 100 * r["fraction_of_peak"], ".1f"), fmt(r.get("compile_seconds"), ".1f")
        numbers = (f"{r['evals_per_s']:.1f}", f"{r['gflops_per_eval']:.2f}", f"{r['achieved_tflops']:.2f}", pct, comp)
        out.append(line(r["arch"], r["mode"], r["dtype"], r["batch_size"], *numbers, ""))
    out += [
        "",
        "## End to end: SD 2 base through the classifier",
        "",
        f"{flags['classes']} classes, random images, harness batch {flags['harness_batch']}, UNet batch {flags['unet_batch_size']}, "
        f"compile {flags['compile']}. Up to {flags['images']} images per sampler; the adaptive sampler, which costs about 8.6x "
        f"baseline-32's evaluations, {flags['adaptive_images']}. No sampler starts a harness batch past {flags['sampler_seconds']} s "
        "of its own. s/img and evals/s exclude the first harness batch (the warm-up) where a sampler ran more than one. "
        f"Warm-up passes before the first sampler (size: seconds): {warm}.",
        "",
        line("sampler", "images", "warm-up excluded", "evals/img", "passes/img", "mean pass", "s/img", "evals/s", "% of raw eager", "stopped"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["e2e"]:
        if r not in done:
            out.append(line(r["sampler"], *[""] * 8, r.get("skipped") or r.get("error")))
            continue
        excluded = f"{r['warm_up']['images']} images" if r["warm_up"] else "no (one batch)"
        numbers = (f"{r['unet_evals_per_image']:.1f}", f"{r['passes_per_image']:.2f}", f"{r['mean_pass']:.1f}", f"{r['seconds_per_image']:.4f}")
        out.append(line(r["sampler"], r["images"], excluded, *numbers, f"{r['evals_per_s']:.1f}", fmt(r["pct_of_raw_eager"], ".0f"), r["stopped"]))
    out += [
        "",
        "## Predicted and measured GPU seconds per image",
        "",
        "Predicted: the sampler's recorded passes priced on the SD 2 base curves above (`bench/gpu_simulate.py`'s `RateCurve`; "
        "compiled curves price each pass at its padded bucket size). Measured / predicted uses the curve of the run's mode. "
        "Time and evaluation ratios are against baseline-32.",
        "",
        line(
            "sampler",
            "measured s/img",
            *(f"predicted s/img ({m})" for m in modes),
            "measured / predicted",
            "predicted with host s/img",
            "time ratio",
            "predicted time ratio",
            "eval ratio",
        ),
        "|---|" + "---:|" * (len(modes) + 6),
    ]
    for r in done:
        preds = (fmt(r["predicted_seconds_per_image"][m], ".4f") for m in modes)
        ratios = (fmt(r["measured_over_predicted"], ".2f"), fmt(r.get("predicted_with_host_seconds_per_image"), ".4f"))
        ratios += (fmt(r["time_ratio"]), fmt(r["predicted_time_ratio"]), fmt(r["eval_ratio"]))
        out.append(line(r["sampler"], f"{r['seconds_per_image']:.4f}", *preds, *ratios))
    host = data.get("host_cost")
    if host:
        out += [
            "",
            f"Host cost fitted on the {host['fitted_on']} runs together (`gpu_simulate.fit_host_cost`): "
            f"{1000 * host['per_pass_s']:.2f} ms per pass and {1000 * host['per_input_s']:.3f} ms per input outside the denoiser.",
        ]
    return "\n".join([*out, "", *data["notes"], ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--parts", default="raw,e2e", help="raw, e2e, or raw,e2e")
    parser.add_argument("--archs", default="sd2-base,sdxl-base,sd3-medium", help=f"raw part, from {', '.join(ARCHS)}")
    parser.add_argument("--modes", default="eager,compiled,graphs", help="raw part (graphs: a GPU only)")
    parser.add_argument("--compile-archs", help="raw part: the archs measured compiled and with graphs (default: --archs)")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32,64", help="raw part, SD 2 base")
    parser.add_argument("--large-batch-sizes", default="1,8,64", help="raw part, SDXL base and SD3 medium")
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per raw configuration, after its warm-up")
    parser.add_argument("--deadline-s", type=float, default=450.0, help="nothing starts that would end past this (seconds from the start)")
    parser.add_argument("--raw-deadline-s", type=float, default=240.0, help="raw configurations past this wait until after the samplers")
    parser.add_argument("--samplers", default=",".join(SAMPLER_RUNS), help="end-to-end part, run in this order")
    parser.add_argument("--images", type=int, default=256, help="images per sampler (at most)")
    parser.add_argument("--adaptive-images", type=int, default=8, help="images for the adaptive sampler")
    parser.add_argument("--classes", type=int, default=10, choices=range(2, 11), metavar="2..10", help="digit classes")
    parser.add_argument("--harness-batch", type=int, default=64)
    parser.add_argument("--unet-batch-size", type=int, default=64)
    parser.add_argument("--sampler-seconds", type=float, default=40.0, help="a sampler starts no harness batch past this many of its seconds")
    parser.add_argument("--compile", default="false", choices=("false", "true", "graphs"), help="end-to-end part: the config's compile")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend; eager for smoke tests on a CPU (inductor takes minutes there)")
    parser.add_argument("--work", help="folder for the saved pipeline (default: a temporary one, removed)")
    add_gpu_flags(parser, "tiny denoisers and pipeline, to smoke-test this script")
    args = parser.parse_args()
    device = gpu_device(parser, args, "gpu-check")
    if device is None:
        return 0
    if args.tiny and Path(args.out).resolve() == DEFAULT_OUT.resolve():
        parser.error("--tiny writes a smoke test: give --out somewhere else than the committed record")
    if args.compile_backend != "inductor" and not args.tiny:
        parser.error("--compile-backend is for smoke tests (--tiny): the recorded numbers are inductor's")
    if args.compile_backend != "inductor":
        os.environ["DIFFCLS_COMPILE_BACKEND"] = args.compile_backend  # read by compile_denoiser
    for flag, given, known in (("--samplers", args.samplers, SAMPLER_RUNS), ("--archs", args.archs, ARCHS), ("--modes", args.modes, MODES)):
        if unknown := [k for k in given.split(",") if k not in known]:
            parser.error(f"{flag} {unknown[0]!r}: choose from {', '.join(known)}")
    if args.compile == "graphs" and device.type != "cuda":
        parser.error("--compile graphs needs a GPU (CUDA graphs)")
    args.compile = {"false": False, "true": True}.get(args.compile, args.compile)
    if device.type != "cuda":  # a smoke test; on a shared 2-core CPU two OpenMP threads stall each other (calls 50x slower)
        torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    check, parts, later = Check(args, device), args.parts.split(","), []
    for arch, mode, batch in check.raw_steps() if "raw" in parts else []:
        if not check.raw(arch, mode, batch, limit=args.raw_deadline_s):
            later.append((arch, mode, batch))  # after the samplers, if time is left
    check.release()
    if "e2e" in parts:
        work = Path(args.work or tempfile.mkdtemp(prefix="diffcls-gpu-check-"))
        try:
            check.e2e(work)
        finally:
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
        check.release()
    for arch, mode, batch in later:
        if not check.raw(arch, mode, batch, limit=args.deadline_s):
            check.record("raw", dict(arch=arch, mode=mode, batch_size=batch, skipped=check.late(check.raw_estimate(arch, mode, batch), args.deadline_s)))
    check.release()
    check.data["complete"] = True
    check.save()
    print(f"wrote gpu_check.json, gpu_check.md and gpu_throughput.json to {args.out} in {check.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
