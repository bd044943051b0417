"""The `resnet` body: pre-activation residual blocks in stages that halve
the grid going down (the encoder) and double it going up (the decoder).

A stage of the encoder is a stride-2 convolution to the stage's channels
and `blocks` residual blocks; the decoder runs the stages in reverse, each
`blocks` blocks then a stride-2 transposed convolution. The images are
padded up to a multiple of 2^stages (and the decoder's output cropped), so
any size works, grey or colour. No normalization layers: each block's last
convolution starts at zero, so a fresh block is the identity and a deep
stack trains from the start as a shallow one (SkipInit, De & Smith 2020),
with no batch statistics to keep in step across replicas.
"""

from __future__ import annotations

import keras

from tfvae.config import ModelConfig


@keras.saving.register_keras_serializable(package="tfvae")
class ResidualBlock(keras.layers.Layer):
    """x + conv(act(conv(act(x)))): a pre-activation residual block (He et
    al. 2016), 3x3 convolutions keeping `channels` and the grid."""

    def __init__(self, channels: int, activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.activation = keras.activations.get(activation)
        self.activation_name = activation
        self.inner = keras.layers.Conv2D(channels, 3, padding="same")
        self.outer = keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer="zeros")

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build((*input_shape[:-1], self.channels))

    def call(self, x):
        return x + self.outer(self.activation(self.inner(self.activation(x))))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "activation": self.activation_name,
        }


def encoder_stages(config: ModelConfig) -> list[keras.layers.Layer]:
    """Image `[h', w', c]` (padded) -> feature map `[h' / 2^S, w' / 2^S, channels[-1]]`."""
    act = config.activation
    layers: list[keras.layers.Layer] = [
        keras.layers.Conv2D(config.channels[0], 3, padding="same", name="stem")
    ]
    for stage, channels in enumerate(config.channels):
        layers.append(
            keras.layers.Conv2D(channels, 3, strides=2, padding="same", name=f"down_{stage}")
        )
        layers += [ResidualBlock(channels, act) for _ in range(config.blocks)]
    layers.append(keras.layers.Activation(act))
    return layers


def decoder_stages(config: ModelConfig, out_channels: int) -> list[keras.layers.Layer]:
    """Feature map `[h' / 2^S, w' / 2^S, channels[-1]]` -> `[h', w', out_channels]`."""
    act = config.activation
    layers: list[keras.layers.Layer] = []
    stages = list(enumerate(config.channels))
    for stage, channels in reversed(stages):
        layers += [ResidualBlock(channels, act) for _ in range(config.blocks)]
        below = config.channels[max(stage - 1, 0)]
        layers.append(
            keras.layers.Conv2DTranspose(below, 3, strides=2, padding="same", name=f"up_{stage}")
        )
    layers += [keras.layers.Activation(act), keras.layers.Conv2D(out_channels, 3, padding="same")]
    return layers
