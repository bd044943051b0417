"""The step's random numbers: a counter-based hash of each image's key.

Every image comes from the input pipeline with its own 64-bit key (two uint32
words): random for training batches, fixed for the test and validation
batches. Its Bernoulli pixels (dynamic binarization) and the standard-normal
noise of its reparameterized z are hashes of (key, stream, position) drawn
inside the training and the validation step alike, where they cost two
murmur3 finalizers per number: integer multiplies and shifts that XLA
vectorizes. On the CPU that is far cheaper than XLA's philox (see
docs/results/speed.md#random-numbers-drawn-in-the-step), and it leaves the
input pipeline nothing to do but gather uint8 images. The draws of an image
depend on its key alone, so 1 and N replicas give the same update.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfvae.config import LEVELS

GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters
BINARIZE_STREAM = 0
NORMAL_STREAM = 1
DEQUANTIZE_STREAM = 2


def _fmix32(h):
    """murmur3's finalizer: a bijection of uint32 in which every input bit
    flips each output bit with probability ~1/2. uint32 products wrap around."""
    xor, shift = tf.bitwise.bitwise_xor, tf.bitwise.right_shift
    h = xor(h, shift(h, 16)) * 0x85EBCA6B
    h = xor(h, shift(h, 13)) * 0xC2B2AE35
    return xor(h, shift(h, 16))


def _columns(n: int, stream: int):
    """A fixed hash per position `[n]`, different for each stream."""
    return _fmix32(tf.constant(np.arange(n, dtype=np.uint32) * GOLDEN + (stream << 24)))


def uniform(keys, n: int, stream: int):
    """`[batch, n]` float32 uniforms on [0, 1) in steps of 2^-24 for the images
    with `keys` uint32 `[batch, 2]`: independent across images, positions and
    streams, and the same for the same key wherever it is drawn."""
    keys = tf.convert_to_tensor(keys, tf.uint32)
    xor = tf.bitwise.bitwise_xor
    first = _fmix32(keys[:, :1])
    second = _fmix32(xor(keys[:, 1:], GOLDEN))
    bits = _fmix32(xor(_fmix32(xor(first, _columns(n, stream))), second))
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))


def standard_normal(keys, shape):
    """`[batch, *shape]` float32 N(0, 1) draws for the images with `keys`
    (Box-Muller on pairs of uniforms)."""
    n = math.prod(shape)
    pairs = (n + 1) // 2
    u = uniform(keys, 2 * pairs, NORMAL_STREAM)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-u[:, :pairs]))  # 1 - u is in (0, 1]
    angle = (2.0 * math.pi) * u[:, pairs:]
    z = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=1)[:, :n]
    return tf.reshape(z, [-1, *shape])


def binarize(intensities, keys):
    """Binary float32 images with P(pixel = 1) = intensity / 255, for uint8
    `intensities` `[batch, height, width, channels]` and their `keys`."""
    shape = tf.shape(intensities)
    p = tf.reshape(tf.cast(intensities, tf.float32) / 255.0, [shape[0], -1])
    u = uniform(keys, math.prod(intensities.shape[1:]), BINARIZE_STREAM)
    return tf.reshape(tf.cast(u < p, tf.float32), shape)


def dequantize(levels, keys):
    """(level + u) / LEVELS with u ~ U[0, 1) per pixel, float32, for uint8
    `levels` `[batch, height, width, channels]` and their `keys`: 8-bit pixels
    as a density's data (the `gaussian` likelihood)."""
    shape = tf.shape(levels)
    x = tf.reshape(tf.cast(levels, tf.float32), [shape[0], -1])
    u = uniform(keys, math.prod(levels.shape[1:]), DEQUANTIZE_STREAM)
    return tf.reshape((x + u) / LEVELS, shape)


def training_batch(batch: dict, noise_shape):
    """`(images, noise)` for a batch in the one batch format (a dict from
    `data.train_pipeline` or `data.image_pipeline`): the images, binarized here
    if they came as `intensities`, dequantized if they came as `levels`, and
    noise `[batch, *noise_shape]` (None for no noise)."""
    keys = batch["keys"]
    if "intensities" in batch:
        images = binarize(batch["intensities"], keys)
    elif "levels" in batch:
        images = dequantize(batch["levels"], keys)
    else:
        images = batch["images"]
    return images, (None if noise_shape is None else standard_normal(keys, noise_shape))
