"""Timestep weighting: a per-timestep factor on every denoising error the samplers see.

Li et al. average the errors of a class uniformly over timesteps. Jeong et al. 2025 ("Diffusion
Classifiers Understand Compositionality, but Conditions Apply", NeurIPS Datasets & Benchmarks;
code in eugene6923/Diffusion-Classifiers-Compositionality) find that which timesteps carry the
class depends on the model and, most of all for SD3-medium, on the gap between the model's
training images and the evaluated ones; they learn positive per-timestep weights on labelled
images, by gradient descent on the cross-entropy of the classes' negative weighted mean errors,
keeping the weights that are most accurate on held-out images, and report gains largest for
SD3-m. This module does the same for any family:

* :func:`fit_weights` learns the weights from a table of errors ``(images, classes, timesteps)``
  of labelled images: one positive weight per timestep (``exp`` of a free parameter, as
  Jeong et al.'s ``positive_weights``) or ``exp`` of a polynomial in the timestep; a held-out
  part of the images chooses the step (uniform weights are kept unless a step beats them there);
* :class:`TimestepWeights` is the fitted table, saved as JSON, applied by linear interpolation
  between its timesteps (clamped at its ends) and normalised to mean 1 on its grid;
* ``timestep_weights: FILE`` in a config makes the scorer multiply each error at timestep ``t``
  by ``w(t)``, so every sampler (baseline means, the hierarchical beam, the race's tests) ranks
  classes on weighted errors. ``diffcls fit-weights`` (:mod:`diffcls_plugin.workflows.fit_weights`)
  writes such a file from a harness dataset; SD3's own loss weightings (``sigma_sqrt``,
  ``cosmap``) come from its adapter (:func:`diffcls_plugin.adapters.scheme_weights`).

Fit on images you will not evaluate (another split, or another dataset): weights fitted on the
evaluated split are tuned on it, and the run says so.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.jsonio import write_json_atomic

FORMAT = "diffcls-timestep-weights/1"
METHODS = ("per-timestep", "poly")
# SD3's training loss weightings (Esser et al. 2024), as diffusers' compute_loss_weighting_for_sd3
# computes them and Jeong et al.'s code offers them (--time_weighting): flow-matching models only
SCHEMES = ("sigma_sqrt", "cosmap")
FLOW_FAMILIES = ("sd3",)


def is_scheme(value) -> bool:
    """Whether a ``timestep_weights`` value names a built-in scheme rather than a file."""
    return value in SCHEMES or value == "uniform"


def check_scheme_family(value, family: str) -> None:
    """Refuse an SD3 loss weighting for a model that is not a flow-matching one (before it loads)."""
    if value in SCHEMES and family not in FLOW_FAMILIES:
        raise DiffclsError(
            f"timestep_weights: {value} is a weighting of SD3's flow-matching loss (sigma-based) and this checkpoint is a "
            f"{family!r} model; use a file from `diffcls fit-weights` (any family) or timestep_weights: null"
        )


def weights_for(value, num_train_timesteps: int | None) -> TimestepWeights | None:
    """The weights a ``timestep_weights`` file value names, checked against the model's schedule
    length (``None``: not known yet, not checked); ``None`` for ``null`` and the built-in schemes
    (the adapter makes those).

    Raises:
        DiffclsError: a missing or malformed file, or weights fitted on another schedule length.
    """
    if value is None or is_scheme(value):
        return None
    weights = load_weights(value)
    if num_train_timesteps is not None and weights.num_train_timesteps != num_train_timesteps:
        raise DiffclsError(
            f"timestep_weights {str(value)!r} were fitted on a {weights.num_train_timesteps}-step schedule, "
            f"this model has {num_train_timesteps}; fit them for this model with `diffcls fit-weights`"
        )
    return weights


@dataclass(frozen=True)
class TimestepWeights:
    """Weights over a grid of integer timesteps of a ``num_train_timesteps`` schedule.

    Attributes:
        timesteps: strictly increasing timesteps in ``[0, num_train_timesteps)``.
        weights: one positive, finite weight per timestep (mean 1).
        num_train_timesteps: the schedule length the timesteps refer to.
        meta: how the weights were made (method, fitted-on dataset, split, accuracies ...).
        source: the file they were read from (``None`` when built in code).
    """

    timesteps: tuple[int, ...]
    weights: tuple[float, ...]
    num_train_timesteps: int = 1000
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        where = f"timestep weights {self.source!r}" if self.source else "timestep weights"
        if not self.timesteps or len(self.timesteps) != len(self.weights):
            raise DiffclsError(f"{where}: need one weight per timestep, got {len(self.timesteps)} timesteps and {len(self.weights)} weights")
        if any(not isinstance(t, int) or isinstance(t, bool) for t in self.timesteps):
            raise DiffclsError(f"{where}: timesteps must be integers, got {list(self.timesteps)[:5]}...")
        if any(b <= a for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise DiffclsError(f"{where}: timesteps must be strictly increasing")
        if self.timesteps[0] < 0 or self.timesteps[-1] >= self.num_train_timesteps:
            raise DiffclsError(f"{where}: timesteps must lie in [0, {self.num_train_timesteps}), got {self.timesteps[0]}..{self.timesteps[-1]}")
        if any(not math.isfinite(w) or w <= 0 for w in self.weights):
            raise DiffclsError(f"{where}: weights must be positive and finite; refit them with `diffcls fit-weights`")

    @classmethod
    def normalised(
        cls, timesteps: Sequence[int], weights: Sequence[float], num_train_timesteps: int = 1000, meta: dict[str, Any] | None = None
    ) -> TimestepWeights:
        """Weights scaled to mean 1 over their grid (the ranking of classes does not change)."""
        mean = math.fsum(weights) / len(weights) if weights else 1.0
        return cls(tuple(int(t) for t in timesteps), tuple(float(w) / mean for w in weights), int(num_train_timesteps), dict(meta or {}))

    def at(self, timestep: int) -> float:
        """The weight at ``timestep``: linear between grid points, the end value beyond them."""
        ts, ws = self.timesteps, self.weights
        if timestep <= ts[0]:
            return ws[0]
        if timestep >= ts[-1]:
            return ws[-1]
        hi = bisect.bisect_left(ts, timestep)  # the first grid point >= timestep (per error: the scorer's hot path)
        if ts[hi] == timestep:
            return ws[hi]
        lo = hi - 1
        frac = (timestep - ts[lo]) / (ts[hi] - ts[lo])
        return ws[lo] + frac * (ws[hi] - ws[lo])

    @property
    def digest(self) -> str:
        """A content hash of the grid and the weights (what a run's outcomes depend on)."""
        payload = json.dumps([self.num_train_timesteps, list(self.timesteps), [repr(w) for w in self.weights]])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "num_train_timesteps": self.num_train_timesteps,
            "timesteps": list(self.timesteps),
            "weights": list(self.weights),
            "meta": self.meta,
        }

    def describe(self) -> dict[str, Any]:
        """What a result records: the file, the digest and how the weights were fitted."""
        return {"file": self.source, "sha256": self.digest, "n_timesteps": len(self.timesteps), "meta": self.meta}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights as JSON (atomically; the folder is created) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(path, self.to_dict(), indent=2)


def load_weights(path: str | os.PathLike) -> TimestepWeights:
    """Read a weights file written by :meth:`TimestepWeights.save` (``diffcls fit-weights``).

    Raises:
        DiffclsError: naming the file and what is wrong with it.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise DiffclsError(
            f"timestep_weights: the file {str(path)!r} does not exist; write one with `diffcls fit-weights ... --out {path}` "
            "or set timestep_weights: null for uniform weights"
        )
    stat = path.stat()
    return _load(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _load(path: str, size: int, mtime: int) -> TimestepWeights:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DiffclsError(f"timestep_weights: {path!r} is not a JSON weights file ({err}); write it with `diffcls fit-weights`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DiffclsError(
            f"timestep_weights: {path!r} is not a {FORMAT} file (its 'format' is {data.get('format') if isinstance(data, dict) else None!r}); write it with `diffcls fit-weights`"
        )
    try:
        return TimestepWeights(
            tuple(data["timesteps"]),
            tuple(float(w) for w in data["weights"]),
            int(data.get("num_train_timesteps", 1000)),
            dict(data.get("meta") or {}),
            source=path,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DiffclsError(f"timestep_weights: {path!r} lacks a valid {err} entry; write it with `diffcls fit-weights`") from None


def accuracy(errors, labels, weights=None) -> float:
    """Top-1 accuracy of ``argmin_c mean_t w_t * errors[i, c, t]`` (ties count as wrong)."""
    scores = errors if weights is None else errors * weights.view(1, 1, -1)
    scores = scores.mean(dim=2)  # (N, C)
    best = scores.min(dim=1, keepdim=True).values
    unique = (scores == best).sum(dim=1) == 1
    return float(((scores.argmin(dim=1) == labels) & unique).double().mean())


def fit_weights(
    errors,
    labels: Sequence[int],
    timesteps: Sequence[int],
    *,
    num_train_timesteps: int = 1000,
    method: str = "per-timestep",
    degree: int = 3,
    steps: int = 300,
    lr: float = 0.05,
    holdout: float = 0.25,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> TimestepWeights:
    """Learn positive timestep weights from labelled images' errors (Jeong et al. 2025).

    The weights ``w = exp(theta)`` (``per-timestep``: one ``theta`` per timestep; ``poly``:
    ``theta`` a polynomial of ``degree`` in the timestep scaled to [-1, 1]) minimise the
    cross-entropy of ``softmax_c(-mean_t w_t errors[i, c, t] / s)`` over a fitting part of the
    images (``s``: the errors' mean spread between classes, so the step size does not depend on
    the model's error scale), by Adam from uniform weights. The step kept is the one most
    accurate on the held-out part (``holdout`` of the images, stratified by label, seeded);
    uniform weights are kept unless some step is strictly more accurate there.

    Args:
        errors: (N, C, T) errors of N labelled images, every class, every timestep of ``timesteps``.
        labels: (N,) each image's true class.
        timesteps: (T,) the timesteps of the last axis, increasing.

    Returns:
        the weights, normalised to mean 1, with ``meta`` recording the method and the accuracies
        of uniform and fitted weights on the fitting and held-out parts.
    """
    import torch

    if method not in METHODS:
        raise DiffclsError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    errors = torch.as_tensor(errors, dtype=torch.float64)
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    if errors.ndim != 3 or errors.shape[0] != len(labels_t) or errors.shape[2] != len(timesteps):
        raise DiffclsError(f"errors must be (images, classes, timesteps) = ({len(labels_t)}, C, {len(timesteps)}), got {tuple(errors.shape)}")
    n, n_classes, n_t = errors.shape
    if n < 4 or n_classes < 2:
        raise DiffclsError(f"fitting timestep weights needs at least 4 labelled images and 2 classes, got {n} and {n_classes}")
    generator = torch.Generator().manual_seed(seed)
    fit_idx, held_idx = [], []
    for c in range(n_classes):  # stratified hold-out
        members = (labels_t == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        # at least one image of each class with two or more is held out, and at least one is fitted on
        k = min(len(members) - 1, max(1, int(round(len(members) * holdout)))) if len(members) >= 2 else 0
        held_idx += members[:k].tolist()
        fit_idx += members[k:].tolist()
    if not held_idx or not fit_idx:
        raise DiffclsError("fitting timestep weights needs images left on both sides of the hold-out; give more images")
    fit_idx_t, held_idx_t = torch.tensor(sorted(fit_idx)), torch.tensor(sorted(held_idx))
    # the error scale: mean absolute deviation of the class means from their image's mean
    class_means = errors[fit_idx_t].mean(dim=2)
    scale = float((class_means - class_means.mean(dim=1, keepdim=True)).abs().mean()) or 1.0
    x = torch.linspace(-1.0, 1.0, n_t, dtype=torch.float64)
    if method == "per-timestep":
        theta = torch.zeros(n_t, dtype=torch.float64, requires_grad=True)

        def weights_of(p):
            return p.exp()
    else:
        theta = torch.zeros(degree + 1, dtype=torch.float64, requires_grad=True)
        powers = torch.stack([x**k for k in range(degree + 1)])  # (degree + 1, T)

        def weights_of(p):
            return (p @ powers).exp()

    optimiser = torch.optim.Adam([theta], lr=lr)
    uniform = torch.ones(n_t, dtype=torch.float64)
    best = (accuracy(errors[held_idx_t], labels_t[held_idx_t], uniform), uniform, 0)
    fit_errors, fit_labels = errors[fit_idx_t] / scale, labels_t[fit_idx_t]
    for step in range(1, steps + 1):
        optimiser.zero_grad()
        w = weights_of(theta)
        logits = -(fit_errors * w.view(1, 1, -1)).mean(dim=2)
        loss = torch.nn.functional.cross_entropy(logits, fit_labels)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            w = weights_of(theta)
            held = accuracy(errors[held_idx_t], labels_t[held_idx_t], w)
            if held > best[0]:
                best = (held, w.clone(), step)
    chosen = best[1]
    record = {
        "method": method,
        "kept_uniform": best[2] == 0,  # no step beat uniform weights on the held-out images
        **({"degree": degree} if method == "poly" else {}),
        "steps": steps,
        "lr": lr,
        "chosen_step": best[2],
        "holdout": holdout,
        "seed": seed,
        "n_images": n,
        "n_fit": len(fit_idx),
        "n_held_out": len(held_idx),
        "n_classes": n_classes,
        "accuracy": {
            "fit_uniform": accuracy(errors[fit_idx_t], labels_t[fit_idx_t]),
            "fit_weighted": accuracy(errors[fit_idx_t], labels_t[fit_idx_t], chosen),
            "held_out_uniform": accuracy(errors[held_idx_t], labels_t[held_idx_t]),
            "held_out_weighted": best[0],
        },
        **(meta or {}),
    }
    return TimestepWeights.normalised(list(timesteps), chosen.tolist(), num_train_timesteps, record)
