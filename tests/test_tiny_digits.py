"""The embedded tiny-digits model and its held-out digits, offline, through the real harness path."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.config import load_config
from diffcls_plugin.data.digits import CLASSNAMES, TEMPLATES, ensure_digits_wds, load_split, split_indices
from diffcls_plugin.data.subset import SubsetSpec, select
from diffcls_plugin.samplers import SAMPLERS, run_samplers
from diffcls_plugin.workflows.benchmark import load_benchmark, run_benchmark
from diffcls_plugin.zoo import resolve_checkpoint

PER_CLASS = 4  # 40 held-out images: small enough for CI


def test_the_split_is_fixed_stratified_and_disjoint():
    split = split_indices()
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 1221, "val": 216, "test": 360}
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    _, labels = load_split("test")
    assert sorted(set(labels.tolist())) == list(range(10))
    assert min(list(labels).count(c) for c in range(10)) >= 35  # stratified: every digit ~36 times


def test_zoo_name_is_the_packaged_diffusers_folder():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    checkpoint = resolve_checkpoint("tiny-digits")
    assert checkpoint.is_local
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "TRAINING.json"):
        assert os.path.exists(os.path.join(checkpoint.source, part))


@pytest.fixture(scope="module")
def subset():
    images, labels = load_split("test")
    idx = select(labels, SubsetSpec(per_class=PER_CLASS, seed=0))
    return [images[i] for i in idx], [int(labels[i]) for i in idx]


@pytest.fixture(scope="module")
def error_table(subset):
    """Every (image, class, timestep) error of the 32-timestep grid, computed once."""
    images, _ = subset
    model = load_classifier("diffusion-baseline", "tiny-digits", config=load_config(None, ["unet_batch_size=320"]), progress=False)
    model.prepare(CLASSNAMES, TEMPLATES)
    scorer = model.scorer(torch.stack([model.transform(img) for img in images]))
    keys = [(i, c, t, 0) for i in range(len(images)) for c in range(10) for t in range(15, 1000, 31)]
    return dict(zip(keys, scorer(*zip(*keys)))), model


def test_baseline_accuracy_is_far_above_chance(subset, error_table):
    """Chance is 10 %. 80 % on 40 images: a model at chance reaches it with probability < 1e-20,
    and the model's measured test accuracy (98.9 %, README) would fall below it with probability
    < 1e-4 (binomial), so the threshold catches a broken model, not an unlucky draw."""
    _, labels = subset
    table, _ = error_table
    predictions = [min(range(10), key=lambda c: sum(table[(i, c, t, 0)] for t in range(15, 1000, 31))) for i in range(len(labels))]
    accuracy = sum(p == y for p, y in zip(predictions, labels)) / len(labels)
    assert accuracy >= 0.8, accuracy


def test_harness_results_of_the_three_samplers_match_the_sampler_functions(tmp_path, subset, error_table):
    """`diffcls run` through clip_benchmark vs the sampler functions over a lookup table."""
    images, labels = subset
    table, model = error_table
    config_path = tmp_path / "smoke.yaml"
    data = {
        "name": "smoke",
        "output": str(tmp_path / "results"),
        "batch_size": 16,
        "num_workers": 2,
        "subset": {"per_class": PER_CLASS, "seed": 0},
        "models": [
            {"name": "diffusion-baseline", "pretrained": "tiny-digits"},
            {"name": "diffusion-adaptive", "pretrained": "tiny-digits", "options": {"adaptive": {"to_keep": [5, 1], "n_samples": [3, 32]}}},
            {"name": "diffusion-hier", "pretrained": "tiny-digits"},
        ],
        "datasets": [{"name": "wds/digits", "options": {"unet_batch_size": 256}}],
    }
    config_path.write_text(yaml.safe_dump(data))
    config = load_benchmark(config_path)
    files = run_benchmark(config, echo=lambda _: None)
    evals = {}
    for path, spec in zip(files, config.models):
        dump = json.loads(path.read_text())
        block = dump["diffcls"]
        assert block["n_images"] == len(images) and block["subset"]["per_class"] == PER_CLASS
        options = (
            load_config(None, [])
            .sampler_options(SAMPLERS.get(block["sampler"]).name)
            .__class__(**{k: tuple(v) if isinstance(v, list) else v for k, v in block["config"]["sampler"].items()})
        )
        lookup = lambda i, c, t, n: [table[k] for k in zip(i, c, t, n)]  # noqa: E731
        results = run_samplers([SAMPLERS.get(block["sampler"]).fn(10, options, 1000) for _ in images], lookup)
        acc = sum(r.prediction == y for r, y in zip(results, labels)) / len(labels)
        assert dump["metrics"]["acc1"] == pytest.approx(acc, abs=1.5 / len(labels)), spec.label  # a near-tie may flip
        # these three samplers' counts do not depend on the errors (no early stop): exactly equal
        assert block["unet_evals_per_image"] == sum(r.n_evals for r in results) / len(results)
        evals[spec.name] = block["unet_evals_per_image"]
    assert evals["diffusion-baseline"] == 320
    assert evals["diffusion-hier"] < evals["diffusion-adaptive"] < evals["diffusion-baseline"]
    # a second run with the same config skips every cell; a changed option reruns only its cell
    messages = []
    run_benchmark(config, echo=messages.append)
    assert sum("skipped" in m for m in messages) == 3
    before = {p: p.stat().st_mtime_ns for p in files}
    data["models"][1]["options"]["adaptive"]["n_samples"] = [4, 32]
    config_path.write_text(yaml.safe_dump(data))
    messages.clear()
    run_benchmark(load_benchmark(config_path), echo=messages.append)
    assert sum("skipped" in m for m in messages) == 2
    assert [p.stat().st_mtime_ns == before[p] for p in files] == [True, False, True]


def test_digits_webdataset_is_written_once_in_harness_layout(tmp_path):
    root = ensure_digits_wds(tmp_path / "digits")
    assert (root / "classnames.txt").read_text().split() == CLASSNAMES
    assert int((root / "test" / "nshards.txt").read_text()) >= 4
    stamp = (root / "test" / "0.tar").stat().st_mtime_ns
    assert ensure_digits_wds(tmp_path / "digits") == root
    assert (root / "test" / "0.tar").stat().st_mtime_ns == stamp
