"""The harness's datasets as diffusion runs read them: its ``build_dataset`` wrapped for subsets,
local webdatasets read by :mod:`diffcls_plugin.data.wds` and clean class lists, and a labelled
dataset for workflows that fit on one (``diffcls fit-weights``)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path

from diffcls_plugin.data.subset import SubsetSpec, fingerprint, select
from diffcls_plugin.data.wds import n_shards, wds_classification, wds_members
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.harness.downloads import guard_download
from diffcls_plugin.harness.names import class_names, dataset_root, is_local_wds, task_of
from diffcls_plugin.harness.preflight import check_dataset
from diffcls_plugin.harness.session import RunRecord, current_session, session


def attribute_labels(dataset) -> list[int] | None:
    """Every image's label from the dataset's label attribute (``targets``, ``labels``,
    ``_labels``), or ``None`` when it has none of the dataset's length."""
    for attr in ("targets", "labels", "_labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and len(labels) == len(dataset):
            return [int(y) for y in labels]
    return None


def wds_canonical(root: Path, split: str) -> tuple[list[tuple[str, str]], list[int]]:
    """A local webdataset's sample ids and labels in a canonical order, whatever the sharding:
    sorted by key (then shard); the order stratified subsets choose from."""
    _, ids, labels = wds_members(root, split)
    order = sorted(range(len(ids)), key=lambda i: (ids[i][1], ids[i][0]))
    return [ids[i] for i in order], [labels[i] for i in order]


def dataset_labels(dataset) -> list[int]:
    """Every image's label, read from the dataset's label attributes when it has them."""
    labels = attribute_labels(dataset)
    if labels is not None:
        return labels
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if samples is not None and len(samples) == len(dataset):
        return [int(y) for _, y in samples]
    transform = getattr(dataset, "transform", None)
    try:  # read every sample, without the (expensive) image transform where possible
        if transform is not None:
            dataset.transform = None
        return [int(dataset[i][1]) for i in range(len(dataset))]
    finally:
        if transform is not None:
            dataset.transform = transform


def wds_subset(dataset, root: Path, split: str, transform, spec: SubsetSpec, on_corrupt: str = "skip"):
    """The harness's webdataset pipeline restricted to a stratified subset of its samples."""
    if n_shards(root, split) is None:
        raise DiffclsError(f"subsets of webdatasets need a local --dataset_root with {split}/nshards.txt; {root} has none")
    ids, labels = wds_canonical(root, split)
    idx = select(labels, spec)
    keep = {ids[i] for i in idx}
    return wds_classification(dataset, root, split, transform, keep=keep, on_corrupt=on_corrupt), idx


def subset_of(dataset, name: str, root: str, split: str, transform, spec: SubsetSpec, on_corrupt: str = "skip"):
    """(subset dataset, chosen indices) for a map-style or local webdataset harness dataset."""
    import torch

    if name.startswith("wds/"):
        return wds_subset(dataset, Path(root), split, transform, spec, on_corrupt)
    idx = select(dataset_labels(dataset), spec)
    subset = torch.utils.data.Subset(dataset, idx.tolist())
    for attr in ("classes", "templates"):
        setattr(subset, attr, getattr(dataset, attr, None))
    return subset, idx


def _cheap_labels(name: str, root, split: str, built, spec: SubsetSpec | None) -> list[int] | None:
    """The labels of a built dataset when they can be read without decoding its images, else ``None``."""
    if is_local_wds(name, root) and n_shards(root, split) is not None:
        _, labels = wds_canonical(Path(root), split)
        return labels if spec is None else [labels[i] for i in select(labels, spec)]
    if hasattr(built, "indices") and hasattr(built, "dataset"):  # a Subset of a map-style dataset
        labels = attribute_labels(built.dataset)
        return None if labels is None else [labels[i] for i in built.indices]
    return attribute_labels(built)


def wrap_build_dataset(build_dataset):
    """The harness's ``build_dataset``, which for a diffusion run or a subset reads local
    webdatasets itself, takes the session's subset and records the images it holds; a failed
    download is one :class:`DiffclsError` and leaves no empty folder (:func:`guard_download`)."""
    guarded = guard_download(build_dataset)

    @functools.wraps(build_dataset)
    def build(dataset_name, root="root", transform=None, split="test", *args, **kwargs):
        dataset = guarded(dataset_name, root, transform, split, *args, **kwargs)
        current = current_session()
        if current is None or (current.active is None and current.subset is None):
            if current is not None and current.record is not None:
                with contextlib.suppress(TypeError):
                    current.record.n_images = len(dataset)
            return dataset  # not a diffusion run, no subset: the harness's dataset, untouched
        record = current.record if current.record is not None else RunRecord(model="", dataset=dataset_name)
        spec = current.subset
        on_corrupt = current.active.config.on_corrupt if current.active is not None else "skip"
        if getattr(dataset, "classes", None) is not None:
            dataset.classes = class_names(dataset.classes)
        if isinstance(getattr(dataset, "templates", None), list):
            dataset.templates = [t for t in dataset.templates if str(t).strip()]
        if spec is None:
            if is_local_wds(dataset_name, root) and n_shards(root, split) is not None:
                record.n_images = record.n_images_expected = len(wds_members(Path(root), split)[1])
                dataset = wds_classification(dataset, Path(root), split, transform, on_corrupt=on_corrupt)
            else:
                with contextlib.suppress(TypeError):
                    record.n_images = len(dataset)
            return dataset
        subset, idx = subset_of(dataset, dataset_name, root, split, transform, spec, on_corrupt)
        record.n_images = record.n_images_expected = len(idx)
        record.subset = {**spec.to_dict(), "n_images": len(idx), "indices_sha256": fingerprint(idx)}
        print(f"diffcls: evaluating a stratified subset of {dataset_name}: {len(idx)} images ({spec.to_dict()})", file=sys.stderr)
        return subset

    return build


def check_labelled(dataset: str, root: str, split: str) -> None:
    """Before any weights load: ``dataset`` must be a classification dataset whose ``split`` the
    harness can build from ``root`` (as a run checks it).

    Raises:
        DiffclsError: naming the dataset, the split and the fix.
    """
    args = argparse.Namespace(
        dataset=dataset,
        dataset_root=root,
        split=split,
        task="auto",
        annotation_file="",
        language="en",
        custom_template_file=None,
        custom_classname_file=None,
        wds_cache_dir=None,
    )
    task = task_of(args)
    if task != "zeroshot_classification":
        raise DiffclsError(f"dataset {dataset!r} runs {task!r}; tuning and timestep weights need a labelled classification dataset")
    check_dataset(args, task)


def labelled_dataset(dataset: str, root: str, split: str, transform, subset: SubsetSpec | None = None, info: dict | None = None):
    """A harness classification dataset with ``transform``, through the harness's own builder (and
    the plugin's subset choice): ``(dataset, classnames, templates)``, checked as a run checks it.
    ``info``, if given, is filled with ``n_images`` (when known), ``subset`` (the subset's
    description with its indices' SHA-256) and ``labels`` (when they can be read without decoding images)."""
    from clip_benchmark.datasets import builder

    check_labelled(dataset, root, split)
    root = dataset_root(root, dataset)
    record = RunRecord(model="", dataset=dataset)
    with session(subset=subset) as current:
        current.record = record
        built = wrap_build_dataset(builder.build_dataset)(dataset, root, transform, split, download=True, task="zeroshot_classification")
    if info is not None:
        info.update(n_images=record.n_images, subset=record.subset, labels=_cheap_labels(dataset, root, split, built, subset))
    classes = class_names(getattr(built, "classes", None))
    templates = [t for t in (getattr(built, "templates", None) or ["a photo of a {c}."]) if str(t).strip()]
    return built, classes, templates
