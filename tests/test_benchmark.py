"""Benchmark configs: every shipped one validates; each kind of bad config gets its one error."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.workflows.benchmark import load_benchmark, plan

CONFIGS = sorted((Path(__file__).parents[1] / "benchmark_configs").glob("*.yaml"))
DEMO = resources.files("diffcls_plugin") / "configs" / "demo.yaml"


@pytest.mark.parametrize("path", CONFIGS + [DEMO], ids=lambda p: Path(str(p)).name)
def test_every_shipped_config_loads_and_resolves(path):
    config = load_benchmark(path)
    runs = plan(config)
    assert len(runs) == len(config.models) * len(config.datasets)
    assert len({r.output for r in runs}) == len(runs)
    assert all(r.diffcls is not None for r in runs if r.model.is_diffusion)


def test_paper_config_carries_li_et_al_per_dataset_protocols():
    config = load_benchmark(Path(__file__).parents[1] / "benchmark_configs" / "paper-table1-2.yaml")
    by_cell = {(r.model.label, r.dataset.name): r for r in plan(config)}
    by_cell.update({(r.model.name, r.dataset.name): r for r in plan(config) if r.model.label == f"{r.model.name} {r.model.pretrained}"})
    cifar = by_cell[("diffusion-adaptive", "cifar10")].diffcls
    assert (cifar.loss, cifar.adaptive.to_keep, cifar.adaptive.n_samples) == ("l1", (5, 1), (50, 500))
    aircraft = by_cell[("diffusion-adaptive", "fgvc_aircraft")].diffcls
    assert (aircraft.loss, aircraft.adaptive.to_keep) == ("l2", (20, 10, 5, 1))
    assert by_cell[("RN50", "cifar10")].diffcls is None
    assert {m.name for m in config.models} == {"diffusion-baseline", "diffusion-adaptive", "diffusion-hier", "diffusion-ttest", "diffusion-race", "RN50"}
    # the paper's column is Algorithm 1 as written (its preset); Clark & Jaini's their published settings
    paper = by_cell[("diffusion-hier (paper)", "cifar10")].diffcls.hierarchical
    assert (paper.preset, paper.beam, paper.beam_factor, paper.direction) == ("paper", "fixed", 2, "ascending")
    assert by_cell[("diffusion-ttest (Clark & Jaini)", "stl10")].diffcls.ttest.preset == "clark-jaini"
    assert config.datasets[0].templates == ("a blurry photo of a {c}.",)


BASE = {
    "name": "t",
    "models": [{"name": "diffusion-hier", "pretrained": "tiny-digits"}],
    "datasets": [{"name": "wds/digits"}],
}


def write(tmp_path, **changes):
    data = {**BASE, **changes}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"modles": []}, r"unknown key modles\. Did you mean 'models'\?"),
        ({"models": [{"name": "diffusion-hier", "pretrianed": "x"}]}, r"unknown key models\[0\]\.pretrianed\. Did you mean 'pretrained'\?"),
        (
            {"models": [{"name": "diffusion-hierarchical"}]},
            r"models\[0\]\.name: unknown diffusion model 'diffusion-hierarchical'\. Did you mean 'diffusion-hier'\?",
        ),
        ({"models": [{"name": "RN51", "pretrained": "openai"}]}, r"models\[0\]\.name 'RN51' is neither a diffusion model .* Did you mean 'RN50'\?"),
        (
            {"models": [{"name": "RN50", "pretrained": "opneai"}]},
            r"models\[0\]\.pretrained 'opneai' is not an open_clip checkpoint of RN50\. Did you mean 'openai'\?",
        ),
        ({"models": [{"name": "RN50"}]}, r"models\[0\]\.pretrained is required"),
        ({"datasets": [{"name": "cifar11"}]}, r"datasets\[0\]\.name 'cifar11' is not a CLIP_benchmark dataset\. Did you mean 'cifar10'\?"),
        ({"datasets": [{"name": "wds/mine"}]}, r"datasets\[0\]\.root is required for the webdataset 'wds/mine'"),
        ({"datasets": [{"name": "voc2007_multilabel"}]}, r"multi-label"),
        ({"datasets": [{"name": "cifar10", "templates": ["a photo"]}]}, r"templates must be a list of strings with \{c\}"),
        ({"subset": {"per_class": 2, "total": 3}}, r"subset: give exactly one of per_class or total"),
        ({"subset": {"k": 2}}, r"unknown key subset\.k"),
        ({"precision": "fp64"}, r"precision must be one of auto, fp32, fp16, bf16"),
        (
            {"models": [{"name": "diffusion-adaptive", "options": {"adaptive": {"to_keep": [5, 2]}}}]},
            r"options of 'diffusion-adaptive sd2-base' on wds/digits: adaptive\.to_keep must end with 1",
        ),
        ({"datasets": [{"name": "wds/digits", "options": {"hierarchical": {"beam_size": 2}}}]}, r"unknown key 'hierarchical\.beam_size'"),
        ({"models": [{"name": "diffusion-hier"}, {"name": "diffusion-hier"}]}, r"same label twice"),
        ({"models": [{"name": "RN50", "pretrained": "openai", "options": {"loss": "l1"}}]}, r"options apply to diffusion models only"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1"),
    ],
)
def test_bad_config_names_file_key_and_fix(tmp_path, changes, message):
    path = write(tmp_path, **changes)
    with pytest.raises(DiffclsError, match=message) as err:
        load_benchmark(path)
    assert str(err.value).startswith(str(path))


def test_dataset_options_then_model_options(tmp_path):
    path = write(
        tmp_path,
        models=[
            {"name": "diffusion-adaptive", "pretrained": "tiny-digits"},
            {"name": "diffusion-adaptive", "pretrained": "tiny-digits", "label": "l2", "options": {"loss": "l2"}},
        ],
        datasets=[{"name": "wds/digits", "options": {"loss": "l1", "adaptive": {"to_keep": [3, 1], "n_samples": [4, 8]}}}],
        precision="fp32",
    )
    a, b = plan(load_benchmark(path))
    assert a.diffcls.loss == "l1" and b.diffcls.loss == "l2"
    assert a.diffcls.adaptive.to_keep == b.diffcls.adaptive.to_keep == (3, 1)
    assert a.diffcls.dtype == "fp32"
    assert a.config_hash != b.config_hash
    assert plan(load_benchmark(path))[0].config_hash == a.config_hash  # stable


def _matrix(tmp_path, models, root):
    import yaml

    path = tmp_path / "matrix.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "m",
                "output": str(tmp_path / "out"),
                "num_workers": 0,
                "batch_size": 4,
                "models": models,
                "datasets": [{"name": "wds/tiny", "root": str(root), "options": {"baseline": {"n_timesteps": 2}}}],
            }
        )
    )
    return load_benchmark(path)


def test_run_checks_every_cell_before_the_first_computes(tmp_path, tiny_sd, tiny_wds):
    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.workflows.benchmark import run_benchmark

    root, _, _ = tiny_wds
    config = _matrix(
        tmp_path,
        [
            {"name": "diffusion-baseline", "pretrained": str(tiny_sd)},
            {"name": "diffusion-baseline", "pretrained": str(tmp_path / "no-such-model"), "label": "bad"},
            {"name": "diffusion-hier", "pretrained": "someone/not-cached"},
        ],
        root,
    )
    with pytest.raises(DiffclsError) as exc:
        run_benchmark(config, echo=lambda _: None)
    text = str(exc.value)
    assert text.startswith("2 of 3 cells cannot run; nothing was computed")
    assert "bad on wds/tiny: --pretrained folder" in text and "does not exist" in text
    assert "diffusion-hier someone/not-cached on wds/tiny: --pretrained 'someone/not-cached'" in text and "not in the local hub cache" in text
    assert not list((tmp_path / "out").glob("*.json"))  # the good cell did not run either


def test_a_cell_that_fails_while_running_does_not_stop_the_others(tmp_path, tiny_sd, tiny_wds):
    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.workflows.benchmark import run_benchmark

    root, _, _ = tiny_wds
    config = _matrix(
        tmp_path,
        [
            {"name": "diffusion-baseline", "pretrained": str(tiny_sd), "label": "first"},
            {"name": "diffusion-baseline", "pretrained": str(tiny_sd), "label": "second"},
        ],
        root,
    )
    import diffcls_plugin.harness as harness

    original = harness.run_harness
    calls = []

    def flaky(argv, config=None, subset=None, **kwargs):  # the first cell dies mid-run, as an out-of-disk or a lost node would
        calls.append(argv)
        if len(calls) == 1:
            raise RuntimeError("simulated failure")
        return original(argv, config, subset, **kwargs)

    lines = []
    import unittest.mock

    with unittest.mock.patch.object(harness, "run_harness", flaky), pytest.raises(DiffclsError) as exc:
        run_benchmark(config, echo=lines.append)
    assert len(calls) == 2 and str(exc.value).startswith("1 of 2 cells failed (the others ran)")
    assert "first on wds/tiny: simulated failure" in str(exc.value)
    assert any("FAILED: simulated failure" in line for line in lines)
    assert [p.name for p in sorted((tmp_path / "out").glob("*.json"))] == ["wds_tiny__second.json"]
