"""scikit-learn's bundled handwritten digits as a small offline zero-shot classification task.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 digits (16 grey levels) inside the
package, so this data needs no download. It is shared by the training script of the embedded
``tiny-digits`` model (``scripts/train_tiny_digits.py``), the webdataset writer
(:func:`ensure_digits_wds`) and the tests.

Images: :func:`to_image` scales the 0..16 values to 0..255 and upsamples 8x8 -> 32x32 with PIL's
bicubic filter (a smooth stroke, no blocky pixels), as a white digit on a black background, RGB.

Split (:func:`split_indices`): stratified by label with scikit-learn's ``train_test_split`` and a
fixed ``random_state``: 20% test (360 images), then 15% of the rest as validation (216), the
remaining 1,221 for training. The test split is only for the final, one-time measurement; model
choices are made on validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The first template is the one the classifier scores with (``prompts: first``, the default).
TEMPLATES = [
    "a photo of the digit {c}.",
    "a handwritten {c}.",
    "the number {c}.",
    "an image of the digit {c}.",
]
SPLITS = ("train", "val", "test")
TEST_FRACTION = 0.2
VAL_FRACTION = 0.15  # of what is left after the test split
IMAGE_SIZE = 32
N_SHARDS = 4
CACHE_ENV = "DIFFCLS_CACHE"
_COMPLETE = ".complete"  # written last: its presence (with the right content) marks a whole dataset
WDS_SPLITS = ("test", "val")  # the splits of the embedded webdataset; the model trained on the others
_WDS_NAMES = {"classnames.txt", "zeroshot_classification_templates.txt", *WDS_SPLITS, _COMPLETE}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.asarray(data.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(data.target, dtype=np.int64)  # (1797,)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(seed: int = 0) -> dict[str, np.ndarray]:
    """The fixed stratified split: sorted, disjoint index arrays that cover all 1,797 images.

    Returns:
        ``{"train": (1221,), "val": (216,), "test": (360,)}`` int64 indices into ``load_digits()``
        (sizes for any seed).
    """
    from sklearn.model_selection import train_test_split

    _, labels = _digits()
    everything = np.arange(len(labels))
    rest, test = train_test_split(everything, test_size=TEST_FRACTION, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=VAL_FRACTION, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def to_image(pixels) -> PIL.Image.Image:  # noqa: F821 - PIL imported lazily
    """An 8x8 digit (values 0..16) -> a 32x32 RGB PIL image, white digit on black, bicubic upsampling."""
    from PIL import Image

    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape != (8, 8):
        raise ValueError(f"expected an 8x8 digit, got shape {pixels.shape}")
    grey = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    small = Image.fromarray(grey)  # uint8 (8, 8) -> mode "L"
    return small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC).convert("RGB")


def load_split(name: str, seed: int = 0) -> tuple[list, np.ndarray]:
    """The images and labels of one split (``train``, ``val`` or ``test``), in index order."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
    images, labels = _digits()
    idx = split_indices(seed)[name]
    return [to_image(images[i]) for i in idx], labels[idx].copy()


def default_cache_dir() -> Path:
    """``$DIFFCLS_CACHE``, else ``~/.cache/diffcls_plugin``."""
    base = os.environ.get(CACHE_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "diffcls_plugin"


def _fingerprint(seed: int) -> str:
    """What a written dataset must match to be reused: the layout version, classes, templates, split."""
    spec = {"version": 2, "classnames": CLASSNAMES, "templates": TEMPLATES, "seed": seed, "n_shards": N_SHARDS, "splits": list(WDS_SPLITS)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for split in WDS_SPLITS:
        digest.update(split_indices(seed)[split].astype(np.int64).tobytes())
    return digest.hexdigest()


def _is_complete(root: Path, fingerprint: str) -> bool:
    marker = root / _COMPLETE
    return marker.is_file() and marker.read_text().strip() == fingerprint


def ensure_digits_wds(root: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    """Write the test and validation splits as a CLIP_benchmark webdataset (``--dataset wds/digits``) unless they are there.

    The ``test`` split is the held-out digits the demo reports; ``val`` (216 images) is for
    choosing settings (``diffcls tune --split val``, ``diffcls fit-weights --split val``).

    The dataset is written to a temporary sibling folder and renamed into place, so a crash never
    leaves half a dataset at ``root``; a ``.complete`` marker holding a fingerprint of the
    classes, templates and split is written last and checked on reuse.

    Args:
        root: the dataset folder; default ``$DIFFCLS_CACHE/digits`` or ``~/.cache/diffcls_plugin/digits``.
        seed: the split seed.

    Returns:
        ``root``, for ``clip_benchmark eval --dataset wds/digits --dataset_root <root>``.
    """
    from diffcls_plugin.data.wds_writer import write_wds_classification

    root = Path(root).expanduser() if root is not None else default_cache_dir() / "digits"
    fingerprint = _fingerprint(seed)
    if _is_complete(root, fingerprint):
        return root
    if root.exists():
        # an interrupted, stale or foreign folder: replace it only if it holds nothing but our files
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a folder; remove it or pass another root")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in _WDS_NAMES)
        if foreign:
            raise FileExistsError(f"{root} holds files that are not a digits webdataset ({', '.join(foreign[:5])}); remove them or pass another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for split in WDS_SPLITS:
            images, labels = load_split(split, seed)
            write_wds_classification(tmp, images, labels, CLASSNAMES, TEMPLATES, split=split, n_shards=N_SHARDS)
        (tmp / _COMPLETE).write_text(fingerprint + "\n")
        if root.exists():
            if _is_complete(root, fingerprint):  # another process finished first
                return root
            old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if _is_complete(root, fingerprint):  # lost a race to a concurrent writer: theirs is whole
                return root
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
