"""The `resnet` body: residual blocks that start as the identity, stages for
any image size, and a model that trains and exports like the others."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from harness import quiet

import tfvae
from tfvae.config import ModelConfig, TrainConfig
from tfvae.errors import ConfigError
from tfvae.export.files import export_tflite
from tfvae.model import VAE
from tfvae.resnet import ResidualBlock


def test_a_fresh_residual_block_is_the_identity():
    """Its last convolution starts at zero (SkipInit): a deep stack trains
    from the start as a shallow one."""
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 8)).astype(np.float32)
    np.testing.assert_array_equal(ResidualBlock(8)(x), x)


@pytest.mark.parametrize(
    ("image_shape", "likelihood"),
    [((28, 28, 1), "bernoulli"), ((30, 22, 3), "logistic"), ((5, 7, 1), "gaussian")],
)
def test_any_image_size_comes_back_in_its_size(image_shape, likelihood):
    """Three stages pad every side up to a multiple of 8 and crop back: the
    pixel distribution has the image's shape and scores it."""
    config = ModelConfig(
        arch="resnet", channels=(8, 12, 16), blocks=1, latent_dim=3, likelihood=likelihood
    )
    model = VAE(image_shape, config, seed=0)
    images = model.sample(4, seed=1, binary=True)
    assert images.shape == (4, *image_shape)
    log_p = model.decode(model.encode(images).mean()).log_prob(images)
    assert log_p.shape == (4,) and np.all(np.isfinite(log_p))


def test_stages_belong_to_the_resnet_body():
    with pytest.raises(ConfigError, match=r"shape the resnet body, not conv"):
        ModelConfig(arch="conv", channels=(16, 32))


@pytest.mark.slow  # a training run and a conversion
def test_a_resnet_trains_and_exports_as_keras_computes(tmp_path):
    """Two epochs on 1,000 8-bit MNIST images: the validation bound
    improves; the run reloads with its weights and its TFLite files give
    Keras' outputs (the export's own check, and one recomputed here)."""
    config = TrainConfig(
        arch="resnet",
        channels=(8, 16),
        blocks=1,
        likelihood="logistic",
        hidden_units=(64,),
        latent_dim=8,
        epochs=2,
        limit=1000,
        validation=200,
        batch_size=100,
        pictures_every=0,
    )
    result = tfvae.train(config, tmp_path / "run", verbose=0, echo=quiet)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    bounds = [float(row.split(",")[header.index("validation_elbo")]) for row in rows[1:]]
    assert bounds[1] > bounds[0] + 10, bounds
    loaded = tfvae.load_model(tmp_path / "run")
    for ours, theirs in zip(loaded.get_weights(), result.model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    images = tfvae.open_run(tmp_path / "run").images("test", 32)
    folder = export_tflite(loaded, tmp_path / "exports", "rn", check_images=images)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"], manifest
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / "encoder.tflite"))
    runner = interpreter.get_signature_runner()
    (z_mean, _) = loaded.encoder.params(tf.constant(images))
    outputs = runner(**{runner.get_input_details().popitem()[0]: images})
    found = next(value for name, value in outputs.items() if "mean" in name)
    np.testing.assert_allclose(found, z_mean, atol=1e-4)
