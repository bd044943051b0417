"""The pixel likelihoods are distributions: the discrete one sums to 1 over
the 256 levels, the continuous ones integrate to 1; each log_prob and mean
equals a numpy formula written from the papers; gradients stay finite at
the end levels and saturated outputs; and the importance-weighted estimate
of a model with each likelihood matches exact 1-D integration."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfvae.config import LIKELIHOODS, TrainConfig
from tfvae.data.dataset import LEVELS, fixed_dequantization
from tfvae.errors import ConfigError
from tfvae.evaluation import iw_log_likelihood
from tfvae.likelihoods import (
    INITIAL_RAW_SCALE,
    LIKELIHOOD,
    SCALE_FLOOR,
    bits_per_dim,
    discretized_logistic,
    logistic_mean,
)
from tfvae.model import VAE
from tfvae.noise import dequantize

# Locations (intensity units) inside, at the ends of and far outside [0, 1];
# scales from the floor to twice the range.
LOCATIONS = np.array([-3.0, -0.01, 0.0, 0.2, 0.5, 0.93, 1.0, 1.02, 4.0], np.float32)
SCALES = np.array([SCALE_FLOOR, 1e-3, 0.01, 0.05, 0.3, 2.0], np.float32)


def _grid():
    loc, scale = np.meshgrid(LOCATIONS, SCALES, indexing="ij")
    return loc.reshape(-1, 1, 1, 1), scale.reshape(-1, 1, 1, 1)


def _outputs(location, scale):
    """Decoder outputs `[..., 2]` (location, raw scale) that give `scale`."""
    raw = np.log(np.expm1(np.float64(scale) - SCALE_FLOOR)) - INITIAL_RAW_SCALE
    location, raw = np.broadcast_arrays(np.float64(location), raw)
    return np.concatenate([location, raw], axis=-1).astype(np.float32)


def test_a_raw_scale_gives_the_scale_asked_for():
    wanted = SCALES[1:, None]  # above the floor, which softplus only approaches
    _, scale = LIKELIHOOD["logistic"].split(_outputs(np.zeros_like(wanted), wanted))
    np.testing.assert_allclose(scale.numpy(), wanted, rtol=1e-5)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def np_logistic_probs(loc, scale) -> np.ndarray:
    """P(level = k), k = 0..255, float64 `[..., 256]`: unit bins centred on
    the levels of a logistic with centre 255 loc and scale 255 s; the end
    bins take the tails."""
    m, s = 255.0 * np.float64(loc)[..., None], 255.0 * np.float64(scale)[..., None]
    upper = np.arange(LEVELS) + 0.5
    cdf_hi = _sigmoid((upper - m) / s)
    cdf_lo = _sigmoid((upper - 1 - m) / s)
    cdf_hi[..., -1], cdf_lo[..., 0] = 1.0, 0.0
    return cdf_hi - cdf_lo


def np_cb_log_prob(x, logits):
    """Loaiza-Ganem & Cunningham (2019), eq. 7: log C(l) + x log l + (1-x) log(1-l),
    C(l) = 2 atanh(1 - 2l) / (1 - 2l), and C = 2 at l = 1/2."""
    lam = _sigmoid(np.float64(logits))
    near_half = np.abs(lam - 0.5) < 1e-4
    safe = np.where(near_half, 0.4, lam)
    log_c = np.where(near_half, np.log(2.0), np.log(2 * np.arctanh(1 - 2 * safe) / (1 - 2 * safe)))
    return log_c + x * np.log(lam) + (1 - x) * np.log1p(-lam)


def test_discretized_logistic_sums_to_one_and_matches_numpy():
    loc, scale = _grid()
    levels = np.arange(LEVELS, dtype=np.float32).reshape(1, 16, 16, 1)
    images = levels / 255.0
    pixel = discretized_logistic(np.broadcast_to(loc, (len(loc), 16, 16, 1)), scale)
    probs = tf.exp(pixel.log_prob(LIKELIHOOD["logistic"].events(images))).numpy()
    np.testing.assert_allclose(probs.reshape(len(loc), -1).sum(1), 1.0, atol=1e-5)
    expected = np_logistic_probs(loc[:, 0, 0, 0], scale[:, 0, 0, 0])
    # float32: a centre near level 237 is off by ~1e-5 levels, which moves a
    # bin's mass by up to 5e-6 at the floor scale (0.0255 levels).
    np.testing.assert_allclose(probs.reshape(len(loc), -1), expected, atol=1e-5)


def test_the_logistic_is_centred_on_its_level():
    """Location 100/255 puts the mode on level 100, with equal mass either side."""
    pixel = discretized_logistic(np.float32(100 / 255), np.float32(0.02))
    p = np.exp(pixel.log_prob(np.arange(LEVELS, dtype=np.float32)))
    assert p.argmax() == 100
    assert p[99] == pytest.approx(p[101], rel=1e-5)


def _trapezoid_weights(x):
    """The trapezoid rule's weights on the evenly spaced points `x`."""
    weights = np.full(len(x), float(x[1] - x[0]))
    weights[[0, -1]] /= 2
    return weights


def _trapezoid(y, x):
    return float(_trapezoid_weights(x) @ y)


@pytest.mark.parametrize("logit", [-20.0, -3.0, -1e-3, 0.0, 1e-5, 2.0, 20.0])
def test_continuous_bernoulli_integrates_to_one_and_matches_the_paper(logit):
    x = np.linspace(0, 1, 200_001)
    outputs = np.full((len(x), 1, 1, 1), logit, np.float32)
    log_p = LIKELIHOOD["continuous-bernoulli"].log_prob(
        x.astype(np.float32).reshape(-1, 1, 1, 1), outputs
    )
    density = np.exp(np.float64(log_p))
    assert _trapezoid(density, x) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(log_p, np_cb_log_prob(x, logit), atol=2e-4)
    mean = LIKELIHOOD["continuous-bernoulli"].mean(outputs[:1]).numpy().item()
    assert mean == pytest.approx(_trapezoid(x * density, x), abs=1e-4)


@pytest.mark.parametrize("loc,scale", [(0.5, 0.05), (0.0, 1e-3), (1.3, 0.4)])
def test_gaussian_density_per_level_integrates_to_one(loc, scale):
    """Over dequantized levels v = level + u - 1/2, the density is per level
    unit, so one level's mass is a nat-for-nat bound of a discrete P(level)."""
    v = np.linspace(255 * loc - 12 * 255 * scale, 255 * loc + 12 * 255 * scale, 400_001)
    images = ((v + 0.5) / LEVELS).astype(np.float32).reshape(-1, 1, 1, 1)
    outputs = _outputs(np.full((len(v), 1, 1, 1), loc), scale)
    log_p = LIKELIHOOD["gaussian"].log_prob(images, outputs)
    density = np.exp(np.float64(log_p))
    assert _trapezoid(density, v) == pytest.approx(1.0, abs=1e-4)
    sd = 255 * scale
    expected = -0.5 * ((v - 255 * loc) / sd) ** 2 - np.log(sd * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(log_p, expected, atol=1e-3, rtol=1e-5)


def test_logistic_mean_is_the_expected_level():
    loc, scale = _grid()
    mean = logistic_mean(loc, scale).numpy()[:, 0, 0, 0]
    probs = np_logistic_probs(loc[:, 0, 0, 0], scale[:, 0, 0, 0])
    np.testing.assert_allclose(mean, probs @ np.arange(LEVELS) / 255.0, atol=2e-5)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_gradients_are_finite_at_the_end_levels_and_saturated_outputs(name):
    likelihood = LIKELIHOOD[name]
    images = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 254.9 / 256], np.float32).reshape(6, 1, 1, 1)
    # Logits or locations far out, and for the scale: at its floor (-30) or wide.
    for extreme in (50.0, -50.0, 6.0, -5.0):
        for raw in (-30.0, 3.0):
            values = [extreme, raw] if likelihood.has_scale else [extreme]
            outputs = tf.Variable(np.broadcast_to(values, (6, 1, 1, len(values))), dtype=tf.float32)
            with tf.GradientTape() as tape:
                log_p = likelihood.log_prob(images, outputs)
            assert np.all(np.isfinite(log_p))
            assert np.all(np.isfinite(tape.gradient(log_p, outputs)))


def np_log_px_z(name, images, params, scale):
    """log p(x|z) per image in float64 numpy, `[images, grid]`, for the
    decoder's logits or locations `params` and scales `[grid, pixels]`: the
    independent implementation."""
    x = images.reshape(len(images), 1, -1).astype(np.float64)
    out = params.astype(np.float64)[None]
    if name == "bernoulli":
        terms = x * out - np.logaddexp(0, out)
    elif name == "continuous-bernoulli":
        terms = np_cb_log_prob(x, out)
    elif name == "logistic":
        probs = np_logistic_probs(out, scale[None])
        level = np.round(x * 255).astype(int)
        terms = np.log(np.take_along_axis(probs, level[..., None], axis=-1)[..., 0])
    else:
        sd = 255.0 * scale[None].astype(np.float64)
        v = x * LEVELS - 0.5
        terms = -0.5 * ((v - 255 * out) / sd) ** 2 - np.log(sd * math.sqrt(2 * math.pi))
    return terms.sum(-1)


def _images_for(name, rng, n):
    levels = rng.integers(0, LEVELS, size=(n, 3, 3, 1))
    if name == "bernoulli":
        return (levels < 128).astype(np.float32)
    if name == "gaussian":
        return fixed_dequantization(levels.astype(np.uint8), seed=0)
    return (levels / 255.0).astype(np.float32)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_iw_estimate_matches_exact_integration(name):
    """log p(x) = log int p(x|z) N(z; 0, 1) dz for a 1-D latent, by the
    trapezoid rule against the numpy likelihood; the IW estimate (K = 20,000)
    must agree to 0.03 nats."""
    model = VAE(
        image_shape=(3, 3, 1),
        latent_dim=1,
        hidden_units=(6,),
        activation="tanh",
        likelihood=name,
        seed=3,
    )
    rng = np.random.default_rng(1)
    # Weights that make p(x|z) depend on z; locations spread over [0, 1].
    for weight in model.decoder.body.weights:
        weight.assign(rng.normal(0, 1.0, weight.shape).astype(np.float32) * 0.8)
    if model.decoder.likelihood.has_scale:
        # Scales near 0.45 (115 levels) that vary with z: the outputs
        # alternate location, raw scale.
        kernel, bias = model.decoder.body.layers[-2].weights
        kernel.assign(kernel.numpy() * np.tile([1.0, 0.2], 9).astype(np.float32))
        bias.assign(np.where(np.arange(18) % 2, 2.5, bias.numpy()).astype(np.float32))
    kernel, bias = model.encoder.body.layers[-1].weights
    kernel.assign(np.zeros(kernel.shape, np.float32))
    bias.assign(np.array([0.2, np.log(np.expm1(1.4))], np.float32))  # q = N(0.2, 1.4^2)
    images = _images_for(name, rng, 4)

    z = np.linspace(-12, 12, 20001, dtype=np.float32)[:, None]
    params, scale = model.decoder.likelihood.split(model.decoder.outputs(z))
    params = params.numpy().reshape(len(z), -1)
    scale = None if scale is None else scale.numpy().reshape(len(z), -1)
    if scale is not None:
        assert 0.2 < scale.min() and np.ptp(scale, axis=0).min() > 1e-3
    log_joint = np_log_px_z(name, images, params, scale) - 0.5 * (
        np.float64(z[:, 0]) ** 2 + np.log(2 * np.pi)
    )
    peak = log_joint.max(1, keepdims=True)
    exact = peak[:, 0] + np.log(_trapezoid_weights(z[:, 0]) @ np.exp(log_joint - peak).T)
    estimate = iw_log_likelihood(model, images, k=20_000, batch_size=4)
    np.testing.assert_allclose(estimate, exact, atol=0.03)


def test_dequantization_stays_in_its_level_and_is_fixed_per_key():
    levels = np.random.default_rng(0).integers(0, LEVELS, size=(64, 4, 4, 3)).astype(np.uint8)
    keys = tf.constant(np.arange(128, dtype=np.uint32).reshape(64, 2))
    y = dequantize(levels, keys).numpy()
    np.testing.assert_array_equal(np.floor(y * LEVELS), levels)
    np.testing.assert_array_equal(y, dequantize(levels, keys).numpy())
    fractions = (y * LEVELS - levels).ravel()
    assert abs(fractions.mean() - 0.5) < 0.02 and fractions.std() == pytest.approx(
        1 / math.sqrt(12), abs=0.01
    )
    fixed = fixed_dequantization(levels, seed=0)
    np.testing.assert_array_equal(np.floor(fixed * LEVELS), levels)


def test_bits_per_dim_is_nats_over_d_ln_2():
    assert bits_per_dim(784 * math.log(2), (28, 28, 1)) == pytest.approx(1.0)
    assert bits_per_dim(3072 * 8 * math.log(2), (32, 32, 3)) == pytest.approx(8.0)


def test_binarization_belongs_to_the_bernoulli():
    assert TrainConfig().likelihood == "bernoulli"
    assert TrainConfig(dataset="images:photos").likelihood == "logistic"
    assert TrainConfig(likelihood="logistic").binarize == "none"  # the default dynamic is dropped
    assert TrainConfig(likelihood="gaussian").pixels == "dequantize"
    assert TrainConfig(likelihood="bernoulli", binarize="static").pixels == "static"
    with pytest.raises(ConfigError, match="static.*only the bernoulli"):
        TrainConfig(likelihood="continuous-bernoulli", binarize="static")
    # A config.json from before the setting existed is a Bernoulli run.
    assert TrainConfig.from_dict({"dataset": "mnist"}).likelihood == "bernoulli"


def test_a_bernoulli_model_file_keeps_the_0_1_0_config():
    """Layer configs name the likelihood only when it is not the Bernoulli,
    so tfvae 0.1.0 (which refuses unknown settings) reads new default files."""
    assert "likelihood" not in VAE(image_shape=(4, 4, 1), latent_dim=2).get_config()
    config = VAE(image_shape=(4, 4, 1), latent_dim=2, likelihood="logistic").get_config()
    assert config["likelihood"] == "logistic"
