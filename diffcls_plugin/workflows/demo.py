"""``diffcls demo``: the samplers of ``configs/demo.yaml`` on the embedded tiny-digits model, a
leaderboard and a frontier plot. Its help texts are derived from that config, so they name the
samplers it runs (reading it is instant: no torch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path

from diffcls_plugin.jsonio import read_mapping
from diffcls_plugin.samplers import SAMPLERS_BY_MODEL
from diffcls_plugin.workflows.plot import MATPLOTLIB_MISSING

PLOT_NAME = "frontier.png"
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def config_path():
    """The demo's benchmark config, shipped in the package."""
    return resources.files("diffcls_plugin") / "configs" / "demo.yaml"


@lru_cache(maxsize=1)
def demo_samplers() -> tuple[str, ...]:
    """The sampler of each model the demo runs, in the config's order (e.g. ``baseline``, ``race``)."""
    models = read_mapping(config_path(), "demo config")["models"]
    return tuple(SAMPLERS_BY_MODEL.get(m["name"]).name for m in models if m["name"] in SAMPLERS_BY_MODEL)


def _count(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def short_help() -> str:
    """``diffcls --help``'s line for the demo: its samplers, e.g. ``baseline vs ... vs race``."""
    return f"{' vs '.join(demo_samplers())} on the embedded tiny-digits model."


def command_help() -> str:
    """``diffcls demo --help``'s text."""
    samplers = demo_samplers()
    return (
        f"The {_count(len(samplers))} samplers ({', '.join(samplers)}) on the embedded tiny-digits model and its held-out digits.\n\n"
        f"Runs offline through the real `clip_benchmark eval` path, writes the {_count(len(samplers))} result JSON files and "
        f"{PLOT_NAME} (with matplotlib), and prints the comparison table."
    )


def out_help() -> str:
    """``--out``'s help."""
    return f"Folder for the {_count(len(demo_samplers()))} result JSON files and {PLOT_NAME} (default: a fresh diffcls-demo-<time> folder)."


def run_demo(out_dir: str | None, echo: Callable[[str], None] = print) -> tuple[str, Path | None]:
    """Run the demo into ``out_dir`` (default: a fresh ``diffcls-demo-<time>`` folder).

    Returns:
        The leaderboard (Markdown, with recall) and the frontier plot's path (``None`` without
        matplotlib; ``echo`` then says so in one line).
    """
    import dataclasses

    from diffcls_plugin.workflows.benchmark import load_benchmark, run_benchmark
    from diffcls_plugin.workflows.leaderboard import build_table, read_results, render

    out_dir = out_dir or time.strftime("diffcls-demo-%Y%m%d-%H%M%S")
    config = load_benchmark(config_path())
    config = dataclasses.replace(config, output=out_dir)
    echo(f"diffcls demo: {config.description}\nresults go to {out_dir}/")
    results = read_results(run_benchmark(config, force=True, echo=echo))
    table = render(build_table(results), "markdown", recall=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        echo(f"diffcls demo: no {PLOT_NAME}: the plot {MATPLOTLIB_MISSING}")
        return table, None
    from diffcls_plugin.workflows.plot import plot_results

    plot = Path(out_dir) / PLOT_NAME
    plot_results(results, plot)
    echo(f"diffcls demo: wrote {plot} (top-1 against UNet evaluations per image; diffcls plot {out_dir} --out FILE redraws it)")
    return table, plot
