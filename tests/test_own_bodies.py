"""Your own networks as the encoder's and decoder's bodies: a small residual
block written here, trained into a run folder, reloaded in safe mode, and
used by the command line once its module is imported."""

from __future__ import annotations

import csv
import importlib
import json
import sys
import textwrap

import keras
import numpy as np
import pytest
from harness import TINY_SETTINGS, tfvae
from PIL import Image

import tfvae as api
from tfvae import plots
from tfvae.config import TrainConfig
from tfvae.errors import ConfigError

# A user's module: a registered residual block, and the two bodies built of it.
USER_MODULE = textwrap.dedent(
    '''
    import keras


    @keras.saving.register_keras_serializable(package="userbodies")
    class Residual(keras.layers.Layer):
        """x + f(x): two dense layers around a skip connection."""

        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.inner = keras.layers.Dense(units, activation="relu")
            self.outer = keras.layers.Dense(units)

        def build(self, input_shape):
            self.inner.build(input_shape)
            self.outer.build((*input_shape[:-1], self.units))

        def call(self, x):
            return x + self.outer(self.inner(x))

        def get_config(self):
            return {**super().get_config(), "units": self.units}


    def encoder():
        dense = keras.layers.Dense(32, activation="relu")
        return keras.Sequential([keras.layers.Flatten(), dense, Residual(32)])


    def decoder():
        return keras.Sequential([keras.layers.Dense(32, activation="relu"), Residual(32)])
    '''
)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """The user's module, importable here and (through PYTHONPATH) in a new process."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "userbodies.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("userbodies"), folder
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def own_run(user_module, tmp_path_factory):
    """Three epochs on 256 images with both bodies the user's."""
    module, _ = user_module
    settings = {**TINY_SETTINGS, "epochs": 3, "latent_dim": 4}
    config = TrainConfig(**settings, encoder_body=module.encoder(), decoder_body=module.decoder())
    run = tmp_path_factory.mktemp("own") / "run"
    said = []
    result = api.train(config, run, verbose=0, echo=said.append)
    assert "Networks: encoder body your own Sequential, decoder body your own Sequential" in said
    return run, result.model


def _residuals(body) -> int:
    return sum(isinstance(layer, keras.layers.Layer) and "Residual" in type(layer).__name__
               for layer in body._flatten_layers())  # fmt: skip


def test_own_bodies_train_and_reload_in_safe_mode(own_run):
    """The run trains the user's layers (its loss falls), keeps their configs
    in config.json, and reloads in safe mode with the very same weights."""
    run, trained = own_run
    assert _residuals(trained.encoder) == 1 and _residuals(trained.decoder) == 1
    with open(run / "metrics.csv") as file:
        losses = [float(row["train_loss"]) for row in csv.DictReader(file)]
    assert losses[-1] < losses[0] - 20, losses
    saved = json.loads((run / "config.json").read_text())["config"]
    assert "userbodies>Residual" in json.dumps(saved["encoder_body"])
    loaded = api.load_model(run)
    assert _residuals(loaded.encoder) == 1
    for ours, theirs in zip(loaded.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow  # four real processes
def test_commands_use_own_bodies_once_their_module_is_imported(own_run, user_module, tmp_path):
    """Without `--import` the command names what to do in one line; with it,
    `sample` draws what the model draws in Python and the export's files
    match Keras."""
    run, trained = own_run
    env = {"PYTHONPATH": str(user_module[1])}
    refused = tfvae("sample", run, "-n", "4", "-o", tmp_path / "x.png", env=env, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert line == (
        f"Error: {run / 'model.keras'}: encoder_body: userbodies>Residual is not registered "
        "with Keras; import its module first (tfvae --import userbodies ...)"
    )
    out = tmp_path / "samples.png"
    tfvae("--import", "userbodies", "sample", run, "-n", "4", "-o", out, env=env)
    expected = np.asarray(plots.samples(trained, 4, seed=0))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    exported = tfvae(
        *("--import", "userbodies", "export", run, "--format", "tflite"),
        *("-o", tmp_path / "exports", "--json"),
        env=env,
    )
    assert "checked against Keras on 256 test images" in exported.stderr
    (record,) = json.loads(exported.stdout)["exports"]
    assert (tmp_path / "exports" / "run" / "tflite" / "manifest.json").is_file(), record


def test_a_body_is_used_as_given():
    """Weights a body brings (a pretrained network) are kept, not rebuilt."""
    body = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(8)])
    body.build((None, 28, 28, 1))
    body.set_weights([np.full((784, 8), 0.5, np.float32), np.arange(8, dtype=np.float32)])
    model = api.VAE((28, 28, 1), latent_dim=2, encoder_body=body)
    assert model.encoder.body.layers[0] is body
    np.testing.assert_array_equal(body.get_weights()[1], np.arange(8))


def test_a_decoder_body_of_the_wrong_shape_is_one_line():
    body = keras.Sequential([keras.layers.Dense(14 * 14 * 4), keras.layers.Reshape((14, 14, 4))])
    with pytest.raises(ConfigError) as caught:
        api.VAE((28, 28, 1), latent_dim=2, decoder_body=body)
    message = str(caught.value)
    assert message == (
        "decoder_body: gives shape [batch, 14, 14, 4] for codes [batch, 2]; it must give "
        "[batch, features] or [batch, 28, 28, channels]"
    )


def test_a_body_keras_cannot_rebuild_is_refused_when_given():
    """A class Keras cannot rebuild would train and then fail to load: it is
    refused at once, with the decorator that fixes it."""

    class Unregistered(keras.layers.Layer):
        def call(self, x):
            return keras.ops.reshape(x, (-1, 784))

    with pytest.raises(ConfigError, match=r"encoder_body: Unregistered cannot be rebuilt.*"
                       r"@keras.saving.register_keras_serializable\(\)"):  # fmt: skip
        api.VAE((28, 28, 1), latent_dim=2, encoder_body=Unregistered())
