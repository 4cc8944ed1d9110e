"""The plugin inside the unmodified CLIP_benchmark: its zero-shot path, its CLI, its metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import CLASSNAMES, TEMPLATES, harness_eval, random_images, run_clip_benchmark
from sklearn.metrics import balanced_accuracy_score

from diffcls_plugin import register
from diffcls_plugin.classifier import load_classifier
from diffcls_plugin.config import load_config
from diffcls_plugin.harness import session

register()
from clip_benchmark import cli as harness_cli  # noqa: E402
from clip_benchmark.metrics import zeroshot_classification as zsc  # noqa: E402
from clip_benchmark.models import MODEL_TYPES, load_clip  # noqa: E402


def loader(model, images, labels, batch_size=4):
    x = torch.stack([model.transform(img) for img in images])
    dataset = torch.utils.data.TensorDataset(x, torch.tensor(labels))
    dataset.classes = CLASSNAMES
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False), x


def independent_metrics(rankings, labels, n_classes):
    """acc1, acc5 and mean per-class recall straight from the samplers' rankings."""
    top1 = [r[0] for r in rankings]
    acc1 = sum(p == y for p, y in zip(top1, labels)) / len(labels)
    acc5 = sum(y in r[:5] for r, y in zip(rankings, labels)) / len(labels) if n_classes >= 5 else float("nan")
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": balanced_accuracy_score(labels, top1)}


def test_model_type_is_registered_and_listed_in_help(harness_eval_help):
    assert "diffusion" in MODEL_TYPES
    assert "diffusion" in harness_eval_help.split("--model_type")[1]


def test_python_dash_m_runs_the_plugins_checks_too(tmp_path):
    """`python -m clip_benchmark.cli` executes the module as __main__ (never through an import): the
    hook hands it the patched module, so a bad --output is refused before any weights load."""
    out = harness_eval("diffusion-baseline", "tiny-digits", "wds/digits", tmp_path / "nowhere", tmp_path / "missing" / "r.json", fresh=True)
    assert out.returncode != 0
    assert "does not exist; create it first" in out.stderr, out.stderr[-1500:]
    assert "diffcls: cost:" not in out.stderr  # stopped by the pre-run checks, before their last note (and before any weights load)


@pytest.mark.parametrize(
    "templates",
    [TEMPLATES, {c: [f"a {c}."] + [f"a photo of a {c} number {k}." for k in range(i % 3)] for i, c in enumerate(CLASSNAMES)}],
    ids=["list-templates", "cupl-dict-unequal-counts"],
)
@pytest.mark.parametrize("model_name", ["diffusion-baseline", "diffusion-adaptive", "diffusion-hier", "diffusion-ttest", "diffusion-race"])
def test_harness_logits_rank_classes_exactly_as_the_sampler(tiny_sd, templates, model_name):
    config = load_config(None, ["adaptive.to_keep=[3,1]", "adaptive.n_samples=[4,8]", "baseline.n_timesteps=8", "ttest.min_samples=3", "ttest.max_samples=12"])
    # through the harness's own loader entry point, with --model_type open_clip (the default); the
    # options reach the loader as a `diffcls eval` session hands them over
    with session(config):
        model, transform, tokenizer = load_clip("open_clip", model_name, str(tiny_sd), None, "cpu")
    assert model.config == config and model.options == config.sampler_options(model.sampler.name)
    images, labels = random_images(8, seed=1), [i % 6 for i in range(8)]
    dl, x = loader(model, images, labels)
    # amp=True, as the CLI defaults to: the patched evaluate must switch it off for us
    # the logits are the ones the harness computes its metrics from (its run_classification, which
    # evaluate calls, is watched rather than called a second time: each call classifies every image)
    seen = []

    def run_classification(*args, **kwargs):
        seen.append(original_run_classification(*args, **kwargs))
        return seen[-1]

    original_run_classification = zsc.run_classification
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zsc, "run_classification", run_classification)
        metrics = zsc.evaluate(model, dl, tokenizer, CLASSNAMES, templates, "cpu", amp=True)
    classifier = zsc.zero_shot_classifier(model, tokenizer, CLASSNAMES, templates, "cpu", amp=False)
    assert torch.equal(classifier, torch.eye(len(CLASSNAMES)))
    ((logits, target),) = seen
    assert target.tolist() == labels
    rankings = [r.ranking for r in model.classify(x)]
    for row, ranking in zip(logits, rankings):
        assert torch.argsort(row, descending=True, stable=True).tolist() == list(ranking)
        assert len(set(row.tolist())) == len(CLASSNAMES)  # no ties
    expected = independent_metrics(rankings, labels, len(CLASSNAMES))
    assert metrics == pytest.approx(expected)


def test_bf16_autocast_would_tie_scores_so_amp_is_off_for_diffusion_models(tiny_sd):
    """Why amp is switched off: 1000 distinct rank scores collapse under bf16 autocast."""
    features = torch.arange(1000, 0, -1, dtype=torch.float32)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = 100.0 * torch.nn.functional.normalize(features, dim=-1) @ torch.eye(1000)
    assert len(set(logits.float().tolist()[0])) < 1000
    plain = 100.0 * torch.nn.functional.normalize(features, dim=-1) @ torch.eye(1000)
    assert len(set(plain.tolist()[0])) == 1000


def test_harness_accuracy_runs_under_the_installed_numpy():
    import numpy as np

    logits = torch.tensor([[0.1, 0.9, 0.0, 0.3, 0.2, 0.4], [0.8, 0.1, 0.0, 0.3, 0.2, 0.4], [0.0, 0.1, 0.9, 0.3, 0.2, 0.4]])
    target = torch.tensor([1, 3, 2])
    acc1, acc5 = zsc.accuracy(logits, target, topk=(1, 5))
    assert (acc1, acc5) == (2 / 3, 1.0)
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4):
        assert zsc.accuracy.__module__ == "diffcls_plugin.harness.patches"  # the broken original was replaced


def test_hook_patches_lazily_without_importing_torch_and_can_be_switched_off():
    code = "import sys; assert 'torch' not in sys.modules, 'torch imported at start';import clip_benchmark.models as m; print('diffusion' in m.MODEL_TYPES)"
    # the two processes are independent: they run side by side
    on, off = (
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for env in (dict(os.environ), dict(os.environ, DIFFCLS_NO_HOOK="1"))
    )
    (on_out, on_err), (off_out, off_err) = on.communicate(timeout=300), off.communicate(timeout=300)
    assert on_out.strip() == "True", on_err
    assert off_out.strip() == "False", off_err


def harness_args(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", *argv])
    _, args = harness_cli.get_parser_args()
    return args


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "diffusion-hierarchical"], r"unknown diffusion model 'diffusion-hierarchical'\. Did you mean 'diffusion-hier'\?"),
        (["--model", "RN50", "--model_type", "diffusion"], r"unknown diffusion model 'RN50'.*Valid: diffusion-adaptive"),
        (["--model", "diffusion-hier", "--pretrained", "sd2base"], r"unknown --pretrained 'sd2base'\. Did you mean 'sd2-base'\?"),
        (["--model", "diffusion-hier", "--pretrained", "./no/such/folder"], r"folder './no/such/folder' does not exist"),
        (["--model", "diffusion-hier", "--dataset", "voc2007_multilabel"], r"multi-label.*single-label"),
        (["--model", "diffusion-hier", "--dataset", "flickr30k"], r"supports only --task zeroshot_classification"),
    ],
)
def test_bad_harness_input_is_one_clear_line_before_any_loading(monkeypatch, argv, message):
    args = harness_args(["eval", "--dataset", "cifar10", *argv], monkeypatch)
    loaded = []
    monkeypatch.setattr("diffcls_plugin.harness.patches.load_classifier", lambda *a, **k: loaded.append(1))
    with pytest.raises(SystemExit) as exc:
        harness_cli.main_eval(args)
    text = str(exc.value.code)
    assert text.startswith("diffcls: error: ") and "\n" not in text
    assert re.search(message, text), text
    assert loaded == []


def test_bad_config_named_by_environment_fails_before_loading(monkeypatch, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("hierarchical:\n  beam_size: 2\n")
    monkeypatch.setenv("DIFFCLS_CONFIG", str(path))
    args = harness_args(["eval", "--model", "diffusion-hier", "--dataset", "cifar10"], monkeypatch)
    with pytest.raises(SystemExit, match=r"bad\.yaml: unknown key 'hierarchical\.beam_size'"):
        harness_cli.main_eval(args)


def test_multilabel_webdataset_is_refused(monkeypatch, tmp_path):
    (tmp_path / "dataset_type.txt").write_text("multilabel\n")
    args = harness_args(["eval", "--model", "diffusion-hier", "--dataset", "wds/ml", "--dataset_root", str(tmp_path)], monkeypatch)
    with pytest.raises(SystemExit, match="multi-label"):
        harness_cli.main_eval(args)


def run_cli(argv, cwd, env_extra=None):
    """``clip_benchmark ARGV[1:]``, the console script (forked: conftest.run_clip_benchmark)."""
    assert argv[0] == "clip_benchmark"
    proc = run_clip_benchmark(*argv[1:], cwd=cwd, env=env_extra)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_end_to_end_clip_benchmark_cli_matches_an_independent_computation(tmp_path, tiny_sd, tiny_wds):
    """The real `clip_benchmark eval` command line, four samplers, default loader workers."""
    root, images, labels = tiny_wds
    config = tmp_path / "diffcls.yaml"
    config.write_text(
        "adaptive:\n  to_keep: [3, 1]\n  n_samples: [4, 16]\nbaseline:\n  n_timesteps: 16\nhierarchical:\n  beam_factor: 1.5\n  n_timesteps: 16\n"
        "race:\n  n_timesteps: 16\n  alpha: 0.05\n"
    )
    proc = run_cli(
        [
            "clip_benchmark",
            "eval",
            "--model",
            "diffusion-baseline",
            "diffusion-adaptive",
            "diffusion-hier",
            "diffusion-race",
            "--model_type",
            "diffusion",
            "--pretrained",
            str(tiny_sd),
            "--dataset",
            "wds/tiny",
            "--dataset_root",
            str(root),
            "--batch_size",
            "5",
            "--seed",
            "7",
            "--output",
            str(tmp_path / "{model}.json"),
        ],
        cwd=tmp_path,
        env_extra={"DIFFCLS_CONFIG": str(config)},
    )
    assert "UNet evals/s" in proc.stderr  # progress shows UNet evaluations per second
    evals = {}
    for name in ("diffusion-baseline", "diffusion-adaptive", "diffusion-hier", "diffusion-race"):
        dump = json.loads((tmp_path / f"{name}.json").read_text())
        assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(dump)
        assert dump["model"] == name and dump["pretrained"] == "tiny-sd" and dump["dataset"] == "wds/tiny"
        block = dump["diffcls"]
        assert block["seed"] == 7 and block["n_images"] == len(images) and block["n_classes"] == len(CLASSNAMES)
        assert block["checkpoint"]["folder"] == str(tiny_sd.resolve())
        assert block["config"]["loss"] == "l2" and block["config"]["prompts"] == "first"
        # independent computation: the same model and options, in this process, without the harness
        model = load_classifier(name, str(tiny_sd), config=load_config(config), seed=7, progress=False)
        assert block["config"]["sampler"] == model.options.to_dict()
        model.prepare(CLASSNAMES, TEMPLATES)
        results = model.classify(torch.stack([model.transform(img) for img in images]))
        expected = independent_metrics([r.ranking for r in results], labels, len(CLASSNAMES))
        assert dump["metrics"] == pytest.approx(expected), name
        assert block["unet_evals_per_image"] == pytest.approx(sum(r.n_evals for r in results) / len(results))
        evals[name] = block["unet_evals_per_image"]
    assert evals["diffusion-baseline"] == 6 * 16
    assert evals["diffusion-adaptive"] == 6 * 4 + 3 * 12
    assert evals["diffusion-hier"] < evals["diffusion-baseline"]
    assert evals["diffusion-race"] <= evals["diffusion-baseline"]
    # the results keep the harness schema: clip_benchmark build reads them
    run_cli(["clip_benchmark", "build", *map(str, tmp_path.glob("*.json")), "--output", str(tmp_path / "b.csv")], cwd=tmp_path)
    header = (tmp_path / "b.csv").read_text().splitlines()[0].split(",")
    assert {"acc1", "model", "pretrained"} <= set(header)


def test_default_pretrained_means_sd2_base(monkeypatch):
    args = harness_args(["eval", "--model", "diffusion-hier", "--dataset", "cifar10"], monkeypatch)
    from diffcls_plugin.harness.preflight import preflight

    # one run of the matrix, as clip_benchmark.cli.main_eval hands it to run()
    args.model, args.pretrained, args.dataset, args.language = "diffusion-hier", args.pretrained[0], "cifar10", "en"
    # the hub-cache and dataset checks need the weights and CIFAR10 on disk: record what they are asked
    checked = []
    monkeypatch.setattr(
        "diffcls_plugin.harness.preflight.check_checkpoint_offline", lambda checkpoint, allow_pickle, cache_dir=None: checked.append(checkpoint.source)
    )
    monkeypatch.setattr("diffcls_plugin.harness.preflight.check_dataset", lambda args, task: checked.append((args.dataset, task)) or (6, None))
    checked_run = preflight(args)
    ctx = checked_run.context
    assert checked_run.changes == {"pretrained": "sd2-base"} and args.pretrained == "laion400m_e32"  # returned, not applied
    checked_run.apply(args)
    assert args.pretrained == "sd2-base"
    assert ctx.checkpoint.source == "stabilityai/stable-diffusion-2-base"
    assert checked == ["stabilityai/stable-diffusion-2-base", ("cifar10", "zeroshot_classification")]


def test_diffcls_eval_passes_the_same_options(tmp_path, tiny_sd, tiny_wds):
    from click.testing import CliRunner

    from diffcls_plugin.cli import main

    root, images, _ = tiny_wds
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--model",
            "diffusion-hier",
            "--pretrained",
            str(tiny_sd),
            "--dataset",
            "wds/tiny",
            "--dataset-root",
            str(root),
            "--num-workers",
            "0",
            "--output",
            str(out),
            "--subset-per-class",
            "1",
            "--set",
            "hierarchical.beam_factor=3",
            "--set",
            "hierarchical.direction=descending",
            "--set",
            "loss=l1",
        ],
    )
    assert result.exit_code == 0, result.output
    block = json.loads(out.read_text())["diffcls"]
    assert block["n_images"] == len(CLASSNAMES) and block["subset"]["per_class"] == 1  # one image of each class
    assert block["config"]["sampler"]["beam_factor"] == 3
    assert block["config"]["sampler"]["direction"] == "descending"
    assert block["config"]["loss"] == "l1"
    bad = CliRunner().invoke(main, ["eval", "--set", "hierarchical.beam_factr=3"])
    assert bad.exit_code == 2 and "Did you mean 'hierarchical.beam_factor'" in bad.output


def test_a_torn_result_file_is_made_again_even_with_skip_existing(tmp_path, tiny_sd, tiny_wds):
    """A run killed while the harness wrote its JSON left a 0-byte file that --skip_existing kept."""
    root, _, _ = tiny_wds
    out = tmp_path / "r.json"
    out.write_text("")
    run = harness_eval("diffusion-baseline", tiny_sd, "wds/tiny", root, out, "--skip_existing", "--num_workers", "0", "--batch_size", "12")
    assert run.returncode == 0, run.stderr[-1500:]
    assert "is not a whole result" in run.stderr
    result = json.loads(out.read_text())
    assert "acc1" in result["metrics"] and result["diffcls"]["n_images"] == 12
    again = harness_eval("diffusion-baseline", tiny_sd, "wds/tiny", root, out, "--skip_existing", "--num_workers", "0", "--batch_size", "12")
    assert again.returncode == 0 and "is not a whole result" not in again.stderr
    assert json.loads(out.read_text()) == result  # a whole result is kept, as the harness keeps it
