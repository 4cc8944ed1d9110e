#!/usr/bin/env python
"""Write the proxy suite's data sets (``bench/proxies/data/<pair>/{val,test}``) as CLIP_benchmark
webdatasets. Deterministic: every random degradation is seeded by the split and image index.

- ``digits-clean``: scikit-learn's held-out digits (the validation and test splits of
  ``diffcls_plugin.data.digits``, never trained on).
- ``digits-noisy``: the same digits, each rotated by up to +-25 degrees, blurred (Gaussian,
  radius 1.2 px) and noised (Gaussian, sigma 70 of 255).
- ``digits-grainy``: the same digits with Gaussian noise only (sigma 80 of 255).
- ``letters-fonts``: 26 capitals in held-out font families of ``scripts/letters.py`` (validation
  and test families disjoint from each other and from training; the first 10 validation and 12
  test families by name, to keep ``bench/suite.py`` within its time budget), plus Gaussian noise
  (sigma 24 of 255).
- ``lowercase-fonts``: the 26 lowercase letters (``letters.LOWERCASE``) in the same held-out
  families, clean (the noise of ``letters-fonts`` took the weaker lowercase model to 20 % on
  validation, with one timestep only 6 points behind 32): the data of the held-out pair of
  ``bench/holdout.py``, kept out of the suite.
- ``cyrillic-fonts``: the 32 lowercase Cyrillic letters а-я (``letters.CYRILLIC``) in the held-out
  families that cover them, clean: the data of the second held-out pair, built after the first
  had been read.
- ``greek-fonts``: the 24 lowercase Greek letters α-ω (``letters.GREEK``) in the held-out families
  that cover them, clean: the data of the third held-out pair, built after the second had been
  read.
- ``cyrillic-upper-fonts``: the 32 capital Cyrillic letters А-Я (``letters.CYRILLIC_UPPER``) in the
  held-out families that cover them, clean: the data of the fourth held-out pair, built after the
  first three had joined the choice of the defaults (their validation splits).
- ``greek-upper-fonts``: the 24 capital Greek letters Α-Ω (``letters.GREEK_UPPER``) in the held-out
  families that cover them, clean: the data of the fifth held-out pair, built before the race's
  beam was chosen.
- ``hebrew-noisy-fonts``: the 22 Hebrew letters א-ת (``letters.HEBREW``, final forms left out) in
  the held-out families that cover them (9 validation, 8 test), each blurred (Gaussian, radius
  0.7 px) and noised (Gaussian, sigma 24 of 255): the data of the held-out pair built for
  ``diffcls tune`` (``TUNE_HOLDOUTS`` of ``bench/proxies.py``) before any of its settings was chosen.
- ``hebrew-fonts``: the same Hebrew letters in the same held-out families, clean (no blur, no
  noise): only to check the Hebrew model's validation accuracy without the degradation (not
  kept, and not written by default: ``--only hebrew-fonts``).

Usage (needs the fonts of ``scripts/letters.py`` for the letter sets)::

    python scripts/make_proxy_data.py             # all data sets
    python scripts/make_proxy_data.py --only digits-noisy
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import letters  # noqa: E402

from diffcls_plugin.data import digits  # noqa: E402
from diffcls_plugin.data.wds_writer import write_wds_classification  # noqa: E402

OUT = REPO / "bench" / "proxies" / "data"
SPLIT_SEED = {"val": 1, "test": 2}
LETTER_FAMILIES = {"val": 10, "test": 12}
HEBREW_BLUR, HEBREW_SIGMA = 0.7, 24.0  # hebrew-noisy-fonts' degradation


def noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(image.convert("L"), dtype=np.float64)
    arr = arr + rng.normal(0.0, sigma, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")


def digits_noisy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = image.convert("L").rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    return noise(image, 70.0, rng)


def build(pair: str, split: str) -> tuple[list, np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng([SPLIT_SEED[split], sum(map(ord, pair))])
    if pair.startswith("digits"):
        images, labels = digits.load_split(split)  # digits-clean: as they are
        if pair == "digits-noisy":
            images = [digits_noisy(im, rng) for im in images]
        elif pair == "digits-grainy":
            images = [noise(im, 80.0, rng) for im in images]
        return images, labels, digits.CLASSNAMES, digits.TEMPLATES
    task = {
        "lowercase-fonts": letters.LOWERCASE,
        "cyrillic-fonts": letters.CYRILLIC,
        "greek-fonts": letters.GREEK,
        "cyrillic-upper-fonts": letters.CYRILLIC_UPPER,
        "greek-upper-fonts": letters.GREEK_UPPER,
        "hebrew-noisy-fonts": letters.HEBREW,
        "hebrew-fonts": letters.HEBREW,
    }.get(pair, letters)
    images, labels = task.load_split(split, max_families=LETTER_FAMILIES[split])
    if pair == "letters-fonts":
        images = [noise(im, 24.0, rng) for im in images]
    elif pair == "hebrew-noisy-fonts":
        images = [noise(im.filter(ImageFilter.GaussianBlur(HEBREW_BLUR)), HEBREW_SIGMA, rng) for im in images]
    return images, labels, task.CLASSNAMES, task.TEMPLATES


PAIRS = (
    "digits-clean",
    "digits-noisy",
    "digits-grainy",
    "letters-fonts",
    "lowercase-fonts",
    "cyrillic-fonts",
    "greek-fonts",
    "cyrillic-upper-fonts",
    "greek-upper-fonts",
    "hebrew-noisy-fonts",
)
CHECKS = ("hebrew-fonts",)  # written only when asked for (--only)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=PAIRS + CHECKS, action="append")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for pair in args.only or PAIRS:
        root = args.out / pair
        if root.exists():
            shutil.rmtree(root)
        for split in ("val", "test"):
            images, labels, classnames, templates = build(pair, split)
            write_wds_classification(root, images, labels, classnames, templates, split=split, n_shards=4)
            print(f"{pair}/{split}: {len(images)} images, {len(classnames)} classes")


if __name__ == "__main__":
    main()
