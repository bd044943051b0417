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
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from harness import FINISHED_RUN_0_1_0, invoke

from tfvae import export
from tfvae.cli.main import main
from tfvae.export import CHECK_IMAGES, FIDELITY, QUANTIZATIONS, ExportError, files
from tfvae.export import fidelity as fidelity_check
from tfvae.export.run import CALIBRATION_IMAGES
from tfvae.runs import RunFolder, run_images
from tfvae.testing import DAMAGES, damaged_copy

EXPORT_GUIDE = Path(__file__).parents[1] / "docs" / "guide" / "export.md"

# Mean scaled error of the decoder's probabilities on the test's codes (the
# posterior means of the fixture's 256 check images and 64 prior draws; int8
# calibrated on 500 training images); each quantization must land within a
# factor of 3 of its figure, so a quantization that was silently not applied
# (or applied twice) fails as surely as a broken file.
MEASURED_PROBABILITIES_MEAN = {"float16": 1.9e-5, "dynamic": 1.21e-3, "int8": 4.9e-3}


@pytest.fixture(scope="module")
def model_0_1_0_and_test_images():
    run, images = run_images(FINISHED_RUN_0_1_0, "test", limit=CHECK_IMAGES)
    return run.model, images


@pytest.fixture(scope="module")
def calibration():
    """The training images `tfvae export` calibrates int8 files on."""
    return run_images(FINISHED_RUN_0_1_0, "train", limit=CALIBRATION_IMAGES)[1]


def scaled_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The check's measure, written again in numpy for the test."""
    return np.abs(got.astype(np.float64) - want) / (1.0 + np.abs(want.astype(np.float64)))


def to_file(values: dict[str, np.ndarray], tensors: list[dict]) -> dict[str, np.ndarray]:
    """The inputs as the file takes them, quantized with the manifest's own
    scale and zero_point where it lists them (int8), as a phone app would."""
    fed = {}
    for t in tensors:
        value = values[t["name"]]
        if "scale" in t:
            value = np.clip(np.round(value / t["scale"]) + t["zero_point"], -128, 127)
        fed[t["name"]] = value.astype(t["dtype"])
    return fed


def from_file(values: dict[str, np.ndarray], tensors: list[dict]) -> dict[str, np.ndarray]:
    """The outputs as numbers, dequantized with the manifest's scale and zero_point."""
    return {
        t["name"]: (values[t["name"]] - np.float64(t["zero_point"])) * t["scale"]
        if "scale" in t
        else values[t["name"]]
        for t in tensors
    }


def keras_outputs(model, images, codes) -> dict[str, dict[str, np.ndarray]]:
    z_mean, z_stddev = (t.numpy() for t in model.encoder.params(images))
    logits = model.decoder.outputs(codes).numpy()
    return {
        "encoder": {"z_mean": z_mean, "z_stddev": z_stddev},
        "decoder": {"logits": logits, "probabilities": 0.5 * (1 + np.tanh(logits / 2))},
    }


def test_the_fixture_has_the_logit_scale_of_a_trained_model(model_0_1_0_and_test_images):
    model, images = model_0_1_0_and_test_images
    logits = model.decoder.outputs(model.encoder.params(images)[0]).numpy()
    assert np.abs(logits).max() > 20
    assert json.loads((FINISHED_RUN_0_1_0 / "config.json").read_text())["config"]["epochs"] == 250


@pytest.mark.parametrize("quantize", QUANTIZATIONS)
def test_tflite_of_the_trained_model_runs_within_the_documented_figures(
    model_0_1_0_and_test_images, calibration, quantize, tmp_path
):
    from ai_edge_litert.interpreter import Interpreter

    model, images = model_0_1_0_and_test_images
    folder = export.export_tflite(
        model, tmp_path, "vae", quantize, check_images=images, calibration_images=calibration
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["fidelity_limits"] == FIDELITY[quantize]
    codes = np.concatenate(
        [model.encoder.params(images)[0].numpy(), np.random.default_rng(3).normal(size=(64, 20))]
    ).astype(np.float32)
    want = keras_outputs(model, images, codes)
    feeds = {"encoder": {"images": images}, "decoder": {"z": codes}}
    for part, info in manifest["files"].items():
        interpreter = Interpreter(str(folder / info["file"]))
        runner = interpreter.get_signature_runner(info["signature"])
        tensors = info["inputs"] + info["outputs"]
        # int8: integer at both ends, each tensor's scale and zero_point recorded,
        # and no float tensor inside (what Edge TPU and NPU delegates need).
        assert {t["dtype"] for t in tensors} == {"int8" if quantize == "int8" else "float32"}
        assert all(("scale" in t) == (quantize == "int8") for t in tensors)
        if quantize == "int8":
            kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
            assert kinds <= {np.int8, np.int32}, kinds
        got = from_file(runner(**to_file(feeds[part], info["inputs"])), info["outputs"])
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


def test_onnx_of_the_trained_model_runs_within_the_float32_figures(
    model_0_1_0_and_test_images, tmp_path
):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    model, images = model_0_1_0_and_test_images
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
def refuse_against_intact(model_0_1_0_and_test_images, monkeypatch):
    """Hold every export to the intact trained model's outputs, so converting
    a damaged copy is what a conversion that broke the model would give."""
    model, _ = model_0_1_0_and_test_images
    reference = files.keras_reference
    monkeypatch.setattr(
        files, "keras_reference", lambda _, images, labels: reference(model, images, labels)
    )


@pytest.mark.parametrize("how", DAMAGES)
def test_a_tflite_file_that_lost_weights_or_an_op_is_refused_at_any_quantization(
    model_0_1_0_and_test_images, how, tmp_path, refuse_against_intact
):
    model, images = model_0_1_0_and_test_images
    previous = export.export_tflite(model, tmp_path, "vae", "int8", check_images=images)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    # int8 has the loosest limits: refused there, refused everywhere. Its
    # calibration sees the damaged model, as it would see a broken graph.
    with pytest.raises(ExportError, match=r"the conversion is broken, not exported"):
        export.export_tflite(damaged_copy(model, how), tmp_path, "vae", "int8", check_images=images)
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["tflite"]


def test_an_onnx_file_that_lost_an_op_is_refused(
    model_0_1_0_and_test_images, tmp_path, refuse_against_intact
):
    pytest.importorskip("tf2onnx")
    model, images = model_0_1_0_and_test_images
    with pytest.raises(ExportError, match=r"decoder\.onnx|encoder\.onnx"):
        export.export_onnx(
            damaged_copy(model, "no-activation"), tmp_path, "vae", check_images=images
        )
    assert not list((tmp_path / "vae").iterdir())


def test_nan_figures_are_refused():
    nan = {"mean": float("nan"), "p99": 0.0, "max": 0.0, "max_abs_diff": 0.0}
    with pytest.raises(ExportError, match=r"probabilities: mean scaled error nan"):
        fidelity_check.check_fidelity("decoder.tflite", {"probabilities": nan}, FIDELITY["dynamic"])


def test_the_largest_difference_is_recorded_not_judged():
    """The export fidelity results' example: one saturated pixel of a `dynamic` file moved by 0.43
    while the image's mean error stayed at 1.3e-3. The report records that
    maximum, above every limit, and the file passes: only the mean and the
    99th percentile are judged. Moving 2% of the pixels that far is refused."""
    keras_value = np.zeros((64, 28, 28, 1))
    converted = keras_value + 1.3e-3
    converted[5, 14, 14, 0] = 0.43
    report = fidelity_check.fidelity_report(
        {"probabilities": converted}, {"probabilities": keras_value}
    )
    stats, limits = report["probabilities"], FIDELITY["dynamic"]
    assert stats["max"] == pytest.approx(0.43) and stats["max"] > max(limits.values())
    assert stats["mean"] < limits["mean"] and stats["p99"] < limits["p99"]
    fidelity_check.check_fidelity("decoder.tflite", report, limits)
    converted.reshape(-1)[::50] = 0.43
    report = fidelity_check.fidelity_report(
        {"probabilities": converted}, {"probabilities": keras_value}
    )
    with pytest.raises(ExportError, match=r"probabilities: p99 scaled error 0\.43 > 0\.4"):
        fidelity_check.check_fidelity("decoder.tflite", report, limits)


def test_the_guides_fidelity_limits_are_the_ones_applied():
    """The limits table of the export guide (docs/guide/export.md)
    states FIDELITY exactly: changing one without the other fails here."""
    lines = EXPORT_GUIDE.read_text().splitlines()
    (header,) = [
        i for i, line in enumerate(lines) if "| limit: mean | limit: 99th percentile |" in line
    ]
    rows = {}
    for line in lines[header + 2 :]:
        if not line.strip().startswith("|"):
            break
        name, mean, p99 = (cell.strip() for cell in line.strip().strip("|").split("|")[:3])
        quantize = re.match(r"`(\w+)`", name).group(1)
        rows[quantize] = {"mean": float(mean), "p99": float(p99)}
        if quantize == "none":
            assert "ONNX" in name  # ONNX files are held to FIDELITY["none"]
    assert rows == FIDELITY
    assert tuple(rows) == QUANTIZATIONS


def test_cli_export_of_a_refused_conversion_is_one_line_and_writes_nothing(
    model_0_1_0_and_test_images, tmp_path, refuse_against_intact
):
    """A run whose model the conversion broke (a zeroed copy, checked against
    the intact model as a broken converter's file would be): `tfvae export`
    exits 1 with one error line naming the file, and no file is written."""
    model, _ = model_0_1_0_and_test_images
    run = tmp_path / "run"
    shutil.copytree(FINISHED_RUN_0_1_0, run)
    RunFolder(run).save_model(damaged_copy(model, "zeroed"))
    out = tmp_path / "exports"
    result = invoke("export", str(run), "--format", "tflite", "--out", str(out))
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(
        r"Error: (encoder|decoder)\.tflite differs from the Keras model \(\w+: (mean|p99) "
        r"scaled error .* > .*\); the conversion is broken, not exported",
        line,
    ), line
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("argument", ["check_images", "calibration_images"])
def test_check_and_calibration_images_must_be_finite(
    model_0_1_0_and_test_images, argument, tmp_path
):
    model, images = model_0_1_0_and_test_images
    bad = images[:4].copy()
    bad[2, 3, 3, 0] = np.nan
    with pytest.raises(ExportError, match=rf"{argument} must be finite"):
        export.export_tflite(model, tmp_path, "vae", "int8", **{argument: bad})
    assert not (tmp_path / "vae" / "tflite").exists()


def test_the_cli_offers_every_quantization():
    """The CLI lists them itself (it imports no TensorFlow to answer --help)."""
    (option,) = (p for p in main.commands["export"].params if p.name == "quantize")
    assert tuple(option.type.choices) == QUANTIZATIONS


@pytest.mark.parametrize(
    "args",
    [["--format", "all"], *(["--format", "tflite", "--quantize", q] for q in QUANTIZATIONS)],
)
def test_cli_exports_the_trained_model_in_every_format(args, tmp_path):
    result = invoke(
        "export", str(FINISHED_RUN_0_1_0), "--out", str(tmp_path), "--name", "vae", *args
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "vae").iterdir())
    assert written == (["1", "onnx", "tflite"] if args[1] == "all" else ["tflite"])
    manifest = json.loads((tmp_path / "vae" / "tflite" / "manifest.json").read_text())
    assert manifest["quantization"] == (args[3] if len(args) > 2 else "none")
    assert manifest["checked_on"].startswith(f"{CHECK_IMAGES} given images")
    if "int8" in args:  # calibrated on training images, not on the test images checked
        assert manifest["calibrated_on"].startswith(f"{CALIBRATION_IMAGES} given images")
    else:
        assert "calibrated_on" not in manifest
    assert (tmp_path / "vae" / "tflite" / "decoder.tflite").stat().st_size > 100_000
