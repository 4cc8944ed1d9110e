"""26 capital letters rendered in the free font faces of Debian's font packages: a many-class
task for the proxy suite (``bench/suite.py``), with training, validation and test fonts disjoint.
``LOWERCASE`` is the same task for the 26 lowercase letters, ``CYRILLIC`` for the 32 lowercase
Cyrillic letters а-я, ``GREEK`` for the 24 lowercase Greek letters α-ω, ``CYRILLIC_UPPER`` for
the 32 capital Cyrillic letters А-Я, ``GREEK_UPPER`` for the 24 capital Greek letters Α-Ω and
``HEBREW`` for the 22 Hebrew letters א-ת (the validation-only and held-out pairs of
``bench/proxies.py``): the same families in the same splits, as far as they cover the alphabet.

Fonts: every face fontconfig lists whose character map covers A-Z, one face per family (the
upright regular one where the family has it), symbol, math and icon fonts left out, and families
whose 26 renders are pixel-identical to an earlier family's dropped. Each family goes to a split
by a hash of its name (stable when fonts are added or removed): 15 % test, 10 % validation, the
rest training. Install the faces this project used with::

    apt-get install fonts-urw-base35 fonts-liberation fonts-freefont-ttf fonts-texgyre fonts-noto-core \
        fonts-lato fonts-open-sans fonts-roboto-unhinted fonts-cantarell fonts-linuxlibertine ...

and, for ``HEBREW`` only (most of those faces lack Hebrew), ``culmus fonts-ldco fonts-sil-ezra`` as well:
their faces cover A-Z too, so they add families to the other alphabets' splits, which were listed
(and their data sets written) without them.

(the full list, with the families found in each split, is recorded in the trained model's
``TRAINING.json`` and in ``bench/proxies/README.md``).

Images: a white letter on black, RGB 32x32, the glyph's box scaled to ``height`` pixels tall and
centred (training renders vary height and position; validation and test renders are centred at
22 px before any degradation).
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache, partial
from types import SimpleNamespace

import numpy as np

CLASSNAMES = [chr(ord("A") + i) for i in range(26)]
LOWERCASE_CLASSNAMES = [chr(ord("a") + i) for i in range(26)]
CYRILLIC_CLASSNAMES = [chr(0x430 + i) for i in range(32)]  # а-я (ё, outside the block's run, left out)
# The first template is the one the classifier scores with (``prompts: first``).
TEMPLATES = [
    "the capital letter {c}.",
    "a printed letter {c}.",
    "the character {c}.",
    "an image of the letter {c}.",
]
LOWERCASE_TEMPLATES = [
    "the lowercase letter {c}.",
    "a small printed letter {c}.",
    "the character {c}.",
    "an image of the letter {c}.",
]
GREEK_CLASSNAMES = [chr(c) for c in range(0x3B1, 0x3CA) if c != 0x3C2]  # α-ω (final sigma left out)
GREEK_TEMPLATES = [
    "the greek letter {c}.",
    "a printed greek letter {c}.",
    "the character {c}.",
    "an image of the letter {c}.",
]
CYRILLIC_TEMPLATES = [
    "the cyrillic letter {c}.",
    "a printed cyrillic letter {c}.",
    "the character {c}.",
    "an image of the letter {c}.",
]
CYRILLIC_UPPER_CLASSNAMES = [chr(0x410 + i) for i in range(32)]  # А-Я (Ё left out)
CYRILLIC_UPPER_TEMPLATES = [
    "the capital cyrillic letter {c}.",
    "a printed capital cyrillic letter {c}.",
    "the character {c}.",
    "an image of the letter {c}.",
]
GREEK_UPPER_CLASSNAMES = [chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2]  # Α-Ω (U+03A2 is unassigned)
GREEK_UPPER_TEMPLATES = [
    "the capital greek letter {c}.",
    "a printed capital greek letter {c}.",
    "the character {c}.",
    "an image of the letter {c}.",
]
# The 22 letters; the five final forms (ך ם ן ף ץ, interleaved in the block) left out, as Greek's final sigma.
HEBREW_CLASSNAMES = [chr(c) for c in range(0x5D0, 0x5EB) if c not in (0x5DA, 0x5DD, 0x5DF, 0x5E3, 0x5E5)]
HEBREW_TEMPLATES = [
    "the hebrew letter {c}.",
    "a printed hebrew letter {c}.",
    "the character {c}.",
    "an image of the letter {c}.",
]
IMAGE_SIZE = 32
SPLITS = ("train", "val", "test")
_SKIP = ("symbol", "math", "emoji", "dingbat", "icon", "music", "braille", "awesome", "ornament", "wingding", "cursor", "sign")
_STYLE_RANK = ("regular", "book", "roman", "normal", "medium", "")


def _fc_faces() -> list[tuple[str, str, str]]:
    out = subprocess.run(["fc-list", "--format", "%{family[0]}\t%{style[0]}\t%{file}\n"], check=True, capture_output=True, text=True).stdout
    faces = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].lower().endswith((".ttf", ".otf", ".pfb", ".t1")):
            faces.append((parts[0], parts[1], parts[2]))
    return sorted(set(faces))


def _covers(path: str, alphabet: tuple[str, ...]) -> bool:
    try:
        from fontTools.ttLib import TTFont

        font = TTFont(path, lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
    except Exception:  # noqa: BLE001 - Type 1 or unreadable: let the renderer decide
        return path.lower().endswith((".pfb", ".t1"))
    return all(ord(c) in cmap for c in alphabet)


def _style_rank(style: str) -> tuple[int, str]:
    s = style.lower()
    upright = not any(w in s for w in ("italic", "oblique", "slanted"))
    weight = next((i for i, w in enumerate(_STYLE_RANK) if w and w in s), len(_STYLE_RANK))
    bold = any(w in s for w in ("bold", "black", "heavy", "light", "thin", "condensed", "narrow", "semi", "extra"))
    return (0 if upright else 1) * 100 + (10 if bold else 0) + weight, s


def render(path: str, letter: str, height: float = 22.0, dx: float = 0.0, dy: float = 0.0):
    """One glyph, its ink box scaled to ``height`` pixels and centred (+ ``dx, dy``) in 32x32 RGB."""
    from PIL import Image, ImageDraw, ImageFont

    big = 128
    font = ImageFont.truetype(path, big)
    canvas = Image.new("L", (3 * big, 3 * big), 0)
    ImageDraw.Draw(canvas).text((big, big), letter, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{path} renders {letter!r} as nothing")
    glyph = canvas.crop(box)
    w, h = glyph.size
    scale = height / max(h, 1)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if new_w > IMAGE_SIZE - 2:  # very wide glyphs: fit the width instead
        scale = (IMAGE_SIZE - 2) / w
        new_w, new_h = IMAGE_SIZE - 2, max(1, round(h * scale))
    glyph = glyph.resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    x = round((IMAGE_SIZE - new_w) / 2 + dx)
    y = round((IMAGE_SIZE - new_h) / 2 + dy)
    out.paste(glyph, (x, y))
    return out.convert("RGB")


@lru_cache(maxsize=2)
def fonts(alphabet: tuple[str, ...] = tuple(CLASSNAMES)) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(family, font file), ...]}``, families sorted by name within each split; only
    families covering ``alphabet``, and none whose renders of it repeat an earlier family's."""
    by_family: dict[str, list[tuple[str, str]]] = {}
    for family, style, path in _fc_faces():
        if any(word in family.lower() for word in _SKIP):
            continue
        by_family.setdefault(family, []).append((style, path))
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for family in sorted(by_family):
        style, path = min(by_family[family], key=lambda sp: (_style_rank(sp[0]), sp[1]))
        if not _covers(path, alphabet):
            continue
        try:
            digest = hashlib.sha256(b"".join(np.asarray(render(path, c)).tobytes() for c in alphabet)).hexdigest()
        except Exception:  # noqa: BLE001 - a face PIL cannot render is skipped
            continue
        if digest in seen:
            continue
        seen.add(digest)
        chosen.append((family, path))
    splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for family, path in chosen:
        bucket = int(hashlib.sha256(family.encode()).hexdigest(), 16) % 20
        split = "test" if bucket < 3 else "val" if bucket < 5 else "train"
        splits[split].append((family, path))
    return splits


def load_split(name: str, seed: int = 0, variants: int = 3, max_families: int | None = None, classnames: list[str] = CLASSNAMES) -> tuple[list, np.ndarray]:
    """Images and labels of a split. ``train``: ``variants`` renders per (font, letter) with
    random height (18-26 px) and offset (+-2 px); ``val`` / ``test``: one centred 22 px render.
    ``max_families``: only the first families of the split, by name."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _family, path in fonts(tuple(classnames))[name][:max_families]:
        for y, letter in enumerate(classnames):
            if name == "train":
                for _ in range(variants):
                    h, dx, dy = rng.uniform(18, 26), rng.uniform(-2, 2), rng.uniform(-2, 2)
                    images.append(render(path, letter, h, dx, dy))
                    labels.append(y)
            else:
                images.append(render(path, letter))
                labels.append(y)
    return images, np.asarray(labels, dtype=np.int64)


def split_indices(seed: int = 0, classnames: list[str] = CLASSNAMES) -> dict[str, list[str]]:
    """The font families of each split (the split is by family, not by image)."""
    return {s: [f for f, _ in v] for s, v in fonts(tuple(classnames)).items()}


def task(classnames: list[str], templates: list[str]) -> SimpleNamespace:
    """Another alphabet as a task, with the attributes scripts/train_tiny_digits.py and
    make_proxy_data.py use (this module is the capitals' task)."""
    return SimpleNamespace(
        CLASSNAMES=classnames,
        TEMPLATES=templates,
        IMAGE_SIZE=IMAGE_SIZE,
        load_split=partial(load_split, classnames=classnames),
        split_indices=partial(split_indices, classnames=classnames),
    )


LOWERCASE = task(LOWERCASE_CLASSNAMES, LOWERCASE_TEMPLATES)
CYRILLIC = task(CYRILLIC_CLASSNAMES, CYRILLIC_TEMPLATES)
GREEK = task(GREEK_CLASSNAMES, GREEK_TEMPLATES)
CYRILLIC_UPPER = task(CYRILLIC_UPPER_CLASSNAMES, CYRILLIC_UPPER_TEMPLATES)
GREEK_UPPER = task(GREEK_UPPER_CLASSNAMES, GREEK_UPPER_TEMPLATES)
HEBREW = task(HEBREW_CLASSNAMES, HEBREW_TEMPLATES)
