"""Shared fixtures: tiny seeded Stable Diffusion folders and a tiny webdataset, all offline."""

from __future__ import annotations

import os
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

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

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


def harness_eval(model: str, pretrained, dataset: str, root, output, *extra, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m clip_benchmark.cli eval` in a subprocess, as a user runs it (the plugin's hook
    patches that entry point too); ``env`` adds to this process's environment."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clip_benchmark.cli",
            "eval",
            "--model",
            model,
            "--pretrained",
            str(pretrained),
            "--dataset",
            dataset,
            "--dataset_root",
            str(root),
            "--output",
            str(output),
            *map(str, extra),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
