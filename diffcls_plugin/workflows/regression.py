"""Regression checks of results against stored reference values (``diffcls check``).

Default tolerances follow from the numbers themselves:

- accuracies (``acc1``, ``acc5``, ``mean_per_class_recall``) on ``n`` images: ``z`` binomial
  standard errors, ``z * sqrt(p (1 - p) / n)`` with the Agresti-Coull estimate
  ``p = (k + 2) / (n + 4)`` (so a perfect 1.0 on a small subset still gets a non-zero
  tolerance); ``z = 3`` unless the reference says otherwise. A change smaller than this is what
  re-drawing the subset could produce, not evidence of a regression.
- ``unet_evals_per_image``: 5 % relative (it is deterministic for a fixed model and seed, but
  early stopping follows the predictions).
- anything else, e.g. ``seconds_per_image``: only when the reference gives a tolerance.

A regression is a change in the worse direction beyond the tolerance; improvements beyond it
are reported and pass (update the reference deliberately with ``--update``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.workflows.leaderboard import Result

ACCURACY_METRICS = ("acc1", "acc5", "mean_per_class_recall")
LOWER_IS_BETTER = ("unet_evals_per_image", "seconds_per_image", "sampler_evals_per_image")
DEFAULT_Z = 3.0
DEFAULT_REL = {"unet_evals_per_image": 0.05}
CHECKED_BY_DEFAULT = ACCURACY_METRICS + ("unet_evals_per_image",)


def binomial_tolerance(p: float, n: int, z: float = DEFAULT_Z) -> float:
    """``z`` standard errors of an accuracy ``p`` measured on ``n`` images (Agresti-Coull)."""
    if n < 1:
        raise DiffclsError(f"n_images must be positive for a binomial tolerance, got {n}")
    p_adj = (p * n + 2) / (n + 4)
    return z * math.sqrt(p_adj * (1 - p_adj) / (n + 4))


def setup_of(result: Result) -> dict[str, Any]:
    """What a reference value was measured on: images (count and subset), sampler, options, seed.

    A result run on another setup is not comparable with the reference, whatever its numbers.
    """
    block = result.diffcls
    return {
        "n_images": block.get("n_images"),
        "subset_sha256": (block.get("subset") or {}).get("indices_sha256"),
        "sampler": block.get("sampler"),
        "options": (block.get("config") or {}).get("sampler"),
        "seed": block.get("seed"),
    }


def setup_differences(expected: dict[str, Any], result: Result) -> list[str]:
    """The keys of ``expected`` (a reference entry's setup) that ``result`` does not match.

    Sampler options change between the reference and the result in two ways that keep the
    sampler's behaviour: an option added after the reference was written (the reference does not
    record it) matches when the result ran it at its default; an option removed since (the
    result does not record it; the sampler's ``REMOVED``) matches when the reference ran it at
    its former default, the value at which the sampler behaved as it does now. At any other
    value each is a difference, and a removed one says so.
    """
    actual = setup_of(result)
    out = []
    for k, v in expected.items():
        a = actual.get(k)
        if k == "options" and isinstance(v, dict) and isinstance(a, dict):
            v, a, removed = _comparable_options(actual.get("sampler"), v, a)
            out += removed
        if a != v:
            out.append(f"{k} {actual.get(k)!r} (reference: {expected[k]!r})")
    return out


def _comparable_options(sampler: Any, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[dict, dict, list[str]]:
    """The reference's and the result's options without the keys that match by the rules of
    :func:`setup_differences`, and a line for each removed option the reference ran otherwise."""
    from diffcls_plugin.samplers import SAMPLERS

    cls = SAMPLERS.get(sampler).options_cls if isinstance(sampler, str) and sampler in SAMPLERS else None
    defaults = cls().to_dict() if cls else {}
    gone = cls.REMOVED if cls else {}
    added = {k for k in set(actual) - set(expected) if k in defaults and actual[k] == defaults[k]}
    dropped = {k for k in set(expected) - set(actual) if k in gone}
    lines = [
        f"options.{k} {expected[k]!r} (reference), but {sampler}.{k} was removed: {sampler} now always runs as it did at "
        f"{k} {gone[k].default!r}, so this setup cannot be rerun; write a new reference with diffcls check RESULTS --reference FILE --update"
        for k in sorted(dropped)
        if expected[k] != gone[k].default
    ]
    return ({k: x for k, x in expected.items() if k not in dropped}, {k: x for k, x in actual.items() if k not in added}, lines)


@dataclass(frozen=True)
class Check:
    label: str
    dataset: str
    metric: str
    old: float | None
    new: float | None
    tolerance: float | None
    status: str  # "ok", "regression", "improved", "missing", "mismatch"
    rule: str

    def line(self) -> str:
        if self.status == "mismatch":
            return f"{'MISMATCH':10s} {self.label} / {self.dataset}: {self.rule}"
        old = "–" if self.old is None else f"{self.old:.4g}"
        new = "–" if self.new is None else f"{self.new:.4g}"
        tol = "–" if self.tolerance is None else f"±{self.tolerance:.4g}"
        return f"{self.status.upper():10s} {self.label} / {self.dataset} / {self.metric}: old {old}, new {new}, tolerance {tol} ({self.rule})"


def read_reference(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DiffclsError(f"reference file {str(path)!r} does not exist; create it with diffcls check RESULTS --reference {path} --update")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DiffclsError(f"reference file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise DiffclsError(f"reference file {str(path)!r} needs an 'entries' list")
    unknown = set(data) - {"description", "z", "tolerances", "entries"}
    if unknown:
        raise DiffclsError(f"reference file {str(path)!r}: unknown key(s) {', '.join(sorted(unknown))}; valid: description, z, tolerances, entries")
    return data


def _finite(value: Any, where: str) -> float:
    """A tolerance or z as a finite number >= 0 (NaN would pass every comparison, a negative one fail unchanged metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DiffclsError(f"reference {where} must be a finite number >= 0, got {value!r}; fix it or rewrite the reference with diffcls check --update")
    return float(value)


def _tolerance(metric: str, old: float, n: int | None, reference: dict[str, Any], entry: dict[str, Any]) -> tuple[float | None, str]:
    rules = {**reference.get("tolerances", {}), **entry.get("tolerances", {})}
    rule = rules.get(metric)
    z = _finite(reference.get("z", DEFAULT_Z), "z")
    if rule is None:
        if metric in ACCURACY_METRICS:
            if not n:
                raise DiffclsError(f"no n_images for {entry.get('label')} / {entry.get('dataset')}: needed for the binomial tolerance of {metric}")
            return binomial_tolerance(old, n, z), f"{z:g} binomial SE at n={n}"
        if metric in DEFAULT_REL:
            return DEFAULT_REL[metric] * abs(old), f"{DEFAULT_REL[metric]:.0%} relative"
        return None, "not checked"
    if not isinstance(rule, dict):
        raise DiffclsError(f"tolerance for {metric} must be {{abs: x}}, {{rel: x}} or {{binomial: z}}, got {rule!r}")
    if "abs" in rule:
        return _finite(rule["abs"], f"tolerance {metric}.abs"), "absolute"
    if "rel" in rule:
        rel = _finite(rule["rel"], f"tolerance {metric}.rel")
        return rel * abs(old), f"{rel:.0%} relative"
    if "binomial" in rule:
        z = _finite(rule["binomial"], f"tolerance {metric}.binomial")
        return binomial_tolerance(old, n or 0, z), f"{z:g} binomial SE at n={n}"
    raise DiffclsError(f"tolerance for {metric} must be {{abs: x}}, {{rel: x}} or {{binomial: z}}, got {rule!r}")


def check(results: list[Result], reference: dict[str, Any]) -> list[Check]:
    """Compare results with reference entries; every entry must have a matching result, run on
    the setup the entry was measured on (its ``setup``, or at least its ``n_images``).

    Raises:
        DiffclsError: a reference with no entries, or none with a checked metric (nothing would
            be checked, so nothing could fail).
    """
    if not reference["entries"]:
        raise DiffclsError("the reference has no entries, so nothing would be checked; write it with diffcls check RESULTS --reference FILE --update")
    by_key = {(r.label, r.dataset): r for r in results}
    checks = []
    for entry in reference["entries"]:
        label, dataset = entry["label"], entry["dataset"]
        result = by_key.get((label, dataset))
        if result is not None:
            expected = entry.get("setup") or ({"n_images": entry["n_images"]} if entry.get("n_images") else {})
            differences = setup_differences(expected, result)
            if differences:
                checks.append(
                    Check(label, dataset, "setup", None, None, None, "mismatch", "run on another setup than the reference: " + "; ".join(differences))
                )
                continue
        for metric, old in entry["metrics"].items():
            if result is None:
                checks.append(Check(label, dataset, metric, old, None, None, "missing", "no result file for this entry"))
                continue
            new = result.value(metric)
            n = result.diffcls.get("n_images") or entry.get("n_images")
            tol, rule = _tolerance(metric, old, n, reference, entry)
            if tol is None:
                continue
            if new is None or (isinstance(new, float) and math.isnan(new)) != (isinstance(old, float) and math.isnan(old)):
                checks.append(Check(label, dataset, metric, old, new, tol, "missing", "metric absent from the result"))
                continue
            if isinstance(old, float) and math.isnan(old):
                continue
            worse = (new - old) if metric in LOWER_IS_BETTER else (old - new)
            status = "regression" if worse > tol + 1e-12 else "improved" if -worse > tol + 1e-12 else "ok"
            checks.append(Check(label, dataset, metric, old, new, tol, status, rule))
    if not checks:
        raise DiffclsError("no metric of the reference is checked (no tolerance applies to any); add tolerances or accuracy metrics")
    return checks


def reference_from(results: list[Result], previous: dict[str, Any] | None = None, metrics=CHECKED_BY_DEFAULT) -> dict[str, Any]:
    """A reference holding the results' current values (kept: the previous z and tolerances)."""
    previous = previous or {}
    entries = []
    for r in sorted(results, key=lambda r: (r.label, r.dataset)):
        values = {m: r.value(m) for m in metrics if r.value(m) is not None and not math.isnan(r.value(m))}  # undefined: not checked
        entry: dict[str, Any] = {"label": r.label, "dataset": r.dataset, "metrics": values}
        if r.diffcls.get("n_images"):
            entry["n_images"] = r.diffcls["n_images"]
        if r.diffcls:
            entry["setup"] = setup_of(r)
        entries.append(entry)
    out = {k: previous[k] for k in ("description", "z", "tolerances") if k in previous}
    out.setdefault("z", DEFAULT_Z)
    out["entries"] = entries
    return out
