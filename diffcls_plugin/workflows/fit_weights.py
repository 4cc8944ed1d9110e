"""``diffcls fit-weights``: learn timestep weights for a checkpoint on a labelled harness dataset.

The errors come from the baseline grid (every class, every timestep, one noise each) through the
classifier's own scorer; :func:`diffcls_plugin.weighting.fit_weights` learns the weights from
them (Jeong et al. 2025). Fit on a split you will not evaluate.
"""

from __future__ import annotations

import dataclasses

from diffcls_plugin.config import DiffclsConfig
from diffcls_plugin.errors import DiffclsError
from diffcls_plugin.samplers import BaselineOptions, li_timesteps
from diffcls_plugin.weighting import METHODS, TimestepWeights, fit_weights


def collect_errors(model, loader, progress: bool = True, counts: dict | None = None, total: int | None = None):
    """Every class's error at every timestep of the baseline grid, for each image of ``loader``.

    When the model has a resume store (``model.store``), each image's errors are committed to it
    the moment they are computed and an image already there is read back instead (an interrupted
    ``diffcls tune`` resumes; the same pixels get the same noises, so the values are the same).

    Args:
        model: a ``diffusion-baseline`` :class:`~diffcls_plugin.classifier.DiffusionClassifier`,
            prepared with the dataset's classes, without timestep weights.
        loader: batches of ``(pixels, labels)`` from ``model.transform``.
        progress: show a progress bar.
        counts: if given, filled with ``computed`` and ``from_store`` image counts.
        total: images expected (the progress bar's total), if known.

    Returns:
        ``(errors, labels, timesteps)``: (N, C, T) float64 errors, (N,) labels, (T,) timesteps.
    """
    import time

    import torch

    from diffcls_plugin.classifier.progress import ProgressBar
    from diffcls_plugin.classifier.stats import RunStats
    from diffcls_plugin.keys import error_rows_key, image_key

    if model.timestep_weights is not None:
        raise DiffclsError("collect the errors without timestep weights (set timestep_weights: null)")
    grid = li_timesteps(model.adapter.num_train_timesteps, model.options.n_timesteps)
    n_classes = model.n_classes
    store = model.store
    run = error_rows_key(model.run_description(), grid) if store is not None else None
    errors, labels = [], []
    done = {"computed": 0, "from_store": 0}
    bar, stats = ProgressBar("errors", total, enabled=progress), RunStats()  # one bar on a terminal, log lines off one
    for pixels, targets in loader:
        start = time.perf_counter()
        keys = [image_key(p) for p in pixels] if store is not None else []
        stored = store.get_errors(run, keys) if store is not None else {}
        stored = {k: v for k, v in stored.items() if tuple(v.shape) == (n_classes, len(grid))}
        batch = torch.empty(len(pixels), n_classes, len(grid), dtype=torch.float64)  # (B, C, T)
        missing = [i for i in range(len(pixels)) if store is None or keys[i] not in stored]
        for i in range(len(pixels)):
            if i not in missing:
                batch[i] = stored[keys[i]]
        if missing:
            scorer = model.scorer(pixels[missing])  # the adapter moves the pixels to its device
            triples = [(j, c, t, 0) for j in range(len(missing)) for c in range(n_classes) for t in grid]
            values = torch.tensor(scorer(*map(list, zip(*triples))), dtype=torch.float64).view(len(missing), n_classes, len(grid))
            for j, i in enumerate(missing):
                batch[i] = values[j]
                if store is not None:
                    store.put_errors(run, keys[i], values[j])
        errors.append(batch)
        labels += [int(y) for y in targets]
        done["computed"] += len(missing)
        done["from_store"] += len(pixels) - len(missing)
        evals = len(pixels) * n_classes * len(grid)
        stats.n_images, stats.n_images_computed = stats.n_images + len(pixels), stats.n_images_computed + len(missing)
        stats.n_unet_evals, stats.n_unet_evals_computed = stats.n_unet_evals + evals, stats.n_unet_evals_computed + len(missing) * n_classes * len(grid)
        stats.seconds_computed += time.perf_counter() - start
        bar.update(len(pixels), stats, with_store=store is not None)
    bar.close()
    if counts is not None:
        counts.update(done)
    if not errors:
        raise DiffclsError("the dataset gave no labelled images to collect errors on: check --split and --dataset-root")
    return torch.cat(errors), labels, grid


def fit_on_dataset(
    pretrained: str,
    dataset: str,
    root: str = "root",
    split: str = "train",
    *,
    subset=None,
    n_timesteps: int = 32,
    config=None,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | None = None,
    method: str = "per-timestep",
    degree: int = 3,
    progress: bool = True,
) -> TimestepWeights:
    """Fit timestep weights for ``pretrained`` on a labelled harness dataset (``diffcls fit-weights``).

    Every image's errors come from the baseline grid of ``n_timesteps`` (Li et al.'s formula),
    every class, one noise per timestep, with the run's seed, prompts and loss from ``config``;
    :func:`fit_weights` then learns the weights. The result's ``meta`` names the checkpoint, the
    dataset, the split and the subset, so that a run on the same split is flagged.
    """
    import torch

    from diffcls_plugin.classifier import load_classifier
    from diffcls_plugin.harness.datasets import check_labelled, labelled_dataset

    config = config or DiffclsConfig()
    if method not in METHODS:
        raise DiffclsError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    config = dataclasses.replace(
        config, timestep_weights=None, prefilter=None, samplers={**dict(config.samplers), "baseline": BaselineOptions(n_timesteps=n_timesteps)}
    )
    check_labelled(dataset, root, split)  # before any weights load
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_classifier("diffusion-baseline", pretrained, device=device, config=config, seed=seed, progress=False)
    data, classes, templates = labelled_dataset(dataset, root, split, model.transform, subset)
    model.prepare(classes, templates)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers)
    errors, labels, grid = collect_errors(model, loader, progress)
    meta = {
        "checkpoint": str(pretrained),
        "dataset": dataset,
        "split": split,
        "subset": None if subset is None else subset.to_dict(),
        "n_timesteps": n_timesteps,
        "seed": seed,
        "loss": config.loss,
        "prompts": config.prompts,
        "family": getattr(model.adapter, "family", "sd"),
        "reference": "Jeong et al. 2025, Diffusion Classifiers Understand Compositionality, but Conditions Apply",
    }
    return fit_weights(errors, labels, grid, num_train_timesteps=model.adapter.num_train_timesteps, method=method, degree=degree, seed=seed, meta=meta)
