"""TFLite and ONNX files: an encoder and a decoder, each converted, run in
its runtime (LiteRT, onnxruntime) and compared with Keras before the folder
is published.

The files keep only builtin ops, so they cannot raise: out-of-range pixels
are clipped to [0, 1], and a NaN pixel gives NaN outputs. An empty batch
gives empty outputs.
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
from tfvae.export.savedmodel import export_archive, images_spec, z_spec

if TYPE_CHECKING:
    from tfvae.model import VAE

QUANTIZATIONS = ("none", "float16", "dynamic")
Quantize = Literal["none", "float16", "dynamic"]


def _deterministic_endpoints(model: VAE) -> dict[str, tuple[Callable, list[tf.TensorSpec]]]:
    """Deterministic, builtin-op-only entry points (no asserts, no random ops)."""

    def encode(images):
        z_mean, z_stddev = model.encoder.params(tf.clip_by_value(images, 0.0, 1.0))
        return {"z_mean": z_mean, "z_stddev": z_stddev}

    def decode(z):
        logits = model.decoder.logits(z)
        return {"probabilities": tf.sigmoid(logits), "logits": logits}

    return {"encode": (encode, [images_spec(model)]), "decode": (decode, [z_spec(model)])}


_PARTS = {"encoder": "encode", "decoder": "decode"}


@dataclasses.dataclass
class _Converted:
    """A file just written: how to run it, and its inputs and outputs for the manifest."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


def _export_pair(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    fmt: str,
    check_images: np.ndarray | None,
    convert: Callable[[Path, str, str], _Converted],
    limits: dict[str, float],
    manifest: dict[str, Any],
) -> Path:
    """Write `out_dir/<name>/<fmt>/{encoder,decoder}.<fmt>` and `manifest.json`.

    `convert(temp, part, signature)` writes `<part>.<fmt>` into `temp`; each
    file then runs on the check inputs and is compared with Keras
    (`check_fidelity`) before the folder replaces any previous one atomically.
    """
    check_model(model)
    images, images_note = check_inputs(model, check_images)
    base = model_dir(out_dir, name)
    remove_stale_temps(base)
    target = base / fmt
    reference = keras_reference(model, images)
    with temp_folder(base, fmt) as temp, write_errors(target):
        files: dict[str, Any] = {}
        for part, signature in _PARTS.items():
            converted = convert(temp, part, signature)
            ref = reference[part]
            outputs = converted.run({i["name"]: ref[i["name"]] for i in converted.inputs})
            report = fidelity_report(outputs, ref)
            check_fidelity(f"{part}.{fmt}", report, limits)
            path = temp / f"{part}.{fmt}"
            files[part] = {
                "file": path.name,
                "signature": signature,
                "inputs": converted.inputs,
                "outputs": converted.outputs,
                "size_bytes": path.stat().st_size,
                "fidelity": report,
            }
        manifest = {
            "format": fmt,
            **manifest,
            "model": name,
            "image_shape": list(model.image_shape),
            "latent_dim": int(model.latent_dim),
            "checked_on": f"{images_note}; the decoder on their posterior means and on "
            f"{len(images)} codes from the prior",
            "fidelity_measure": "|file - keras| / (1 + |keras|) over every output value",
            "fidelity_limits": limits,
            "input_policy": "pixels clipped to [0, 1]; NaN pixels give NaN outputs",
            "files": files,
        }
        (temp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        publish_folder(temp, target)
    return target


# --- TFLite ----------------------------------------------------------------------


def _convert(saved_model: Path, signature: str, quantize: Quantize) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=[signature]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _lite_interpreter(model_path: Path):
    """LiteRT's interpreter, the deployment runtime; TF's deprecated one as a fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(model_path))


def _tensor_info(details: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": key,
            "shape": [int(d) for d in info["shape_signature"]],
            "dtype": np.dtype(info["dtype"]).name,
        }
        for key, info in sorted(details.items())
    ]


def export_tflite(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    quantize: Quantize = "none",
    check_images: np.ndarray | None = None,
) -> Path:
    """Write `out_dir/<name>/tflite/{encoder,decoder}.tflite` and `manifest.json`.

    Builtin ops only, so plain LiteRT runs them. The files are converted from
    a SavedModel (never from bare concrete functions, which can silently lose
    the weights), run in LiteRT on `check_images` (real images of the model's
    data; default: the model's own samples) and held to `FIDELITY[quantize]`.
    An existing `tflite/` folder is replaced atomically. Returns it.
    """
    check_model(model)
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    archive = export_archive(model, _deterministic_endpoints(model))

    base = model_dir(out_dir, name)
    with temp_folder(base, "savedmodel") as source, write_errors(base / "tflite"):
        archive.write_out(str(source), verbose=False)

        def convert(temp: Path, part: str, signature: str) -> _Converted:
            path = temp / f"{part}.tflite"
            path.write_bytes(_convert(source, signature, quantize))
            runner = _lite_interpreter(path).get_signature_runner(signature)
            return _Converted(
                run=lambda feeds: runner(**feeds),
                inputs=_tensor_info(runner.get_input_details()),
                outputs=_tensor_info(runner.get_output_details()),
            )

        manifest = {"quantization": quantize, "tensorflow_version": tf.__version__}
        return _export_pair(
            model, out_dir, name, "tflite", check_images, convert, FIDELITY[quantize], manifest
        )


# --- ONNX ------------------------------------------------------------------------


def export_onnx(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    check_images: np.ndarray | None = None,
    opset: int = 17,
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

    manifest = {"opset": opset, "tf2onnx_version": tf2onnx.__version__}
    return _export_pair(
        model, out_dir, name, "onnx", check_images, convert, FIDELITY["none"], manifest
    )


def _onnx_info(node) -> dict[str, Any]:
    dtype = {"tensor(float)": "float32"}.get(node.type, node.type)
    return {
        "name": node.name,
        "shape": [d if isinstance(d, int) else -1 for d in node.shape],
        "dtype": dtype,
    }
