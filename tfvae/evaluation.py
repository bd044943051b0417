"""Scores of a trained VAE: the ELBO, the importance-weighted log-likelihood
estimate and the number of active latent units, of a model on fixed images
or of a run folder on its data set (as `tfvae evaluate` reports them).

All figures are per image, in nats, averaged in float64; every random draw is
seeded so the same model and data always give the same numbers. A
conditional VAE's are of p(x|y), given each image's class (`labels`, int
`[n]`; an unconditional VAE ignores them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from tfvae.data import image_pipeline
from tfvae.data.pipelines import array_batches
from tfvae.noise import training_batch

# Numbers (samples x images x pixels) decoded at once by the IW estimate:
# 20,000 codes of a 28x28 image, 63 MB per float32 tensor, whatever K and
# the image size are.
IW_NUMBERS = 20_000 * 784


def elbo_term_batches(
    model, images: np.ndarray, batch_size: int = 1000, seed: int = 1, labels=None
) -> Iterator[dict[str, np.ndarray]]:
    """Per-image `elbo`, `kl` and `log_likelihood`, float32 `[batch]` each,
    batch by batch in the order of `images`: one z per image, drawn as the
    validation step draws it (from the image's fixed key)."""

    @tf.function(autograph=False)  # no tensor-dependent Python control flow to convert
    def terms(batch):
        x, noise = training_batch(batch, [1, model.noise_dim])
        return model.elbo_terms(x, noise, labels=batch.get("labels"))

    labels = labels if model.conditional else None
    for batch in image_pipeline(images, batch_size, seed, labels):
        out = terms(batch)
        yield {name: out[name].numpy() for name in ("elbo", "kl", "log_likelihood")}


def evaluate_elbo(
    model, images: np.ndarray, batch_size: int = 1000, seed: int = 1, labels=None
) -> dict[str, float]:
    """The ELBO and its terms, averaged over the images.

    Each image's z is drawn from its fixed key, as the validation step draws
    it, so a run's final test scores are its last epoch's validation
    figures and every call on the same weights gives the same numbers.

    Args:
        model (VAE): The model.
        images: float32 `[n, height, width, channels]`, as scored
            (`ImageDataset.scored`), an array or a streamed split.
        batch_size: Images per batch.
        seed: Seeds the images' keys.
        labels (np.ndarray | None): A conditional VAE's classes, int `[n]`.

    Returns:
        Means of `elbo`, `kl` and `log_likelihood` (E_q[ln p(x|z)]), nats per
            image.
    """
    sums = {"elbo": 0.0, "kl": 0.0, "log_likelihood": 0.0}
    for batch in elbo_term_batches(model, images, batch_size, seed, labels):
        for name in sums:
            sums[name] += float(np.sum(batch[name], dtype=np.float64))
    return {name: total / len(images) for name, total in sums.items()}


def iw_log_likelihood(
    model,
    images: np.ndarray,
    k: int,
    batch_size: int = 100,
    seed: int = 2,
    progress: Callable[[int], None] | None = None,
    labels=None,
) -> np.ndarray:
    """Per-image importance-weighted estimate of log p(x) (Burda et al.):

        log p(x) ~ log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x)

    K = 1 is the ELBO; the estimate rises towards log p(x) with K. Chunks of
    at most `IW_NUMBERS` numbers joined by a running log-sum-exp bound the
    memory for any K; seeded draws give the same figures every time.

    Args:
        model (VAE): The model.
        images: float32 `[n, height, width, channels]` as scored (an array
            or a streamed split).
        k: Importance samples per image.
        batch_size: Images per chunk.
        seed: Seeds the draws of z.
        progress: Called with `n` after each chunk of `n` (image, sample) pairs.
        labels (np.ndarray | None): A conditional VAE's classes, int `[n]`
            (the estimate is then of log p(x|y)).

    Returns:
        float64 `[n]`, nats.

    Raises:
        ValueError: `k` is below 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    chunk = max(1, min(k, IW_NUMBERS // math.prod(images.shape[1:]) // batch_size))
    log_sum_weights, progress = _log_sum_weights(model), progress or (lambda n: None)
    out = np.empty(len(images), dtype=np.float64)
    for start, x in array_batches(images, batch_size):
        x, y = tf.constant(x), model.batch_labels(labels, start, len(x))
        total = np.full(len(x), -np.inf)
        for first in range(0, k, chunk):
            n_samples = min(chunk, k - first)
            chunk_seed = tf.constant([seed, start * k + first], tf.int32)
            part = log_sum_weights(x, y, tf.constant(n_samples), chunk_seed).numpy()
            total = np.logaddexp(total, part.astype(np.float64))
            progress(n_samples * len(x))
        out[start : start + len(x)] = total - math.log(k)
    return out


def _log_sum_weights(model):
    """log sum_k w_k of `n_samples` draws for each image of a batch, traced
    once for every chunk size."""

    @tf.function(reduce_retracing=True, autograph=False)
    def log_sum_weights(x, y, n_samples, chunk_seed):
        shape = tf.stack([tf.cast(n_samples, tf.int32), tf.shape(x)[0], model.noise_dim])
        # z ~ q(z|x) from explicit philox noise, so the figures do not depend
        # on how a TFP version draws its samples.
        noise = tf.random.stateless_normal(shape, seed=chunk_seed, alg="philox")
        draw = model.draw(x, noise, y)  # z [samples, batch, n_i] per layer
        return tf.reduce_logsumexp(model.log_weights(draw), axis=0)  # [batch]

    return log_sum_weights


def active_units(model, images: np.ndarray, threshold: float = 0.01, labels=None) -> int:
    """Latent dimensions whose posterior mean varies across the data, summed
    over the layers (`active_units_per_layer`)."""
    return sum(active_units_per_layer(model, images, threshold, labels))


def active_units_per_layer(
    model, images: np.ndarray, threshold: float = 0.01, labels=None
) -> list[int]:
    """Each layer's latent dimensions whose posterior mean varies across the
    data, bottom layer first.

    A unit u is active when Cov_x(E_q[z_u | x]) > `threshold` (Burda et al.);
    collapsed units copy the prior whatever the input. Below the top, the
    mean is q's given the means of the layers above.
    """
    return [
        int(np.sum(np.var(means.astype(np.float64), axis=0) > threshold))
        for means in model.layer_means(images, labels=labels)
    ]
