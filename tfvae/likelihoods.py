"""The pixel likelihoods p(x|z) a decoder returns, each a TFP distribution.

The decoder's body gives one number per pixel and channel, `[batch, height,
width, channels]`: logits for the Bernoulli kinds, a location for the
others, which also have one learned scale per pixel and channel (not a
function of z: it keeps the body's output one image-shaped tensor, as the
exports expect). Images reach the model as floats in [0, 1]; each likelihood
scores them as its own events:

- `bernoulli`: binary pixels (binarized, or intensities as targets);
- `continuous-bernoulli`: intensities in [0, 1], a normalised density
  (Loaiza-Ganem & Cunningham, 2019);
- `logistic`: the 256 levels of 8-bit pixels, a logistic discretized into
  unit bins centred on the levels, the end bins taking the tails;
- `gaussian`: the levels plus uniform noise in [-1/2, 1/2) (the pipelines
  dequantize), a density per level, so its nats bound the discrete ones.

Means are returned as intensities in [0, 1] (levels / 255).
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.data.dataset import LEVELS

tfd = tfp.distributions

# softplus can underflow to 0 for very negative inputs; the floor keeps every
# scale (q's sigma and the pixels') > 0, so log-densities and the KL stay finite.
SCALE_FLOOR = 1e-4
# softplus^-1(0.05): the learned scale starts at 5% of the intensity range.
INITIAL_RAW_SCALE = math.log(math.expm1(0.05))


class PixelBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose `log_prob` from logits is TensorFlow's fused
    sigmoid cross-entropy, x * l - softplus(l).

    TFP's own evaluates two softplus per pixel, softplus(l) and softplus(-l).
    In the XLA-compiled step of Burda et al.'s batch-20 model both were
    unfused log1p kernels over every pixel of the batch; dropping one made
    that step faster (benchmarks/RESULTS.md). Both forms are exact for any
    logit and for grey-level targets x in [0, 1].
    """

    def _log_prob(self, event):
        if self._logits is None:
            return super()._log_prob(event)
        logits = tf.convert_to_tensor(self._logits)
        labels = tf.cast(event, logits.dtype)
        # Codes `[samples, batch, latent]` give logits with a leading axis.
        shape = tf.broadcast_dynamic_shape(tf.shape(logits), tf.shape(labels))
        return -tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.broadcast_to(labels, shape), logits=tf.broadcast_to(logits, shape)
        )


def _independent(pixels: tfd.Distribution) -> tfd.Distribution:
    """Independent pixels; event shape `[height, width, channels]`."""
    return tfd.Independent(pixels, reinterpreted_batch_ndims=3)


def _level_scale(scale):
    return (LEVELS - 1) * scale


def discretized_logistic(location, scale) -> tfd.Distribution:
    """Levels 0..255 with P(k) = F(k + 1/2) - F(k - 1/2), F the logistic CDF
    of `location` and `scale` in intensity units (x 255 in levels); level 0
    takes (-inf, 1/2], level 255 takes (254.5, inf).

    TFP's quantization gives P(k) = G(k) - G(k - 1), so its logistic sits
    half a level lower."""
    levels = tfd.Logistic(_level_scale(location) - 0.5, _level_scale(scale))
    return tfd.QuantizedDistribution(levels, low=0.0, high=float(LEVELS - 1))


def dequantized_gaussian(location, scale) -> tfd.Distribution:
    """N(255 location, 255 scale) over levels: the density of level + noise."""
    return tfd.Normal(_level_scale(location), _level_scale(scale))


def logistic_mean(location, scale):
    """E[level] / 255 of `discretized_logistic`: sum over k = 0..254 of
    P(level > k) = 1 - F(k + 1/2), one level at a time so memory stays that
    of one image batch."""
    center, width = _level_scale(location), _level_scale(scale)
    edges = tf.range(LEVELS - 1, dtype=center.dtype) + 0.5
    above = tf.foldl(
        lambda total, edge: total + tf.sigmoid((center - edge) / width),
        edges,
        initializer=tf.zeros_like(center),
    )
    return above / (LEVELS - 1)


def continuous_bernoulli_mean(logits):
    """E[x] of the continuous Bernoulli, 1 / (1 - e^-l) - 1 / l for logits l.

    Written here rather than taken from TFP, whose form uses `expm1`, which
    ONNX lacks. Near l = 0 the two terms cancel in float32; there the series
    1/2 + l/12 (next term l^3/720) is exact to 2e-7."""
    small = tf.abs(logits) < 0.05
    safe = tf.where(small, tf.ones_like(logits), logits)
    exact = 1.0 / (1.0 - tf.exp(-safe)) - 1.0 / safe
    return tf.where(small, 0.5 + logits / 12.0, exact)


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """One kind of pixel likelihood: how its events are made from the model's
    images in [0, 1], and its distribution given the body's output.

    `has_scale`: a learned scale per pixel; `per_level`: its nats are those of
    8-bit levels (discrete, or a density per level on dequantized data), so
    bits/dim are defined.
    """

    name: str
    has_scale: bool
    per_level: bool

    def events(self, images):
        """The model's images `[..., h, w, c]` in [0, 1] as this likelihood's events."""
        if self.name == "logistic":
            return tf.round(images * (LEVELS - 1))
        if self.name == "gaussian":
            # The pipelines give (level + u) / LEVELS, u ~ U[0, 1).
            return images * LEVELS - 0.5
        return images

    def distribution(self, outputs, scale=None) -> tfd.Distribution:
        """p(x|z) for the body's `outputs` `[..., h, w, c]` (and the scale
        `[h, w, c]`), event shape `[h, w, c]`."""
        if self.name == "bernoulli":
            return _independent(PixelBernoulli(logits=outputs))
        if self.name == "continuous-bernoulli":
            return _independent(tfd.ContinuousBernoulli(logits=outputs))
        if self.name == "logistic":
            return _independent(discretized_logistic(outputs, scale))
        return _independent(dequantized_gaussian(outputs, scale))

    def log_prob(self, images, outputs, scale=None):
        """log p(x|z) of the model's images, `[...]` (the outputs' batch shape)."""
        return self.distribution(outputs, scale).log_prob(self.events(images))

    def mean(self, outputs, scale=None):
        """E[x|z] as intensities in [0, 1] (levels / 255), `[..., h, w, c]`."""
        if self.name == "bernoulli":
            return tf.sigmoid(outputs)
        if self.name == "continuous-bernoulli":
            return continuous_bernoulli_mean(outputs)
        if self.name == "logistic":
            return logistic_mean(outputs, scale)
        return outputs

    @property
    def mean_name(self) -> str:
        """The exports' name for E[x|z]: `probabilities` for the Bernoulli (its
        name since tfvae 0.1.0), `mean` for the others."""
        return "probabilities" if self.name == "bernoulli" else "mean"

    def exported(self, outputs, scale=None) -> dict:
        """What exported decoders return, each `[batch, h, w, c]`: the mean
        (`mean_name`, intensities in [0, 1]) and the parameters, `logits` or
        `location` and `scale` (intensity units; x 255 for levels)."""
        named = {self.mean_name: self.mean(outputs, scale)}
        if self.has_scale:
            named["location"] = outputs
            named["scale"] = tf.broadcast_to(scale, tf.shape(outputs))
        else:
            named["logits"] = outputs
        return named

    def draw(self, outputs, scale, seed):
        """One image from p(x|z) as intensities in [0, 1]: for `gaussian`
        the nearest level, clipped to 0..255."""
        x = self.distribution(outputs, scale).sample(seed=seed)
        if self.name == "logistic":
            return x / (LEVELS - 1)
        if self.name == "gaussian":
            return tf.clip_by_value(tf.round(x), 0.0, LEVELS - 1.0) / (LEVELS - 1)
        return x


LIKELIHOOD = {
    "bernoulli": Likelihood("bernoulli", has_scale=False, per_level=False),
    "continuous-bernoulli": Likelihood("continuous-bernoulli", has_scale=False, per_level=False),
    "logistic": Likelihood("logistic", has_scale=True, per_level=True),
    "gaussian": Likelihood("gaussian", has_scale=True, per_level=True),
}


def bits_per_dim(nll: float, image_shape) -> float:
    """Nats per image -> bits per dimension, nll / (D ln 2), D = h * w * c."""
    return nll / (math.prod(image_shape) * math.log(2))
