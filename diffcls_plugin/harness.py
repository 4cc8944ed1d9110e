"""CLIP_benchmark integration: the only module that imports ``clip_benchmark``, ``open_clip`` or
``webdataset`` (the harness boundary).

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
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from diffcls_plugin import distributed
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
class RunRecord:
    """What one harness run did, handed back to the caller (see :func:`run_harness`).

    Attributes:
        model, dataset: the run's harness names.
        output: its result file (diffusion runs).
        n_images: images in the dataset it evaluated (``None`` when unknown).
        n_images_expected: images in a local webdataset (or subset) before corrupt ones were skipped.
        subset: the subset's description, when the run evaluated one.
    """

    model: str
    dataset: str
    output: str | None = None
    n_images: int | None = None
    n_images_expected: int | None = None
    subset: dict[str, Any] | None = None


@dataclass
class RunContext:
    """What the patched ``run`` resolved for one (model, dataset) run of a diffusion model."""

    config: DiffclsConfig
    seed: int
    checkpoint: Checkpoint
    output: str
    model: DiffusionClassifier | None = None


@dataclass
class Session:
    """The harness runs of one call: what goes in (a config instead of ``$DIFFCLS_CONFIG``, a
    subset) and what comes out (one :class:`RunRecord` per run). The harness calls back into this
    module (its loader, its dataset builder) without our arguments, so the session of the
    current call is found through a context variable, never through module globals."""

    config: DiffclsConfig | None = None
    subset: SubsetSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # added to every result's diffcls block
    records: list[RunRecord] = field(default_factory=list)
    record: RunRecord | None = None  # the run in progress
    active: RunContext | None = None  # ... when it is a diffusion model's


_SESSION: ContextVar[Session | None] = ContextVar("diffcls_session", default=None)


@contextlib.contextmanager
def session(config: DiffclsConfig | None = None, subset: SubsetSpec | None = None, extra: dict[str, Any] | None = None) -> Iterator[Session]:
    """Run harness evaluations in this context with ``config`` (instead of ``$DIFFCLS_CONFIG``) and
    on a stratified ``subset`` of every dataset (see :mod:`subset`); yields the session, whose
    ``records`` fill as runs finish."""
    if subset is not None:
        subset.validate()
    token = _SESSION.set(Session(config, subset, dict(extra or {})))
    try:
        yield _SESSION.get()
    finally:
        _SESSION.reset(token)


def run_harness(
    argv: list[str], config: DiffclsConfig | None = None, subset: SubsetSpec | None = None, extra: dict[str, Any] | None = None
) -> list[RunRecord]:
    """Run ``clip_benchmark.cli.main`` in this process with ``argv``, a config and an optional subset;
    ``extra`` goes into the ``diffcls`` block of every result it writes (in the same single write).

    Returns:
        one record per harness run, in order.
    """
    register()
    from clip_benchmark import cli as harness_cli

    saved = sys.argv
    sys.argv = list(argv)
    try:
        with session(config, subset, extra) as current:
            harness_cli.main()
            return list(current.records)
    finally:
        sys.argv = saved


@lru_cache(maxsize=1)
def harness_datasets() -> tuple[set[str], tuple[str, ...]]:
    """Names the harness's ``build_dataset`` knows, read from its source, and the accepted prefixes."""
    from clip_benchmark.datasets import builder

    source = inspect.getsource(builder.build_dataset)
    names = set(re.findall(r'dataset_name == "([^"]+)"', source))
    for group in re.findall(r"dataset_name in \(([^)]*)\)", source):
        names.update(re.findall(r'"([^"]+)"', group))
    return names, ("wds/", "tfds/", "vtab/")


def open_clip_pretrained() -> list[tuple[str, str]]:
    """Every (architecture, pretrained tag) open_clip knows (no download)."""
    import open_clip

    return [tuple(pair) for pair in open_clip.list_pretrained()]


def load_open_clip(model_name: str, pretrained: str | None, device):
    """An open_clip model for the CLIP prefilter: (model, image size, mean, std, tokenizer).

    Raises:
        DiffclsError: an unknown model or pretrained tag, or weights that cannot be loaded (offline ...).
    """
    import open_clip
    import torch

    check_prefilter(model_name, pretrained)
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    except Exception as err:  # noqa: BLE001 - unknown tags, failed downloads, corrupt files: one message
        raise DiffclsError(f"prefilter: cannot load open_clip {model_name} / {pretrained}: {err}; check the names, or download the weights first") from None
    model.eval()
    visual = model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    mean = torch.tensor(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN, device=device)
    std = torch.tensor(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD, device=device)
    return model, size, mean, std, open_clip.get_tokenizer(model_name)


def check_prefilter(model_name: str, pretrained: str | None) -> None:
    """The prefilter's open_clip model and weights exist (and, offline, are in the local cache),
    checked before any weights load. Raises :class:`DiffclsError` naming the fix."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    from diffcls_plugin.errors import closest

    models = open_clip.list_models()
    if model_name not in models:
        hint = closest(model_name, models)
        did = f" Did you mean {hint!r}?" if hint else ""
        raise DiffclsError(f"prefilter.model {model_name!r} is not an open_clip model.{did} See open_clip.list_models()")
    if pretrained is None:
        return
    if os.path.isfile(os.path.expanduser(pretrained)):
        return
    tags = oc_pretrained.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise DiffclsError(
            f"prefilter.pretrained {pretrained!r} is neither a weights file nor a pretrained tag of {model_name} "
            f"(its tags: {', '.join(tags) or 'none'}); fix the tag or the file path"
        )
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return  # weights that are not cached yet download when the prefilter loads
    cfg = oc_pretrained.get_pretrained_cfg(model_name, pretrained)
    found = False
    if cfg.get("hf_hub"):
        try:
            found = bool(oc_pretrained.download_pretrained(cfg))  # offline: the cached file or an error, no network
        except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, FileNotFoundError ...
            found = False
    elif cfg.get("url"):
        found = os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"])))
    if not found:
        raise DiffclsError(
            f"prefilter: the open_clip weights {model_name} / {pretrained} are not in the local cache and HF_HUB_OFFLINE is set; "
            f"download them once with network access (python -c \"import open_clip; open_clip.create_model_and_transforms("
            f"'{model_name}', pretrained='{pretrained}')\") or give prefilter.pretrained a local weights file"
        )


def is_diffusion_model(model_type: str, model_name: str) -> bool:
    return model_type == MODEL_TYPE or str(model_name).startswith(MODEL_PREFIX)


# ------------------------------------------------------------------------------- models
def load_for_harness(model_name: str, pretrained: str, cache_dir: str | None = None, device="cpu"):
    """The harness's loader signature -> ``(model, transform, tokenizer)``."""
    current = _SESSION.get()
    ctx = current.active if current is not None else None
    if ctx is not None:
        model = load_classifier(
            model_name, ctx.checkpoint, device=device, config=ctx.config, seed=ctx.seed, cache_dir=cache_dir
        )
        ctx.model = model
    else:  # called outside the harness CLI, e.g. clip_benchmark.models.load_clip(...)
        if pretrained == HARNESS_DEFAULT_PRETRAINED:
            pretrained = DEFAULT_CHECKPOINT
        model = load_classifier(model_name, pretrained, device=device, config=current.config if current else None, cache_dir=cache_dir)
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


class checked_labels:
    """A data loader whose batches are checked before the model sees them: every label must index a class."""

    def __init__(self, loader, n_classes: int) -> None:
        self.loader, self.n_classes = loader, n_classes
        self.dataset = getattr(loader, "dataset", None)

    def __iter__(self):
        for images, target in self.loader:
            if hasattr(target, "tolist"):
                check_labels(target.reshape(-1).tolist(), self.n_classes, "the dataset")
            yield images, target

    def __len__(self) -> int:
        return len(self.loader)


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
            return original_evaluate(model, checked_labels(dataloader, len(classnames)), tokenizer, classnames, templates, device, False, *args, **kwargs)
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
    current = _SESSION.get()
    config = current.config if current is not None and current.config is not None else config_from_env()
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
    check_checkpoint_offline(checkpoint, config.allow_pickle)
    if config.prefilter is not None:
        check_prefilter(config.prefilter.model, config.prefilter.pretrained)
    from diffcls_plugin.adapters import family_of

    family = family_of(checkpoint)  # an unsupported pipeline class (Flux, DiT ...) is refused here
    check_image_size(checkpoint, config.image_size)
    from diffcls_plugin.weighting import check_scheme_family, is_scheme, load_weights

    check_scheme_family(config.timestep_weights, family)
    if config.timestep_weights is not None and not is_scheme(config.timestep_weights):
        meta = load_weights(config.timestep_weights).meta
        if meta.get("dataset") == args.dataset and meta.get("split") == args.split:
            print(
                f"diffcls: WARNING: timestep_weights {config.timestep_weights!r} were fitted on {args.dataset} split "
                f"{args.split!r}, the split evaluated here: the result is tuned on its own test images. Fit them on "
                "another split (`diffcls fit-weights --split train`) or another dataset for an honest number",
                file=sys.stderr,
            )
    output = output_path(args, task)
    folder = Path(output).parent
    if not folder.is_dir():
        raise DiffclsError(
            f"--output {args.output!r} writes {output!r}, but the folder {str(folder)!r} does not exist; "
            f"create it first (mkdir -p {folder}) so the result can be written when the run ends"
        )
    check_dataset(args, task)
    return RunContext(config=config, seed=int(args.seed), checkpoint=checkpoint, output=output)


def check_checkpoint_offline(checkpoint: Checkpoint, allow_pickle: bool) -> None:
    """Before any weights load: a local folder's weights must be loadable safetensors (or allowed
    pickles); an offline run's hub id must be in the hub cache."""
    if checkpoint.is_local:
        from diffcls_plugin.zoo import check_safetensors

        from safetensors import safe_open

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
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(checkpoint.source, revision=checkpoint.revision, local_files_only=True, allow_patterns=["model_index.json"])
        except Exception:  # noqa: BLE001 - not in the cache, whatever the exact error class
            raise DiffclsError(
                f"--pretrained {checkpoint.name!r} ({checkpoint.source}) is not in the local hub cache and HF_HUB_OFFLINE is set; "
                f"download it first (huggingface-cli download {checkpoint.source}) or pass a local diffusers folder"
            ) from None


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


def check_dataset(args, task: str) -> None:
    """Build the dataset once without images (the harness's own builder and arguments) and check its
    classes and, for a local webdataset, its shards and labels: every data error before any weights load."""
    from clip_benchmark.datasets import builder

    name = _dataset_name(args.dataset)
    root = args.dataset_root.format(dataset=name, dataset_cleaned=name.replace("/", "-"))
    local_wds = args.dataset.startswith("wds/") and "://" not in root
    if local_wds:
        split_dir = Path(root) / args.split
        if not (split_dir / "nshards.txt").is_file():
            raise DiffclsError(
                f"--dataset {args.dataset} is a webdataset, but --dataset_root {root!r} has no {args.split}/nshards.txt; "
                "pass the folder that holds classnames.txt and the split's shards (or a URL)"
            )
        n_shards = int((split_dir / "nshards.txt").read_text().strip() or 0)
        missing = [f"{i}.tar" for i in range(n_shards) if not (split_dir / f"{i}.tar").is_file()]
        if missing:
            raise DiffclsError(
                f"{split_dir / 'nshards.txt'} says {n_shards} shards but {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                f"{'is' if len(missing) == 1 else 'are'} missing from {str(split_dir)!r}; restore the shards or fix nshards.txt"
            )
    try:
        dataset = builder.build_dataset(
            dataset_name=args.dataset, root=root, transform=None, split=args.split, annotation_file=args.annotation_file,
            download=True, language=args.language, task=task, custom_template_file=args.custom_template_file,
            custom_classname_file=args.custom_classname_file, wds_cache_dir=args.wds_cache_dir,
        )
    except DiffclsError:
        raise
    except Exception as err:  # noqa: BLE001 - the harness raises ValueError, OSError, RuntimeError ...
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiffclsError(
            f"--dataset {args.dataset} (root {root!r}, split {args.split!r}) cannot be built: {message}; "
            "check the dataset name (clip_benchmark's README lists them) and --dataset_root"
        ) from None
    classes = _strip_trailing_blanks(getattr(dataset, "classes", None))
    where = f"{root}/classnames.txt" if local_wds else f"--dataset {args.dataset}"
    if not classes:
        raise DiffclsError(f"{where} has no classes; diffusion classifiers need one class name per label")
    blank = [i + 1 for i, c in enumerate(classes) if not str(c).strip()]
    if blank:
        raise DiffclsError(f"{where} has blank class names (lines {', '.join(map(str, blank[:5]))}); remove the blank lines")
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
        check_labels(labels, len(classes), where)


def labelled_dataset(dataset: str, root: str, split: str, transform, subset: SubsetSpec | None = None):
    """A harness classification dataset with ``transform``, through the harness's own builder (and
    the plugin's subset choice): ``(dataset, classnames, templates)``, checked as a run checks it."""
    import argparse

    from clip_benchmark.datasets import builder

    name = _dataset_name(dataset)
    args = argparse.Namespace(dataset=dataset, dataset_root=root, split=split, task="auto", annotation_file="", language="en",
                              custom_template_file=None, custom_classname_file=None, wds_cache_dir=None)
    task = _task(args)
    if task != "zeroshot_classification":
        raise DiffclsError(f"dataset {dataset!r} runs {task!r}; timestep weights are fitted on a classification dataset")
    check_dataset(args, task)
    root = root.format(dataset=name, dataset_cleaned=name.replace("/", "-"))
    with session(subset=subset):
        built = _wrap_build_dataset(builder.build_dataset)(dataset, root, transform, split, download=True, task=task)
    classes = _strip_trailing_blanks(getattr(built, "classes", None))
    templates = [t for t in (getattr(built, "templates", None) or ["a photo of a {c}."]) if str(t).strip()]
    return built, classes, templates


def check_labels(labels, n_classes: int, where: str) -> None:
    """Raise unless every label indexes a class."""
    bad = sorted({int(y) for y in labels if not 0 <= int(y) < n_classes})
    if bad:
        raise DiffclsError(
            f"{where}: labels {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} have no class "
            f"({n_classes} class names, so labels 0..{n_classes - 1}); add the missing class names or fix the labels"
        )


def validate_cell(argv: list[str], config: DiffclsConfig) -> None:
    """Check one ``clip_benchmark eval`` command line of a single (model, dataset) cell as its run
    would, without loading weights or scoring images: for a diffusion model everything
    :func:`prepare_run` checks; for a CLIP model the dataset (``diffcls run`` has checked its
    open_clip name when it loaded the matrix). Raises :class:`DiffclsError`."""
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
        with session(config):
            prepare_run(args)
        return
    check_dataset(args, _task(args))


def one_line(err: Exception) -> str:
    """An error's message; for one re-raised from a loader worker, the original message only."""
    text = str(err)
    marker = "DiffclsError: "
    if "Traceback" in text and marker in text:
        return text[text.rindex(marker) + len(marker):].strip().splitlines()[0]
    return text


def join_torchrun(args) -> tuple[int, int]:
    """Under torchrun (``WORLD_SIZE > 1``): refuse the harness's ``--distributed`` (it shards whole
    runs; the plugin shards each run's images) and join the process group. (rank, world size)."""
    if distributed.env_world_size() <= 1:
        return 0, 1
    if getattr(args, "distributed", False):
        raise DiffclsError(
            f"--distributed shards whole runs over the torchrun ranks, but diffusion models share out each run's "
            f"images instead (WORLD_SIZE={distributed.env_world_size()}); drop --distributed"
        )
    import torch

    return distributed.init_from_env(use_cuda=torch.cuda.is_available() and getattr(args, "device", "cuda") != "cpu")


def _zoo_names() -> set[str]:
    from diffcls_plugin.zoo import zoo

    return set(zoo())


def add_result_block(path: str, block: dict[str, Any]) -> None:
    """Merge ``block`` into the ``diffcls`` block of a result JSON the harness wrote."""
    with open(path) as f:
        dump: dict[str, Any] = json.load(f)
    dump["diffcls"] = {**dump.get("diffcls", {}), **block}
    write_json_atomic(path, dump)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``: readers see
    the old file or the new one, never half of one."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=None)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
    """(shard paths, (shard, key) of every sample, labels) of a local webdataset, without decoding images.

    A run reads them up to three times (its checks, its sample count, its subset); the shards are
    scanned once per content, keyed by every shard's size and modification time.
    """
    nshards = int((root / split / "nshards.txt").read_text().strip())
    shards = tuple(str(root / split / f"{i}.tar") for i in range(nshards))
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


IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")


class SkippedImages:
    """Corrupt images met while reading a webdataset (in this process)."""

    def __init__(self) -> None:
        self.where: list[str] = []


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

    from diffcls_plugin.images import decode_image

    n_shards = int((root / split / "nshards.txt").read_text().strip())
    shards = [str(root / split / f"{i}.tar") for i in range(n_shards)]

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

    out = wds.WebDataset(shards, nodesplitter=lambda src: src, shardshuffle=False).compose(samples)
    out.classes, out.templates = dataset.classes, dataset.templates
    return out


def wds_subset(dataset, root: Path, split: str, transform, spec: SubsetSpec, on_corrupt: str = "skip"):
    """The harness's webdataset pipeline restricted to a stratified subset of its samples."""
    if not (root / split / "nshards.txt").is_file():
        raise DiffclsError(f"subsets of webdatasets need a local --dataset_root with {split}/nshards.txt; {root} has none")
    shards, ids, labels = wds_members(root, split)
    # a canonical order, whatever the sharding: samples sorted by key (then shard)
    order = sorted(range(len(ids)), key=lambda i: (ids[i][1], ids[i][0]))
    ids, labels = [ids[i] for i in order], [labels[i] for i in order]
    idx = select(labels, spec)
    keep = {ids[i] for i in idx}
    return wds_classification(dataset, root, split, transform, keep=keep, on_corrupt=on_corrupt), idx


def subset_of(dataset, dataset_name: str, root: str, split: str, transform, spec: SubsetSpec, on_corrupt: str = "skip"):
    """(subset dataset, chosen indices) for a map-style or local webdataset harness dataset."""
    import torch

    if dataset_name.startswith("wds/"):
        return wds_subset(dataset, Path(root), split, transform, spec, on_corrupt)
    idx = select(dataset_labels(dataset), spec)
    subset = torch.utils.data.Subset(dataset, idx.tolist())
    for attr in ("classes", "templates"):
        setattr(subset, attr, getattr(dataset, attr, None))
    return subset, idx


def _strip_trailing_blanks(values):
    values = list(values or [])
    while values and not str(values[-1]).strip():
        values.pop()
    return values


def _wrap_build_dataset(build_dataset):
    @functools.wraps(build_dataset)
    def build(dataset_name, root="root", transform=None, split="test", *args, **kwargs):
        dataset = build_dataset(dataset_name, root, transform, split, *args, **kwargs)
        current = _SESSION.get()
        if current is None or (current.active is None and current.subset is None):
            if current is not None and current.record is not None:
                with contextlib.suppress(TypeError):
                    current.record.n_images = len(dataset)
            return dataset  # not a diffusion run, no subset: the harness's dataset, untouched
        record = current.record if current.record is not None else RunRecord(model="", dataset=dataset_name)
        spec = current.subset
        on_corrupt = current.active.config.on_corrupt if current.active is not None else "skip"
        if getattr(dataset, "classes", None) is not None:  # trailing blank lines of classnames.txt are no classes
            dataset.classes = _strip_trailing_blanks(dataset.classes)
        if isinstance(getattr(dataset, "templates", None), list):
            dataset.templates = [t for t in dataset.templates if str(t).strip()]
        local_wds = dataset_name.startswith("wds/") and "://" not in str(root) and (Path(root) / split / "nshards.txt").is_file()
        if spec is None:
            if local_wds:
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


def patch_cli(module) -> None:
    """Wrap the harness's per-run function for diffusion models, and its dataset builder for subsets."""
    if getattr(module, PATCHED, False):
        return
    original_run = module.run

    @functools.wraps(original_run)
    def run(args):
        current = _SESSION.get()
        if current is None:  # the plain clip_benchmark CLI: a session per run
            with session() as current:
                return run_in(args, current)
        return run_in(args, current)

    def run_in(args, current: Session):
        record = RunRecord(model=str(args.model), dataset=str(args.dataset))
        current.records.append(record)
        current.record = record
        try:
            if not is_diffusion_model(args.model_type, args.model):
                status = original_run(args)
                output = record.output = output_path(args, _task(args))
                if current.extra and os.path.exists(output):  # the one addition to a CLIP model's result
                    block = {**current.extra, **{k: v for k, v in (("n_images", record.n_images), ("subset", record.subset)) if v is not None}}
                    add_result_block(output, block)
                return status
            return run_diffusion(args, current, record)
        finally:
            current.record = current.active = None

    def run_diffusion(args, current: Session, record: RunRecord):
        try:
            ctx = prepare_run(args)
            rank, world_size = join_torchrun(args)
        except DiffclsError as err:
            raise SystemExit(f"diffcls: error: {err}") from None
        output = record.output = ctx.output
        existed = os.path.exists(output)
        if world_size > 1:
            # every rank runs the evaluation (sharing out each batch's images); only rank 0 writes
            existed = distributed.broadcast(existed)
            if rank != 0:
                args.output = os.devnull
                args.skip_existing = existed and args.skip_existing
        current.active = ctx
        try:
            status = original_run(args)
        except DiffclsError as err:  # found late (e.g. while loading): still one line, naming the fix
            raise SystemExit(f"diffcls: error: {one_line(err)}") from None
        except RuntimeError as err:  # a DataLoader worker re-raises our error with its traceback inside
            if "DiffclsError: " not in str(err):
                raise
            raise SystemExit(f"diffcls: error: {one_line(err)}") from None
        wrote = rank == 0 and ctx.model is not None and ctx.model.n_images > 0 and os.path.exists(output)
        if wrote and not (existed and args.skip_existing):
            block = ctx.model.result_block()
            if record.subset is not None:
                block["subset"] = record.subset
            if record.n_images_expected is not None:
                block["n_images_skipped"] = record.n_images_expected - ctx.model.n_images
            add_result_block(output, {**block, **current.extra})
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
