"""The probabilistic encoder q(z|x) and decoder p(x|z) as Keras layers.

Both return TensorFlow Probability distributions, so the model's objective is
written with `log_prob` and `kl_divergence` instead of hand-made formulas.
Shapes: images `[batch, height, width, channels]`, codes `[batch, latent]`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.choices import ARCHS

tfd = tfp.distributions

# softplus can underflow to 0 for very negative inputs; the floor keeps
# sigma > 0 so log sigma^2 and the KL stay finite.
SCALE_FLOOR = 1e-4


def _padded(size: int) -> int:
    """The conv body halves twice, so sizes are padded up to a multiple of 4."""
    return 4 * math.ceil(size / 4)


def _encoder_body(arch, image_shape, hidden_units, activation, out_units) -> keras.Sequential:
    height, width, _ = image_shape
    layers: list[keras.layers.Layer] = []
    if arch == "conv":
        pad_h, pad_w = _padded(height) - height, _padded(width) - width
        if pad_h or pad_w:
            layers.append(keras.layers.ZeroPadding2D(((0, pad_h), (0, pad_w))))
        layers += [
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation=activation),
            keras.layers.Conv2D(64, 3, strides=2, padding="same", activation=activation),
        ]
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation=activation) for units in hidden_units]
    layers.append(keras.layers.Dense(out_units))
    return keras.Sequential(layers, name="body")


def _decoder_body(arch, image_shape, hidden_units, activation) -> keras.Sequential:
    height, width, channels = image_shape
    layers: list[keras.layers.Layer] = [
        keras.layers.Dense(units, activation=activation) for units in reversed(hidden_units)
    ]
    if arch == "mlp":
        layers += [
            keras.layers.Dense(height * width * channels),
            keras.layers.Reshape(image_shape),
        ]
    else:
        grid = (_padded(height) // 4, _padded(width) // 4)
        layers += [
            keras.layers.Dense(grid[0] * grid[1] * 64, activation=activation),
            keras.layers.Reshape((*grid, 64)),
            keras.layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation=activation),
            keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation=activation),
            keras.layers.Conv2DTranspose(channels, 3, padding="same"),
        ]
        crop_h, crop_w = _padded(height) - height, _padded(width) - width
        if crop_h or crop_w:
            layers.append(keras.layers.Cropping2D(((0, crop_h), (0, crop_w))))
    return keras.Sequential(layers, name="body")


def _check(arch: str, hidden_units, latent_dim: int) -> tuple[int, ...]:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be positive, got {latent_dim}")
    hidden_units = tuple(int(u) for u in hidden_units)
    if not hidden_units or min(hidden_units) < 1:
        raise ValueError(f"hidden_units must be positive sizes, got {hidden_units}")
    return hidden_units


class _Coder(keras.layers.Layer):
    """Shared settings of the encoder and decoder: what their bodies are made of."""

    def __init__(
        self,
        image_shape,
        latent_dim: int = 20,
        arch: str = "mlp",
        hidden_units=(400,),
        activation: str = "relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.latent_dim = int(latent_dim)
        self.arch = arch
        self.hidden_units = _check(arch, hidden_units, self.latent_dim)
        self.activation = activation

    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "arch": self.arch,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="tfvae")
class GaussianEncoder(_Coder):
    """q(z|x) = N(z_mean, diag(z_stddev^2)): images -> `MultivariateNormalDiag`.

    The body outputs 2 * latent numbers per image: the mean and a raw scale
    that softplus (plus a small floor) makes positive.
    """

    def __init__(self, image_shape, latent_dim: int = 20, **kwargs):
        super().__init__(image_shape, latent_dim, **kwargs)
        self.body = _encoder_body(
            self.arch, self.image_shape, self.hidden_units, self.activation, 2 * self.latent_dim
        )

    def build(self, input_shape=None):
        self.body.build((None, *self.image_shape))

    def params(self, images):
        """`(z_mean, z_stddev)`, each `[batch, latent]`: the raw tensors for export."""
        z_mean, raw_scale = tf.split(self.body(images), 2, axis=-1)
        z_stddev = tf.nn.softplus(raw_scale) + SCALE_FLOOR
        return tf.cast(z_mean, tf.float32), tf.cast(z_stddev, tf.float32)

    def call(self, images):
        z_mean, z_stddev = self.params(images)
        return tfd.MultivariateNormalDiag(loc=z_mean, scale_diag=z_stddev)


@keras.saving.register_keras_serializable(package="tfvae")
class BernoulliDecoder(_Coder):
    """p(x|z) = prod over pixels of Bernoulli(logits): codes -> image distribution.

    The likelihood is built from logits, never probabilities, so log p(x|z)
    stays exact for saturated pixels.
    """

    def __init__(self, image_shape, latent_dim: int = 20, **kwargs):
        super().__init__(image_shape, latent_dim, **kwargs)
        self.body = _decoder_body(self.arch, self.image_shape, self.hidden_units, self.activation)

    def build(self, input_shape=None):
        self.body.build((None, self.latent_dim))

    def logits(self, z):
        """Pixel logits `[batch, height, width, channels]` for codes `[batch, latent]`."""
        return tf.cast(self.body(z), tf.float32)

    def call(self, z):
        return image_distribution(self.logits(z))


class PixelBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose `log_prob` from logits is TensorFlow's fused
    sigmoid cross-entropy, x * l - softplus(l).

    TFP's own evaluates two softplus per pixel, softplus(l) and softplus(-l).
    In the XLA-compiled step of Burda et al.'s batch-20 model both were
    unfused log1p kernels over every pixel of the batch; dropping one made
    that step ~13% faster (benchmarks/RESULTS.md). Both forms are exact for any
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


def image_distribution(logits):
    """Independent Bernoulli pixels; event shape `[height, width, channels]`."""
    return tfd.Independent(PixelBernoulli(logits=logits), reinterpreted_batch_ndims=3)
