"""Choosing a sampler configuration on labelled images: pure, no model, no harness.

A tuning run computes, once, every class's denoising error at every timestep of baseline-32's
grid (one noise) for each labelled image: an :class:`ErrorTable`. Every candidate configuration
(:func:`candidates`) then replays against that table (:func:`evaluate_all`): per image, right or
wrong and the UNet evaluations it spent. The rule (:func:`choose`) picks, within a budget (a
fraction of baseline-32's evaluations), the configuration whose worst gap to baseline-32, plus
``z`` standard errors of that paired gap, is smallest; :func:`folds` splits the images for a
K-fold check of that choice. ``bench/suite.py`` makes the shipped defaults with the same pieces.
"""

from __future__ import annotations

from diffcls_plugin.tuning.candidates import FAMILIES, REFERENCE, blocks, candidate_key, candidates, runnable
from diffcls_plugin.tuning.crossval import SUBGRIDS, WEIGHTED, Config, Pick, TuneResult, check_budgets, check_labels, tune_table
from diffcls_plugin.tuning.evaluate import Outcome, SamplerFn, evaluate, evaluate_all
from diffcls_plugin.tuning.folds import Fold, folds
from diffcls_plugin.tuning.rule import BUDGETS, Scored, Standing, Z, best_within, choose, gap_bound, ratio, standings
from diffcls_plugin.tuning.stats import as_correct, discordant, mcnemar_p, paired_gap, paired_se, wilson_interval
from diffcls_plugin.tuning.table import ErrorSource, ErrorTable

__all__ = [
    "BUDGETS",
    "Config",
    "Pick",
    "SUBGRIDS",
    "TuneResult",
    "WEIGHTED",
    "check_budgets",
    "check_labels",
    "tune_table",
    "wilson_interval",
    "ErrorSource",
    "ErrorTable",
    "FAMILIES",
    "Fold",
    "Outcome",
    "REFERENCE",
    "SamplerFn",
    "Scored",
    "Standing",
    "Z",
    "as_correct",
    "best_within",
    "blocks",
    "candidate_key",
    "candidates",
    "choose",
    "discordant",
    "evaluate",
    "evaluate_all",
    "folds",
    "gap_bound",
    "mcnemar_p",
    "paired_gap",
    "paired_se",
    "ratio",
    "runnable",
    "standings",
]
