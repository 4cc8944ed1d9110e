"""Benchmark matrices: human-written config files, validated whole, run through the harness.

A config (YAML or JSON, see ``benchmark_configs/``)::

    name: ci-smoke
    description: ...
    output: results/ci-smoke          # one harness result JSON per (model, dataset)
    seed: 0
    batch_size: 64
    num_workers: 4
    precision: auto                   # diffusion compute dtype: auto | fp32 | fp16 | bf16
    prompts: first                    # diffusion prompt policy: first | ensemble | all
    subset: {per_class: 5, seed: 0}   # or {total: 100}; omit for the whole split
    reference: ci-smoke.reference.json   # optional, for `diffcls check` (relative to the config)
    models:
      - {name: diffusion-hier, pretrained: tiny-digits, label: ..., options: {hierarchical: {beam_factor: 2}}}
      - {name: RN50, pretrained: openai}
    datasets:
      - {name: wds/digits}            # the embedded digits: no root needed
      - {name: cifar10, root: data/cifar10, templates: ["a blurry photo of a {c}."], options: {loss: l1}}

``options`` are diffusion run options (the keys of a ``DIFFCLS_CONFIG`` file); a dataset's options
apply to every diffusion model on it, a model's options on top of them. A dataset's ``templates``
replace the harness's templates for the diffusion models (Li et al. use one prompt per dataset);
CLIP models keep the harness's template ensemble, as the CLIP protocol does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcls_plugin.config import DTYPES, PROMPT_POLICIES, DiffclsConfig, config_from_dict
from diffcls_plugin.data.subset import SubsetSpec
from diffcls_plugin.errors import DiffclsError, did_you_mean, unknown_name_error
from diffcls_plugin.jsonio import read_mapping, write_json_atomic
from diffcls_plugin.samplers import MODEL_PREFIX, SAMPLERS_BY_MODEL

DIGITS = "wds/digits"
TOP_KEYS = ("name", "description", "output", "seed", "batch_size", "num_workers", "precision", "prompts", "subset", "reference", "models", "datasets")
MODEL_KEYS = ("name", "pretrained", "label", "options")
DATASET_KEYS = ("name", "root", "split", "templates", "options")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pretrained: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_diffusion(self) -> bool:
        return self.name in SAMPLERS_BY_MODEL


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str | None = None
    split: str = "test"
    templates: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    source: str
    output: str
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    description: str = ""
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 4
    precision: str = "auto"
    prompts: str = "first"
    subset: SubsetSpec | None = None
    reference: str | None = None


@dataclass(frozen=True)
class Run:
    """One (model, dataset) cell of the matrix, fully resolved."""

    model: ModelSpec
    dataset: DatasetSpec
    diffcls: DiffclsConfig | None
    output: Path
    config_hash: str


def _fail(source: str, key: str, problem: str) -> DiffclsError:
    return DiffclsError(f"{source}: {key} {problem}")


def _check_keys(data: Any, allowed: tuple[str, ...], source: str, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(source, where or "the config", f"must be a mapping, got {data!r}")
    for key in data:
        if key not in allowed:
            did = did_you_mean(str(key), allowed)
            raise DiffclsError(f"{source}: unknown key {where + '.' if where else ''}{key}.{did} Valid keys: {', '.join(allowed)}.")
    return data


def _named_entries(data: dict, section: str, allowed: tuple[str, ...], source: str):
    """Yield ``(where, entry, name)`` for each entry of a non-empty list section (``models``, ``datasets``)."""
    if not isinstance(data[section], list) or not data[section]:
        raise _fail(source, section, "must be a non-empty list")
    for i, raw in enumerate(data[section]):
        where = f"{section}[{i}]"
        raw = _check_keys(raw, allowed, source, where)
        if "name" not in raw:
            raise _fail(source, f"{where}.name", "is required")
        yield where, raw, raw["name"]


def _int(data: dict, key: str, default: int, source: str, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _check_dataset_name(name: str, source: str, where: str) -> None:
    from diffcls_plugin.harness.names import harness_datasets

    names, prefixes = harness_datasets()
    if name in names or (name.startswith(prefixes) and len(name.split("/", 1)[1]) > 0):
        return
    raise DiffclsError(
        f"{source}: {where}.name {name!r} is not a CLIP_benchmark dataset."
        + did_you_mean(name, names)
        + " Use a harness dataset name or wds/<name> with a root."
    )


def _check_clip_model(name: str, pretrained: str, source: str, where: str) -> None:
    from diffcls_plugin.prefilter import open_clip_pretrained

    pairs = open_clip_pretrained()
    archs = {a for a, _ in pairs}
    if name not in archs:
        valid = sorted(archs | set(SAMPLERS_BY_MODEL.names()))
        did = did_you_mean(name, valid)
        raise DiffclsError(
            f"{source}: {where}.name {name!r} is neither a diffusion model ({', '.join(SAMPLERS_BY_MODEL.names())}) nor an open_clip architecture.{did}"
        )
    tags = sorted(t for a, t in pairs if a == name)
    if pretrained not in tags:
        did = did_you_mean(pretrained, tags)
        raise DiffclsError(f"{source}: {where}.pretrained {pretrained!r} is not an open_clip checkpoint of {name}.{did} Valid: {', '.join(tags)}.")


def load_benchmark(path: str | os.PathLike) -> BenchmarkConfig:
    """Read and validate a benchmark config as a whole, before anything runs.

    Raises:
        DiffclsError: naming the file, the key and the fix.
    """
    from diffcls_plugin.harness.names import MULTILABEL_DATASETS

    path = Path(path)
    source = str(path)
    data = _check_keys(read_mapping(path), TOP_KEYS, source, "")
    for key in ("name", "models", "datasets"):
        if key not in data:
            raise _fail(source, key, "is required")
    precision = data.get("precision", "auto")
    if precision not in DTYPES:
        raise _fail(source, "precision", f"must be one of {', '.join(DTYPES)}, got {precision!r}")
    prompts = data.get("prompts", "first")
    if prompts not in PROMPT_POLICIES:
        raise _fail(source, "prompts", f"must be one of {', '.join(PROMPT_POLICIES)}, got {prompts!r}")
    subset = None
    if data.get("subset") is not None:
        raw = _check_keys(data["subset"], ("per_class", "total", "seed"), source, "subset")
        subset = SubsetSpec(**raw)
        subset.validate(f"{source}: subset")
    models = []
    for where, raw, name in _named_entries(data, "models", MODEL_KEYS, source):
        if name in SAMPLERS_BY_MODEL:
            pretrained = raw.get("pretrained", "sd2-base")
        elif str(name).startswith(MODEL_PREFIX):
            raise DiffclsError(f"{source}: {where}.name: {unknown_name_error('diffusion model', name, SAMPLERS_BY_MODEL.names())}")
        else:
            if "pretrained" not in raw:
                raise _fail(source, f"{where}.pretrained", f"is required for the CLIP model {name!r} (e.g. openai)")
            pretrained = raw["pretrained"]
            if raw.get("options"):
                raise _fail(source, f"{where}.options", "apply to diffusion models only")
            _check_clip_model(name, pretrained, source, where)
        label = raw.get("label") or f"{name} {pretrained}"
        models.append(ModelSpec(name, str(pretrained), str(label), dict(raw.get("options") or {})))
    labels = [m.label for m in models]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise _fail(source, "models", f"has the same label twice ({', '.join(dupes)}); give each variant its own label")
    datasets = []
    for where, raw, name in _named_entries(data, "datasets", DATASET_KEYS, source):
        _check_dataset_name(name, source, where)
        if name in MULTILABEL_DATASETS and any(m.is_diffusion for m in models):
            raise _fail(source, f"{where}.name", f"{name!r} is multi-label; diffusion classifiers support single-label datasets only")
        templates = raw.get("templates")
        if templates is not None:
            if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and "{c}" in t for t in templates):
                raise _fail(source, f"{where}.templates", "must be a list of strings with {c} where the class name goes")
            templates = tuple(templates)
        root = raw.get("root")
        if root is None and name != DIGITS:
            if name.startswith("wds/"):
                raise _fail(source, f"{where}.root", f"is required for the webdataset {name!r}")
        datasets.append(DatasetSpec(name, root, raw.get("split", "test"), templates, dict(raw.get("options") or {})))
    config = BenchmarkConfig(
        name=str(data["name"]),
        source=source,
        output=str(data.get("output", f"results/{data['name']}")),
        models=tuple(models),
        datasets=tuple(datasets),
        description=str(data.get("description", "")),
        seed=_int(data, "seed", 0, source, 0),
        batch_size=_int(data, "batch_size", 64, source, 1),
        num_workers=_int(data, "num_workers", 4, source, 0),
        precision=precision,
        prompts=prompts,
        subset=subset,
        reference=data.get("reference"),
    )
    plan(config)  # resolves and validates every cell's diffusion options
    return config


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")


def output_root(config: BenchmarkConfig) -> Path:
    """Relative output folders are relative to the current directory (where the user runs)."""
    return Path(config.output).expanduser()


def plan(config: BenchmarkConfig) -> list[Run]:
    """Every (model, dataset) run of the matrix, with resolved options and a config hash."""
    runs = []
    for dataset in config.datasets:
        for model in config.models:
            diffcls = None
            if model.is_diffusion:
                options = _merge({"dtype": config.precision, "prompts": config.prompts}, dataset.options)
                options = _merge(options, model.options)
                where = f"{config.source}: options of {model.label!r} on {dataset.name}"
                diffcls = config_from_dict(options, where)
            identity = {
                "model": model.name,
                "pretrained": model.pretrained,
                "dataset": dataset.name,
                "root": dataset.root,
                "split": dataset.split,
                "templates": dataset.templates if model.is_diffusion else None,
                "seed": config.seed,
                "subset": config.subset.to_dict() if config.subset else None,
                "diffcls": diffcls.to_dict() if diffcls else None,
            }
            digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            output = output_root(config) / f"{_slug(dataset.name)}__{_slug(model.label)}.json"
            runs.append(Run(model, dataset, diffcls, output, digest))
    return runs


def _existing_hash(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("diffcls", {}).get("config_hash")
    except (OSError, json.JSONDecodeError):
        return None


def dataset_root(name: str, root: str | None) -> str:
    """The ``--dataset_root`` of a dataset: ``root`` (user and variables expanded), else the
    embedded digits' folder (written on first use) for ``wds/digits``, else the harness's ``root``."""
    if root is not None:
        return os.path.expandvars(os.path.expanduser(root))
    if name == DIGITS:
        from diffcls_plugin.data.digits import ensure_digits_wds

        return str(ensure_digits_wds())
    return "root"


def _argv(config: BenchmarkConfig, run: Run, out_dir: Path) -> list[str]:
    """The ``clip_benchmark eval`` command line of one cell (writes its template file, if any)."""
    argv = [
        "clip_benchmark",
        "eval",
        "--model",
        run.model.name,
        "--pretrained",
        run.model.pretrained,
        "--dataset",
        run.dataset.name,
        "--dataset_root",
        dataset_root(run.dataset.name, run.dataset.root),
        "--split",
        run.dataset.split,
        "--seed",
        str(config.seed),
        "--batch_size",
        str(config.batch_size),
        "--num_workers",
        str(config.num_workers),
        "--output",
        str(run.output),
        "--quiet",
    ]
    templates = run.dataset.templates if run.model.is_diffusion else None  # CLIP keeps the harness's ensemble
    if templates:
        template_file = out_dir / f".templates-{_slug(run.dataset.name)}.json"
        short = run.dataset.name.split("/", 1)[1] if run.dataset.name.startswith(("wds/", "tfds/", "vtab/")) else run.dataset.name
        write_json_atomic(template_file, {run.dataset.name: list(templates), short: list(templates)})
        argv += ["--custom_template_file", str(template_file)]
    return argv


def run_benchmark(config: BenchmarkConfig, *, force: bool = False, echo=print, dry_run: bool = False) -> list[Path]:
    """Run every cell of the matrix through the harness; skip cells whose result has the same hash.
    With ``dry_run``, check every cell and print its plan and cost, computing nothing (returns ``[]``).

    Every cell to run is validated first (model and checkpoint names, checkpoints resolvable
    offline, dataset names and roots, classes and labels): any invalid cell stops the matrix
    before the first computes, naming every bad cell. A cell that fails while running does not
    stop the others; the failures are summarised at the end.

    Returns:
        the result files, one per (model, dataset), in matrix order.

    Raises:
        DiffclsError: invalid cells (before any compute), or cells that failed (after the others ran).
    """
    from diffcls_plugin.harness import run_harness, validate_cell

    runs = plan(config)
    out_dir = output_root(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo = []
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.model.label} on {run.dataset.name}"
        if not force and run.output.is_file() and _existing_hash(run.output) == run.config_hash:
            echo(f"{head}: skipped, {run.output} has the same config ({run.config_hash})")
            continue
        todo.append((head, run, _argv(config, run, out_dir)))
    invalid, costs = [], []
    for head, run, argv in todo:
        try:
            checked = validate_cell(argv, run.diffcls or DiffclsConfig(), config.subset)
            costs.append(f"{head}: {checked.cost.line() if checked is not None else 'a CLIP row'}")
        except DiffclsError as err:
            invalid.append(f"{head}: {err}")
    if invalid:
        raise DiffclsError(f"{len(invalid)} of {len(todo)} cells cannot run; nothing was computed:\n  " + "\n  ".join(invalid))
    if dry_run:
        for line in costs:
            echo(line)
        echo(f"dry run: {len(todo)} of {len(runs)} cells would run; nothing was computed")
        return []
    failed = []
    for head, run, argv in todo:
        echo(f"{head}: running -> {run.output}")
        if run.output.exists():
            run.output.unlink()  # a stale result must not survive a failed rerun
        block = {"label": run.model.label, "config_hash": run.config_hash, "benchmark": config.name}
        if run.dataset.templates and run.model.is_diffusion:
            block["templates"] = list(run.dataset.templates)
        try:  # the harness writes the result once, with this block in it
            records = run_harness(argv, run.diffcls or DiffclsConfig(), config.subset, extra=block)
            if not run.output.is_file() or not records:
                raise DiffclsError("the harness wrote no result")
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one failing cell must not stop the others
            message = str(err.code if isinstance(err, SystemExit) else err).removeprefix("diffcls: error: ")
            echo(f"{head}: FAILED: {message}")
            failed.append(f"{head}: {message}")
    echo(f"{len(todo)} runs in {time.perf_counter() - start:.0f} s; results in {out_dir}")
    if failed:
        raise DiffclsError(f"{len(failed)} of {len(todo)} cells failed (the others ran):\n  " + "\n  ".join(failed))
    return [run.output for run in runs]
