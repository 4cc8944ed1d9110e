"""Choosing a configuration for one model and data set, checked by K-fold cross-validation.

Given one :class:`~diffcls_plugin.tuning.ErrorTable` of labelled images (every class at every
timestep of baseline-32's grid), :func:`tune_table`

1. fits timestep weights (Jeong et al. 2025, :func:`~diffcls_plugin.weighting.fit_weights`) inside
   the folds only: the images of fold ``f`` are weighted by weights fitted on the other folds, so
   no image's weighted errors come from weights that saw it (cross-fitting);
2. replays every candidate (:func:`~diffcls_plugin.tuning.candidates`) on the plain table and on
   the cross-fitted weighted one, once each;
3. per budget, picks with the suite's rule (:func:`~diffcls_plugin.tuning.choose`: the smallest
   gap to baseline-32 plus ``z`` standard errors of that paired gap, among the configurations
   within the budget) on all the images: the configuration to ship;
4. and checks that choice by K-fold cross-validation: the rule chooses on the other folds' images
   and is read on the fold's own, so the cross-validated accuracy is that of the whole procedure
   (choosing among hundreds of configurations included) on images it did not choose on.

The weighted replays of the training folds used for a fold's choice come from weights fitted on
folds that include the held-out one (the weights are 32 numbers fitted on most of the images; a
nested fit per fold would cost K times the replays): the held-out reading itself never uses
weights that saw its images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import SAMPLERS, SamplerOptions
from diffcls_plugin.tuning.candidates import REFERENCE, candidate_key, candidates, runnable
from diffcls_plugin.tuning.evaluate import Outcome, evaluate, evaluate_all
from diffcls_plugin.tuning.folds import Fold, folds
from diffcls_plugin.tuning.rule import Z, choose, ratio
from diffcls_plugin.tuning.stats import mcnemar_p, paired_gap, wilson_interval
from diffcls_plugin.tuning.table import ErrorTable

WEIGHTED = " +weights"  # the key suffix of a candidate replayed on the cross-fitted weighted table
SUBGRIDS = (1, 2, 4, 8, 16, 32)  # the frontier's reference: the baseline on k evenly spaced of the 32 timesteps


@dataclass(frozen=True)
class Config:
    """One configuration a tuning run can pick: a sampler, its options, with or without fitted weights."""

    sampler: str
    options: SamplerOptions
    weighted: bool

    @property
    def key(self) -> str:
        return candidate_key(self.sampler, self.options) + (WEIGHTED if self.weighted else "")

    @property
    def model(self) -> str:
        """The harness ``--model`` name that runs it (e.g. ``diffusion-race``)."""
        return SAMPLERS.get(self.sampler).model_name


@dataclass(frozen=True)
class Pick:
    """The configuration chosen for one budget, and how far to trust it.

    Attributes:
        budget: the most it may cost, as a fraction of baseline-32's evaluations per image.
        config: the configuration chosen on all the images (``None`` when none is that cheap).
        top1: its accuracy on all the images (the images it was chosen on: optimistic).
        evals_per_image: its mean evaluations per image; ``ratio`` that over baseline-32's.
        cv_top1: the cross-validated accuracy of the choice (chosen on K - 1 folds, read on the
            K-th); ``cv_interval`` its 95 % Wilson interval; ``cv_evals_per_image`` its cost.
        cv_gap, cv_gap_se: ``cv_top1`` minus baseline-32's on the same images, and its paired
            standard error; ``cv_p``: McNemar's exact p of that difference.
        fold_keys: the key each fold's choice made; ``agree`` how many equal ``config``'s key,
            ``same_sampler`` how many chose its sampler.
    """

    budget: float
    config: Config | None
    top1: float = math.nan
    evals_per_image: float = math.nan
    ratio: float = math.nan
    cv_top1: float = math.nan
    cv_interval: tuple[float, float] = (math.nan, math.nan)
    cv_evals_per_image: float = math.nan
    cv_gap: float = math.nan
    cv_gap_se: float = math.nan
    cv_p: float = math.nan
    fold_keys: tuple[str | None, ...] = ()
    agree: int = 0
    same_sampler: int = 0

    def confidence(self) -> str:
        """One line: how often the folds agreed, and the cross-validated gap to baseline-32."""
        if self.config is None:
            return "no configuration within the budget"
        k = len(self.fold_keys)
        return (
            f"{self.agree} of {k} folds chose this configuration ({self.same_sampler} of {k} the {self.config.sampler} sampler); "
            f"cross-validated {100 * self.cv_top1:.1f}% [{100 * self.cv_interval[0]:.1f}, {100 * self.cv_interval[1]:.1f}], "
            f"{100 * self.cv_gap:+.1f} +- {100 * self.cv_gap_se:.1f} points against baseline-32 (McNemar p = {self.cv_p:.2g})"
        )


@dataclass
class TuneResult:
    """Everything a tuning run measured on its table.

    Attributes:
        n_images, n_classes: the table's size; ``k`` the folds, ``seed`` their shuffle.
        baseline: baseline-32 (uniform weights) on every image; ``baseline_weighted`` with the
            cross-fitted weights (``None`` without weights).
        configs, outcomes: every candidate by key, and its outcome on every image.
        subgrids: ``{k: outcome}`` of the baseline on ``k`` evenly spaced of the 32 timesteps.
        fold_weights: the weights fitted on each fold's training images (``[]`` without weights).
        picks: one per budget, in the order given.
    """

    n_images: int
    n_classes: int
    k: int
    seed: int
    folds: list[Fold]
    baseline: Outcome
    baseline_weighted: Outcome | None
    configs: dict[str, Config]
    outcomes: dict[str, Outcome]
    subgrids: dict[int, Outcome]
    fold_weights: list = field(default_factory=list)
    picks: list[Pick] = field(default_factory=list)


def check_budgets(budgets: Iterable[float]) -> tuple[float, ...]:
    """The budgets as floats, each in (0, 1]: a fraction of baseline-32's evaluations.

    Raises:
        DiffclsError: an empty list, or a budget out of range, naming it.
    """
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or not 0 < b <= 1:
            raise DiffclsError(f"--budget {b!r} is out of range: give a fraction of baseline-32's evaluations in (0, 1], e.g. 0.125")
        out.append(float(b))
    if not out:
        raise DiffclsError("give at least one --budget, e.g. 0.125 (an eighth of baseline-32's evaluations)")
    return tuple(out)


def check_labels(labels: Sequence[int], n_classes: int, k: int, class_names: Sequence[str] | None = None) -> None:
    """Every class needs at least ``k`` labelled images (one per fold) and two for the weights' hold-out.

    Raises:
        DiffclsError: the first class with too few, naming it and the fix.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise DiffclsError(f"--folds must be an integer >= 2, got {k!r}")
    counts = [0] * n_classes
    for y in labels:
        if not 0 <= int(y) < n_classes:
            raise DiffclsError(f"label {y} is not one of the {n_classes} classes")
        counts[int(y)] += 1
    need = max(k, 2)
    for c, n in enumerate(counts):
        if n < need:
            name = class_names[c] if class_names is not None else str(c)
            raise DiffclsError(
                f"class {name!r} has {n} labelled image(s) and K-fold with --folds {k} needs at least {need} per class: "
                f"raise --subset-per-class to {need} or more, or lower --folds"
            )


def subgrid_columns(n_columns: int, k: int) -> list[int]:
    """``k`` evenly spaced columns of ``n_columns`` (the middle of each of ``k`` equal parts)."""
    return sorted({min(n_columns - 1, int((j + 0.5) * n_columns / k)) for j in range(k)})


def subgrid_outcome(errors: torch.Tensor, labels: Sequence[int], k: int) -> Outcome:
    """The baseline on ``k`` evenly spaced columns of a (N, C, T) table: mean error, lowest class wins."""
    cols = subgrid_columns(errors.shape[2], k)
    scores = errors[:, :, cols].mean(dim=2)  # (N, C)
    predicted = scores.argmin(dim=1).tolist()
    return Outcome(tuple(p == y for p, y in zip(predicted, labels)), (errors.shape[1] * len(cols),) * len(labels))


def cross_fitted(table: ErrorTable, labels: Sequence[int], splits: Sequence[Fold], fit: Callable) -> tuple[ErrorTable, list]:
    """The table with each fold's images weighted by weights fitted on the other folds.

    Args:
        fit: ``fit(errors (n, C, T), labels) -> TimestepWeights`` (e.g. a partial of ``fit_weights``).

    Returns:
        ``(weighted table, one weights object per fold)``.
    """
    errors = table.tensor()
    weighted = errors.clone()
    fitted = []
    for fold in splits:
        train = list(fold.train)
        w = fit(errors[train], [labels[i] for i in train])
        column = torch.tensor([w.at(t) for t in table.timesteps], dtype=torch.float64)  # (T,)
        held = list(fold.held_out)
        weighted[held] = errors[held] * column.view(1, 1, -1)
        fitted.append(w)
    return ErrorTable(weighted, table.timesteps), fitted


def _pick(budget: float, outcomes: dict[str, Outcome], configs: dict[str, Config], base: Outcome, splits: Sequence[Fold], z: float) -> Pick:
    chosen = choose({k: [o] for k, o in outcomes.items()}, [base], budget, z, strict=True)
    n = len(base.correct)
    cv_correct: list[bool] = [False] * n
    cv_evals: list[int] = [0] * n
    fold_keys: list[str | None] = []
    for fold in splits:
        train_base = base.subset(fold.train)
        train = {k: [o.subset(fold.train)] for k, o in outcomes.items()}
        # none within the budget on this fold's images (a budget at the edge of what the samplers
        # reach): the fold reads its cheapest configuration, as the rule does without `strict`
        key = choose(train, [train_base], budget, z, strict=True) or choose(train, [train_base], budget, z)
        fold_keys.append(key)
        for i in fold.held_out:
            cv_correct[i] = outcomes[key].correct[i]
            cv_evals[i] = outcomes[key].n_evals[i]
    if chosen is None:
        return Pick(budget, None, fold_keys=tuple(fold_keys))
    cv = Outcome(tuple(cv_correct), tuple(cv_evals))
    gap, se = paired_gap(cv.correct, base.correct)
    row = outcomes[chosen]
    config = configs[chosen]
    return Pick(
        budget=budget,
        config=config,
        top1=row.top1,
        evals_per_image=row.evals_per_image,
        ratio=ratio(row, base),
        cv_top1=cv.top1,
        cv_interval=wilson_interval(sum(cv.correct), n),
        cv_evals_per_image=cv.evals_per_image,
        cv_gap=gap,
        cv_gap_se=se,
        cv_p=mcnemar_p(cv.correct, base.correct),
        fold_keys=tuple(fold_keys),
        agree=sum(k == chosen for k in fold_keys),
        same_sampler=sum(k is not None and configs[k].sampler == config.sampler for k in fold_keys),
    )


def tune_table(
    table: ErrorTable,
    labels: Sequence[int],
    budgets: Iterable[float],
    *,
    families: Iterable[str] | None = None,
    k: int = 5,
    seed: int = 0,
    weights: bool = True,
    num_train_timesteps: int = 1000,
    z: float = Z,
    workers: int = 1,
    echo: Callable[[str], None] | None = None,
) -> TuneResult:
    """Choose a configuration per budget on a table of labelled images, checked by K-fold cross-validation.

    Args:
        table: every class's error at every timestep of baseline-32's grid, one noise, per image.
        labels: (n_images,) each image's class.
        budgets: fractions of baseline-32's evaluations per image, each in (0, 1].
        families: the samplers to choose among (default: every tunable one).
        k: folds; every class needs at least ``k`` images.
        seed: the folds' shuffle and the weights' hold-out.
        weights: also consider every candidate with timestep weights fitted in the folds.
        num_train_timesteps: the model's schedule length.
        z: the rule's margin in standard errors of the paired gap (:data:`~diffcls_plugin.tuning.Z`).
        workers: processes for the replays.
        echo: where progress lines go (``None``: nowhere).

    Returns:
        the :class:`TuneResult`, one :class:`Pick` per budget.

    Raises:
        DiffclsError: a budget out of range, an unknown sampler family, too few images per class.
    """
    from diffcls_plugin.weighting import fit_weights

    say = echo or (lambda _: None)
    budgets = check_budgets(budgets)
    chosen = [Config(s, o, False) for s, o in candidates(families)]
    check_labels(labels, table.n_classes, k)
    labels = [int(y) for y in labels]
    if len(labels) != table.n_images:
        raise DiffclsError(f"{len(labels)} labels for a table of {table.n_images} images")
    splits = folds(labels, k, seed)
    errors = table.tensor()
    reference = Config(*REFERENCE, False)
    base = evaluate(SAMPLERS.get(reference.sampler).fn, reference.options, table, labels, num_train_timesteps)
    subgrids = {g: subgrid_outcome(errors, labels, g) for g in SUBGRIDS}
    configs = {c.key: c for c in chosen}
    configs[reference.key] = reference
    say(f"replaying {len(configs)} configurations on {table.n_images} images ...")
    outcomes = evaluate_all(runnable((c.sampler, c.options) for c in chosen), table, labels, num_train_timesteps, workers)
    outcomes[reference.key] = base
    fitted, base_weighted = [], None
    if weights:
        grid = list(table.timesteps)

        def fit(e, y):
            return fit_weights(e, y, grid, num_train_timesteps=num_train_timesteps, seed=seed)

        say(f"fitting timestep weights in each of {k} folds; replaying the configurations with them ...")
        weighted_table, fitted = cross_fitted(table, labels, splits, fit)
        base_weighted = evaluate(SAMPLERS.get(reference.sampler).fn, reference.options, weighted_table, labels, num_train_timesteps)
        replayed = evaluate_all(runnable((c.sampler, c.options) for c in chosen), weighted_table, labels, num_train_timesteps, workers)
        for c in chosen:
            w = Config(c.sampler, c.options, True)
            configs[w.key] = w
            outcomes[w.key] = replayed[c.key]
        configs[Config(*REFERENCE, True).key] = Config(*REFERENCE, True)
        outcomes[Config(*REFERENCE, True).key] = base_weighted
    result = TuneResult(table.n_images, table.n_classes, k, seed, splits, base, base_weighted, configs, outcomes, subgrids, fitted)
    result.picks = [_pick(b, outcomes, configs, base, splits, z) for b in budgets]
    return result
