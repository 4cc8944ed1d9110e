"""The ``diffcls`` command line: thin click commands over library functions."""

from __future__ import annotations

from pathlib import Path

import click

from diffcls_plugin.samplers import SAMPLERS_BY_MODEL  # pure Python: no torch at CLI start-up
from diffcls_plugin.workflows import demo  # the demo's help texts, read from its config (no torch)


def _subset(per_class: int | None, total: int | None, seed: int):
    """The stratified subset the ``--subset-*`` flags ask for (``None`` for the whole split), validated."""
    from diffcls_plugin.data.subset import SubsetSpec

    if per_class is None and total is None:
        return None
    subset = SubsetSpec(per_class=per_class, total=total, seed=seed)
    subset.validate("--subset")
    return subset


def _models_help() -> str:
    """The ``--model`` help: every registered diffusion model with its sampler's summary."""
    models = "; ".join(f"{name} ({SAMPLERS_BY_MODEL.get(name).summary})" for name in SAMPLERS_BY_MODEL.names())
    return f"One of: {models}. Repeat for several."


@click.group()
@click.version_option(package_name="diffcls-plugin")
def main() -> None:
    """Diffusion models as zero-shot classifiers in CLIP_benchmark."""


@main.command(
    "eval",
    context_settings=dict(ignore_unknown_options=True, allow_extra_args=False, show_default=True),
)
@click.option("--model", "models", multiple=True, default=("diffusion-hier",), help=_models_help())
@click.option("--pretrained", default="sd2-base", help="Zoo name, hub id or local diffusers folder.")
@click.option("--dataset", "datasets", multiple=True, default=("cifar10",), help="Any clip_benchmark dataset; repeat for several.")
@click.option("--dataset-root", default="root", help="Dataset folder (clip_benchmark --dataset_root).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML/JSON options file (the same file DIFFCLS_CONFIG names for clip_benchmark).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one option, e.g. --set hierarchical.beam_factor=4 --set loss=l1.")
@click.option("--seed", type=int, default=0, help="Run seed: each image's noise derives from it.")
@click.option("--batch-size", type=int, default=64, help="Images per harness batch.")
@click.option("--num-workers", type=int, default=4, help="Data loader workers.")
@click.option("--output", default="{dataset}_{pretrained}_{model}_{language}_{task}.json", help="Result JSON path template.")
@click.option("--subset-per-class", type=int, default=None, help="Evaluate a stratified subset: this many images per class.")
@click.option("--subset-total", type=int, default=None, help="Evaluate a stratified subset of this many images.")
@click.option("--subset-seed", type=int, default=0, help="Seed of the subset choice.")
@click.option("--dry-run", is_flag=True, help="Check every run and print its plan and cost (images, evaluations, time); compute nothing.")
@click.argument("harness_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(
    models,
    pretrained,
    datasets,
    dataset_root,
    config_path,
    overrides,
    seed,
    batch_size,
    num_workers,
    output,
    subset_per_class,
    subset_total,
    subset_seed,
    dry_run,
    harness_args,
) -> None:
    """Evaluate through the unmodified `clip_benchmark eval`; extra arguments pass through to it.

    \b
    Example:
      diffcls eval --model diffusion-hier --dataset cifar10 --set hierarchical.beam_factor=4
    """
    from diffcls_plugin.config import load_config
    from diffcls_plugin.errors import DiffclsError

    try:
        config = load_config(config_path, overrides)
        subset = _subset(subset_per_class, subset_total, subset_seed)
    except DiffclsError as err:
        raise click.UsageError(str(err)) from None
    argv = [
        "clip_benchmark",
        "eval",
        "--model",
        *models,
        "--pretrained",
        pretrained,
        "--dataset",
        *datasets,
        "--dataset_root",
        dataset_root,
        "--seed",
        str(seed),
        "--batch_size",
        str(batch_size),
        "--num_workers",
        str(num_workers),
        "--output",
        output,
        *harness_args,
    ]
    from diffcls_plugin.harness import run_harness

    run_harness(argv, config, subset, dry_run=dry_run)


@main.command("table")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex"]), default="markdown", show_default=True)
@click.option("--recall/--no-recall", default=False, help="Also show mean per-class recall.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write to a file instead of stdout.")
def table_command(results, fmt, recall, output) -> None:
    """Leaderboard from harness result JSON files or folders (ours and plain CLIP_benchmark ones).

    Top-1 and recall in percent (the CSV keeps the raw fractions, as `clip_benchmark build`);
    speed-up is the baseline sampler's seconds per image over the row's, same checkpoint and dataset.
    """
    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.workflows.leaderboard import build_table, read_results, render

    try:
        text = render(build_table(read_results(results)), fmt, recall=recall)
    except DiffclsError as err:
        raise click.ClickException(str(err)) from None
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)


@main.command("check")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--reference", required=True, type=click.Path(dir_okay=False), help="Reference values (JSON).")
@click.option("--update", is_flag=True, help="Write the results' values as the new reference instead of checking.")
def check_command(results, reference, update) -> None:
    """Compare results with reference values; exit 1 on a regression beyond tolerance.

    Accuracy tolerances default to 3 binomial standard errors at the number of images
    (Agresti-Coull); UNet evaluations per image to 5 % relative.
    """
    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.jsonio import write_json_atomic
    from diffcls_plugin.workflows.leaderboard import read_results
    from diffcls_plugin.workflows.regression import check, read_reference, reference_from

    try:
        found = read_results(results)
        if update:
            previous = read_reference(reference) if Path(reference).is_file() else None
            write_json_atomic(reference, reference_from(found, previous), indent=2)
            click.echo(f"wrote {len(found)} entries to {reference}")
            return
        checks = check(found, read_reference(reference))
    except DiffclsError as err:
        raise click.ClickException(str(err)) from None
    for c in checks:
        click.echo(c.line())
    failed = [c for c in checks if c.status in ("regression", "missing", "mismatch")]
    click.echo(f"{len(checks)} checks, {len(failed)} failed")
    if failed:
        raise SystemExit(1)


@main.command("run")
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", default=None, help="Result folder (default: the config's output).")
@click.option("--force", is_flag=True, help="Rerun cells whose result already exists with the same config.")
@click.option("--check", "check_reference", is_flag=True, help="Then check the results against the config's reference file.")
@click.option("--dry-run", is_flag=True, help="Check every cell and print its plan and cost; compute nothing.")
def run_command(config_path, output, force, check_reference, dry_run) -> None:
    """Run a benchmark matrix (models x datasets) through the harness, one result JSON per cell.

    A cell whose result file holds the same config hash is skipped.
    """
    import dataclasses

    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.workflows.benchmark import load_benchmark, run_benchmark

    try:
        config = load_benchmark(config_path)
        if check_reference and not config.reference:
            raise DiffclsError(f"{config_path}: --check needs a 'reference' file in the config")
        if output:
            config = dataclasses.replace(config, output=output)
        files = run_benchmark(config, force=force, echo=lambda text: click.echo(text, err=True), dry_run=dry_run)
    except DiffclsError as err:
        raise click.ClickException(str(err)) from None
    if check_reference and not dry_run:
        reference = Path(config_path).parent / config.reference
        click.get_current_context().invoke(check_command, results=[str(f) for f in files], reference=str(reference), update=False)


@main.command("fit-weights", context_settings=dict(show_default=True))
@click.option("--pretrained", default="sd2-base", help="Zoo name, hub id or local diffusers folder.")
@click.option("--dataset", required=True, help="A clip_benchmark classification dataset with labels you will not evaluate on.")
@click.option("--dataset-root", default="root", help="Dataset folder (clip_benchmark --dataset_root).")
@click.option("--split", default="train", help="The split to fit on (not the one you will report).")
@click.option("--subset-per-class", type=int, default=None, help="Fit on a stratified subset: this many images per class.")
@click.option("--subset-total", type=int, default=None, help="Fit on a stratified subset of this many images.")
@click.option("--subset-seed", type=int, default=0, help="Seed of the subset choice.")
@click.option("--n-timesteps", type=int, default=32, help="Timestep grid (Li et al.'s formula) the errors are collected on.")
@click.option(
    "--method", type=click.Choice(["per-timestep", "poly"]), default="per-timestep", help="One weight per timestep, or exp of a polynomial in the timestep."
)
@click.option("--degree", type=int, default=3, help="Polynomial degree for --method poly.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Options file (loss, prompts, dtype ...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one option, e.g. --set dtype=bf16.")
@click.option("--seed", type=int, default=0, help="Noise seed (as the runs' --seed).")
@click.option("--batch-size", type=int, default=32, help="Images per batch.")
@click.option("--num-workers", type=int, default=2, help="Data loader workers.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="The weights file to write (JSON).")
def fit_weights_command(
    pretrained,
    dataset,
    dataset_root,
    split,
    subset_per_class,
    subset_total,
    subset_seed,
    n_timesteps,
    method,
    degree,
    config_path,
    overrides,
    seed,
    batch_size,
    num_workers,
    out_path,
) -> None:
    """Learn timestep weights on labelled images (Jeong et al. 2025); use them with `timestep_weights: FILE`.

    \b
    Example:
      diffcls fit-weights --pretrained sd3-medium --dataset cifar10 --dataset-root data/cifar10 \\
          --split train --subset-per-class 20 --out sd3-cifar10-weights.json
      DIFFCLS_CONFIG=run.yaml clip_benchmark eval --model diffusion-baseline ...   # run.yaml: timestep_weights: sd3-cifar10-weights.json
    """
    from diffcls_plugin.config import load_config
    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.workflows.benchmark import dataset_root as resolve_root
    from diffcls_plugin.workflows.fit_weights import fit_on_dataset

    try:
        config = load_config(config_path, overrides)
        subset = _subset(subset_per_class, subset_total, subset_seed)
        if n_timesteps < 2:
            raise DiffclsError(f"--n-timesteps must be at least 2 to weigh timesteps against each other, got {n_timesteps}")
        out = Path(out_path)
        if not out.parent.is_dir():
            raise DiffclsError(f"--out {out_path!r}: the folder {str(out.parent)!r} does not exist; create it first")
        dataset_root = resolve_root(dataset, None if dataset_root == "root" else dataset_root)
        weights = fit_on_dataset(
            pretrained,
            dataset,
            dataset_root,
            split,
            subset=subset,
            n_timesteps=n_timesteps,
            config=config,
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            method=method,
            degree=degree,
        )
    except DiffclsError as err:
        raise click.ClickException(str(err)) from None
    weights.save(out)
    acc = weights.meta["accuracy"]
    click.echo(
        f"fit-weights: {weights.meta['n_images']} images of {dataset} ({split}); held-out accuracy "
        f"{100 * acc['held_out_uniform']:.1f}% uniform -> {100 * acc['held_out_weighted']:.1f}% weighted"
        f"{' (uniform kept)' if weights.meta['kept_uniform'] else ''}; wrote {out}"
    )


@main.command("tune", context_settings=dict(show_default=True))
@click.option("--pretrained", default="sd2-base", help="Zoo name, hub id or local diffusers folder.")
@click.option("--dataset", required=True, help="A clip_benchmark classification dataset with labels (not the split you will report).")
@click.option("--dataset-root", default="root", help="Dataset folder (clip_benchmark --dataset_root).")
@click.option("--split", default="train", help="The labelled split to tune on (not the one you will report).")
@click.option("--subset-per-class", type=int, default=20, help="Tune on this many images per class (0: the whole split).")
@click.option("--subset-seed", type=int, default=0, help="Seed of the subset choice.")
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    default=("0.125",),
    help="Most evaluations per image, as a fraction of baseline-32's (0.125 or 1/8); repeat or comma-separate for one pick per budget.",
)
@click.option("--sampler", "families", multiple=True, help="Choose only among these samplers (adaptive, hierarchical, ttest, race); default: all.")
@click.option("--folds", type=int, default=5, help="K of the K-fold cross-validation.")
@click.option("--weights/--no-weights", default=True, help="Also consider timestep weights fitted inside the folds.")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Options file (loss, prompts, dtype ...); its sampler sections are replaced."
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one option, e.g. --set dtype=bf16.")
@click.option("--seed", type=int, default=0, help="Noise seed (as the runs' --seed) and the folds' shuffle.")
@click.option("--batch-size", type=int, default=32, help="Images per batch.")
@click.option("--num-workers", type=int, default=2, help="Data loader workers.")
@click.option("--workers", type=int, default=1, help="Processes replaying the configurations (CPU).")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The config file to write (YAML or JSON); several budgets write <stem>-<budget>.yaml.",
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Also draw accuracy against evaluations per image (PNG; needs matplotlib)."
)
def tune_command(
    pretrained,
    dataset,
    dataset_root,
    split,
    subset_per_class,
    subset_seed,
    budgets,
    families,
    folds,
    weights,
    config_path,
    overrides,
    seed,
    batch_size,
    num_workers,
    workers,
    out_path,
    plot_path,
) -> None:
    """Choose the sampler, its settings and timestep weights for your model and data, within a budget.

    Costs baseline-32 on the labelled subset (every class, 32 timesteps per image), then chooses
    by K-fold cross-validation and writes a DIFFCLS_CONFIG file with a `tuned:` record.

    \b
    Example:
      diffcls tune --pretrained sd2-base --dataset cifar10 --dataset-root data/cifar10 \\
          --split train --subset-per-class 20 --budget 1/8 --out tuned.yaml
      DIFFCLS_CONFIG=tuned.yaml clip_benchmark eval --model <tuned.model> --dataset cifar10 ...
    """
    from diffcls_plugin.config import load_config
    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.workflows.benchmark import dataset_root as resolve_root
    from diffcls_plugin.workflows.tune import parse_budgets, tune_on_dataset

    try:
        budgets = parse_budgets(budgets)
        config = load_config(config_path, overrides)
        subset = _subset(subset_per_class or None, None, subset_seed)
        dataset_root = resolve_root(dataset, None if dataset_root == "root" else dataset_root)
        tune_on_dataset(
            pretrained,
            dataset,
            dataset_root,
            split,
            out=out_path,
            budgets=budgets,
            subset=subset,
            families=families or None,
            k=folds,
            weights=weights,
            config=config,
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            workers=workers,
            plot=plot_path,
            echo=lambda text: click.echo(text, err=True),
        )
    except DiffclsError as err:
        raise click.ClickException(str(err)) from None


@main.command("plot")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="The image to write (PNG; .svg or .pdf by the suffix).")
def plot_command(results, out_path) -> None:
    """Plot top-1 against UNet evaluations per image, one panel per dataset, from result JSON files or folders.

    CLIP results are reference lines; under each panel, a histogram of each result's evaluations
    per image (results that record them). Needs matplotlib (the `plot` extra).
    """
    from diffcls_plugin.errors import DiffclsError
    from diffcls_plugin.workflows.leaderboard import read_results
    from diffcls_plugin.workflows.plot import plot_results

    try:
        plot_results(read_results(results), out_path)
    except DiffclsError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {out_path}", err=True)


@main.command("demo", help=demo.command_help(), short_help=demo.short_help())
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help=demo.out_help())
def demo_command(out_dir) -> None:
    table, _ = demo.run_demo(out_dir, echo=lambda text: click.echo(text, err=True))
    click.echo(table)


if __name__ == "__main__":
    main()
