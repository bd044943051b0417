"""Encoder q(z|x) and decoder p(x|z): distribution types, shapes and hand-computed log_probs."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.layers import SCALE_FLOOR, GaussianEncoder, ImageDecoder
from tfvae.likelihoods import LIKELIHOOD

tfd = tfp.distributions

SHAPES = [("mlp", (28, 28, 1)), ("conv", (28, 28, 1)), ("conv", (30, 22, 3)), ("mlp", (5, 7, 2))]
IDS = ["mlp-28x28x1", "conv-28x28x1", "conv-30x22x3", "mlp-5x7x2"]


def _coders(arch, shape, latent=6):
    kwargs = dict(image_shape=shape, latent_dim=latent, arch=arch, hidden_units=(32,))
    encoder, decoder = GaussianEncoder(**kwargs), ImageDecoder(**kwargs)
    encoder.build()
    decoder.build()
    return encoder, decoder


def _binary_images(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 2, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("arch,shape", SHAPES, ids=IDS)
def test_encoder_distribution_shapes(arch, shape):
    """q(z|x) is N(mu, diag sigma^2) as independent normals, batch [B], event
    [latent], matching `params`."""
    encoder, _ = _coders(arch, shape)
    x = _binary_images(3, shape)
    q = encoder(x)
    assert isinstance(q, tfd.Independent) and isinstance(q.distribution, tfd.Normal)
    assert q.batch_shape.as_list() == [3] and q.event_shape.as_list() == [6]
    mean, stddev = encoder.params(x)
    np.testing.assert_allclose(q.mean(), mean, rtol=1e-6)
    np.testing.assert_allclose(q.stddev(), stddev, rtol=1e-6)
    assert np.all(stddev.numpy() >= np.float32(SCALE_FLOOR))


@pytest.mark.parametrize("arch,shape", SHAPES, ids=IDS)
def test_decoder_distribution_shapes(arch, shape):
    """p(x|z) is Independent(Bernoulli), batch [B], event = image shape (odd sizes cropped)."""
    _, decoder = _coders(arch, shape)
    p = decoder(np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32))
    assert isinstance(p, tfd.Independent) and isinstance(p.distribution, tfd.Bernoulli)
    assert p.batch_shape.as_list() == [4] and p.event_shape.as_list() == list(shape)
    assert decoder.outputs(np.zeros((2, 6), np.float32)).shape == (2, *shape)
    assert p.log_prob(_binary_images(4, shape)).shape == (4,)


@pytest.mark.parametrize("arch,shape", SHAPES, ids=IDS)
def test_zero_decoder_log_prob_is_uniform(arch, shape):
    """All decoder weights zero -> logits 0 -> log p(x|z) = -D ln 2 for any binary image."""
    _, decoder = _coders(arch, shape)
    decoder.set_weights([np.zeros_like(w) for w in decoder.get_weights()])
    z = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    log_prob = decoder(z).log_prob(_binary_images(5, shape)).numpy()
    np.testing.assert_allclose(log_prob, -math.prod(shape) * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(decoder(z).mean(), 0.5)


def _np_bernoulli_log_prob(x, logits):
    """sum over pixels of x * l - softplus(l) (numpy, float64)."""
    x, logits = np.asarray(x, np.float64), np.asarray(logits, np.float64)
    return (x * logits - np.logaddexp(0.0, logits)).reshape(len(x), -1).sum(1)


def test_mlp_decoder_bias_log_prob():
    """Zero kernels and a known output bias b: log p(x) = sum(x*b - softplus(b)) (numpy),
    including saturated logits +-30 where working with probabilities would lose precision."""
    _, decoder = _coders("mlp", (28, 28, 1))
    rng = np.random.default_rng(2)
    bias = rng.normal(scale=3.0, size=784).astype(np.float32)
    bias[:10] = [30, -30, 30, -30, 20, -20, 0, 1, -1, 15]
    weights = [np.zeros_like(w) for w in decoder.get_weights()]
    weights[-1] = bias
    decoder.set_weights(weights)
    x = _binary_images(4, (28, 28, 1), seed=3)
    x[0, 0, :2, 0] = [0.0, 1.0]  # pixel 0 (logit 30) off, pixel 1 (logit -30) on: ~ -60 nats
    z = rng.normal(size=(4, 6)).astype(np.float32)
    expected = _np_bernoulli_log_prob(x, np.broadcast_to(bias.reshape(28, 28, 1), x.shape))
    np.testing.assert_allclose(decoder(z).log_prob(x), expected, rtol=1e-5)


def test_conv_decoder_channel_bias_log_prob():
    """Conv decoder, odd 30x22x3: zero kernels leave the per-channel output bias as logits."""
    shape = (30, 22, 3)
    _, decoder = _coders("conv", shape)
    bias = np.array([2.0, -1.5, 0.25], np.float32)
    weights = [np.zeros_like(w) for w in decoder.get_weights()]
    weights[-1] = bias  # the last Conv2DTranspose's bias, one per channel
    decoder.set_weights(weights)
    x = _binary_images(3, shape, seed=4)
    expected = _np_bernoulli_log_prob(x, np.broadcast_to(bias, x.shape))
    np.testing.assert_allclose(
        decoder(np.ones((3, 6), np.float32)).log_prob(x), expected, rtol=1e-5
    )


def image_distribution(logits):
    return LIKELIHOOD["bernoulli"].distribution(logits)


def test_bernoulli_distribution_matches_numpy():
    """The Bernoulli likelihood's log_prob equals the numpy Bernoulli formula."""
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=4.0, size=(3, 4, 5, 2)).astype(np.float32)
    x = _binary_images(3, (4, 5, 2), seed=6)
    np.testing.assert_allclose(
        image_distribution(logits).log_prob(x), _np_bernoulli_log_prob(x, logits), rtol=1e-5
    )


def test_pixel_log_prob_and_gradient_match_tfp_bernoulli():
    """The fused cross-entropy `log_prob` equals TFP's own Bernoulli, values and
    gradients, for binary and grey-level targets and logits out to +-80."""
    rng = np.random.default_rng(7)
    logits = tf.constant(
        np.concatenate(
            [rng.normal(scale=4.0, size=(2, 4, 5, 2)), np.full((1, 4, 5, 2), 80.0)]
        ).astype(np.float32)
        * np.where(rng.random((3, 4, 5, 2)) < 0.5, -1, 1).astype(np.float32)
    )
    for x in (_binary_images(3, (4, 5, 2), seed=8), rng.random((3, 4, 5, 2)).astype(np.float32)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            ours = image_distribution(logits).log_prob(x)
            theirs = tfd.Independent(tfd.Bernoulli(logits=logits), 3).log_prob(x)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
        np.testing.assert_allclose(
            tape.gradient(ours, logits), tape.gradient(theirs, logits), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_encoder_stddev_floor_for_extreme_inputs(arch):
    """Large random weights and images scaled by +-1e6 drive raw scales to about +-1e8..1e10:
    stddev stays finite and > 0, the underflowed ones sit exactly at SCALE_FLOOR, and
    log q(mean) stays finite (it would be +inf with a zero stddev)."""
    encoder, _ = _coders(arch, (28, 28, 1))
    rng = np.random.default_rng(7)
    encoder.set_weights(
        [rng.normal(size=w.shape).astype(np.float32) for w in encoder.get_weights()]
    )
    x = _binary_images(4, (28, 28, 1), seed=8) * np.array([1e6, -1e6, 1e6, -1e6]).reshape(
        4, 1, 1, 1
    )
    mean, stddev = (t.numpy() for t in encoder.params(x.astype(np.float32)))
    assert np.isfinite(mean).all() and np.isfinite(stddev).all()
    assert np.abs(mean).max() > 1e8  # the inputs really are extreme
    assert (stddev > 0).all()
    np.testing.assert_allclose(stddev.min(), SCALE_FLOOR, rtol=1e-6)  # softplus underflowed
    q = encoder(x.astype(np.float32))
    assert np.isfinite(q.log_prob(q.mean()).numpy()).all()


def _output_shapes(body, x):
    """Each layer's output shape (batch left out), layer by layer."""
    shapes = []
    for layer in body.layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


# Layer outputs for `--hidden 200,100`, latent 20, 28 x 28 x 1 images.
MIRRORED = {
    "mlp": (
        [(784,), (200,), (100,), (40,)],
        [(100,), (200,), (784,), (28, 28, 1)],
    ),
    "conv": (
        [(14, 14, 32), (7, 7, 64), (3136,), (200,), (100,), (40,)],
        [(100,), (200,), (3136,), (7, 7, 64), (14, 14, 64), (28, 28, 32), (28, 28, 1)],
    ),
}


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_decoder_mirrors_the_encoder(arch):
    """`--hidden 200,100`: the encoder flattens the image (or the conv body's
    7 x 7 x 64 map), then 200, 100 and 2 x latent; the decoder runs its hidden
    layers in reverse, 100 then 200, widens back to what the encoder flattened
    and (conv) grows through the encoder's grids in reverse, 7, 14, 28 (with
    channels of its own), to the image."""
    kwargs = dict(image_shape=(28, 28, 1), latent_dim=20, arch=arch, hidden_units=(200, 100))
    encoder = _output_shapes(GaussianEncoder(**kwargs).body, np.zeros((1, 28, 28, 1), np.float32))
    decoder = _output_shapes(ImageDecoder(**kwargs).body, np.zeros((1, 20), np.float32))
    assert (encoder, decoder) == MIRRORED[arch]
    flat = [size for (size,) in (s for s in encoder if len(s) == 1)][:-1]  # the code left out
    assert [size for (size,) in decoder[: len(flat)]] == flat[::-1]
    grids = [s[:2] for s in [(28, 28, 1), *encoder] if len(s) == 3]
    assert [s[:2] for s in decoder if len(s) == 3][: len(grids)] == grids[::-1]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(arch="rnn"), "arch='rnn' is invalid; one of mlp, conv"),
        (dict(latent_dim=0), "latent_dim=0 is invalid; a positive integer"),
        (dict(hidden_units=()), "hidden_units=\\(\\) is invalid; positive layer sizes"),
        (dict(hidden_units=(16, 0)), "hidden_units=\\(16, 0\\) is invalid; positive layer sizes"),
    ],
)
def test_invalid_settings(kwargs, message):
    """Bad arch, latent size or hidden sizes are ValueErrors with a clear message."""
    for cls in (GaussianEncoder, ImageDecoder):
        with pytest.raises(ValueError, match=message):
            cls(**{"image_shape": (28, 28, 1), **kwargs})
