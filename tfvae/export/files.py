"""TFLite and ONNX files: an encoder and a decoder, each converted, run in
its runtime (LiteRT, onnxruntime) and compared with Keras before the folder
is published.

The files keep only builtin ops, so they cannot raise: out-of-range pixels
are clipped to [0, 1], and a NaN pixel gives NaN outputs. An empty batch
gives empty outputs.

`int8` files are integer only, as Edge TPU and NPU delegates need them:
int8 weights and activations, and int8 inputs and outputs too, so no float
op is left at either end. Each tensor's range comes from calibration on real
images of the model's data (the encoder) and on their posterior means (the
decoder). The manifest lists every input's and output's `scale` and
`zero_point`: an app feeds q = clip(round(x / scale) + zero_point, -128, 127)
and reads x = scale * (q - zero_point), as the export's own check does.
Pixels outside [0, 1] saturate in that quantization; NaN has no int8 value.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tensorflow as tf

from tfvae.errors import ExportError
from tfvae.export.fidelity import (
    FIDELITY,
    check_fidelity,
    check_inputs,
    fidelity_report,
    keras_reference,
)
from tfvae.export.publish import (
    check_model,
    model_dir,
    publish_folder,
    remove_stale_temps,
    temp_folder,
    write_errors,
)
from tfvae.export.savedmodel import class_inputs, export_archive, images_spec, z_spec

if TYPE_CHECKING:
    from tfvae.model import VAE

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
Quantize = Literal["none", "float16", "dynamic", "int8"]
# How the float files treat pixels; the int8 files' inputs are quantized by the app.
_FLOAT_INPUT_POLICY = "pixels clipped to [0, 1]; NaN pixels give NaN outputs"
_INT8_INPUT_POLICY = (
    "int8 inputs and outputs: feed q = clip(round(x / scale) + zero_point, -128, 127), "
    "read x = scale * (q - zero_point), with each tensor's scale and zero_point listed "
    "under its inputs and outputs; pixels outside [0, 1] saturate"
)


def _deterministic_endpoints(
    model: VAE, batch: int | None = None
) -> dict[str, tuple[Callable, list[tf.TensorSpec]]]:
    """Deterministic, builtin-op-only entry points (no asserts, no random ops),
    with a dynamic batch dimension or a fixed one; a conditional VAE's also
    take the class, `labels` int32 `[batch]` (a label outside the classes
    reads as no class: a zero one-hot vector)."""

    def encode(images, *labels):
        z_mean, z_stddev = model.encoder.top_params(tf.clip_by_value(images, 0.0, 1.0), *labels)
        return {"z_mean": z_mean, "z_stddev": z_stddev}

    def decode(z, *labels):
        return model.exported_decode(z, *labels)

    classes = class_inputs(model, batch)
    return {
        "encode": (encode, [images_spec(model, batch), *classes]),
        "decode": (decode, [z_spec(model, batch), *classes]),
    }


_PARTS = {"encoder": "encode", "decoder": "decode"}
# Which runtimes run which files (the manifest says it beside the batch).
_DYNAMIC_RUNTIMES = "LiteRT / TFLite on Android, iOS and Python (resize the input to any batch)"
_STATIC_RUNTIMES = (
    "every LiteRT runtime, including LiteRT.js in browsers, TFLite Micro and the Edge TPU "
    "compiler, which need static shapes; feed exactly this batch (pad the last one)"
)


@dataclasses.dataclass
class _Converted:
    """A file just written: how to run it, and its inputs and outputs for the manifest."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


_FIDELITY_NOTE = {"fidelity_measure": "|file - keras| / (1 + |keras|) over every output value"}


def _checked_file(
    converted: _Converted, path: Path, signature: str, reference: dict, limits: dict[str, float]
) -> dict[str, Any]:
    """Run a converted file on the Keras reference's inputs, hold its outputs
    to `limits` (`check_fidelity`), and say what the manifest says of it."""
    outputs = converted.run({i["name"]: reference[i["name"]] for i in converted.inputs})
    report = fidelity_report(outputs, reference)
    check_fidelity(path.name, report, limits)
    return {
        "file": path.name,
        "signature": signature,
        "inputs": converted.inputs,
        "outputs": converted.outputs,
        "size_bytes": path.stat().st_size,
        "fidelity": report,
    }


def _export_pair(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    fmt: str,
    check: tuple[np.ndarray | None, np.ndarray | None],
    convert: Callable[[Path, str, str], _Converted],
    limits: dict[str, float],
    manifest: dict[str, Any],
) -> Path:
    """Write `out_dir/<name>/<fmt>/{encoder,decoder}.<fmt>` and `manifest.json`.

    `convert(temp, part, signature)` writes `<part>.<fmt>` into `temp`; each
    file then runs on the `check` images (and a conditional model's labels
    of them) and is compared with Keras
    (`check_fidelity`) before the folder replaces any previous one atomically.
    """
    check_model(model)
    images, labels, images_note = check_inputs(model, check[0], labels=check[1])
    base = model_dir(out_dir, name)
    remove_stale_temps(base)
    target = base / fmt
    reference = keras_reference(model, images, labels)
    with temp_folder(base, fmt) as temp, write_errors(target):
        files = {}
        for part, signature in _PARTS.items():
            converted, path = convert(temp, part, signature), temp / f"{part}.{fmt}"
            files[part] = _checked_file(converted, path, signature, reference[part], limits)
        manifest = {
            "format": fmt,
            **manifest,
            "model": name,
            "image_shape": list(model.image_shape),
            "latent_dim": int(model.code_dim),
            **({"classes": list(model.classes)} if model.conditional else {}),
            "checked_on": f"{images_note}; the decoder on their posterior means and on "
            f"{len(images)} codes from the prior",
            **_FIDELITY_NOTE,
            "fidelity_limits": limits,
            "files": files,
        }
        (temp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        publish_folder(temp, target)
    return target


# --- TFLite ----------------------------------------------------------------------

# Calibration batches of one signature: its input's name -> a batch of values.
_Batches = list[dict[str, np.ndarray]]


def _convert(
    saved_model: Path,
    signature: str,
    quantize: Quantize,
    representative: _Batches | None = None,
) -> bytes:
    """One signature as a TFLite file; `representative` (int8 only) are the
    calibration batches that set each tensor's range."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=[signature]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        # Integer only, the ends too: a float op left in fails the conversion
        # instead of falling back to the CPU on an accelerator.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: iter(representative)
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


# Calibration batches are this many examples: the ranges are the same at any
# batch size (plain min/max), and fewer calls convert faster.
_CALIBRATION_BATCH = 100


def _representative_sets(
    model: VAE, images: np.ndarray, batch: int | None = None, labels: np.ndarray | None = None
) -> dict[str, _Batches]:
    """Calibration batches per signature: the encoder on `images`, the decoder
    on their posterior means (a conditional model's with the images'
    `labels`). Not on prior draws too: their rarer, wider activations
    stretch the min/max ranges, and codes from the prior then come out
    worse, not better (see docs/results/export-fidelity.md#the-int8-calibration-set)."""
    z_mean = model.encoder.top_params(tf.constant(images), labels)[0].numpy()
    classes = {} if labels is None else {"labels": labels}
    inputs = {"encode": {"images": images, **classes}, "decode": {"z": z_mean, **classes}}
    # A static batch takes whole batches of its size only (the rest is dropped).
    size = batch or _CALIBRATION_BATCH
    stop = len(images) - len(images) % batch if batch else len(images)
    return {
        signature: [
            {key: value[i : i + size] for key, value in feeds.items()} for i in range(0, stop, size)
        ]
        for signature, feeds in inputs.items()
    }


def _lite_interpreter(model_path: Path):
    """LiteRT's interpreter, the deployment runtime; TF's deprecated one as a fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(model_path))


def _tensor_info(details: dict[str, Any]) -> list[dict[str, Any]]:
    """Name, shape and dtype of each tensor, and an integer tensor's
    `scale` and `zero_point` (what an app needs to feed and read it)."""
    rows = []
    for key, info in sorted(details.items()):
        row = {
            "name": key,
            "shape": [int(d) for d in info["shape_signature"]],
            "dtype": np.dtype(info["dtype"]).name,
        }
        scale, zero_point = info["quantization"]
        if scale:
            row.update(scale=float(scale), zero_point=int(zero_point))
        rows.append(row)
    return rows


def _quantized_runner(runner) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """`runner` with float inputs and outputs: integer tensors are quantized
    and dequantized with their own scale and zero_point, as an app does, so
    the check measures what the app gets. Float tensors pass unchanged."""
    inputs, outputs = runner.get_input_details(), runner.get_output_details()

    def to_tensor(key: str, value: np.ndarray) -> np.ndarray:
        scale, zero_point = inputs[key]["quantization"]
        if not scale:
            return value
        dtype = inputs[key]["dtype"]
        limits = np.iinfo(dtype)
        return np.clip(np.round(value / scale) + zero_point, limits.min, limits.max).astype(dtype)

    def from_tensor(key: str, value: np.ndarray) -> np.ndarray:
        scale, zero_point = outputs[key]["quantization"]
        if not scale:
            return value
        return (value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = runner(**{key: to_tensor(key, value) for key, value in feeds.items()})
        return {key: from_tensor(key, value) for key, value in got.items()}

    return run


def _static_runner(run, batch: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """`run` of a file whose batch dimension is `batch`, on inputs of any
    length: fed `batch` rows at a time, the last call padded with zeros."""

    def run_all(feeds: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
        count = len(next(iter(feeds.values())))
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, count, batch):
            chunk = {}
            for key, value in feeds.items():
                rows = value[start : start + batch]
                pad = np.zeros((batch - len(rows), *rows.shape[1:]), rows.dtype)
                chunk[key] = np.concatenate([rows, pad])
            for key, value in run(chunk).items():
                parts.setdefault(key, []).append(value[: min(batch, count - start)])
        return {key: np.concatenate(values) for key, values in parts.items()}

    return run_all


def _calibration(
    model: VAE, check: tuple, calibration: tuple, batch: int | None
) -> tuple[dict[str, _Batches], str]:
    """The int8 calibration batches of each signature, and what they are:
    from the `calibration` images and labels, or without them the `check`'s."""
    if calibration[0] is None:
        images, labels, note = check_inputs(model, check[0], labels=check[1])
        note = f"the check images, {note}"
    else:
        images, labels, note = check_inputs(
            model, calibration[0], "calibration_images", calibration[1]
        )
    batches = _representative_sets(model, images, batch, labels)
    return batches, f"{note} (the encoder); the decoder on their posterior means"


def _check_tflite_options(model: VAE, quantize: Quantize, batch: int | None) -> None:
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be a positive integer or None, got {batch!r}")


def export_tflite(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    quantize: Quantize = "none",
    check_images: np.ndarray | None = None,
    calibration_images: np.ndarray | None = None,
    batch: int | None = None,
    check_labels: np.ndarray | None = None,
    calibration_labels: np.ndarray | None = None,
) -> Path:
    """Write `out_dir/<name>/tflite/{encoder,decoder}.tflite` and `manifest.json`.

    Builtin ops only, so plain LiteRT runs them. The files are converted from
    a SavedModel (never from bare concrete functions, which can silently lose
    the weights), run in LiteRT on `check_images` (real images of the model's
    data; default: the model's own samples) and held to `FIDELITY[quantize]`.
    `int8` files are calibrated on `calibration_images` (a few hundred real
    images; default: the check images). Pass other images than the check's
    (`tfvae export` calibrates on training images and checks on test images),
    so the check does not grade the file on its own calibration data.
    `batch` fixes the files' batch dimension (static shapes, which LiteRT.js,
    TFLite Micro and the Edge TPU compiler need); None keeps it dynamic.
    A conditional model's images come with their labels (`check_labels`,
    `calibration_labels`; its own samples are of every class in turn).
    An existing `tflite/` folder is replaced atomically. Returns it.
    """
    check_model(model)
    _check_tflite_options(model, quantize, batch)
    check, calibration = (check_images, check_labels), (calibration_images, calibration_labels)
    manifest, representative = _tflite_manifest(model, quantize, batch, check, calibration)
    archive = export_archive(model, _deterministic_endpoints(model, batch))

    base = model_dir(out_dir, name)
    with temp_folder(base, "savedmodel") as source, write_errors(base / "tflite"):
        archive.write_out(str(source), verbose=False)

        def convert(temp: Path, part: str, signature: str) -> _Converted:
            path = temp / f"{part}.tflite"
            path.write_bytes(_convert(source, signature, quantize, representative.get(signature)))
            runner = _lite_interpreter(path).get_signature_runner(signature)
            run = _quantized_runner(runner)
            return _Converted(
                run=_static_runner(run, batch) if batch else run,
                inputs=_tensor_info(runner.get_input_details()),
                outputs=_tensor_info(runner.get_output_details()),
            )

        limits = FIDELITY[quantize]
        return _export_pair(model, out_dir, name, "tflite", check, convert, limits, manifest)


def _tflite_manifest(
    model: VAE, quantize: Quantize, batch: int | None, check: tuple, calibration: tuple
) -> tuple[dict[str, Any], dict[str, _Batches]]:
    """What the TFLite manifest says of the files before they are checked,
    and the calibration batches of `int8` files (by signature)."""
    manifest: dict[str, Any] = {
        "quantization": quantize,
        "batch": batch,
        "runtimes": _STATIC_RUNTIMES if batch else _DYNAMIC_RUNTIMES,
        "tensorflow_version": tf.__version__,
    }
    representative: dict[str, _Batches] = {}
    if quantize == "int8":
        representative, manifest["calibrated_on"] = _calibration(model, check, calibration, batch)
    manifest["input_policy"] = _INT8_INPUT_POLICY if quantize == "int8" else _FLOAT_INPUT_POLICY
    return manifest, representative


# --- ONNX ------------------------------------------------------------------------


def export_onnx(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    check_images: np.ndarray | None = None,
    opset: int = 17,
    check_labels: np.ndarray | None = None,
) -> Path:
    """Write `out_dir/<name>/onnx/{encoder,decoder}.onnx` and `manifest.json` via tf2onnx.

    The encoder exports the raw `z_mean`/`z_stddev` tensors (TFP's `mean()`
    brings ops tf2onnx cannot convert). Each file is run in onnxruntime on
    `check_images` and held to the float32 limits, `FIDELITY["none"]`, before
    the folder is published. Needs the optional extra: `pip install 'tfvae[onnx]'`.
    """
    try:
        import onnxruntime
        import tf2onnx
    except ImportError:
        raise ExportError(
            "ONNX export needs tf2onnx and onnxruntime: pip install 'tfvae[onnx]'"
        ) from None
    endpoints = _deterministic_endpoints(model)

    def convert(temp: Path, part: str, signature: str) -> _Converted:
        fn, spec = endpoints[signature]
        path = temp / f"{part}.onnx"
        tf2onnx.convert.from_function(
            tf.function(fn, input_signature=spec),
            input_signature=spec,
            opset=opset,
            output_path=str(path),
        )
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return _Converted(
            run=lambda feeds: dict(zip(names, session.run(names, feeds), strict=True)),
            inputs=[_onnx_info(i) for i in session.get_inputs()],
            outputs=[_onnx_info(o) for o in session.get_outputs()],
        )

    manifest = {
        "opset": opset,
        "tf2onnx_version": tf2onnx.__version__,
        "input_policy": _FLOAT_INPUT_POLICY,
    }
    check = (check_images, check_labels)
    return _export_pair(model, out_dir, name, "onnx", check, convert, FIDELITY["none"], manifest)


def _onnx_info(node) -> dict[str, Any]:
    dtype = {"tensor(float)": "float32"}.get(node.type, node.type)
    return {
        "name": node.name,
        "shape": [d if isinstance(d, int) else -1 for d in node.shape],
        "dtype": dtype,
    }
