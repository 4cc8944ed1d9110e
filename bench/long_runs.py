"""Long runs on the embedded model: kill and resume, and two torchrun processes against one.

Every run is the real ``clip_benchmark eval`` command on ``tiny-digits`` and its 360 held-out
test digits (``diffusion-baseline``, 32 timesteps), each in a fresh resume store unless it is
the resumed one:

1. uninterrupted, in a fresh store;
2. the same command in another fresh store, killed with SIGKILL once ``--kill-at`` images are
   committed, then rerun unchanged: the rerun computes only the missing images, and its metrics
   must equal run 1's;
3. the same command under ``torchrun --nproc_per_node 2`` (gloo, CPU) with the store off, against
   one process with the store off: the metrics must be equal.

    python bench/long_runs.py          # writes bench/results/long_runs.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, environment

from diffcls_plugin.store import committed

MODEL = "diffusion-baseline"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-at", type=int, default=180, help="kill the run once this many images are committed")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    from diffcls_plugin.data.digits import ensure_digits_wds

    root = ensure_digits_wds()
    script = shutil.which("clip_benchmark") or str(Path(sys.executable).parent / "clip_benchmark")
    work = Path(tempfile.mkdtemp(prefix="diffcls-long-runs-"))
    config = work / "diffcls.yaml"
    config.write_text("baseline:\n  n_timesteps: 32\nunet_batch_size: 256\n")

    def command(out: str) -> list[str]:
        return [
            MODEL,
            "--pretrained",
            "tiny-digits",
            "--dataset",
            "wds/digits",
            "--dataset_root",
            str(root),
            "--batch_size",
            "32",
            "--num_workers",
            "0",
            "--seed",
            "0",
            "--output",
            str(work / out),
        ]

    def env(cache: str | None, **extra: str) -> dict[str, str]:
        out = dict(os.environ, DIFFCLS_CONFIG=str(config), HF_HUB_OFFLINE="1", **extra)
        if cache is None:
            out["DIFFCLS_RESUME"] = "0"
        else:
            out.update(DIFFCLS_CACHE=str(work / cache), DIFFCLS_RESUME="1")
        return out

    def timed(argv: list[str], environment_: dict[str, str]) -> tuple[float, dict]:
        start = time.perf_counter()
        proc = subprocess.run(argv, env=environment_, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        return time.perf_counter() - start, json.loads(Path(argv[argv.index("--output") + 1]).read_text())

    eval_ = [script, "eval", "--model"]
    record: dict = {"environment": environment(), "model": "tiny-digits", "sampler": MODEL, "images": 360}
    whole_s, whole = timed([*eval_, *command("whole.json")], env("cache-whole"))
    record["uninterrupted"] = {"seconds": whole_s, "metrics": whole["metrics"], "computed": whole["diffcls"]["computed"]}
    print(f"uninterrupted: {whole_s:.1f} s", flush=True)

    store = work / "cache-killed" / "outcomes.sqlite"
    start = time.perf_counter()
    killed = subprocess.Popen([*eval_, *command("killed.json")], env=env("cache-killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while committed(store) < args.kill_at and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed_s, done = time.perf_counter() - start, committed(store)
    resumed_s, resumed = timed([*eval_, *command("resumed.json")], env("cache-killed"))
    record["killed"] = {"seconds_until_kill": killed_s, "images_committed": done}
    record["resumed"] = {
        "seconds": resumed_s,
        "metrics": resumed["metrics"],
        "computed": resumed["diffcls"]["computed"],
        "metrics_equal_uninterrupted": resumed["metrics"] == whole["metrics"],
    }
    print(f"killed after {killed_s:.1f} s with {done} images committed; resumed in {resumed_s:.1f} s", flush=True)

    one_s, one = timed([*eval_, *command("one.json")], env(None))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, "eval", "--model"]
    two_s, two = timed([*torchrun, *command("two.json")], env(None, OMP_NUM_THREADS="1"))
    record["one_process"] = {"seconds": one_s, "metrics": one["metrics"]}
    record["torchrun_2_gloo"] = {
        "seconds": two_s,
        "metrics": two["metrics"],
        "distributed": two["diffcls"]["distributed"],
        "metrics_equal_one_process": two["metrics"] == one["metrics"],
    }
    print(f"one process {one_s:.1f} s; torchrun x2 {two_s:.1f} s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "long_runs.json").write_text(json.dumps(record, indent=1) + "\n")
    m = lambda d: f"{100 * d['acc1']:.2f} / {100 * d['mean_per_class_recall']:.2f}"  # noqa: E731
    lines = [
        "# Long runs on the embedded model (`python bench/long_runs.py`)",
        "",
        f"`clip_benchmark eval --model {MODEL} --pretrained tiny-digits --dataset wds/digits` (360 test digits, 32 timesteps), "
        f"{os.cpu_count()} CPU cores, wall seconds including start-up.",
        "",
        "| run | wall s | images computed | from the store | top-1 / recall % | equal to |",
        "|---|---:|---:|---:|---|---|",
        f"| uninterrupted (fresh store) | {whole_s:.1f} | {whole['diffcls']['computed']['n_images']} | {whole['diffcls']['computed']['n_images_from_store']} | {m(whole['metrics'])} | |",
        f"| killed with SIGKILL | {killed_s:.1f} | {done} committed | | | |",
        f"| the same command again | {resumed_s:.1f} | {resumed['diffcls']['computed']['n_images']} | {resumed['diffcls']['computed']['n_images_from_store']} | {m(resumed['metrics'])} | uninterrupted: {resumed['metrics'] == whole['metrics']} |",
        f"| one process (store off) | {one_s:.1f} | {one['diffcls']['computed']['n_images']} | 0 | {m(one['metrics'])} | |",
        f"| torchrun, 2 gloo processes (store off) | {two_s:.1f} | {two['diffcls']['computed']['n_images']} | 0 | {m(two['metrics'])} | one process: {two['metrics'] == one['metrics']} |",
        "",
        f"Images per rank under torchrun: {two['diffcls']['distributed']['images_per_rank']}. On 2 CPU cores two processes share the",
        "same cores as one two-thread process, so no speed-up is expected here; the check is that the metrics are identical.",
    ]
    (out / "long_runs.md").write_text("\n".join(lines) + "\n")
    print((out / "long_runs.md").read_text())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
