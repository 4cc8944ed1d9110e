"""Help texts say what the commands do: ``diffcls demo``'s name the samplers its config runs, and
``clip_benchmark eval --help`` lists the ``diffusion-*`` models the plugin adds."""

from __future__ import annotations

import argparse
import types
from importlib import resources

import yaml
from click.testing import CliRunner

from diffcls_plugin.cli import main
from diffcls_plugin.harness.model_help import with_diffusion_models_help
from diffcls_plugin.samplers import SAMPLERS_BY_MODEL

WORDS = {4: "four", 5: "five", 6: "six"}


def demo_samplers() -> list[str]:
    """Read independently of the code under test: the sampler of every model demo.yaml runs."""
    config = yaml.safe_load((resources.files("diffcls_plugin") / "configs" / "demo.yaml").read_text())
    return [SAMPLERS_BY_MODEL.get(m["name"]).name for m in config["models"]]


def flat(text: str) -> str:
    return " ".join(text.split())


def test_demo_help_names_every_sampler_the_demo_runs():
    samplers = demo_samplers()
    assert len(samplers) == 5  # the registered five (a sixth sampler in demo.yaml changes the words below by itself)
    runner = CliRunner()
    listing = flat(runner.invoke(main, ["--help"]).output)
    assert f"demo {' vs '.join(samplers)} on the embedded tiny-digits model." in listing
    text = flat(runner.invoke(main, ["demo", "--help"]).output)
    n = WORDS[len(samplers)]
    assert f"The {n} samplers ({', '.join(samplers)})" in text
    assert f"writes the {n} result JSON files and frontier.png" in text
    assert f"Folder for the {n} result JSON files and frontier.png" in text
    assert "three" not in text and "Baseline vs adaptive vs hierarchical on" not in listing


def test_the_plot_command_is_listed():
    assert "plot" in CliRunner().invoke(main, ["--help"]).output


def test_the_model_help_wrapper_edits_only_the_model_help():
    """A stand-in for clip_benchmark.cli: get_parser_args builds a parser with a subparser and parses."""
    module = types.ModuleType("fake_cli")
    module.argparse = argparse

    def get_parser_args():
        parser = module.argparse.ArgumentParser()
        sub = parser.add_subparsers().add_parser("eval")
        sub.add_argument("--model", nargs="+", help="Model architecture to use from OpenCLIP")
        sub.add_argument("--pretrained", help="Model checkpoint name to use from OpenCLIP")
        return parser, sub

    module.get_parser_args = get_parser_args
    with_diffusion_models_help(module)
    _, sub = module.get_parser_args()
    helps = {a.dest: a.help for a in sub._actions}
    assert helps["pretrained"] == "Model checkpoint name to use from OpenCLIP"
    assert helps["model"].startswith("Model architecture to use from OpenCLIP, or a diffusion classifier")
    assert all(name in helps["model"] for name in SAMPLERS_BY_MODEL.names())
    assert module.argparse is argparse  # put back after the call
    assert sub.parse_args(["--model", "diffusion-race", "RN50"]).model == ["diffusion-race", "RN50"]


def test_clip_benchmark_eval_help_lists_the_diffusion_models(harness_eval_help):
    lines = harness_eval_help.splitlines()  # one line per option
    (start,) = [i for i, line in enumerate(lines) if line.strip().startswith("--model MODEL")]
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("--"))
    line = flat(" ".join(lines[start:end]))  # the option's help (argparse may start it on the next line)
    assert "Model architecture to use from OpenCLIP, or a diffusion classifier" in line
    names = SAMPLERS_BY_MODEL.names()
    assert len(names) == 5 and all(name in line for name in names)
