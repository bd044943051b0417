"""TFLite and ONNX exports of a fully trained model: every quantization is
written, runs in its runtime and stays within the documented figures, and a
conversion that lost weights or an op is still refused.

The model is `tests/fixtures/runs/mnist-default-0.1.0`, the run `tfvae train`
writes with its defaults (784-400-20, 250 epochs), committed as trained: its
logits reach tens, where the small weights of a short run hide what breaks
(issue: every fully trained model was refused by the old absolute check).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tfvae import export
from tfvae.cli.main import main
from tfvae.evaluation import run_images
from tfvae.export import CHECK_IMAGES, FIDELITY, QUANTIZATIONS, ExportError, files
from tfvae.export import fidelity as fidelity_check
from tfvae.testing import DAMAGES, damaged_copy

TRAINED_RUN = Path(__file__).parent / "fixtures" / "runs" / "mnist-default-0.1.0"

# Mean scaled error of the decoder's probabilities on the test's codes (the
# posterior means of the fixture's 256 check images and 64 prior draws); each quantization must land
# within a factor of 3 of its figure, so a quantization that was silently not
# applied (or applied twice) fails as surely as a broken file.
MEASURED_PROBABILITIES_MEAN = {"float16": 1.9e-5, "dynamic": 1.21e-3}


@pytest.fixture(scope="module")
def trained():
    run, images = run_images(TRAINED_RUN, "test", limit=CHECK_IMAGES)
    return run.model, images


def scaled_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The check's measure, written again in numpy for the test."""
    return np.abs(got.astype(np.float64) - want) / (1.0 + np.abs(want.astype(np.float64)))


def keras_outputs(model, images, codes) -> dict[str, dict[str, np.ndarray]]:
    z_mean, z_stddev = (t.numpy() for t in model.encoder.params(images))
    logits = model.decoder.logits(codes).numpy()
    return {
        "encoder": {"z_mean": z_mean, "z_stddev": z_stddev},
        "decoder": {"logits": logits, "probabilities": 0.5 * (1 + np.tanh(logits / 2))},
    }


def test_the_fixture_has_the_logit_scale_of_a_trained_model(trained):
    model, images = trained
    logits = model.decoder.logits(model.encoder.params(images)[0]).numpy()
    assert np.abs(logits).max() > 20
    assert json.loads((TRAINED_RUN / "config.json").read_text())["config"]["epochs"] == 250


@pytest.mark.parametrize("quantize", QUANTIZATIONS)
def test_tflite_of_the_trained_model_runs_within_the_documented_figures(
    trained, quantize, tmp_path
):
    from ai_edge_litert.interpreter import Interpreter

    model, images = trained
    folder = export.export_tflite(model, tmp_path, "vae", quantize, check_images=images)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["fidelity_limits"] == FIDELITY[quantize]
    codes = np.concatenate(
        [model.encoder.params(images)[0].numpy(), np.random.default_rng(3).normal(size=(64, 20))]
    ).astype(np.float32)
    want = keras_outputs(model, images, codes)
    feeds = {"encoder": {"images": images}, "decoder": {"z": codes}}
    for part, info in manifest["files"].items():
        runner = Interpreter(str(folder / info["file"])).get_signature_runner(info["signature"])
        got = runner(**feeds[part])
        assert set(got) == set(want[part]) == set(info["fidelity"])
        for key, value in got.items():
            error = scaled_error(value, want[part][key])
            assert error.mean() <= FIDELITY[quantize]["mean"], (part, key)
            assert np.quantile(error, 0.99) <= FIDELITY[quantize]["p99"], (part, key)
            recorded = info["fidelity"][key]
            assert recorded["mean"] <= FIDELITY[quantize]["mean"]
            assert recorded["p99"] <= recorded["max"]
        if part == "decoder" and quantize != "none":
            mean = scaled_error(got["probabilities"], want[part]["probabilities"]).mean()
            measured = MEASURED_PROBABILITIES_MEAN[quantize]
            assert measured / 3 <= mean <= measured * 3, (quantize, mean)


def test_onnx_of_the_trained_model_runs_within_the_float32_figures(trained, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    model, images = trained
    folder = export.export_onnx(model, tmp_path, "vae", check_images=images)
    manifest = json.loads((folder / "manifest.json").read_text())
    codes = model.encoder.params(images)[0].numpy()
    want = keras_outputs(model, images, codes)
    feeds = {"encoder": {"images": images}, "decoder": {"z": codes}}
    for part, info in manifest["files"].items():
        session = onnxruntime.InferenceSession(str(folder / info["file"]))
        names = [o.name for o in session.get_outputs()]
        for key, value in zip(names, session.run(names, feeds[part]), strict=True):
            error = scaled_error(value, want[part][key])
            assert error.mean() <= FIDELITY["none"]["mean"], (part, key)
            assert np.quantile(error, 0.99) <= FIDELITY["none"]["p99"], (part, key)


@pytest.fixture
def refuse_against_intact(trained, monkeypatch):
    """Hold every export to the intact trained model's outputs, so converting
    a damaged copy is what a conversion that broke the model would give."""
    model, _ = trained
    reference = files.keras_reference
    monkeypatch.setattr(files, "keras_reference", lambda _, images: reference(model, images))


@pytest.mark.parametrize("how", DAMAGES)
def test_a_tflite_file_that_lost_weights_or_an_op_is_refused_at_any_quantization(
    trained, how, tmp_path, refuse_against_intact
):
    model, images = trained
    previous = export.export_tflite(model, tmp_path, "vae", "dynamic", check_images=images)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    # dynamic has the loosest limits: refused there, refused everywhere.
    with pytest.raises(ExportError, match=r"the conversion is broken, not exported"):
        export.export_tflite(
            damaged_copy(model, how), tmp_path, "vae", "dynamic", check_images=images
        )
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["tflite"]


def test_an_onnx_file_that_lost_an_op_is_refused(trained, tmp_path, refuse_against_intact):
    pytest.importorskip("tf2onnx")
    model, images = trained
    with pytest.raises(ExportError, match=r"decoder\.onnx|encoder\.onnx"):
        export.export_onnx(
            damaged_copy(model, "no-activation"), tmp_path, "vae", check_images=images
        )
    assert not list((tmp_path / "vae").iterdir())


def test_nan_figures_are_refused():
    nan = {"mean": float("nan"), "p99": 0.0, "max": 0.0, "max_abs_diff": 0.0}
    with pytest.raises(ExportError, match=r"probabilities: mean scaled error nan"):
        fidelity_check.check_fidelity("decoder.tflite", {"probabilities": nan}, FIDELITY["dynamic"])


def test_check_images_must_be_finite(trained, tmp_path):
    model, images = trained
    bad = images[:4].copy()
    bad[2, 3, 3, 0] = np.nan
    with pytest.raises(ExportError, match=r"check_images must be finite"):
        export.export_tflite(model, tmp_path, "vae", check_images=bad)
    assert not (tmp_path / "vae" / "tflite").exists()


@pytest.mark.parametrize(
    "args",
    [["--format", "all"], *(["--format", "tflite", "--quantize", q] for q in QUANTIZATIONS)],
)
def test_cli_exports_the_trained_model_in_every_format(args, tmp_path):
    result = CliRunner().invoke(
        main, ["export", str(TRAINED_RUN), "--out", str(tmp_path), "--name", "vae", *args]
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "vae").iterdir())
    assert written == (["1", "onnx", "tflite"] if args[1] == "all" else ["tflite"])
    manifest = json.loads((tmp_path / "vae" / "tflite" / "manifest.json").read_text())
    assert manifest["quantization"] == (args[3] if len(args) > 2 else "none")
    assert manifest["checked_on"].startswith(f"{CHECK_IMAGES} given images")
    assert (tmp_path / "vae" / "tflite" / "decoder.tflite").stat().st_size > 100_000
