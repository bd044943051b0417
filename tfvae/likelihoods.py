"""The pixel likelihoods p(x|z) a decoder returns, each a TFP distribution.

The decoder's body gives, per pixel and channel, logits for the Bernoulli
kinds, and a location and a scale for the others (both functions of z:
with a scale learned per pixel but shared by all images, the Gaussian
scored MNIST worse than independent pixels; see
docs/results/likelihoods.md#why-the-decoder-predicts-the-scale).
Images reach the model as floats in [0, 1]; each likelihood scores them as
its own events:

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

from tfvae.config import LEVELS, pixel_parameters

tfd = tfp.distributions

# softplus can underflow to 0 for very negative inputs; the floor keeps every
# scale (q's sigma and the pixels') > 0, so log-densities and the KL stay finite.
SCALE_FLOOR = 1e-4
# A fresh decoder's scales (raw outputs near 0) are near 5% of the intensity
# range: the shift is softplus^-1(0.05).
INITIAL_SCALE = 0.05
INITIAL_RAW_SCALE = math.log(math.expm1(INITIAL_SCALE))


class PixelBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose `log_prob` from logits is x * l - softplus(l):
    two elementwise kernels over the pixels, the targets broadcast against
    the logits of several draws without a copy.

    TFP's own evaluates two softplus per pixel, softplus(l) and softplus(-l),
    and TensorFlow's sigmoid cross-entropy six kernels on shapes it first
    copies to be equal; the importance-weighted estimate makes these passes
    over `[samples x images, pixels]` for every chunk, so they bound its
    speed beside the decoder's matmuls (see
    docs/results/speed.md#the-bernoulli-log-probability-in-two-kernels).
    Accurate to float32 rounding for any logit and for grey-level targets x in [0, 1].
    """

    def _log_prob(self, event):
        if self._logits is None:
            return super()._log_prob(event)
        logits = tf.convert_to_tensor(self._logits)
        # Codes `[samples, batch, latent]` give logits with a leading axis.
        return tf.cast(event, logits.dtype) * logits - tf.nn.softplus(logits)


def _independent(pixels: tfd.Distribution) -> tfd.Distribution:
    """Independent pixels; event shape `[height, width, channels]`."""
    return tfd.Independent(pixels, reinterpreted_batch_ndims=3)


def _in_levels(intensity):
    """A location or scale in intensity units ([0, 1]) in units of levels."""
    return (LEVELS - 1) * intensity


def discretized_logistic(location, scale) -> tfd.Distribution:
    """Levels 0..255 with P(k) = F(k + 1/2) - F(k - 1/2), F the logistic CDF
    of `location` and `scale` in intensity units (x 255 in levels); level 0
    takes (-inf, 1/2], level 255 takes (254.5, inf).

    TFP's quantization gives P(k) = G(k) - G(k - 1), so its logistic sits
    half a level lower."""
    levels = tfd.Logistic(_in_levels(location) - 0.5, _in_levels(scale))
    return tfd.QuantizedDistribution(levels, low=0.0, high=float(LEVELS - 1))


def dequantized_gaussian(location, scale) -> tfd.Distribution:
    """N(255 location, 255 scale) over levels: the density of level + noise."""
    return tfd.Normal(_in_levels(location), _in_levels(scale))


def logistic_mean(location, scale):
    """E[level] / 255 of `discretized_logistic`: sum over k = 0..254 of
    P(level > k) = 1 - F(k + 1/2), one level at a time so memory stays that
    of one image batch."""
    center, width = _in_levels(location), _in_levels(scale)
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
    images in [0, 1], and its distribution given the decoder body's output.

    `has_scale`: the body gives a scale per pixel beside the location (its
    output has twice the image's channels: locations, then raw scales);
    `per_level`: its nats are those of 8-bit levels (discrete, or a density
    per level on dequantized data), so bits/dim are defined.
    """

    name: str
    per_level: bool

    @property
    def has_scale(self) -> bool:
        return pixel_parameters(self.name) == 2

    def split(self, outputs):
        """The body's `outputs` `[..., h, w, c * parameters]` as (logits or
        location, scale or None), each `[..., h, w, c]`; the scale in
        intensity units, softplus of the raw output shifted so that a raw 0
        gives `INITIAL_SCALE`, plus the floor."""
        if not self.has_scale:
            return outputs, None
        location, raw = tf.split(outputs, 2, axis=-1)
        return location, tf.nn.softplus(raw + INITIAL_RAW_SCALE) + SCALE_FLOOR

    def events(self, images):
        """The model's images `[..., h, w, c]` in [0, 1] as this likelihood's events."""
        if self.name == "logistic":
            return tf.round(images * (LEVELS - 1))
        if self.name == "gaussian":
            # The pipelines give (level + u) / LEVELS, u ~ U[0, 1).
            return images * LEVELS - 0.5
        return images

    def distribution(self, outputs) -> tfd.Distribution:
        """p(x|z) for the body's `outputs`, event shape `[h, w, c]`."""
        params, scale = self.split(outputs)
        if self.name == "bernoulli":
            return _independent(PixelBernoulli(logits=params))
        if self.name == "continuous-bernoulli":
            return _independent(tfd.ContinuousBernoulli(logits=params))
        if self.name == "logistic":
            return _independent(discretized_logistic(params, scale))
        return _independent(dequantized_gaussian(params, scale))

    def log_prob(self, images, outputs):
        """log p(x|z) of the model's images, `[...]` (the outputs' batch shape)."""
        return self.distribution(outputs).log_prob(self.events(images))

    def mean(self, outputs):
        """E[x|z] as intensities in [0, 1] (levels / 255), `[..., h, w, c]`."""
        params, scale = self.split(outputs)
        if self.name == "bernoulli":
            return tf.sigmoid(params)
        if self.name == "continuous-bernoulli":
            return continuous_bernoulli_mean(params)
        if self.name == "logistic":
            return logistic_mean(params, scale)
        return params

    @property
    def mean_name(self) -> str:
        """The exports' name for E[x|z]: `probabilities` for the Bernoulli (its
        name since tfvae 0.1.0), `mean` for the others."""
        return "probabilities" if self.name == "bernoulli" else "mean"

    def exported(self, outputs) -> dict:
        """What exported decoders return, each `[batch, h, w, c]`: the mean
        (`mean_name`, intensities in [0, 1]) and the parameters, `logits` or
        `location` and `scale` (intensity units; x 255 for levels)."""
        params, scale = self.split(outputs)
        named = {self.mean_name: self.mean(outputs)}
        if self.has_scale:
            named["location"], named["scale"] = params, scale
        else:
            named["logits"] = params
        return named

    def draw(self, outputs, seed):
        """One image from p(x|z) as intensities in [0, 1]: for `gaussian`
        the nearest level, clipped to 0..255."""
        x = self.distribution(outputs).sample(seed=seed)
        if self.name == "logistic":
            return x / (LEVELS - 1)
        if self.name == "gaussian":
            return tf.clip_by_value(tf.round(x), 0.0, LEVELS - 1.0) / (LEVELS - 1)
        return x


LIKELIHOOD = {
    "bernoulli": Likelihood("bernoulli", per_level=False),
    "continuous-bernoulli": Likelihood("continuous-bernoulli", per_level=False),
    "logistic": Likelihood("logistic", per_level=True),
    "gaussian": Likelihood("gaussian", per_level=True),
}


def bits_per_dim(nll: float, image_shape) -> float:
    """Nats per image -> bits per dimension, nll / (D ln 2), D = h * w * c."""
    return nll / (math.prod(image_shape) * math.log(2))
