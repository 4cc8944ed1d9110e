"""The error table: every class's denoising error at every timestep, one noise, for each image.

A sampler asks a batch scorer for ``(image, class, timestep, noise)`` errors; the table answers
from a tensor computed once, so every candidate configuration replays against the same errors
(the same noised latents for every class of an image: Li et al.'s paired comparison) at no UNet
cost. Only the table's timesteps and noise 0 can be replayed: a configuration that asks for
anything else is refused, naming what it asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from diffcls_plugin.errors import DiffclsError


class ErrorSource(Protocol):
    """What a configuration is evaluated against: a batch scorer that knows its number of classes
    (an :class:`ErrorTable`, or a cache that computes errors as they are asked for)."""

    n_classes: int

    def __call__(self, image_idx: Sequence[int], class_idx: Sequence[int], timesteps: Sequence[int], noise_idx: Sequence[int]) -> Sequence[float]: ...


class ErrorTable:
    """A batch scorer that replays a table of errors (``samplers.BatchScorer``).

    Args:
        errors: (n_images, n_classes, n_timesteps) denoising errors, lower is better; finite.
        timesteps: (n_timesteps,) the timestep each column of ``errors`` holds, distinct
            (e.g. ``li_timesteps(num_train_timesteps, 32)``, baseline-32's grid).

    Raises:
        DiffclsError: a tensor that is not 3-D, holds non-finite errors, or whose columns do not
            match ``timesteps``.
    """

    def __init__(self, errors: torch.Tensor, timesteps: Sequence[int]) -> None:
        errors = torch.as_tensor(errors)
        timesteps = [int(t) for t in timesteps]
        if errors.dim() != 3:
            raise DiffclsError(f"an error table is (n_images, n_classes, n_timesteps); got a tensor of shape {tuple(errors.shape)}")
        if errors.shape[2] != len(timesteps) or len(set(timesteps)) != len(timesteps):
            raise DiffclsError(
                f"an error table of {errors.shape[2]} timestep columns needs as many distinct timesteps; got {timesteps}: "
                "pass the timestep of each column, in column order"
            )
        if not bool(torch.isfinite(errors).all()):
            raise DiffclsError("the error table holds non-finite errors: recompute the images whose errors are nan or inf")
        self.n_images, self.n_classes = int(errors.shape[0]), int(errors.shape[1])
        self.timesteps = tuple(timesteps)
        self._column = {t: j for j, t in enumerate(timesteps)}
        self._errors: list[list[list[float]]] = errors.double().tolist()  # (n_images, n_classes, n_timesteps), Python floats: fast lookups

    @classmethod
    def from_mapping(cls, errors: Mapping[tuple[int, int, int, int], float], n_images: int, n_classes: int) -> ErrorTable:
        """The table of errors computed one ``(image, class, timestep, noise)`` at a time (a cache).

        Args:
            errors: ``{(image_idx, class_idx, timestep, noise_idx): error}``: noise 0 only, and every
                (image, class) at every timestep that occurs.
            n_images: images 0 .. n_images - 1.
            n_classes: classes 0 .. n_classes - 1.

        Returns:
            the table, its columns in ascending timestep order; the values exactly as given.

        Raises:
            DiffclsError: a noise other than 0, an index out of range, or a missing entry.
        """
        timesteps = sorted({t for _, _, t, _ in errors})
        column = {t: j for j, t in enumerate(timesteps)}
        table = torch.full((n_images, n_classes, len(timesteps)), math.nan, dtype=torch.float64)  # (n_images, n_classes, n_timesteps)
        for (i, c, t, n), e in errors.items():
            if n != 0 or not (0 <= i < n_images and 0 <= c < n_classes):
                raise DiffclsError(
                    f"(image, class, timestep, noise) = {(i, c, t, n)} does not fit a one-noise table of {n_images} images and {n_classes} classes"
                )
            table[i, c, column[t]] = e
        if bool(torch.isnan(table).any()):
            i, c, j = (int(x) for x in torch.nonzero(torch.isnan(table))[0])
            raise DiffclsError(f"no error for (image, class, timestep) = {(i, c, timesteps[j])}: fill every class of every image at each timestep")
        return cls(table, timesteps)

    def tensor(self) -> torch.Tensor:
        """The errors, (n_images, n_classes, n_timesteps) float64, columns in :attr:`timesteps` order."""
        return torch.tensor(self._errors, dtype=torch.float64).reshape(self.n_images, self.n_classes, len(self.timesteps))

    def subset(self, image_idx: Sequence[int]) -> ErrorTable:
        """The table of some of the images (a fold), renumbered ``0 .. len(image_idx) - 1`` in that order."""
        return ErrorTable(torch.tensor([self._errors[i] for i in image_idx], dtype=torch.float64).reshape(len(image_idx), self.n_classes, -1), self.timesteps)

    def __call__(self, image_idx: Sequence[int], class_idx: Sequence[int], timesteps: Sequence[int], noise_idx: Sequence[int]) -> list[float]:
        """The errors of flattened triples, one per entry (lower is better).

        Raises:
            DiffclsError: a timestep outside the table's columns, or a noise other than 0.
        """
        if any(noise_idx):
            n = next(n for n in noise_idx if n)
            raise DiffclsError(f"the error table holds one noise per timestep (noise 0); a configuration asked for noise {n}: set its n_noises to 1")
        column = self._column
        try:
            return [self._errors[i][c][column[t]] for i, c, t in zip(image_idx, class_idx, timesteps)]
        except KeyError as missing:
            raise DiffclsError(
                f"asks for timestep {missing.args[0]}, which the error table does not hold (its {len(self.timesteps)} timesteps: "
                f"{', '.join(map(str, self.timesteps))}); choose configurations that visit only those, or compute the table over more"
            ) from None
