"""Scores and images of a finished run, as `tfvae evaluate` and
`tfvae reconstruct` report them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfvae.data import load_dataset
from tfvae.runs import RunError, load_run


def run_images(run_dir: str | Path, split: str = "test", limit: int | None = None):
    """A finished run and its data set's `split` under the fixed binarization."""
    run = load_run(run_dir)
    config = run.state.config
    data = load_dataset(config.dataset, config.data_dir, config.resize)
    if config.limit is not None:
        data = data.limit(config.limit, config.limit)
    if data.image_shape != run.state.image_shape:
        raise RunError(
            f"{config.dataset}: images are {data.image_shape}, the run was trained on "
            f"{run.state.image_shape}"
        )
    images = data.fixed_binarized(split, config.binarize)
    return run, images if limit is None else images[:limit]


def score_run(
    run_dir: str | Path,
    split: str = "test",
    k: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """ELBO, KL, log-likelihood, IW negative log-likelihood (K samples) and the
    number of active units, in nats per image. `progress(done, total)`."""
    from tfvae.evaluation import active_units, evaluate_elbo, iw_log_likelihood

    run, images = run_images(run_dir, split)
    model = run.model
    scores = evaluate_elbo(model, images)
    report = None if progress is None else (lambda n: progress(n, len(images)))
    log_px = iw_log_likelihood(model, images, k=k, progress=report)
    return {
        "split": split,
        "n_images": int(len(images)),
        "k": k,
        **scores,
        "nll": float(-np.mean(log_px)),
        "active_units": active_units(model, images),
        "latent_dim": model.latent_dim,
    }
