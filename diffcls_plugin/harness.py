"""CLIP_benchmark integration: the only module that imports ``clip_benchmark``.

CLIP_benchmark has no plugin hook, so this module patches three of its modules, each right
after it is imported (see :mod:`diffcls_plugin._hook`) or all at once by :func:`register`:

- ``clip_benchmark.models``: ``--model_type diffusion`` joins ``MODEL_TYPES`` (and so
  ``clip_benchmark eval --help``); with the default ``--model_type open_clip``, model names
  starting with ``diffusion-`` are routed to the plugin.
- ``clip_benchmark.metrics.zeroshot_classification``: ``evaluate`` hands a diffusion model its
  classnames and templates before the first image and runs it with autocast off (so bf16/fp16
  autocast cannot create ties between class scores); ``accuracy`` is replaced by an equivalent
  when the installed numpy breaks the harness's (numpy >= 2.4).
- ``clip_benchmark.cli``: ``run`` validates a diffusion run before anything loads (model and
  sampler names, config, checkpoint, task, dataset type), and adds a ``diffcls`` block to the
  result JSON it writes, keeping the harness schema so ``clip_benchmark build`` still works.

Every patch is a no-op for runs of other models, except the ``accuracy`` fix, which returns the
same numbers as the original.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffcls_plugin.config import DiffclsConfig, config_from_env
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.model import MODELS, DiffusionClassifier, load_classifier
from diffcls_plugin.subset import SubsetSpec, fingerprint, select
from diffcls_plugin.zoo import DEFAULT_CHECKPOINT, Checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)

MODEL_TYPE = "diffusion"
MODEL_PREFIX = "diffusion-"
HARNESS_DEFAULT_PRETRAINED = "laion400m_e32"  # clip_benchmark eval's default --pretrained
MULTILABEL_DATASETS = ("voc2007_multilabel",)
PATCHED = "_diffcls_patched"


@dataclass
class RunContext:
    """What the patched ``run`` resolved for one (model, dataset) run of the harness."""

    config: DiffclsConfig
    seed: int
    checkpoint: Checkpoint
    output: str
    model: DiffusionClassifier | None = None


_active: RunContext | None = None
_config_override: DiffclsConfig | None = None
_subset: SubsetSpec | None = None
last_dataset: dict[str, Any] = {}  # what the last build_dataset call produced: n_images, subset


@contextlib.contextmanager
def use_config(config: DiffclsConfig):
    """Run harness evaluations in this process with ``config`` instead of ``$DIFFCLS_CONFIG``."""
    global _config_override
    previous, _config_override = _config_override, config
    try:
        yield
    finally:
        _config_override = previous


@contextlib.contextmanager
def use_subset(spec: SubsetSpec | None):
    """Evaluate harness datasets built in this process on a stratified subset (see :mod:`subset`)."""
    global _subset
    if spec is not None:
        spec.validate()
    previous, _subset = _subset, spec
    try:
        yield
    finally:
        _subset = previous


def is_diffusion_model(model_type: str, model_name: str) -> bool:
    return model_type == MODEL_TYPE or str(model_name).startswith(MODEL_PREFIX)


# ------------------------------------------------------------------------------- models
def load_for_harness(model_name: str, pretrained: str, cache_dir: str | None = None, device="cpu"):
    """The harness's loader signature -> ``(model, transform, tokenizer)``."""
    ctx = _active
    if ctx is not None:
        model = load_classifier(
            model_name, ctx.checkpoint, device=device, config=ctx.config, seed=ctx.seed, cache_dir=cache_dir
        )
        ctx.model = model
    else:  # called outside the harness CLI, e.g. clip_benchmark.models.load_clip(...)
        if pretrained == HARNESS_DEFAULT_PRETRAINED:
            pretrained = DEFAULT_CHECKPOINT
        model = load_classifier(model_name, pretrained, device=device, config=_config_override, cache_dir=cache_dir)
    return model, model.transform, model.tokenizer


def patch_models(module) -> None:
    """Add ``--model_type diffusion`` and route ``diffusion-*`` names under ``open_clip``."""
    if getattr(module, PATCHED, False):
        return
    module.TYPE2FUNC[MODEL_TYPE] = load_for_harness
    if MODEL_TYPE not in module.MODEL_TYPES:
        module.MODEL_TYPES.append(MODEL_TYPE)  # the same list object the CLI's --model_type choices use
    open_clip_loader = module.TYPE2FUNC["open_clip"]

    @functools.wraps(open_clip_loader)
    def load_open_clip_or_diffusion(model_name, *args, **kwargs):
        if str(model_name).startswith(MODEL_PREFIX):
            return load_for_harness(model_name, *args, **kwargs)
        return open_clip_loader(model_name, *args, **kwargs)

    module.TYPE2FUNC["open_clip"] = load_open_clip_or_diffusion
    setattr(module, PATCHED, True)


# ------------------------------------------------------------------------------ metrics
def accuracy(output, target, topk=(1,)):
    """The harness's top-k accuracy, computed without numpy scalar conversion."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum().item()) / n for k in topk]


def _accuracy_is_broken(original) -> bool:
    import torch

    try:
        original(torch.tensor([[0.2, 0.8]]), torch.tensor([1]), topk=(1,))
    except TypeError:
        return True
    return False


def patch_metrics(module) -> None:
    """Prepare diffusion models with the classes, switch autocast off for them, fix ``accuracy``."""
    if getattr(module, PATCHED, False):
        return
    original_evaluate = module.evaluate

    @functools.wraps(original_evaluate)
    def evaluate(model, dataloader, tokenizer, classnames, templates, device, amp=True, *args, **kwargs):
        if not isinstance(model, DiffusionClassifier):
            return original_evaluate(model, dataloader, tokenizer, classnames, templates, device, amp, *args, **kwargs)
        try:
            n_images = len(dataloader.dataset)
        except TypeError:  # webdataset: an IterableDataset without a length
            n_images = None
        model.prepare(classnames, templates, n_images=n_images)
        try:
            return original_evaluate(model, dataloader, tokenizer, classnames, templates, device, False, *args, **kwargs)
        finally:
            model.close_progress()

    module.evaluate = evaluate
    if _accuracy_is_broken(module.accuracy):
        module.accuracy = accuracy
    setattr(module, PATCHED, True)


# ---------------------------------------------------------------------------------- cli
def _dataset_name(dataset: str) -> str:
    return dataset.replace("wds/", "", 1) if dataset.startswith("wds/") else dataset


def _task(args) -> str:
    from clip_benchmark.datasets.builder import get_dataset_default_task

    return get_dataset_default_task(_dataset_name(args.dataset)) if args.task == "auto" else args.task


def output_path(args, task: str) -> str:
    """Where the harness's ``run`` writes its JSON (the same formula as clip_benchmark.cli.run)."""
    is_file = os.path.isfile(args.pretrained)
    return args.output.format(
        model=args.model,
        pretrained=os.path.basename(args.pretrained) if is_file else args.pretrained,
        pretrained_full_path=args.pretrained.replace("/", "_") if is_file else args.pretrained,
        task=task,
        dataset=_dataset_name(args.dataset).replace("/", "_"),
        language=args.language,
    )


def _wds_root(args) -> Path:
    name = _dataset_name(args.dataset)
    return Path(args.dataset_root.format(dataset=name, dataset_cleaned=name.replace("/", "-")))


def prepare_run(args) -> RunContext:
    """Validate a diffusion run before any weights or data load; adjust ``args`` where needed."""
    MODELS.get(args.model)
    task = _task(args)
    if task != "zeroshot_classification":
        raise DiffclsError(
            f"--model {args.model} supports only --task zeroshot_classification, but dataset "
            f"{args.dataset!r} runs {task!r}; pick a classification dataset"
        )
    root = _wds_root(args) if args.dataset.startswith("wds/") else None
    dataset_type = ""
    if root is not None and (root / "dataset_type.txt").is_file():
        dataset_type = (root / "dataset_type.txt").read_text().strip().lower()
    if args.dataset in MULTILABEL_DATASETS or dataset_type == "multilabel":
        raise DiffclsError(
            f"dataset {args.dataset!r} is multi-label; diffusion classifiers rank classes per image and "
            "support single-label classification only: use its single-label variant (e.g. voc2007)"
        )
    config = _config_override if _config_override is not None else config_from_env()
    if args.pretrained == HARNESS_DEFAULT_PRETRAINED:
        print(f"diffcls: --pretrained left at the harness default; using {DEFAULT_CHECKPOINT!r}", file=sys.stderr)
        args.pretrained = DEFAULT_CHECKPOINT
    checkpoint = resolve_checkpoint(args.pretrained)
    if checkpoint.is_local and args.pretrained not in _zoo_names():
        # the harness puts --pretrained into the output file name: use the folder's name there
        args.pretrained = Path(checkpoint.source).name
    if root is not None and (root / args.split / "nshards.txt").is_file():
        n_shards = int((root / args.split / "nshards.txt").read_text().strip())
        if 0 < n_shards < args.num_workers:
            print(
                f"diffcls: {args.dataset} has {n_shards} shards, fewer than --num_workers {args.num_workers}; "
                f"using {n_shards} loader workers (the harness's webdataset loader fails otherwise)",
                file=sys.stderr,
            )
            args.num_workers = n_shards
    return RunContext(config=config, seed=int(args.seed), checkpoint=checkpoint, output=output_path(args, task))


def _zoo_names() -> set[str]:
    from diffcls_plugin.zoo import zoo

    return set(zoo())


def add_result_block(path: str, block: dict[str, Any]) -> None:
    """Merge ``block`` into the ``diffcls`` block of a result JSON the harness wrote."""
    with open(path) as f:
        dump: dict[str, Any] = json.load(f)
    dump["diffcls"] = {**dump.get("diffcls", {}), **block}
    with open(path, "w") as f:
        json.dump(dump, f, indent=None)


# ------------------------------------------------------------------------------ subsets
def dataset_labels(dataset) -> list[int]:
    """Every image's label, read from the dataset's label attributes when it has them."""
    for attr in ("targets", "labels", "_labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and len(labels) == len(dataset):
            return [int(y) for y in labels]
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


def wds_members(root: Path, split: str) -> tuple[list[str], list[tuple[str, str]], list[int]]:
    """(shard paths, (shard, key) of every sample, labels) of a local webdataset, without decoding images."""
    import tarfile

    nshards = int((root / split / "nshards.txt").read_text().strip())
    shards = [str(root / split / f"{i}.tar") for i in range(nshards)]
    ids, labels = [], []
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".cls"):
                    ids.append((shard, member.name[: -len(".cls")]))
                    labels.append(int(tar.extractfile(member).read().decode().strip()))
    return shards, ids, labels


def wds_subset(dataset, root: Path, split: str, transform, spec: SubsetSpec):
    """The harness's webdataset pipeline restricted to a stratified subset of its samples."""
    import webdataset as wds

    if not (root / split / "nshards.txt").is_file():
        raise DiffclsError(f"subsets of webdatasets need a local --dataset_root with {split}/nshards.txt; {root} has none")
    shards, ids, labels = wds_members(root, split)
    # a canonical order, whatever the sharding: samples sorted by key (then shard)
    order = sorted(range(len(ids)), key=lambda i: (ids[i][1], ids[i][0]))
    ids, labels = [ids[i] for i in order], [labels[i] for i in order]
    idx = select(labels, spec)
    keep = {ids[i] for i in idx}
    subset = (
        wds.WebDataset(shards, nodesplitter=lambda src: src, shardshuffle=False)
        .select(lambda sample: (sample["__url__"], sample["__key__"]) in keep)
        .decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
        .to_tuple(["webp", "png", "jpg", "jpeg"], "cls")
        .map_tuple(transform, None)
    )
    subset.classes, subset.templates = dataset.classes, dataset.templates
    return subset, idx


def subset_of(dataset, dataset_name: str, root: str, split: str, transform, spec: SubsetSpec):
    """(subset dataset, chosen indices) for a map-style or local webdataset harness dataset."""
    import torch

    if dataset_name.startswith("wds/"):
        return wds_subset(dataset, Path(root), split, transform, spec)
    idx = select(dataset_labels(dataset), spec)
    subset = torch.utils.data.Subset(dataset, idx.tolist())
    for attr in ("classes", "templates"):
        setattr(subset, attr, getattr(dataset, attr, None))
    return subset, idx


def _wrap_build_dataset(build_dataset):
    @functools.wraps(build_dataset)
    def build(dataset_name, root="root", transform=None, split="test", *args, **kwargs):
        dataset = build_dataset(dataset_name, root, transform, split, *args, **kwargs)
        last_dataset.clear()
        if _subset is None:
            try:
                last_dataset["n_images"] = len(dataset)
            except TypeError:
                pass
            return dataset
        subset, idx = subset_of(dataset, dataset_name, root, split, transform, _subset)
        last_dataset.update(n_images=len(idx), subset={**_subset.to_dict(), "n_images": len(idx), "indices_sha256": fingerprint(idx)})
        print(f"diffcls: evaluating a stratified subset of {dataset_name}: {len(idx)} images ({_subset.to_dict()})", file=sys.stderr)
        return subset

    return build


def patch_cli(module) -> None:
    """Wrap the harness's per-run function for diffusion models, and its dataset builder for subsets."""
    if getattr(module, PATCHED, False):
        return
    original_run = module.run

    @functools.wraps(original_run)
    def run(args):
        global _active
        if not is_diffusion_model(args.model_type, args.model):
            return original_run(args)
        try:
            ctx = prepare_run(args)
        except DiffclsError as err:
            raise SystemExit(f"diffcls: error: {err}") from None
        output = ctx.output
        existed = os.path.exists(output)
        _active = ctx
        try:
            status = original_run(args)
        finally:
            _active = None
        wrote = ctx.model is not None and ctx.model.n_images > 0 and os.path.exists(output)
        if wrote and not (existed and args.skip_existing):
            block = ctx.model.result_block()
            if "subset" in last_dataset:
                block["subset"] = last_dataset["subset"]
            add_result_block(output, block)
        return status

    module.run = run
    module.build_dataset = _wrap_build_dataset(module.build_dataset)  # the name run() calls
    setattr(module, PATCHED, True)


PATCHES = {
    "clip_benchmark.models": patch_models,
    "clip_benchmark.metrics.zeroshot_classification": patch_metrics,
    "clip_benchmark.cli": patch_cli,
}


def register() -> None:
    """Make the diffusion models available to an already installed CLIP_benchmark (idempotent)."""
    import importlib

    for name, patch in PATCHES.items():
        patch(importlib.import_module(name))
