"""Reading a local webdataset (CLIP_benchmark's layout: ``{split}/nshards.txt`` and ``{split}/{i}.tar``
shards of ``.cls`` labels and images): its shards, its samples and labels without decoding
images, and its classification pipeline with corrupt images named and skipped (or stopping the run).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from diffcls_plugin.errors import DiffclsError

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")


def n_shards(root: str | os.PathLike, split: str) -> int | None:
    """The shard count ``{root}/{split}/nshards.txt`` gives, or ``None`` when the file does not exist."""
    path = Path(root) / split / "nshards.txt"
    if not path.is_file():
        return None
    return int(path.read_text().strip() or 0)


def shard_paths(root: str | os.PathLike, split: str) -> list[str]:
    """Every shard path of a split, in order (``[]`` without ``nshards.txt``)."""
    return [str(Path(root) / split / f"{i}.tar") for i in range(n_shards(root, split) or 0)]


def wds_members(root: Path, split: str) -> tuple[list[str], list[tuple[str, str]], list[int]]:
    """(shard paths, (shard, key) of every sample, labels) of a local webdataset, without decoding images.

    A run reads them up to three times (its checks, its sample count, its subset); the shards are
    scanned once per content, keyed by every shard's size and modification time.
    """
    shards = tuple(shard_paths(root, split))
    stamps = tuple((os.stat(s).st_size, os.stat(s).st_mtime_ns) for s in shards)
    ids, labels = _scan_shards(shards, stamps)
    return list(shards), list(ids), list(labels)


@lru_cache(maxsize=16)
def _scan_shards(shards: tuple[str, ...], stamps: tuple) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
    import tarfile

    ids, labels = [], []
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".cls"):
                    ids.append((shard, member.name[: -len(".cls")]))
                    labels.append(int(tar.extractfile(member).read().decode().strip()))
    return tuple(ids), tuple(labels)


def wds_classification(dataset, root: Path, split: str, transform, keep=None, on_corrupt: str = "skip"):
    """The harness's webdataset classification pipeline (same shards, order and labels), read by
    this package: images of any bit depth become 8-bit RGB correctly, and a corrupt image is named
    by its shard and key, then skipped (``on_corrupt: skip``) or stops the run (``stop``).

    Args:
        dataset: the harness's dataset (its ``classes`` and ``templates`` are kept).
        root, split: the local webdataset.
        transform: the model's image transform.
        keep: optional set of ``(shard path, key)`` to read (a subset); ``None`` reads all.
    """
    import webdataset as wds

    from diffcls_plugin.data.images import decode_image

    def samples(source):
        for sample in source:
            if keep is not None and (sample["__url__"], sample["__key__"]) not in keep:
                continue
            where = f"image {sample['__key__']!r} in shard {sample['__url__']}"
            ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            try:
                if ext is None:
                    raise ValueError(f"no {'/'.join(IMAGE_EXTENSIONS)} member")
                image = decode_image(sample[ext])
                label = int(sample["cls"])
            except Exception as err:  # noqa: BLE001 - any undecodable sample is handled the same way
                if on_corrupt == "stop":
                    raise DiffclsError(f"corrupt {where}: {err}; remove it from the shard, or set 'on_corrupt: skip' to skip and count such images") from None
                print(f"diffcls: skipped the corrupt {where}: {err}", file=sys.stderr)
                continue
            yield (transform(image) if transform is not None else image, label)

    out = wds.WebDataset(shard_paths(root, split), nodesplitter=lambda src: src, shardshuffle=False).compose(samples)
    out.classes, out.templates = dataset.classes, dataset.templates
    return out
