"""The patches to CLIP_benchmark, each applied right after its module is imported (see
:mod:`diffcls_plugin._hook`) or all at once by :func:`register`.

- ``clip_benchmark.models``: ``--model_type diffusion`` joins ``MODEL_TYPES`` (and so
  ``clip_benchmark eval --help``); with the default ``--model_type open_clip``, model names
  starting with ``diffusion-`` are routed to the plugin.
- ``clip_benchmark.metrics.zeroshot_classification``: ``evaluate`` hands a diffusion model its
  classnames and templates before the first image and runs it with autocast off (so bf16/fp16
  autocast cannot create ties between class scores) and without the harness's progress bars (the
  classifier draws one bar per run, :mod:`.quiet`); ``accuracy`` is replaced by an equivalent
  when the installed numpy breaks the harness's (numpy >= 2.4).
- ``clip_benchmark.cli``: ``run`` checks a diffusion run before anything loads
  (:mod:`.preflight`), shares its images out under torchrun, and adds a ``diffcls`` block to the
  result JSON it writes, keeping the harness schema so ``clip_benchmark build`` still works; its
  ``build_dataset`` takes subsets and reads local webdatasets (:mod:`.datasets`); its
  ``--model`` help lists the ``diffusion-*`` names (:mod:`.model_help`).

Every patch is a no-op for runs of other models, except the ``accuracy`` fix, which returns the
same numbers as the original, and the warning filters of :func:`.quiet.filter_warnings`: the
harness's webdatasets no longer warn about ``shardshuffle``, and torch's warning about more loader
workers than CPUs and sklearn's about ill-defined precision show once per process, not two or
three times per run.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import sys
from typing import Any

from diffcls_plugin import distributed
from diffcls_plugin.classifier import DiffusionClassifier, load_classifier
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.harness.datasets import wrap_build_dataset
from diffcls_plugin.harness.model_help import with_diffusion_models_help
from diffcls_plugin.harness.names import HARNESS_DEFAULT_PRETRAINED, MODEL_TYPE, PATCHED, is_diffusion_model, output_path, task_of
from diffcls_plugin.harness.preflight import check_clip_weights, check_labels, preflight
from diffcls_plugin.harness.quiet import filter_warnings, without_bars
from diffcls_plugin.harness.session import RunRecord, Session, current_session, session
from diffcls_plugin.jsonio import write_json_atomic
from diffcls_plugin.samplers import MODEL_PREFIX
from diffcls_plugin.zoo import DEFAULT_CHECKPOINT


# ------------------------------------------------------------------------------- models
def load_for_harness(model_name: str, pretrained: str, cache_dir: str | None = None, device="cpu"):
    """The harness's loader signature -> ``(model, transform, tokenizer)``."""
    current = current_session()
    ctx = current.active if current is not None else None
    if ctx is not None:
        model = load_classifier(model_name, ctx.checkpoint, device=device, config=ctx.config, seed=ctx.seed, cache_dir=cache_dir)
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


def images_to_classify(dataloader) -> int | None:
    """The images a run's loader holds: its dataset's length, else (a webdataset, which has none)
    the count the session's record took from the shards or the subset; ``None`` when unknown."""
    try:
        return len(dataloader.dataset)
    except TypeError:  # webdataset: an IterableDataset without a length
        current = current_session()
        record = current.record if current is not None else None
        return None if record is None else record.n_images


def patch_metrics(module) -> None:
    """Prepare diffusion models with the classes, switch autocast off and the harness's progress
    bars off for them (the classifier shows its own), fix ``accuracy``."""
    if getattr(module, PATCHED, False):
        return
    original_evaluate = module.evaluate

    @functools.wraps(original_evaluate)
    def evaluate(model, dataloader, tokenizer, classnames, templates, device, amp=True, *args, **kwargs):
        if not isinstance(model, DiffusionClassifier):
            return original_evaluate(model, dataloader, tokenizer, classnames, templates, device, amp, *args, **kwargs)
        model.prepare(classnames, templates, n_images=images_to_classify(dataloader))
        try:
            with without_bars(module):
                return original_evaluate(model, checked_labels(dataloader, len(classnames)), tokenizer, classnames, templates, device, False, *args, **kwargs)
        finally:
            model.close_progress()

    module.evaluate = evaluate
    if _accuracy_is_broken(module.accuracy):
        module.accuracy = accuracy
    setattr(module, PATCHED, True)


# ---------------------------------------------------------------------------------- cli
def patch_cli(module) -> None:
    """Wrap the harness's per-run function for diffusion models, and its dataset builder for subsets;
    silence the warnings of its loaders that say nothing to a user (:func:`.quiet.filter_warnings`)."""
    filter_warnings()  # again after a caller's warnings.catch_warnings() dropped them (register() calls this)
    if getattr(module, PATCHED, False):
        return
    original_run = module.run

    @functools.wraps(original_run)
    def patched_run(args):
        return run(original_run, args)

    module.run = patched_run
    module.build_dataset = wrap_build_dataset(module.build_dataset)  # the name run() calls
    with_diffusion_models_help(module)  # `clip_benchmark eval --help` lists the diffusion-* models
    setattr(module, PATCHED, True)


def run(original_run, args):
    """One (model, dataset) run of the harness, in the current session (a new one for the plain CLI)."""
    current = current_session()
    if current is None:  # the plain clip_benchmark CLI: a session per run
        with session() as current:
            return run_in(original_run, args, current)
    return run_in(original_run, args, current)


def run_in(original_run, args, current: Session):
    record = RunRecord(model=str(args.model), dataset=str(args.dataset))
    current.records.append(record)
    current.record = record
    try:
        if not is_diffusion_model(args.model_type, args.model):
            if current.dry_run:
                print(f"diffcls: dry run: --model {args.model} --pretrained {args.pretrained} on {args.dataset} (a CLIP row) is not run", file=sys.stderr)
                return 0
            return run_clip(original_run, args, current, record)
        return run_diffusion(original_run, args, current, record)
    finally:
        current.record = current.active = None


def run_clip(original_run, args, current: Session, record: RunRecord):
    """A CLIP model's run, untouched but for the session's extra fields in its result, and one
    ``diffcls: error:`` line instead of minutes of retries and a traceback when its open_clip
    weights or its dataset cannot be had (:func:`check_clip_weights`, checked first)."""
    try:
        check_clip_weights(args)
        status = original_run(args)
    except DiffclsError as err:
        raise SystemExit(f"diffcls: error: {one_line(err)}") from None
    except RuntimeError as err:  # open_clip's download failed after its retries
        if not str(err).startswith("Failed to download weights"):
            raise
        reason = str(err).strip().splitlines()[0]
        raise SystemExit(
            f"diffcls: error: --model {args.model} --pretrained {args.pretrained}: {reason}; check the network (and HF_ENDPOINT) and run again, "
            "or pass --pretrained a local weights file"
        ) from None
    output = record.output = output_path(args, task_of(args))
    if current.extra and os.path.exists(output):  # the one addition to a CLIP model's result
        block = {**current.extra, **{k: v for k, v in (("n_images", record.n_images), ("subset", record.subset)) if v is not None}}
        add_result_block(output, block)
    return status


def run_diffusion(original_run, args, current: Session, record: RunRecord):
    """A diffusion model's run: checked first, shared out under torchrun, its result block added."""
    try:
        checked = preflight(args)
        checked.apply(args)
        rank, world_size = join_torchrun(args)
    except DiffclsError as err:
        raise SystemExit(f"diffcls: error: {err}") from None
    ctx = checked.context
    output = record.output = ctx.output
    if current.dry_run:  # the plan and its cost are printed (a preflight note): nothing runs
        return 0
    if rank == 0 and os.path.exists(output) and not whole_result(output):
        # a run killed while the harness wrote its result leaves an empty or partial file, which
        # --skip_existing would keep forever: it is not a result, so the run makes it again
        print(f"diffcls: {output} is not a whole result (an interrupted run's?); running again to replace it", file=sys.stderr)
        os.remove(output)
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
    if rank == 0 and world_size == 1 and ctx.model is not None:  # the next run's time estimate on this device
        from diffcls_plugin.plan import rate_key, record_rate

        stats = ctx.model.stats
        record_rate(rate_key(ctx.checkpoint, ctx.config, getattr(args, "device", "cuda")), stats.n_unet_evals_computed, stats.seconds_computed)
    return status


def whole_result(path: str) -> bool:
    """Whether ``path`` holds a diffusion run's whole result: a JSON object with ``metrics`` and the ``diffcls`` block."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("metrics"), dict) and isinstance(data.get("diffcls"), dict)


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


def one_line(err: Exception) -> str:
    """An error's message; for one re-raised from a loader worker, the original message only."""
    text = str(err)
    marker = "DiffclsError: "
    if "Traceback" in text and marker in text:
        return text[text.rindex(marker) + len(marker) :].strip().splitlines()[0]
    return text


def add_result_block(path: str, block: dict[str, Any]) -> None:
    """Merge ``block`` into the ``diffcls`` block of a result JSON the harness wrote (atomically)."""
    import json

    with open(path) as f:
        dump: dict[str, Any] = json.load(f)
    dump["diffcls"] = {**dump.get("diffcls", {}), **block}
    write_json_atomic(path, strict_json(dump))


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity as ``null``: the harness writes ``acc5: NaN`` for fewer
    than 5 classes, which strict JSON readers (``jq``, JavaScript, ``json.loads`` with
    ``parse_constant``) refuse; ``diffcls table`` and ``check`` read ``null`` as undefined."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


PATCHES = {
    "clip_benchmark.models": patch_models,
    "clip_benchmark.metrics.zeroshot_classification": patch_metrics,
    "clip_benchmark.cli": patch_cli,
}


def register() -> None:
    """Make the diffusion models available to an already installed CLIP_benchmark (idempotent)."""
    for name, patch in PATCHES.items():
        patch(importlib.import_module(name))
