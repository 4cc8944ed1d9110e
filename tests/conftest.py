"""Shared fixtures: tiny seeded Stable Diffusion folders and a tiny webdataset, all offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.pop("DIFFCLS_CONFIG", None)
os.environ["DIFFCLS_RESUME"] = "0"  # the resume store is tested on its own (tests/test_store.py), in temporary folders
# the embedded digits data and measured rates go to a throwaway cache, never the user's
os.environ["DIFFCLS_CACHE"] = tempfile.mkdtemp(prefix="diffcls-test-cache-")
# one torch (OpenMP) thread, here and in every process a test starts (set before torch is imported):
# the tests' models are tiny, so a second thread buys little, and where the CPUs are busy (the
# other process of a test, loader workers, a shared runner) threads spinning at each op's barrier
# make a run several times slower; a value set outside the tests is kept
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

import harness_server  # noqa: E402
from tiny_sd import save_tiny_sd, save_tiny_sd3, save_tiny_sdxl  # noqa: E402

CLASSNAMES = ["cat", "dog", "bird", "fish", "car", "tree"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny epsilon-prediction Stable Diffusion folder (16 px images, 8x8 latents)."""
    return save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL folder (two text encoders, text_time conditioning, 16 px images)."""
    return save_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    """A tiny SD3 folder (MMDiT, two CLIP encoders, no T5, flow matching, 16 px images)."""
    return save_tiny_sd3(tmp_path_factory.mktemp("models") / "tiny-sd3")


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    """The same tiny model with a v-prediction scheduler."""
    return save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-v", prediction_type="v_prediction")


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (20, 24)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_wds(tmp_path_factory):
    """A 12-image, 6-class webdataset in CLIP_benchmark layout (4 shards, as many as loader workers)."""
    from diffcls_plugin.data.wds_writer import write_wds_classification

    images = random_images(12)
    labels = [i % len(CLASSNAMES) for i in range(12)]
    root = write_wds_classification(tmp_path_factory.mktemp("data") / "tiny", images, labels, CLASSNAMES, TEMPLATES, n_shards=4)
    return root, images, labels


@pytest.fixture(scope="session")
def harness_eval_help() -> str:
    """``python -m clip_benchmark.cli eval --help``'s text, one line per option (``COLUMNS=2000``:
    argparse would break names at their hyphens); run once for every test that reads it."""
    out = harness_server.run_harness(["eval", "--help"], {**os.environ, "COLUMNS": "2000"}, timeout=300)  # forked, as harness_eval is
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def harness_eval(model: str, pretrained, dataset: str, root, output, *extra, env: dict | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m clip_benchmark.cli eval` in a subprocess, as a user runs it (the plugin's hook
    patches that entry point too); ``env`` adds to this process's environment. The process is
    forked from one that has imported the harness already (tests/harness_server.py: the same code
    and environment, without paying the imports again), or (``fresh``, or an environment that
    differs in more than what a run reads when it starts) a new ``python -m`` process."""
    argv = ["eval", "--model", model, "--pretrained", str(pretrained), "--dataset", dataset, "--dataset_root", str(root), "--output", str(output)]
    return harness_server.run_harness([*argv, *map(str, extra)], {**os.environ, **(env or {})}, timeout=600, fresh=fresh)


def run_clip_benchmark(*argv, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The ``clip_benchmark ARGV`` console script in ``cwd``, forked as :func:`harness_eval` is
    (``env`` adds to this process's environment)."""
    script = shutil.which("clip_benchmark") or str(Path(sys.executable).parent / "clip_benchmark")
    return harness_server.run_harness(list(map(str, argv)), {**os.environ, **(env or {})}, timeout=600, cwd=cwd, script=script)


def pytest_collection_modifyitems(session, config, items):
    """Start the harness server while the first tests run, when a collected test may use it."""
    if any(uses_harness_server(item) for item in items):
        harness_server.start()


def uses_harness_server(item) -> bool:
    helpers = {"harness_eval": harness_eval, "run_clip_benchmark": run_clip_benchmark, "run_harness": harness_server.run_harness}
    module = getattr(item, "module", None)
    return "harness_eval_help" in getattr(item, "fixturenames", ()) or any(getattr(module, name, None) is helper for name, helper in helpers.items())


def pytest_sessionfinish(session, exitstatus):
    harness_server.stop()
