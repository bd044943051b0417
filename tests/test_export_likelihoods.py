"""Exports of models with the grey- and colour-level likelihoods: each format
carries the mean and the likelihood's parameters under the names the export
guide (docs/guide/export.md) documents, and matches Keras (the SavedModel in a
fresh Python without tfvae, the TFLite files in LiteRT, the ONNX files in
onnxruntime)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfvae import export
from tfvae.config import TrainConfig
from tfvae.data import load_dataset, train_pipeline
from tfvae.likelihoods import continuous_bernoulli_mean
from tfvae.model import VAE

N_IMAGES = 32
# What the decoders return per likelihood (docs/guide/export.md).
DECODER_OUTPUTS = {
    "continuous-bernoulli": {"mean", "logits"},
    "logistic": {"mean", "location", "scale"},
    "gaussian": {"mean", "location", "scale"},
}


@pytest.fixture(scope="module")
def mnist_slice():
    return load_dataset("mnist").limit(6_400, N_IMAGES)


# The fast lane keeps the discrete likelihoods; the continuous ones' exports
# run with the slow tests (the whole suite, as CI runs it).
LANES = {"continuous-bernoulli": pytest.mark.slow, "gaussian": pytest.mark.slow}


@pytest.fixture(
    scope="module",
    params=[pytest.param(name, marks=LANES.get(name, ())) for name in sorted(DECODER_OUTPUTS)],
)
def model_per_likelihood(request, mnist_slice):
    """A model of each likelihood after 100 steps on 8-bit MNIST: its scale
    and locations have moved far from their initial values."""
    name = request.param
    pixels = TrainConfig(likelihood=name).pixels  # as `tfvae train` feeds it
    keras.utils.set_random_seed(0)
    model = VAE(likelihood=name, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    batches = train_pipeline(mnist_slice, 128, pixels).repeat()
    model.fit(batches, steps_per_epoch=100, epochs=1, shuffle=False, verbose=0)
    images = mnist_slice.fixed_binarized("test", pixels)
    return name, model, images


def _codes(model):
    return np.random.default_rng(1).normal(size=(N_IMAGES, model.latent_dim)).astype(np.float32)


def test_keras_outputs_are_the_likelihood_s_mean_and_parameters(model_per_likelihood):
    name, model, _ = model_per_likelihood
    z = _codes(model)
    out = {k: v.numpy() for k, v in model.decoder.exported(z).items()}
    assert set(out) == DECODER_OUTPUTS[name]
    if name == "continuous-bernoulli":
        np.testing.assert_allclose(out["mean"], continuous_bernoulli_mean(out["logits"]))
    else:
        assert out["scale"].shape == out["location"].shape == (N_IMAGES, 28, 28, 1)
        assert out["scale"].min() > 0
        assert np.ptp(out["scale"], axis=0).max() > 1e-3  # a function of z
    if name != "gaussian":  # a Gaussian's mean may leave [0, 1] with its location
        assert 0 <= out["mean"].min() and out["mean"].max() <= 1 + 1e-6


LOAD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    inputs = np.load(sys.argv[2])
    out = {}
    for key, value in loaded.signatures["decode"](z=tf.constant(inputs["z"])).items():
        out["decode/" + key] = value.numpy()
    for key, value in loaded.signatures["reconstruct"](images=tf.constant(inputs["x"])).items():
        out["reconstruct/" + key] = value.numpy()
    used = [m for m in sys.modules if m.startswith(("tfvae", "tensorflow_probability"))]
    out["modules"] = np.array(sorted(used))
    np.savez(sys.argv[3], **out)
    """
)


def test_savedmodel_in_a_fresh_process_matches_keras(model_per_likelihood, tmp_path):
    name, model, images = model_per_likelihood
    version = export.export_savedmodel(model, tmp_path, "vae", warmup_images=images)
    z = _codes(model)
    (tmp_path / "load.py").write_text(LOAD)
    np.savez(tmp_path / "in.npz", z=z, x=images)
    subprocess.run(
        [sys.executable, tmp_path / "load.py", version, tmp_path / "in.npz", tmp_path / "out.npz"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    got = dict(np.load(tmp_path / "out.npz"))
    assert got.pop("modules").size == 0  # served without tfvae or TFP
    want = {f"decode/{k}": v.numpy() for k, v in model.decoder.exported(z).items()}
    want["reconstruct/mean"] = model(images).numpy()
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=1e-6, err_msg=key)


def test_tflite_and_onnx_decoders_match_keras(model_per_likelihood, tmp_path):
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    name, model, images = model_per_likelihood
    z = _codes(model)
    want = {k: v.numpy() for k, v in model.decoder.exported(z).items()}
    tflite = export.export_tflite(model, tmp_path, "vae", check_images=images)
    manifest = json.loads((tflite / "manifest.json").read_text())
    outputs = manifest["files"]["decoder"]["outputs"]
    assert {o["name"] for o in outputs} == DECODER_OUTPUTS[name]
    decode = Interpreter(str(tflite / "decoder.tflite")).get_signature_runner("decode")
    for key, value in decode(z=z).items():
        np.testing.assert_allclose(value, want[key], atol=1e-4, rtol=1e-5, err_msg=key)
    onnx = export.export_onnx(model, tmp_path, "vae", check_images=images)
    session = onnxruntime.InferenceSession(str(onnx / "decoder.onnx"))
    names = [o.name for o in session.get_outputs()]
    assert set(names) == DECODER_OUTPUTS[name]
    for key, value in zip(names, session.run(names, {"z": z}), strict=True):
        np.testing.assert_allclose(value, want[key], atol=1e-4, rtol=1e-5, err_msg=key)
