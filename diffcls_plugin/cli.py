"""The ``diffcls`` command line: thin click commands over library functions."""

from __future__ import annotations

import sys

import click


@click.group()
@click.version_option(package_name="diffcls-plugin")
def main() -> None:
    """Diffusion models as zero-shot classifiers in CLIP_benchmark."""


@main.command(
    "eval",
    context_settings=dict(ignore_unknown_options=True, allow_extra_args=False, show_default=True),
)
@click.option("--model", "models", multiple=True, default=("diffusion-hier",),
              help="diffusion-baseline, diffusion-adaptive or diffusion-hier; repeat for several.")
@click.option("--pretrained", default="sd2-base", help="Zoo name, hub id or local diffusers folder.")
@click.option("--dataset", "datasets", multiple=True, default=("cifar10",), help="Any clip_benchmark dataset; repeat for several.")
@click.option("--dataset-root", default="root", help="Dataset folder (clip_benchmark --dataset_root).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON options file (the same file DIFFCLS_CONFIG names for clip_benchmark).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one option, e.g. --set hierarchical.beam_factor=4 --set loss=l1.")
@click.option("--seed", type=int, default=0, help="Run seed: each image's noise derives from it.")
@click.option("--batch-size", type=int, default=64, help="Images per harness batch.")
@click.option("--num-workers", type=int, default=4, help="Data loader workers.")
@click.option("--output", default="{dataset}_{pretrained}_{model}_{language}_{task}.json", help="Result JSON path template.")
@click.argument("harness_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(models, pretrained, datasets, dataset_root, config_path, overrides, seed, batch_size,
                 num_workers, output, harness_args) -> None:
    """Evaluate through the unmodified `clip_benchmark eval`; extra arguments pass through to it.

    \b
    Example:
      diffcls eval --model diffusion-hier --dataset cifar10 --set hierarchical.beam_factor=4
    """
    from diffcls_plugin.config import load_config
    from diffcls_plugin.errors import DiffclsError

    try:
        config = load_config(config_path, overrides)
    except DiffclsError as err:
        raise click.UsageError(str(err)) from None
    argv = [
        "clip_benchmark", "eval",
        "--model", *models,
        "--pretrained", pretrained,
        "--dataset", *datasets,
        "--dataset_root", dataset_root,
        "--seed", str(seed),
        "--batch_size", str(batch_size),
        "--num_workers", str(num_workers),
        "--output", output,
        *harness_args,
    ]
    run_harness(argv, config)


def run_harness(argv: list[str], config) -> None:
    """Run ``clip_benchmark.cli.main`` in this process with ``argv`` and the given config."""
    from diffcls_plugin.harness import register, use_config

    register()
    from clip_benchmark import cli as harness_cli

    saved = sys.argv
    sys.argv = argv
    try:
        with use_config(config):
            harness_cli.main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
