"""A conditional VAE's exports take the class: the SavedModel's signatures,
TFLite in LiteRT, ONNX in onnxruntime and the web page in Chromium, each
against the Keras model given the same labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from chromium import Browser, Server
from harness import TINY_OPTIONS, invoke
from test_web import LITERT_JS, _needs_browser, _open

from tfvae.errors import ExportError
from tfvae.export import export_onnx, export_savedmodel, export_tflite
from tfvae.export.web import export_web
from tfvae.runs import open_run


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """A conditional run of the tiny settings (latent 2), its model, and
    test images with their labels."""
    run = tmp_path_factory.mktemp("conditional") / "run"
    result = invoke("train", *TINY_OPTIONS, "--conditional", "--run-dir", run)
    assert result.exit_code == 0, result.output
    opened = open_run(run)
    images, labels = opened.split("test", 64)
    return opened.model, images, labels.astype(np.int32)


def _codes(n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)


def test_the_savedmodel_signatures_take_the_class(conditional, tmp_path):
    model, images, labels = conditional
    folder = export_savedmodel(model, tmp_path, "cvae", warmup_images=images)
    serving = tf.saved_model.load(str(folder)).signatures
    z, y = _codes(6, 2), labels[:6]
    got = serving["decode"](z=tf.constant(z), labels=tf.constant(y))["probabilities"]
    np.testing.assert_allclose(got, model.decoded_means(z, y), atol=1e-6)
    other = serving["decode"](z=tf.constant(z), labels=tf.constant((y + 1) % 10))
    assert not np.allclose(other["probabilities"], got)
    encoded = serving["encode"](images=tf.constant(images[:6]), labels=tf.constant(y))
    np.testing.assert_allclose(
        encoded["z_mean"], model.encoder.top_params(images[:6], y)[0], atol=1e-6
    )
    elbo = serving["elbo"](images=tf.constant(images[:6]), labels=tf.constant(y))["elbo"]
    np.testing.assert_allclose(
        elbo, model.elbo_terms(images[:6], seed=(0, 0), labels=y)["elbo"], rtol=1e-5
    )
    drawn = serving["sample"](count=tf.constant(3), seed=tf.constant(4), label=tf.constant(7))
    np.testing.assert_allclose(
        drawn["probabilities"], model.sample(3, seed=4, labels=np.full(3, 7)), atol=1e-6
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="class indices in 0..9"):
        serving["decode"](z=tf.constant(z[:1]), labels=tf.constant([10]))


@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic", "int8"])
def test_tflite_files_take_the_class_and_match_keras(conditional, tmp_path, quantize):
    """The export's own check ran each file on the test images with their
    labels (int8 too: the class adds its row of the kernel, not a one-hot
    vector quantized on the features' scale); here the float decoder runs
    again in LiteRT on other codes and classes."""
    from tfvae.export.files import _lite_interpreter

    model, images, labels = conditional
    folder = export_tflite(
        model, tmp_path, "cvae", quantize, check_images=images, check_labels=labels
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["classes"] == [str(d) for d in range(10)]
    inputs = {i["name"]: i for i in manifest["files"]["decoder"]["inputs"]}
    assert inputs["labels"]["dtype"] == "int32"
    if quantize != "none":
        return  # its error is bounded by the export's own check
    runner = _lite_interpreter(folder / "decoder.tflite").get_signature_runner("decode")
    z, y = _codes(5, 2), np.array([0, 3, 3, 9, 1], np.int32)
    got = runner(z=z, labels=y)["probabilities"]
    np.testing.assert_allclose(got, model.decoded_means(z, y), atol=1e-5)


def test_check_images_of_a_conditional_model_need_their_labels(conditional, tmp_path):
    model, images, labels = conditional
    with pytest.raises(ExportError, match="need their labels: 64 class indices in 0..9"):
        export_tflite(model, tmp_path, "cvae", check_images=images)
    with pytest.raises(ExportError, match="need their labels"):
        export_tflite(model, tmp_path, "cvae", check_images=images, check_labels=labels + 10)


def test_onnx_files_take_the_class(conditional, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    model, images, labels = conditional
    folder = export_onnx(model, tmp_path, "cvae", check_images=images, check_labels=labels)
    session = onnxruntime.InferenceSession(str(folder / "decoder.onnx"))
    z, y = _codes(4, 2), np.array([5, 5, 2, 8], np.int32)
    names = {i.name.split(":")[0]: i.name for i in session.get_inputs()}
    (got,) = session.run(["probabilities"], {names["z"]: z, names["labels"]: y})
    np.testing.assert_allclose(got, model.decoded_means(z, y), atol=1e-5)


def test_the_page_picks_a_class_and_decodes_as_keras_does(conditional, tmp_path):
    _needs_browser()
    model, images, labels = conditional
    folder = export_web(
        model, tmp_path, "cvae", check_images=images, check_labels=labels, litert_js="./litertjs"
    )
    (folder / "litertjs").symlink_to(LITERT_JS.resolve())
    z, y = _codes(3, 2), [4, 0, 9]
    with Server(folder) as server, Browser() as browser:
        page = _open(browser, server)
        assert page.evaluate("tfvaeInfo.classes") == [str(d) for d in range(10)]
        got = np.array(page.evaluate(f"tfvaeDecode({json.dumps(z.tolist())}, {y})"))
        want = np.asarray(model.decoded_means(z, np.array(y))).reshape(3, -1)
        assert np.abs(got - want).max() < 1e-4
        said = page.evaluate(
            f"tfvaeDecode({json.dumps(z.tolist())}).then(() => 'ok', e => e.message)"
        )
        assert said == "labels must be one class index in 0..9 per row"
        pixels = "Array.from(document.getElementById('samples').getContext('2d')" + (
            ".getImageData(0, 0, 60, 60).data)"
        )
        before = page.evaluate(pixels)
        page.evaluate("tfvaeChooseClass(7)")
        assert page.evaluate("document.getElementById('class').value") == "7"
        assert page.evaluate(pixels) != before
        assert page.errors == []
