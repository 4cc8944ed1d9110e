"""Checks of a diffusion run before any weights or data load, and the argument changes it needs.

:func:`preflight` checks everything a run needs (model and sampler names, config, checkpoint,
task, dataset type, classes and labels, the output folder, the prefilter's open_clip weights,
timestep weights) and returns the changes it needs the harness's arguments to take, with the notes
to print, instead of rewriting them itself; :func:`validate_cell` runs the same checks on one
``clip_benchmark eval`` command line (``diffcls run`` checks a whole matrix before computing).
A CLIP model's run gets :func:`check_clip_weights` (its open_clip weights); every dataset build
goes through :func:`guard_download` (a failed download is one line and leaves no empty folder).
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcls_plugin.config import DiffclsConfig, config_from_env
from diffcls_plugin.data.wds import n_shards, shard_paths, wds_members
from diffcls_plugin.errors import DiffclsError, short
from diffcls_plugin.harness.downloads import guard_download
from diffcls_plugin.harness.names import (
    HARNESS_DEFAULT_PRETRAINED,
    MULTILABEL_DATASETS,
    class_names,
    dataset_root,
    is_diffusion_model,
    is_local_wds,
    local_wds_root,
    output_path,
    task_of,
)
from diffcls_plugin.harness.session import RunContext, current_session, session
from diffcls_plugin.samplers import SAMPLERS_BY_MODEL
from diffcls_plugin.zoo import DEFAULT_CHECKPOINT, Checkpoint, check_hub_checkpoint, resolve_checkpoint, scheduler_length, zoo


@dataclass
class Preflight:
    """A checked diffusion run: its context, and what the harness's arguments must change to.

    Attributes:
        context: what the run resolved (config, seed, checkpoint, output path).
        changes: harness argument name -> the value the run needs (e.g. ``pretrained``, ``num_workers``).
        notes: one line each for the user, about the changes and anything suspicious found.
    """

    context: RunContext
    changes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cost: Any = None  # the run's planned cost (a diffcls_plugin.plan.Cost), also the last note

    def apply(self, args) -> None:
        """Set the changes on the harness's ``args`` and print the notes to stderr."""
        for note in self.notes:
            print(f"diffcls: {note}", file=sys.stderr)
        for name, value in self.changes.items():
            setattr(args, name, value)


def preflight(args) -> Preflight:
    """Check a diffusion run before any weights or data load (``args`` is left as it is).

    Raises:
        DiffclsError: the first problem found, naming the input and the fix.
    """
    SAMPLERS_BY_MODEL.get(args.model)
    batch_size = getattr(args, "batch_size", 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DiffclsError(f"--batch_size must be a positive integer (images per harness batch), got {batch_size!r}; e.g. --batch_size 64")
    task = task_of(args)
    if task != "zeroshot_classification":
        raise DiffclsError(
            f"--model {args.model} supports only --task zeroshot_classification, but dataset {args.dataset!r} runs {task!r}; pick a classification dataset"
        )
    root = local_wds_root(args)
    dataset_type = ""
    if root is not None and (root / "dataset_type.txt").is_file():
        dataset_type = (root / "dataset_type.txt").read_text().strip().lower()
    if args.dataset in MULTILABEL_DATASETS or dataset_type == "multilabel":
        raise DiffclsError(
            f"dataset {args.dataset!r} is multi-label; diffusion classifiers rank classes per image and "
            "support single-label classification only: use its single-label variant (e.g. voc2007)"
        )
    current = current_session()
    config = current.config if current is not None and current.config is not None else config_from_env()
    changes: dict[str, Any] = {}
    notes: list[str] = []
    pretrained = args.pretrained
    if pretrained == HARNESS_DEFAULT_PRETRAINED:
        notes.append(f"--pretrained left at the harness default; using {DEFAULT_CHECKPOINT!r}")
        pretrained = changes["pretrained"] = DEFAULT_CHECKPOINT
    checkpoint = resolve_checkpoint(pretrained)
    if checkpoint.is_local and pretrained not in zoo():
        # the harness puts --pretrained into the output file name: use the folder's name there
        changes["pretrained"] = Path(checkpoint.source).name
    count = n_shards(root, args.split) if root is not None else None
    if count is not None and 0 < count < args.num_workers:
        notes.append(
            f"{args.dataset} has {count} shards, fewer than --num_workers {args.num_workers}; "
            f"using {count} loader workers (the harness's webdataset loader fails otherwise)"
        )
        changes["num_workers"] = count
    try:
        check_checkpoint_offline(checkpoint, config.allow_pickle, getattr(args, "model_cache_dir", None))
    except DiffclsError:
        say_early_cost(args, config, checkpoint)  # what the run would cost once its checkpoint is here
        raise
    if config.prefilter is not None:
        from diffcls_plugin.prefilter import check_prefilter

        check_prefilter(config.prefilter.model, config.prefilter.pretrained)
    from diffcls_plugin.adapters import family_of

    family = family_of(checkpoint)  # an unsupported pipeline class (Flux, DiT ...) is refused here
    check_image_size(checkpoint, config.image_size)
    notes += check_timestep_weights(config, family, checkpoint, args.dataset, args.split)
    notes += check_tuned(config, args.model, args.dataset, args.split)
    adjusted = copy.copy(args)
    for name, value in changes.items():
        setattr(adjusted, name, value)
    output = output_path(adjusted, task)
    folder = Path(output).parent
    if not folder.is_dir():
        raise DiffclsError(
            f"--output {args.output!r} writes {output!r}, but the folder {str(folder)!r} does not exist; "
            f"create it first (mkdir -p {folder}) so the result can be written when the run ends"
        )
    n_classes, labels = check_dataset(adjusted, task)
    cost = planned_cost(args, config, checkpoint, family, n_classes, labels)
    notes.append(cost.line())
    return Preflight(RunContext(config=config, seed=int(args.seed), checkpoint=checkpoint, output=output), changes, notes, cost)


def say_early_cost(args, config: DiffclsConfig, checkpoint: Checkpoint) -> None:
    """Print the cost line of a run that cannot start yet, for the common datasets whose test split
    is known without its files (:data:`~diffcls_plugin.plan.KNOWN_TEST_SPLITS`); nothing for others."""
    from diffcls_plugin.plan import KNOWN_TEST_SPLITS

    if args.split != "test" or args.dataset not in KNOWN_TEST_SPLITS:
        return
    n_images, n_classes = KNOWN_TEST_SPLITS[args.dataset]
    print(f"diffcls: {planned_cost(args, config, checkpoint, checkpoint.family or 'sd', n_classes, n_images=n_images).line()}", file=sys.stderr)


def planned_cost(args, config: DiffclsConfig, checkpoint: Checkpoint, family: str, n_classes: int, labels=None, n_images: int | None = None):
    """The run's :class:`~diffcls_plugin.plan.Cost`: its images (the session's subset of its
    ``labels`` when they can be read, else of ``n_images`` when that is known), classes and sampler."""
    from diffcls_plugin.plan import plan

    current = current_session()
    subset = current.subset if current is not None else None
    if labels is not None:
        from diffcls_plugin.data.subset import select

        n_images = len(select(labels, subset)) if subset is not None else len(labels)
    elif subset is not None:  # without labels, a subset's size is known from its total, or capped by it
        cap = subset.total if subset.total is not None else (subset.per_class * n_classes if n_images is not None else None)
        n_images = cap if n_images is None else min(n_images, cap)
    return plan(
        args.model,
        args.dataset,
        SAMPLERS_BY_MODEL.get(args.model).name,
        config,
        n_classes,
        n_images,
        checkpoint=checkpoint,
        family=family,
        device=getattr(args, "device", "cuda"),
        num_train_timesteps=scheduler_length(checkpoint),
    )


def check_timestep_weights(config: DiffclsConfig, family: str, checkpoint: Checkpoint, dataset: str, split: str) -> list[str]:
    """A config's timestep weights, before any weights load: an SD3 scheme needs a flow-matching
    family; a file must be a weights file for the checkpoint's schedule length (read from a local
    folder's scheduler config). Returns a warning when the file was fitted on the evaluated split."""
    from diffcls_plugin.weighting import check_scheme_family, is_scheme, weights_for

    value = config.timestep_weights
    check_scheme_family(value, family)
    if value is None or is_scheme(value):
        return []
    weights = weights_for(value, scheduler_length(checkpoint))
    if weights.meta.get("dataset") == dataset and weights.meta.get("split") == split:
        return [
            f"WARNING: timestep_weights {value!r} were fitted on {dataset} split {split!r}, the split evaluated here: "
            "the result is tuned on its own test images. Fit them on another split (`diffcls fit-weights --split train`) "
            "or another dataset for an honest number"
        ]
    return []


def check_tuned(config: DiffclsConfig, model: str, dataset: str, split: str) -> list[str]:
    """Warnings for a config written by ``diffcls tune``: a run on the split it was tuned on (its
    number is not a held-out one), or with another model than the one it was tuned for."""
    tuned = config.tuned
    if tuned is None:
        return []
    notes = []
    if tuned.dataset == dataset and tuned.split == split:
        notes.append(
            f"WARNING: this config was tuned (`diffcls tune`) on {dataset} split {split!r}, the split evaluated here: "
            "the result is measured on the images it was chosen on. Evaluate another split for an honest number"
        )
    if tuned.model != model:
        notes.append(f"this config was tuned for --model {tuned.model}; --model {model} runs its own section of the file, which was not tuned")
    return notes


def check_checkpoint_offline(checkpoint: Checkpoint, allow_pickle: bool, cache_dir: str | None = None) -> None:
    """Before any weights load: a local folder's weights must be loadable safetensors (or allowed
    pickles); a hub id that is not in the hub cache (``cache_dir``, else the hub's) needs the hub:
    offline (``HF_HUB_OFFLINE``) or with the hub unreachable (one quick probe, instead of the
    minutes of retries of a download) the run stops, naming ``hf download`` and the cache."""
    if checkpoint.is_local:
        from safetensors import safe_open

        from diffcls_plugin.zoo import check_safetensors

        check_safetensors(Path(checkpoint.source), allow_pickle)
        for path in sorted(Path(checkpoint.source).rglob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            except Exception as err:  # noqa: BLE001 - any unreadable header is reported the same way
                raise DiffclsError(
                    f"--pretrained {checkpoint.name!r}: the weights file {str(path)!r} is not a readable safetensors file "
                    f"({err}); download or save the checkpoint again"
                ) from None
        return
    check_hub_checkpoint(checkpoint, cache_dir)


def check_clip_weights(args) -> None:
    """Before a CLIP model's run loads: its open_clip weights (``--model``, a ``--pretrained`` tag,
    ``--model_cache_dir``) are in the local cache, or the hub can be reached (one quick probe);
    raises :class:`DiffclsError` naming the weights and the command that downloads them."""
    if getattr(args, "model_type", "open_clip") != "open_clip" or getattr(args, "skip_load", False):
        return
    from diffcls_plugin.prefilter import check_open_clip_weights

    subject = f"--model {args.model} --pretrained {args.pretrained}"
    check_open_clip_weights(args.model, args.pretrained, getattr(args, "model_cache_dir", None), subject, "pass --pretrained a local weights file")


def check_image_size(checkpoint: Checkpoint, image_size: int | None) -> None:
    """Before any weights load: ``image_size`` must be a multiple of the checkpoint's VAE
    downsampling factor (read from a local folder's ``vae/config.json``)."""
    if image_size is None or not checkpoint.is_local:
        return
    path = Path(checkpoint.source) / "vae" / "config.json"
    try:
        factor = 2 ** (len(json.loads(path.read_text())["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError, TypeError):
        return  # the loader reports a damaged VAE config
    if image_size % factor:
        low = image_size - image_size % factor
        raise DiffclsError(
            f"image_size {image_size} must be a multiple of the VAE's downsampling factor {factor} for "
            f"--pretrained {checkpoint.name!r}; use {low or factor} or {low + factor}"
        )


def check_dataset(args, task: str) -> tuple[int, list[int] | None]:
    """Build the dataset once without images (the harness's own builder and arguments) and check its
    classes and, for a local webdataset, its shards and labels: every data error before any weights load.

    Returns:
        (classes, labels): the number of classes, and every image's label where they can be read
        without decoding images (``None`` otherwise)."""
    from clip_benchmark.datasets import builder

    root = dataset_root(args.dataset_root, args.dataset)
    local_wds = is_local_wds(args.dataset, root)
    if local_wds:
        split_dir = Path(root) / args.split
        count = n_shards(root, args.split)
        if count is None:
            raise DiffclsError(
                f"--dataset {args.dataset} is a webdataset, but --dataset_root {root!r} has no {args.split}/nshards.txt; "
                "pass the folder that holds classnames.txt and the split's shards (or a URL)"
            )
        missing = [Path(p).name for p in shard_paths(root, args.split) if not Path(p).is_file()]
        if missing:
            raise DiffclsError(
                f"{split_dir / 'nshards.txt'} says {count} shards but {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                f"{'is' if len(missing) == 1 else 'are'} missing from {str(split_dir)!r}; restore the shards or fix nshards.txt"
            )
    try:
        dataset = guard_download(builder.build_dataset)(
            dataset_name=args.dataset,
            root=root,
            transform=None,
            split=args.split,
            annotation_file=args.annotation_file,
            download=True,
            language=args.language,
            task=task,
            custom_template_file=args.custom_template_file,
            custom_classname_file=args.custom_classname_file,
            wds_cache_dir=args.wds_cache_dir,
        )
    except DiffclsError:
        raise
    except Exception as err:  # noqa: BLE001 - the harness raises ValueError, OSError, RuntimeError ...
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffclsError(
            f"--dataset {args.dataset} (root {root!r}, split {args.split!r}) cannot be built: {message}; "
            "check the dataset name (clip_benchmark's README lists them) and --dataset_root"
        ) from None
    classes = class_names(getattr(dataset, "classes", None))
    where = f"{root}/classnames.txt" if local_wds else f"--dataset {args.dataset}"
    if not classes:
        raise DiffclsError(f"{where} has no classes; diffusion classifiers need one class name per label")
    blank = [i + 1 for i, c in enumerate(classes) if not str(c).strip()]
    if blank:
        raise DiffclsError(f"{where} has blank class names (lines {', '.join(map(str, blank[:5]))}); remove the blank lines")
    if len(classes) == 1:
        raise DiffclsError(
            f"{where} has one class ({short(classes[0])}): every image would be it and top-5 accuracy is undefined; "
            "a classifier needs at least two class names (add the others)"
        )
    labels = None
    if local_wds:
        labels = wds_members(Path(root), args.split)[2]
    else:
        for attr in ("targets", "labels", "_labels"):
            values = getattr(dataset, attr, None)
            if values is not None:
                labels = [int(y) for y in values]
                break
    if labels is not None:
        if not labels:
            split_where = f"{root}/{args.split}" if local_wds else f"--dataset {args.dataset} split {args.split!r}"
            raise DiffclsError(f"{split_where} has no labelled images; check --split and --dataset_root (each sample needs its .cls label)")
        check_labels(labels, len(classes), where)
    return len(classes), labels


def check_labels(labels, n_classes: int, where: str) -> None:
    """Raise unless every label indexes a class."""
    bad = sorted({int(y) for y in labels if not 0 <= int(y) < n_classes})
    if bad:
        raise DiffclsError(
            f"{where}: labels {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} have no class "
            f"({n_classes} class names, so labels 0..{n_classes - 1}); add the missing class names or fix the labels"
        )


def validate_cell(argv: list[str], config: DiffclsConfig, subset=None) -> Preflight | None:
    """Check one ``clip_benchmark eval`` command line of a single (model, dataset) cell as its run
    would, without loading weights or scoring images: for a diffusion model everything
    :func:`preflight` checks; for a CLIP model its cached weights and the dataset (``diffcls run``
    has checked its open_clip name when it loaded the matrix). Raises :class:`DiffclsError`."""
    import copy

    from clip_benchmark import cli as harness_cli

    saved = sys.argv
    sys.argv = list(argv)
    try:
        _, args = harness_cli.get_parser_args()
    finally:
        sys.argv = saved
    args = copy.copy(args)
    first = lambda value: value[0] if isinstance(value, (list, tuple)) else value  # noqa: E731
    args.model, args.pretrained, args.dataset, args.language = first(args.model), first(args.pretrained), first(args.dataset), first(args.language)
    if is_diffusion_model(args.model_type, args.model):
        with session(config, subset):
            return preflight(args)
    check_clip_weights(args)
    check_dataset(args, task_of(args))
    return None
