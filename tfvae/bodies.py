"""Your own networks as the encoder's and the decoder's bodies.

An encoder body maps images `[batch, h, w, c]` to features `[batch, ...]`
of any shape (flattened); a decoder body maps the bottom layer's codes
`[batch, n_1]` to features `[batch, f]` or to a feature map `[batch, h, w,
channels]` of the image's size. tfvae adds the heads that make
distributions of them: a dense layer to q's mean and scale (below several
stochastic layers, to the top-down network's width), and a dense layer or a
1x1 convolution to the likelihood's parameters per pixel.

A body is any Keras layer or model that Keras can rebuild from its config:
Keras' own, or yours registered with
`@keras.saving.register_keras_serializable()` and given a `get_config`. The
model's `.keras` file and the run's `config.json` keep that config, so a
model with your layers loads in safe mode wherever their module is imported
(on the command line: `tfvae --import MODULE ...`).
"""

from __future__ import annotations

from typing import Any

import keras

from tfvae.errors import ConfigError, first_line

SIDES = ("encoder_body", "decoder_body")


def _shape(value) -> str:
    """`[batch, 28, 28, 1]` for a symbolic tensor's shape or an image shape."""
    dims = value.shape[1:] if hasattr(value, "shape") else value
    return "[" + ", ".join(["batch", *map(str, dims)]) + "]"


def body_config(layer: Any, side: str) -> dict[str, Any]:
    """`layer`'s Keras config, checked to rebuild in safe mode."""
    if not isinstance(layer, keras.layers.Layer):
        raise ConfigError(f"{side}: a {type(layer).__name__} is not a Keras layer or model")
    config = keras.saving.serialize_keras_object(layer)
    try:
        keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as err:  # Keras raises many types for a class it cannot rebuild
        raise ConfigError(
            f"{side}: {type(layer).__name__} cannot be rebuilt from its Keras config "
            f"({first_line(err)}); register its class with "
            "@keras.saving.register_keras_serializable() and give it a get_config"
        ) from None
    return config


def unregistered(config: Any) -> dict[str, str]:
    """The classes a Keras config names that no imported module has
    registered with Keras, each with the module that defines it."""
    found: dict[str, str] = {}
    if isinstance(config, dict):
        name = config.get("registered_name")
        if isinstance(name, str) and ">" in name and not keras.saving.get_registered_object(name):
            found[name] = str(config.get("module") or name.partition(">")[0])
        for value in config.values():
            found |= unregistered(value)
    elif isinstance(config, list):
        for value in config:
            found |= unregistered(value)
    return found


def body_layer(config: dict[str, Any], side: str) -> keras.layers.Layer:
    """A fresh layer from a body's Keras config, rebuilt in safe mode."""
    if missing := unregistered(config):
        modules = " ".join(f"--import {module}" for module in sorted(set(missing.values())))
        raise ConfigError(
            f"{side}: {', '.join(sorted(missing))} is not registered with Keras; import its "
            f"module first (tfvae {modules} ...)"
        )
    try:
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as err:  # Keras raises many types for a class it cannot find
        raise ConfigError(
            f"{side}: cannot rebuild {config.get('class_name')} ({first_line(err)}); "
            "if it is your own layer, import its module first (tfvae --import MODULE)"
        ) from None


def encoder_layers(body: keras.layers.Layer, image_shape) -> list[keras.layers.Layer]:
    """`body` and a flatten, checked on a symbolic batch of images."""
    found = body(keras.Input(shape=tuple(image_shape)))
    if len(found.shape) < 2:
        raise ConfigError(
            f"encoder_body: gives shape {_shape(found)} for images {_shape(image_shape)}; "
            "it must give [batch, features...]"
        )
    return [body, keras.layers.Flatten()]


def decoder_layers(
    body: keras.layers.Layer, image_shape, code_size: int, channels: int
) -> list[keras.layers.Layer]:
    """`body` and the head to `channels` numbers per pixel `[batch, h, w,
    channels]`: a dense layer for features, a 1x1 convolution for a map of
    the image's size. Checked on a symbolic batch of codes."""
    height, width, _ = image_shape
    found = body(keras.Input(shape=(code_size,)))
    if len(found.shape) == 2:
        head = [
            keras.layers.Dense(height * width * channels),
            keras.layers.Reshape((height, width, channels)),
        ]
        return [body, *head]
    if len(found.shape) == 4 and tuple(found.shape[1:3]) == (height, width):
        return [body, keras.layers.Conv2D(channels, 1)]
    raise ConfigError(
        f"decoder_body: gives shape {_shape(found)} for codes [batch, {code_size}]; it must "
        f"give [batch, features] or [batch, {height}, {width}, channels]"
    )
