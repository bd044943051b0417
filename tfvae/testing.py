"""Helpers for testing what tfvae writes, usable by tests of other exporters too."""

from __future__ import annotations

import keras
import numpy as np

from tfvae.model import VAE

DAMAGES = ("zeroed", "reinitialised", "output-kernel-zeroed", "no-activation")


def damaged_copy(model: VAE, how: str) -> VAE:
    """A copy of `model` damaged as a bad conversion would damage it.

    `zeroed`: every weight 0 (a file without its weights); `reinitialised`:
    fresh random weights of the same architecture; `output-kernel-zeroed`: the
    last kernel of the encoder and of the decoder zeroed, so the outputs no
    longer depend on the input (a lost matmul); `no-activation`: the hidden
    layers' activations dropped (a lost op).
    """
    if how not in DAMAGES:
        raise ValueError(f"how must be one of {DAMAGES}, got {how!r}")
    copy = VAE.from_config(model.get_config())
    if how == "zeroed":
        copy.set_weights([np.zeros_like(w) for w in model.get_weights()])
    elif how != "reinitialised":
        copy.set_weights(model.get_weights())
    for part in (copy.encoder, copy.decoder):
        dense = [layer for layer in part.body.layers if isinstance(layer, keras.layers.Dense)]
        if how == "output-kernel-zeroed":
            dense[-1].kernel.assign(np.zeros(dense[-1].kernel.shape, np.float32))
        if how == "no-activation":
            for layer in dense[:-1]:
                layer.activation = keras.activations.linear
    return copy
