"""The `tf.data` pipelines that feed the VAE.

Images are kept in memory as uint8 `[n, height, width, channels]` (decoded
once); pipelines gather whole batches by index and prefetch, so the input
never waits on Python. Dynamic binarization happens in the training step
(`tfvae.noise`), which is where its random numbers are cheapest.
"""

from __future__ import annotations

import numpy as np

from tfvae.config import PIXEL_TREATMENTS
from tfvae.data.dataset import ImageDataset, fixed_binarization

PREFETCH = 4  # batches made ahead of the step


def _as_float(images, binary: bool):
    import tensorflow as tf

    return tf.cast(images, tf.float32) / (1.0 if binary else 255.0)


def _quiet(dataset):
    """A pipeline on one private thread, without autotuning: its work per batch
    is a gather, and on a 2-core CPU autotuning delayed the start of some epochs
    while extra threads competed with the training step (benchmarks/RESULTS.md)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return dataset.prefetch(PREFETCH).with_options(options)


def train_pipeline(data: ImageDataset, batch_size: int, binarize: str = "dynamic", seed: int = 0):
    """Shuffled batches of training images, each a dict with the images' `keys`
    (uint32 `[batch, 2]`) and either `intensities` (uint8 `[batch, h, w, c]`, to
    binarize) or `images` (float32, used as they are).

    `dynamic` binarizes every batch afresh on every pass (the usual choice in
    the literature): the training step draws the pixels from the keys, so the
    pipeline ships uint8 and never touches a random pixel (`noise.training_batch`
    turns a batch into images and noise, as `VAE.train_step` does). `static`
    draws one binary sample up front; `none` keeps the intensities in [0, 1] as
    Bernoulli targets (for colour or grey-level sets), and the likelihoods
    other than the Bernoulli score them so. `dequantize` ships uint8 `levels`,
    which the step turns into (level + u) / 256 afresh on every pass, like
    `dynamic`. Sets that are already binary are never binarized. Deterministic
    for a given `seed` (and TensorFlow global seed).
    """
    import tensorflow as tf

    if binarize not in PIXEL_TREATMENTS:
        raise ValueError(f"binarize must be one of {PIXEL_TREATMENTS}, got {binarize!r}")
    n = len(data.train_images)
    images, binary = tf.constant(data.train_images), data.binary
    if binarize == "static" and not data.binary:
        images = tf.constant(fixed_binarization(data, data.train_images, seed).astype(np.uint8))
        binary = True
    dynamic = binarize == "dynamic" and not binary

    def gather(idx, pair):
        keys = tf.random.stateless_uniform(
            [tf.size(idx), 2], seed=pair, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
        )
        batch = tf.gather(images, idx)
        if dynamic:
            return {"intensities": batch, "keys": keys}
        if binarize == "dequantize":
            return {"levels": batch, "keys": keys}
        return {"images": _as_float(batch, binary), "keys": keys}

    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return _quiet(tf.data.Dataset.zip(indices.batch(batch_size), seeds).map(gather))


def fixed_keys(n: int, seed: int = 1):
    """uint32 `[n, 2]` keys (index, seed): the same image always gets the
    same key, so its reparameterization noise is the same in every pass."""
    import tensorflow as tf

    index = tf.range(n, dtype=tf.int64)
    return tf.cast(tf.stack([index, tf.fill([n], tf.cast(seed, tf.int64))], axis=1), tf.uint32)


def image_pipeline(images: np.ndarray, batch_size: int, seed: int = 1):
    """Batches of float32 `images` `[n, height, width, channels]` in order, in
    the training batch format (`{"images", "keys"}`) with fixed keys, so
    every evaluation of the same weights gives the same numbers."""
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices(
        {"images": np.asarray(images, np.float32), "keys": fixed_keys(len(images), seed)}
    )
    return _quiet(batches.batch(batch_size))


def test_pipeline(data: ImageDataset, batch_size: int, binarize: str = "dynamic", seed: int = 1):
    """Batches of the test images as scored (`ImageDataset.fixed_binarized`),
    in order, with fixed keys."""
    return image_pipeline(data.fixed_binarized("test", binarize), batch_size, seed)
