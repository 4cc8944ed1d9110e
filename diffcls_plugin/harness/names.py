"""The harness's names and formulas, in one place: the model type, which runs are diffusion runs,
a run's task, its dataset root and its output path, and the datasets the harness knows."""

from __future__ import annotations

import inspect
import os
import re
from functools import lru_cache
from pathlib import Path

from diffcls_plugin.samplers import MODEL_PREFIX

MODEL_TYPE = "diffusion"
HARNESS_DEFAULT_PRETRAINED = "laion400m_e32"  # clip_benchmark eval's default --pretrained
MULTILABEL_DATASETS = ("voc2007_multilabel",)
PATCHED = "_diffcls_patched"
DATASET_PREFIXES = ("wds/", "tfds/", "vtab/")


def is_diffusion_model(model_type: str, model_name: str) -> bool:
    """A run of ``--model_type diffusion``, or of a ``diffusion-*`` name under any model type."""
    return model_type == MODEL_TYPE or str(model_name).startswith(MODEL_PREFIX)


def dataset_name(dataset: str) -> str:
    """The harness's name of a dataset without its ``wds/`` prefix (as its builder and outputs use it)."""
    return dataset.replace("wds/", "", 1) if dataset.startswith("wds/") else dataset


def dataset_root(root_template: str, dataset: str) -> str:
    """``--dataset_root`` with ``{dataset}`` and ``{dataset_cleaned}`` filled in (clip_benchmark.cli's formula)."""
    name = dataset_name(dataset)
    return root_template.format(dataset=name, dataset_cleaned=name.replace("/", "-"))


def is_local_wds(dataset: str, root: str) -> bool:
    """A webdataset read from a local folder (not a URL)."""
    return dataset.startswith("wds/") and "://" not in str(root)


def task_of(args) -> str:
    """The run's task: ``--task``, or the dataset's default task for ``auto``."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    return get_dataset_default_task(dataset_name(args.dataset)) if args.task == "auto" else args.task


def output_path(args, task: str) -> str:
    """Where the harness's ``run`` writes its JSON (the same formula as clip_benchmark.cli.run)."""
    is_file = os.path.isfile(args.pretrained)
    return args.output.format(
        model=args.model,
        pretrained=os.path.basename(args.pretrained) if is_file else args.pretrained,
        pretrained_full_path=args.pretrained.replace("/", "_") if is_file else args.pretrained,
        task=task,
        dataset=dataset_name(args.dataset).replace("/", "_"),
        language=args.language,
    )


def local_wds_root(args) -> Path | None:
    """The folder of a local webdataset run (``None`` for other datasets)."""
    if not args.dataset.startswith("wds/"):
        return None
    return Path(dataset_root(args.dataset_root, args.dataset))


@lru_cache(maxsize=1)
def harness_datasets() -> tuple[set[str], tuple[str, ...]]:
    """Names the harness's ``build_dataset`` knows, read from its source, and the accepted prefixes."""
    from clip_benchmark.datasets import builder

    source = inspect.getsource(builder.build_dataset)
    names = set(re.findall(r'dataset_name == "([^"]+)"', source))
    for group in re.findall(r"dataset_name in \(([^)]*)\)", source):
        names.update(re.findall(r'"([^"]+)"', group))
    return names, DATASET_PREFIXES


def class_names(values) -> list[str]:
    """A dataset's class names without trailing blank lines (of ``classnames.txt``): those are no classes."""
    values = list(values or [])
    while values and not str(values[-1]).strip():
        values.pop()
    return values
