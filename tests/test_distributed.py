"""Image sharding under torchrun: 2 gloo processes on the CPU give the metrics of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLASSNAMES, run_clip_benchmark


def clip_benchmark_script() -> str:
    found = shutil.which("clip_benchmark") or str(Path(sys.executable).parent / "clip_benchmark")
    assert Path(found).is_file(), "the clip_benchmark console script is not installed"
    return found


def test_two_gloo_processes_give_the_metrics_of_one(tmp_path, tiny_sd, tiny_wds):
    root, images, _ = tiny_wds
    config = tmp_path / "diffcls.yaml"
    config.write_text("hierarchical:\n  n_timesteps: 8\n  beam_factor: 1.5\n")
    env = dict(os.environ, DIFFCLS_CONFIG=str(config), OMP_NUM_THREADS="1")
    args = [
        "eval",
        "--model",
        "diffusion-hier",
        "--pretrained",
        str(tiny_sd),
        "--dataset",
        "wds/tiny",
        "--dataset_root",
        str(root),
        "--batch_size",
        "5",
        "--num_workers",
        "0",
        "--seed",
        "3",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", clip_benchmark_script()]
    # the two ranks share one resume store; an audit hook logs every process that opens an SQLite file
    hook, opened = tmp_path / "hook", tmp_path / "opened.log"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "def _log(event, args):\n"
        "    if event == 'sqlite3.connect':\n"
        f"        with open({str(opened)!r}, 'a') as f:\n"
        "            f.write(f\"{os.environ.get('RANK', '-')} {os.getpid()} {args[0]}\\n\")\n"
        "sys.addaudithook(_log)\n"
    )
    stored = dict(env, DIFFCLS_RESUME="1", DIFFCLS_CACHE=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]))
    two = subprocess.run([*torchrun, *args, "--output", str(tmp_path / "two.json")], cwd=tmp_path, env=stored, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    opens = [line.split() for line in opened.read_text().splitlines() if line.endswith("outcomes.sqlite")]
    assert opens and {rank for rank, _, _ in opens} == {"0"} and len({pid for _, pid, _ in opens}) == 1, opens  # one process: rank 0
    again = subprocess.run([*torchrun, *args, "--output", str(tmp_path / "again.json")], cwd=tmp_path, env=stored, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-4000:]
    resumed = json.loads((tmp_path / "again.json").read_text())
    assert resumed["diffcls"]["computed"]["n_images_from_store"] == len(images)  # rank 0 committed rank 1's images too
    assert {rank for rank, _, _ in (line.split() for line in opened.read_text().splitlines() if line.endswith("outcomes.sqlite"))} == {"0"}
    one = run_clip_benchmark(*args, "--output", tmp_path / "one.json", cwd=tmp_path, env=env)  # forked (conftest), as the console script runs
    assert one.returncode == 0, one.stderr[-4000:]
    a, b = json.loads((tmp_path / "two.json").read_text()), json.loads((tmp_path / "one.json").read_text())
    assert a["metrics"] == b["metrics"]
    # batches of 5, 5 and 2 images: rank 0 scores positions 0, 2, 4 of each, rank 1 positions 1, 3
    assert a["diffcls"]["distributed"] == {"world_size": 2, "images_per_rank": [3 + 3 + 1, 2 + 2 + 1]}
    assert b["diffcls"]["distributed"] == {"world_size": 1, "images_per_rank": [len(images)]}
    assert a["diffcls"]["n_images"] == b["diffcls"]["n_images"] == len(images) and a["diffcls"]["n_classes"] == len(CLASSNAMES)
    assert a["diffcls"]["unet_evals_per_image"] == b["diffcls"]["unet_evals_per_image"]
    assert a["diffcls"]["unet_evals_by_image"] == b["diffcls"]["unet_evals_by_image"]  # every image, in the one-process order
    assert resumed["metrics"] == a["metrics"] and resumed["diffcls"]["distributed"]["images_per_rank"] == [len(images), 0]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["again.json", "one.json", "two.json"]  # rank 1 wrote nothing


def test_the_harness_distributed_flag_is_refused_under_torchrun_before_joining_a_process_group(tmp_path, tiny_sd, tiny_wds, monkeypatch):
    """``torchrun --nproc_per_node 2 clip_benchmark eval ... --distributed``, rank 0's side, in this
    process: the harness's --distributed hands the one run to rank 0 (rank 1 gets none and exits),
    and the refusal reads only torchrun's environment, before any process group is joined (joining
    one here fails the test instead of waiting for a rank 1 that never comes)."""
    import torch.distributed as dist

    from diffcls_plugin import distributed, register

    register()
    from clip_benchmark import cli as harness_cli

    def no_process_group(*args, **kwargs):
        raise AssertionError("joined a process group before refusing --distributed")

    monkeypatch.setattr(distributed, "init_from_env", no_process_group)
    monkeypatch.setattr(dist, "init_process_group", no_process_group)
    root, _, _ = tiny_wds
    config = tmp_path / "diffcls.yaml"
    config.write_text("hierarchical:\n  n_timesteps: 8\n  beam_factor: 1.5\n")
    torchrun_env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in {**torchrun_env, "DIFFCLS_CONFIG": str(config)}.items():
        monkeypatch.setenv(name, value)
    args = ["--model", "diffusion-hier", "--pretrained", str(tiny_sd), "--dataset", "wds/tiny", "--dataset_root", str(root), "--batch_size", "5"]
    monkeypatch.setattr(
        sys, "argv", ["clip_benchmark", "eval", *args, "--num_workers", "0", "--seed", "3", "--distributed", "--output", str(tmp_path / "x.json")]
    )
    _, base = harness_cli.get_parser_args()
    with pytest.raises(SystemExit) as refused:
        harness_cli.main_eval(base)
    assert str(refused.value.code).startswith("diffcls: error: --distributed shards whole runs over the torchrun ranks")  # exit status 1
    assert "\n" not in str(refused.value.code) and not dist.is_initialized()
    assert not (tmp_path / "x.json").exists()
