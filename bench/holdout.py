"""A held-out pair: the suite's choices, read once on a model and data no choice has seen.

``bench/suite.py`` chooses every setting on the validation splits of its members, and reports on
its pairs' test splits; but those test splits have been read while the samplers were being built,
so a reader cannot tell how much of what they show was fitted to them. This script reads a pair
kept out of the suite and out of every choice (``proxies.HOLDOUTS``):

- ``greek-upper-early`` (the newest, the default ``--pair``): ``tiny-greek-upper-early`` (24 capital
  Greek letters, trained on the training font families) on ``greek-upper-fonts`` (held-out
  families, clean), built before the race's beam (``race.beam_factor``) was chosen, to check it;
- ``cyrillic-upper-early``: ``tiny-cyrillic-upper-early`` (32 capital Cyrillic letters) on
  ``cyrillic-upper-fonts``, built after the suite took in its validation-only members, to check
  the choices made with them; read once (its record stays as written).

The three pairs read before it (``lowercase-early``, ``cyrillic-early``, ``greek-early``; records in
``bench/results/holdout-<pair>.md``, written by this script's earlier versions) each changed what
came next, and are now validation-only members of the suite (``proxies.VALIDATION_ONLY``).

It evaluates

- every sampler's shipped defaults, and baseline-1 / baseline-32;
- per sampler and budget, the configuration the defaults' rule picks on every member's
  validation split;
- the defaults each rule the suite compares would ship (``suite.RULE_ZS``),

all read from ``bench/results/suite.json`` (nothing is chosen here), first on the pair's
validation split (only to check that the pair is as hard as the suite's: baseline-1 at least 15
points below baseline-32), then on its test split. Writes ``bench/results/holdout-<pair>.{json,md}``.

    python bench/holdout.py --check   # the validation split only
    python bench/holdout.py [--pair greek-upper-early]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import RESULTS, environment
from proxies import HOLDOUTS
from suite import (
    evaluate,
    options_from,
    pair_model,
    race_cells,
    race_line,
    race_missing,
    short,
    split_table,
    test_row,
    time_configs,
)

from diffcls_plugin.tuning import BUDGETS, FAMILIES, mcnemar_p

GOAL_RACE = (0.25, 0.5)  # the race's goal: within 0.5 point of baseline-32 at <= 1/4 of its evaluations


def configurations(suite: dict) -> tuple[dict[str, str], dict[str, dict[str, str | None]], dict[str, dict[str, str]]]:
    """The shipped defaults' keys; per sampler and budget the rule's pick on the suite's members; and
    per rule the suite compares, the defaults that rule picks (all as the suite recorded them)."""
    headline = dict(suite["summary"]["headline_keys"])
    budgets = {f: {b: cell and cell["key"] for b, cell in per.items()} for f, per in suite["summary"]["budget_settings"].items()}
    rules = {z: {f: r["key"] for f, r in per.items()} for z, per in suite["summary"]["rules"].items()}
    return headline, budgets, rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=str(RESULTS / "suite.json"), help="the suite's record, where every choice comes from")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--time-images", type=int, default=48)
    parser.add_argument(
        "--pair", default=HOLDOUTS[-1].name, choices=[p.name for p in HOLDOUTS], help="the held-out pair (default: the newest, never read before its first run)"
    )
    parser.add_argument("--check", action="store_true", help="the validation split's hardness check only; the test split is not read")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    pair = next(p for p in HOLDOUTS if p.name == args.pair)
    suite = json.loads(Path(args.suite).read_text())
    rows0 = suite["pairs"][0]["splits"]["val"]["rows"]
    if args.check:  # the baselines only: nothing is chosen
        headline = {name: suite["summary"]["headline_keys"][name] for name in ("baseline-1", "baseline-32")}
        budgets, rules = {}, {}
    else:
        headline, budgets, rules = configurations(suite)
    keys = dict.fromkeys(
        [*headline.values(), *(k for per in budgets.values() for k in per.values() if k), *(k for per in rules.values() for k in per.values())]
    )
    configs = {k: (rows0[k]["sampler"], options_from(rows0[k]["sampler"], rows0[k]["options"])) for k in keys}

    model = pair_model(pair.pretrained)
    repo = Path(__file__).resolve().parents[1]  # recorded relative to the repository, never a machine path
    out: dict = {"pair": pair.name, "pretrained": str(Path(pair.pretrained).resolve().relative_to(repo)), "data": pair.data, "what": pair.what, "splits": {}}
    for split in ("val", "test"):
        table, labels, classnames, pixels = split_table(model, pair.root, split)
        chosen = [headline["baseline-1"], headline["baseline-32"]] if split == "val" else list(keys)
        rows = {k: evaluate(*configs[k], table, labels, model.adapter.num_train_timesteps) for k in chosen}
        out["splits"][split] = {"n_images": len(labels), "n_classes": len(classnames), "rows": rows}
        b1, b32 = rows[headline["baseline-1"]]["top1"], rows[headline["baseline-32"]]["top1"]
        print(f"{pair.name}/{split}: {len(labels)} images; baseline-1 {100 * b1:.1f}, baseline-32 {100 * b32:.1f}", flush=True)
        if split == "val":
            out["validation_check"] = {"baseline-1": b1, "baseline-32": b32}
        if split == "val" and 100 * (b32 - b1) < 15:
            raise SystemExit(
                f"{pair.name}: baseline-1 is only {100 * (b32 - b1):.1f} points below baseline-32 on validation "
                "(the suite asks for 15); make the pair harder before reading its test split"
            )
        if args.check:
            return
    named = {name: configs[k] for name, k in headline.items()}
    seconds = time_configs({"_model": model, "_test_pixels": pixels}, named, args.time_images)
    summary = summarize(out, headline, budgets, seconds, rules)
    record = {
        "environment": environment(),
        "seconds": time.perf_counter() - start,
        "suite": Path(args.suite).name,
        "suite_date": suite["environment"]["date"],
        "summary": summary,
        "pair": out,
    }
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"holdout-{pair.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (dest / f"holdout-{pair.name}.md").write_text(report(out, summary))
    print((dest / f"holdout-{pair.name}.md").read_text())
    print(f"done in {time.perf_counter() - start:.0f} s")


def summarize(
    out: dict, headline: dict[str, str], budgets: dict[str, dict[str, str | None]], seconds: dict[str, float], rules: dict[str, dict[str, str]] | None = None
) -> dict:
    """The test split's rows as the report shows them: the defaults, each budget's pick, the race's goals."""
    rows = out["splits"]["test"]["rows"]

    def cell(k: str | None) -> dict | None:
        if k is None:
            return None
        p = mcnemar_p(rows[k]["correct"], rows[headline["baseline-32"]]["correct"])
        return {"key": k, "sampler": rows[k]["sampler"], "options": rows[k]["options"], **test_row(out, k), "mcnemar_vs_baseline32": p}

    summary = {
        "defaults": {name: {**cell(k), "seconds_per_image": seconds[name]} for name, k in headline.items()},
        "budgets": {f: {b: cell(k) for b, k in per.items()} for f, per in budgets.items()},
    }
    if rules:  # the defaults each of the suite's candidate rules would ship
        summary["rules"] = {z: {f: cell(k) for f, k in per.items()} for z, per in rules.items()}
    race = summary["defaults"]["race"]
    by_pair = {out["pair"]: {f: summary["budgets"][f] for f in FAMILIES}}  # the layout race_cells reads
    summary["goals"] = {
        "race_within_half_point_at_quarter": race["gap_points"] <= GOAL_RACE[1] and race["eval_ratio"] <= GOAL_RACE[0],
        "race_against_the_best_of_adaptive_and_hierarchical": race_cells([out], by_pair),
    }
    return summary


def report(out: dict, summary: dict) -> str:
    val, test = out["splits"]["val"], out["splits"]["test"]
    d = summary["defaults"]
    lines = [
        f"# A held-out pair ({out['pair']}): the suite's choices on a model and data no choice has seen",
        "",
        "Generated by `python bench/holdout.py`. Every configuration below was chosen by `bench/suite.py` on its",
        "members' validation splits; this pair's test split was read once, after those choices were committed.",
        "No Stable Diffusion accuracy is measured here.",
        "",
        f"Pair: `{out['pair']}`, {out['what']}; {test['n_classes']} classes; {val['n_images']} validation / {test['n_images']} test images.",
        f"Validation (the hardness check only): baseline-1 {100 * out['validation_check']['baseline-1']:.1f} %, "
        f"baseline-32 {100 * out['validation_check']['baseline-32']:.1f} %.",
        "",
        "## Shipped defaults, on the test split",
        "",
        "A positive gap is a loss against baseline-32; McNemar: exact two-sided test of the paired predictions.",
        "",
        "| sampler | options | top-1 % | gap (points) | McNemar p | evals / img | ratio to b-32 | s / img |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in d.items():
        p = "–" if name.startswith("baseline") else f"{c['mcnemar_vs_baseline32']:.2g}"
        lines.append(
            f"| {name} | {short(c['options'])} | {100 * c['top1']:.1f} | {c['gap_points']:+.1f} | {p} | {c['evals_per_image']:.1f} | "
            f"{c['eval_ratio']:.3f} | {c['seconds_per_image']:.4f} |"
        )
    lines += [
        "",
        "## Each budget, on the test split",
        "",
        "Per sampler and budget (evaluations as a fraction of baseline-32's): the defaults' rule on the suite's",
        "members' validation splits; top-1 % (evaluation ratio on this pair).",
        "",
        "| sampler | " + " | ".join(f"<= {b:g}" for b in BUDGETS) + " |",
        "|---|" + "---:|" * len(BUDGETS),
    ]
    for f in FAMILIES:
        cells = [summary["budgets"][f][str(b)] for b in BUDGETS]
        lines.append(f"| {f} | " + " | ".join("–" if c is None else f"{100 * c['top1']:.1f} ({c['eval_ratio']:.3f})" for c in cells) + " |")
    if "rules" in summary:
        lines += [
            "",
            "## The defaults each choosing rule would ship, on the test split",
            "",
            "The rules `bench/suite.py` compares (standard errors added to each validation gap; the race's population",
            "the whole grid unless the row says otherwise); gap to baseline-32",
            "in points (evaluation ratio), McNemar p.",
            "",
            "| margin (SE) | " + " | ".join(FAMILIES) + " |",
            "|---:|" + "---|" * len(FAMILIES),
        ]
        for z, per in summary["rules"].items():
            lines.append(
                f"| {z} | "
                + " | ".join(
                    f"{per[f]['gap_points']:+.1f} ({per[f]['eval_ratio']:.3f}), p {per[f]['mcnemar_vs_baseline32']:.2g}" if f in per else "–" for f in FAMILIES
                )
                + " |"
            )
    missing = race_missing({out["pair"]: summary["budgets"]})
    g = summary["goals"]
    lines += [
        "",
        "## The race's goals on this pair",
        "",
        f"- within 0.5 point of baseline-32 at <= 1/4 of its evaluations: {'met' if g['race_within_half_point_at_quarter'] else 'NOT met'} "
        f"({d['race']['gap_points']:+.1f} points at {d['race']['eval_ratio']:.3f})",
        f"- at every budget: {race_line(g['race_against_the_best_of_adaptive_and_hierarchical'], missing)}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
