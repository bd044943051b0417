"""The training step's counter-based random numbers (`tfvae.noise`): the hash
against a plain-Python murmur3 finalizer, and the statistics of its uniforms,
normals and Bernoulli pixels."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfvae import noise

N_KEYS = 4096


def _fmix32_reference(h: int) -> int:
    """murmur3's fmix32, written from its definition with Python integers."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _uniform_reference(key: tuple[int, int], n: int, stream: int) -> list[float]:
    first = _fmix32_reference(key[0])
    second = _fmix32_reference(key[1] ^ noise.GOLDEN)
    out = []
    for j in range(n):
        column = _fmix32_reference((j * noise.GOLDEN + (stream << 24)) & 0xFFFFFFFF)
        bits = _fmix32_reference(_fmix32_reference(first ^ column) ^ second)
        out.append((bits >> 8) / 2**24)
    return out


def _keys(n: int = N_KEYS, seed: int = 1) -> tf.Tensor:
    return tf.random.stateless_uniform(
        [n, 2], seed=[seed, 0], minval=None, maxval=None, dtype=tf.uint32
    )


@pytest.fixture(scope="module")
def u() -> np.ndarray:
    return noise.uniform(_keys(), 256, noise.BINARIZE_STREAM).numpy().astype(np.float64)


def test_hash_matches_murmur3_written_in_python():
    values = np.array([0, 1, 2, 0x80000000, 0xFFFFFFFF, 123456789], np.uint32)
    ours = noise._fmix32(tf.constant(values)).numpy()
    assert ours.tolist() == [_fmix32_reference(int(v)) for v in values]
    keys = [(0, 0), (1, 2), (0xFFFFFFFF, 7)]
    got = noise.uniform(tf.constant(keys, tf.uint32), 5, noise.NORMAL_STREAM).numpy()
    expected = [_uniform_reference(key, 5, noise.NORMAL_STREAM) for key in keys]
    np.testing.assert_array_equal(got, np.array(expected, np.float32))


def test_uniforms_have_the_moments_and_histogram_of_u01(u):
    """1M draws: mean 1/2 and variance 1/12 within 5 standard errors, values on
    the 2^-24 grid in [0, 1), and 16-bin chi-square below its 0.999 quantile."""
    n = u.size
    assert 0.0 <= u.min() and u.max() < 1.0
    assert np.all(u * 2**24 == np.floor(u * 2**24))
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)  # var of (U - 1/2)^2
    counts = np.histogram(u, bins=16, range=(0, 1))[0]
    chi2 = ((counts - n / 16) ** 2 / (n / 16)).sum()
    assert chi2 < 37.7  # chi-square, 15 degrees of freedom, 0.999 quantile


def test_uniforms_are_uncorrelated_across_positions_images_and_streams(u):
    """Correlations of neighbouring positions, of images with neighbouring keys
    and of the two streams are all within 5 / sqrt(samples) of 0."""

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    assert abs(corr(u[:, :-1], u[:, 1:])) < 5 / math.sqrt(u[:, 1:].size)
    consecutive = np.stack([np.zeros(N_KEYS), np.arange(N_KEYS)], 1).astype(np.uint32)
    v = noise.uniform(consecutive, 64, noise.BINARIZE_STREAM).numpy()
    assert abs(corr(v[:-1], v[1:])) < 5 / math.sqrt(v[1:].size)
    other_stream = noise.uniform(_keys(), 256, noise.NORMAL_STREAM).numpy()
    assert abs(corr(u, other_stream)) < 5 / math.sqrt(u.size)


def test_an_images_draws_depend_on_its_key_alone():
    """The same key gives the same numbers in any batch (what makes 1 and N
    replicas agree), under XLA as in eager mode."""
    keys = _keys(64)
    whole = noise.standard_normal(keys, [3, 5]).numpy()
    halves = [noise.standard_normal(keys[i : i + 32], [3, 5]).numpy() for i in (0, 32)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    jitted = tf.function(lambda k: noise.standard_normal(k, [3, 5]), jit_compile=True)
    np.testing.assert_allclose(jitted(keys).numpy(), whole, rtol=0, atol=1e-6)
    assert not np.allclose(noise.standard_normal(_keys(64, seed=2), [3, 5]).numpy(), whole)


def test_normals_match_the_standard_normal_cdf():
    """~400k draws: the empirical CDF at -2..2 within 5 binomial standard errors
    of Phi, mean 0 and variance 1 within 5 standard errors. An odd count per
    image (Box-Muller makes pairs) keeps the shape asked for."""
    z = noise.standard_normal(_keys(), [1, 99]).numpy().astype(np.float64)
    assert z.shape == (N_KEYS, 1, 99)
    z = z.ravel()
    n = z.size
    for t in (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0):
        phi = 0.5 * (1 + math.erf(t / math.sqrt(2)))
        assert abs((z <= t).mean() - phi) < 5 * math.sqrt(phi * (1 - phi) / n)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)


def test_binarize_draws_each_pixel_with_its_intensity():
    """P(pixel = 1) = intensity / 255 within 5 standard errors over 4096 images;
    black pixels are always 0 and white ones always 1."""
    levels = np.arange(0, 256, 17, dtype=np.uint8)  # 0, 17, ..., 255
    intensities = np.broadcast_to(levels.reshape(1, 4, 4, 1), (N_KEYS, 4, 4, 1))
    images = noise.binarize(tf.constant(intensities), _keys()).numpy()
    assert images.dtype == np.float32 and set(np.unique(images)) == {0.0, 1.0}
    p = levels.reshape(4, 4, 1) / 255.0
    tolerance = 5 * np.sqrt(p * (1 - p) / N_KEYS)
    assert np.all(np.abs(images.mean(axis=0) - p) <= tolerance)  # exact for 0 and 255


def test_training_batch_binarizes_intensities_and_keeps_images():
    keys = _keys(8)
    grey = tf.fill([8, 2, 2, 1], tf.constant(128, tf.uint8))
    images, eps = noise.training_batch({"intensities": grey, "keys": keys}, [2, 3])
    np.testing.assert_array_equal(images.numpy(), noise.binarize(grey, keys).numpy())
    np.testing.assert_array_equal(eps.numpy(), noise.standard_normal(keys, [2, 3]).numpy())
    given = tf.ones([8, 2, 2, 1])
    same, none = noise.training_batch({"images": given, "keys": keys}, None)
    assert same is given and none is None
