"""Write image classification data in CLIP_benchmark's webdataset layout (``--dataset wds/<name>``).

Layout read by ``clip_benchmark.datasets.builder.build_wds_dataset``::

    root/
      classnames.txt                          one class name per line, in label order
      zeroshot_classification_templates.txt   one template per line, with {c}
      test/nshards.txt                        the number of shards
      test/0.tar, test/1.tar, ...             <key>.png + <key>.cls per sample
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_N_SHARDS = 4  # clip_benchmark's default --num_workers: fewer shards than workers fails


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible archives
    tar.addfile(info, io.BytesIO(data))


def write_wds_classification(
    root: str | os.PathLike,
    images: Sequence,
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    split: str = "test",
    n_shards: int = DEFAULT_N_SHARDS,
) -> Path:
    """Write PIL images and integer labels as a webdataset classification dataset.

    Samples are dealt to shards round-robin (sample ``i`` goes to shard ``i % n_shards``), so
    every shard is non-empty when there are at least ``n_shards`` samples.

    Returns:
        ``root``, ready for ``--dataset wds/<name> --dataset_root root``.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not 1 <= n_shards <= max(len(images), 1):
        raise ValueError(f"n_shards must be between 1 and the number of samples ({len(images)}), got {n_shards}")
    bad = [y for y in labels if not 0 <= int(y) < len(classnames)]
    if bad:
        raise ValueError(f"labels {sorted(set(bad))[:5]} are outside 0..{len(classnames) - 1}")
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (root / split / "nshards.txt").write_text(f"{n_shards}\n")
    tars = [tarfile.open(root / split / f"{s}.tar", "w", format=tarfile.USTAR_FORMAT) for s in range(n_shards)]
    try:
        for i, (image, label) in enumerate(zip(images, labels)):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            key = f"{i:06d}"
            _add(tars[i % n_shards], f"{key}.png", buffer.getvalue())
            _add(tars[i % n_shards], f"{key}.cls", str(int(label)).encode())
    finally:
        for tar in tars:
            tar.close()
    return root
