"""The probabilistic encoder q(z|x) and decoder p(x|z) as Keras layers.

Both return TensorFlow Probability distributions, so the model's objective is
written with `log_prob` and `kl_divergence` instead of hand-made formulas.
Shapes: images `[batch, height, width, channels]`, codes `[batch, latent]`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.config import ModelConfig, conv_padded, pixel_parameters
from tfvae.likelihoods import LIKELIHOOD, SCALE_FLOOR

tfd = tfp.distributions


def _encoder_body(image_shape, config: ModelConfig) -> keras.Sequential:
    """Image -> 2 * latent numbers (the mean and the raw scale of q(z|x))."""
    arch, activation = config.arch, config.activation
    height, width, _ = image_shape
    layers: list[keras.layers.Layer] = []
    if arch == "conv":
        pad_h, pad_w = conv_padded(height) - height, conv_padded(width) - width
        if pad_h or pad_w:
            layers.append(keras.layers.ZeroPadding2D(((0, pad_h), (0, pad_w))))
        layers += [
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation=activation),
            keras.layers.Conv2D(64, 3, strides=2, padding="same", activation=activation),
        ]
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation=activation) for units in config.hidden_units]
    layers.append(keras.layers.Dense(2 * config.latent_dim))
    return keras.Sequential(layers, name="body")


def _decoder_body(image_shape, config: ModelConfig) -> keras.Sequential:
    """z -> the likelihood's parameters per pixel (`[h, w, c * parameters]`):
    the hidden layers in reverse order; for conv, then transposed
    convolutions back up through the encoder's grid sizes (their channels
    are the decoder's own: 64 then 32, as in the keras.io example)."""
    arch, activation = config.arch, config.activation
    height, width, channels = image_shape
    channels *= pixel_parameters(config.likelihood)
    layers: list[keras.layers.Layer] = [
        keras.layers.Dense(units, activation=activation) for units in reversed(config.hidden_units)
    ]
    if arch == "mlp":
        layers += [
            keras.layers.Dense(height * width * channels),
            keras.layers.Reshape((height, width, channels)),
        ]
    else:
        grid = (conv_padded(height) // 4, conv_padded(width) // 4)
        layers += [
            keras.layers.Dense(grid[0] * grid[1] * 64, activation=activation),
            keras.layers.Reshape((*grid, 64)),
            keras.layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation=activation),
            keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation=activation),
            keras.layers.Conv2DTranspose(channels, 3, padding="same"),
        ]
        crop_h, crop_w = conv_padded(height) - height, conv_padded(width) - width
        if crop_h or crop_w:
            layers.append(keras.layers.Cropping2D(((0, crop_h), (0, crop_w))))
    return keras.Sequential(layers, name="body")


def diag_normal(loc, scale) -> tfd.Distribution:
    """N(loc, diag(scale^2)), event shape `[latent]`: the one Gaussian type of
    q(z|x), the prior and the objective.

    Independent univariate normals rather than `MultivariateNormalDiag`:
    the same density, but sampling and `log_prob` need no bijector, whose
    global cache keeps every graph that ever called them alive (a user
    sampling the posterior in a loop, or a process that trains and exports
    repeatedly, would leak memory).
    """
    return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)


class _Coder(keras.layers.Layer):
    """What the encoder and decoder share: the image shape `[height, width,
    channels]` and the `ModelConfig` their bodies are made from (given, or
    from its fields as keyword arguments)."""

    def __init__(self, image_shape, model_config: ModelConfig | None = None, **kwargs):
        settings, kwargs = ModelConfig.take(kwargs)
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.model_config = model_config or settings or ModelConfig()
        self.latent_dim = self.model_config.latent_dim

    def get_config(self):
        # Flat, as tfvae 0.1.0 wrote it, so files load in either version.
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            **self.model_config.layer_settings(),
        }


@keras.saving.register_keras_serializable(package="tfvae")
class GaussianEncoder(_Coder):
    """q(z|x) = N(z_mean, diag(z_stddev^2)): images -> `diag_normal`, batch
    shape `[batch]`, event shape `[latent]`.

    The body outputs 2 * latent numbers per image: the mean and a raw scale
    that softplus (plus a small floor) makes positive.
    """

    def __init__(self, image_shape, model_config: ModelConfig | None = None, **kwargs):
        super().__init__(image_shape, model_config, **kwargs)
        self.body = _encoder_body(self.image_shape, self.model_config)

    def build(self, input_shape=None):
        self.body.build((None, *self.image_shape))

    def params(self, images):
        """`(z_mean, z_stddev)`, each `[batch, latent]`: the raw tensors for export."""
        z_mean, raw_scale = tf.split(self.body(images), 2, axis=-1)
        z_stddev = tf.nn.softplus(raw_scale) + SCALE_FLOOR
        return tf.cast(z_mean, tf.float32), tf.cast(z_stddev, tf.float32)

    def call(self, images):
        return diag_normal(*self.params(images))


@keras.saving.register_keras_serializable(package="tfvae")
class ImageDecoder(_Coder):
    """p(x|z) = prod over pixels of the config's likelihood (`tfvae.likelihoods`):
    codes `[batch, latent]` -> image distribution, event shape `[h, w, c]`.

    The body's output is the likelihood's per-pixel parameters (logits, or a
    location and a scale); a Bernoulli is built from logits, never
    probabilities, so log p(x|z) stays exact for saturated pixels.
    """

    def __init__(self, image_shape, model_config: ModelConfig | None = None, **kwargs):
        super().__init__(image_shape, model_config, **kwargs)
        self.likelihood = LIKELIHOOD[self.model_config.likelihood]
        self.body = _decoder_body(self.image_shape, self.model_config)

    def build(self, input_shape=None):
        self.body.build((None, self.latent_dim))

    def outputs(self, z):
        """The body's output for codes `[batch, latent]`: pixel logits
        `[batch, h, w, c]`, or locations then raw scales `[batch, h, w, 2c]`
        (`Likelihood.split`)."""
        return tf.cast(self.body(z), tf.float32)

    def call(self, z):
        return self.likelihood.distribution(self.outputs(z))

    def mean(self, z):
        """E[x|z] as intensities in [0, 1], `[batch, h, w, c]`."""
        return self.likelihood.mean(self.outputs(z))

    def exported(self, z):
        """The exported decoders' outputs for codes `z` (`Likelihood.exported`)."""
        return self.likelihood.exported(self.outputs(z))


# The name of tfvae 0.1.0, whose only likelihood was the Bernoulli (the default).
BernoulliDecoder = ImageDecoder
