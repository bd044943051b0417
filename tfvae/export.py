"""Export a trained VAE for serving: TF Serving SavedModels, LiteRT (TFLite) files, ONNX.

Every export is written into a dot-named temporary folder beside its target and
renamed into place only when complete, so a server watching `out_dir/<name>`
(TF Serving ignores non-numeric names) never sees half an export, even if the
exporting process is killed.

Input policy of every image entry point (SavedModel signatures and the
TFLite/ONNX encoders): pixels are float32 in [0, 1]; finite values outside that
range are clipped to it. In the SavedModel, NaN or +-Inf pixels (and codes `z`)
are refused with an `InvalidArgumentError` ("... Tensor had NaN values"), and
the batch shape is checked again inside the graph (TF Serving's C++ runtime
does not check fed shapes). The TFLite and ONNX files keep only builtin ops, so
they cannot raise: there a NaN pixel gives NaN outputs. An empty batch gives
empty outputs everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:  # the model module imports TFP; this module needs it only for types
    from tfvae.model import VAE

__all__ = [
    "ELBO_SEED",
    "MAX_SAMPLE_COUNT",
    "QUANTIZATIONS",
    "SIGNATURES",
    "FIDELITY",
    "ExportError",
    "export_onnx",
    "export_savedmodel",
    "export_tflite",
    "fidelity",
    "next_version",
]

SIGNATURES = ("serving_default", "reconstruct", "encode", "decode", "sample", "elbo")
# The `elbo` signature draws its one z ~ q(z|x) with this stateless seed, so the
# same images always give the same numbers (equal to `model.elbo_terms(x, seed=ELBO_SEED)`).
ELBO_SEED = (0, 0)
# A `sample` request allocates count * pixels floats; cap it so one request cannot
# exhaust a server's memory (10k MNIST images are 31 MB).
MAX_SAMPLE_COUNT = 10_000
QUANTIZATIONS = ("none", "float16", "dynamic")
Quantize = Literal["none", "float16", "dynamic"]
# The most a converted file may differ from the Keras model, per quantization
# (`FIDELITY["none"]` also for ONNX): the mean and the 99th percentile of the
# scaled error |file - keras| / (1 + |keras|) over every value of every output.
# Set from trained models, with margin (benchmarks/export_fidelity.py and
# benchmarks/RESULTS.md); a file that lost weights or an op is far above them.
FIDELITY: dict[str, dict[str, float]] = {
    "none": {"mean": 1e-5, "p99": 1e-4},
    "float16": {"mean": 2e-3, "p99": 2e-2},
    "dynamic": {"mean": 5e-2, "p99": 4e-1},
}
# Without check images, the files are checked on this many samples of the model.
DEFAULT_CHECK_IMAGES = 256

_TEMP = re.compile(
    r"^\.(?:tmp|old)-(?P<what>\d+|tflite|onnx|savedmodel)-(?P<host>.+)-(?P<pid>\d+)$"
)


class ExportError(Exception):
    """A user-fixable export problem; the message is one line saying what to do."""


# --- checks and folders ------------------------------------------------------


def _check_model(model: VAE) -> None:
    coders = (getattr(model, "encoder", None), getattr(model, "decoder", None))
    if any(c is None for c in coders) or not hasattr(model, "image_shape"):
        raise ExportError(f"expected a tfvae VAE, got {type(model).__name__}")
    if not (model.built and all(c.body.built and c.body.weights for c in coders)):
        raise ExportError("model is not built: call model.build() (or load a run) before export")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ExportError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.' (not first)"
        )


def _model_dir(out_dir: str | os.PathLike, name: str) -> Path:
    """`out_dir/<name>`, created if missing; refuses paths that are files or unwritable."""
    _check_name(name)
    base = Path(out_dir) / name
    for folder in (Path(out_dir), base):
        if folder.exists() and not folder.is_dir():
            raise ExportError(f"{folder} exists and is not a folder; choose another --out/--name")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create {base}: {err.strerror or err}") from None
    if not os.access(base, os.W_OK | os.X_OK):
        raise ExportError(f"{base} is not writable; choose another --out")
    return base


def _versions(base: Path) -> list[int]:
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir())


def next_version(out_dir: str | os.PathLike, name: str) -> int:
    """The version a new export gets: one above the highest, so TF Serving serves it."""
    base = Path(out_dir) / name
    existing = _versions(base) if base.is_dir() else []
    return existing[-1] + 1 if existing else 1


def _temp_name(what: str | int, kind: str = "tmp") -> str:
    return f".{kind}-{what}-{socket.gethostname()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(base: Path) -> None:
    """Clean up after killed exports of this host (their pid is gone): delete
    their temporary folders, but put back a folder that was moved aside for
    replacement when the kill came before its successor was renamed in."""
    host = socket.gethostname()
    for path in sorted(base.iterdir()):
        match = _TEMP.match(path.name)
        if not match or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        original = base / match["what"]
        if path.name.startswith(".old-") and not original.exists():
            os.rename(path, original)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Flush files and folders to disk so the rename publishes complete data."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_folder(base: Path, what: str | int) -> Iterator[Path]:
    """A fresh dot-named folder in `base`, removed unless it was renamed away."""
    temp = base / _temp_name(what)
    shutil.rmtree(temp, ignore_errors=True)
    try:
        temp.mkdir()
    except OSError as err:
        raise ExportError(f"cannot write in {base}: {err.strerror or err}") from None
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    """Turn file-system failures while writing into one-line `ExportError`s."""
    try:
        yield
    except OSError as err:
        raise ExportError(f"cannot write {target}: {err.strerror or err}") from None
    except (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as err:
        raise ExportError(f"cannot write {target}: {err.message}") from None


def _replace_folder(temp: Path, target: Path) -> None:
    """Put `temp` at `target`, replacing an existing folder with a rollback on failure."""
    if not target.exists():
        os.rename(temp, target)
        return
    old = target.with_name(_temp_name(target.name, kind="old"))
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    try:
        os.rename(temp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- SavedModel ----------------------------------------------------------------


def _images_spec(model: VAE) -> tf.TensorSpec:
    return tf.TensorSpec([None, *model.image_shape], tf.float32, name="images")


def _z_spec(model: VAE) -> tf.TensorSpec:
    return tf.TensorSpec([None, model.latent_dim], tf.float32, name="z")


def _checked_images(model: VAE, images: tf.Tensor) -> tf.Tensor:
    """Shape check, NaN/Inf refusal and clipping to [0, 1] (see the module docstring)."""
    images = tf.ensure_shape(images, [None, *model.image_shape])
    images = tf.debugging.check_numerics(images, "images must be finite pixels in [0, 1]")
    return tf.clip_by_value(images, 0.0, 1.0)


def _checked_z(model: VAE, z: tf.Tensor) -> tf.Tensor:
    z = tf.ensure_shape(z, [None, model.latent_dim])
    return tf.debugging.check_numerics(z, "z must be finite")


def _serving_endpoints(model: VAE) -> dict[str, tuple[Callable, list[tf.TensorSpec]]]:
    """The signatures: name -> (function returning a dict of named outputs, inputs)."""
    images, z = _images_spec(model), _z_spec(model)

    def reconstruct(images):
        return {"probabilities": model(_checked_images(model, images))}

    def encode(images):
        z_mean, z_stddev = model.encoder.params(_checked_images(model, images))
        return {"z_mean": z_mean, "z_stddev": z_stddev}

    def decode(z):
        logits = model.decoder.logits(_checked_z(model, z))
        return {"probabilities": tf.sigmoid(logits), "logits": logits}

    def sample(count, seed):
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(count, message="count must be >= 0"),
                tf.debugging.assert_less_equal(
                    count, MAX_SAMPLE_COUNT, message=f"count must be <= {MAX_SAMPLE_COUNT}"
                ),
            ]
        ):
            count = tf.identity(count)
        return {"probabilities": model.sample(count, seed=seed)}

    def elbo(images):
        terms = model.elbo_terms(_checked_images(model, images), seed=ELBO_SEED)
        return {key: terms[key] for key in ("elbo", "kl", "log_likelihood")}

    scalar = [
        tf.TensorSpec([], tf.int32, name="count"),
        tf.TensorSpec([], tf.int32, name="seed"),
    ]
    return {
        "serving_default": (reconstruct, [images]),
        "reconstruct": (reconstruct, [images]),
        "encode": (encode, [images]),
        "decode": (decode, [z]),
        "sample": (sample, scalar),
        "elbo": (elbo, [images]),
    }


def _archive(model: VAE, endpoints: dict[str, tuple[Callable, list[tf.TensorSpec]]]):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    return archive


def export_savedmodel(
    model: VAE, out_dir: str | os.PathLike, name: str, version: int | None = None
) -> Path:
    """Write `out_dir/<name>/<version>/` (saved_model.pb + variables/) for TF Serving.

    `version=None` takes the next free integer (one above the highest, so TF
    Serving switches to it); an existing version is refused. The export appears
    atomically: it is written to `.tmp-<version>-<host>-<pid>` and renamed.
    Returns the version folder.
    """
    _check_model(model)
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise ExportError(f"version must be a positive integer, got {version!r}")
    base = _model_dir(out_dir, name)
    _remove_stale_temps(base)
    if version is not None and (base / str(version)).exists():
        raise ExportError(
            f"{base / str(version)} already exists; pick another --version or omit it"
        )
    archive = _archive(model, _serving_endpoints(model))
    chosen = version if version is not None else next_version(out_dir, name)
    with _temp_folder(base, chosen) as temp, _write_errors(base / str(chosen)):
        archive.write_out(str(temp), verbose=False)
        _fsync_tree(temp)
        while True:
            target = base / str(chosen)
            try:
                if target.exists():  # os.rename would silently replace an empty folder
                    raise FileExistsError(target)
                os.rename(temp, target)
                break
            except OSError as err:
                if not isinstance(err, FileExistsError) and not target.exists():
                    raise
                if version is not None:  # another process took it meanwhile
                    raise ExportError(f"{target} already exists; pick another --version") from None
                chosen = next_version(out_dir, name)
        _fsync_dir(base)
    return target


# --- fidelity of converted files -----------------------------------------------------


def scaled_error(converted: np.ndarray, keras_value: np.ndarray) -> np.ndarray:
    """|converted - keras| / (1 + |keras|): absolute where values are small
    (probabilities, stddevs), relative where they are large (a trained
    decoder's logits reach tens, and float rounding scales with them)."""
    keras_value = np.asarray(keras_value, np.float64)
    return np.abs(np.asarray(converted, np.float64) - keras_value) / (1.0 + np.abs(keras_value))


def fidelity(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """Per output: the mean, 99th percentile and maximum of the scaled error,
    and the largest absolute difference. A NaN output value makes its figures NaN."""
    report = {}
    for key, value in sorted(outputs.items()):
        error = scaled_error(value, reference[key])
        report[key] = {
            "mean": float(error.mean()),
            "p99": float(np.quantile(error, 0.99)),
            "max": float(error.max()),
            "max_abs_diff": float(np.abs(value - reference[key]).max()),
        }
    return report


def _check_fidelity(label: str, report: dict, limits: dict[str, float]) -> None:
    """Refuse a file whose mean or 99th-percentile scaled error on any output
    is above `limits`: rounding and quantization stay far below them, a file
    that lost weights or an op lands far above (benchmarks/RESULTS.md)."""
    for key, stats in report.items():
        for stat, limit in limits.items():
            if not stats[stat] <= limit:  # also catches NaN
                raise ExportError(
                    f"{label} differs from the Keras model ({key}: {stat} scaled error "
                    f"{stats[stat]:.3g} > {limit:g}); the conversion is broken, not exported"
                )


def _check_images(model: VAE, check_images: np.ndarray | None) -> tuple[np.ndarray, str]:
    if check_images is None:
        # In-distribution without a data set: the model's own samples, drawn binary
        # as the training images were.
        images = np.asarray(model.sample(DEFAULT_CHECK_IMAGES, seed=0, binary=True), np.float32)
        return images, f"{DEFAULT_CHECK_IMAGES} binary samples of the model (seed 0)"
    images = np.asarray(check_images, dtype=np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.image_shape) or not len(images):
        raise ExportError(
            f"check_images must be a non-empty [n, {', '.join(map(str, model.image_shape))}] "
            f"array, got shape {images.shape}"
        )
    if not np.isfinite(images).all():
        raise ExportError("check_images must be finite pixels in [0, 1]; found NaN or Inf")
    return images, f"{len(images)} given images"


def _keras_reference(model: VAE, images: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Inputs and Keras outputs of each file: the encoder on `images`, the
    decoder on their posterior means and on as many draws from the prior."""
    z_mean, z_stddev = model.encoder.params(tf.constant(images))
    prior_z = tf.random.stateless_normal(tf.shape(z_mean), seed=(0, 1), alg="philox")
    z = tf.concat([z_mean, prior_z], axis=0)
    logits = model.decoder.logits(z)
    return {
        "encoder": {"images": images, "z_mean": z_mean.numpy(), "z_stddev": z_stddev.numpy()},
        "decoder": {
            "z": z.numpy(),
            "logits": logits.numpy(),
            "probabilities": tf.sigmoid(logits).numpy(),
        },
    }


# --- TFLite and ONNX files -----------------------------------------------------------


def _deterministic_endpoints(model: VAE) -> dict[str, tuple[Callable, list[tf.TensorSpec]]]:
    """Deterministic, builtin-op-only entry points (no asserts, no random ops)."""

    def encode(images):
        z_mean, z_stddev = model.encoder.params(tf.clip_by_value(images, 0.0, 1.0))
        return {"z_mean": z_mean, "z_stddev": z_stddev}

    def decode(z):
        logits = model.decoder.logits(z)
        return {"probabilities": tf.sigmoid(logits), "logits": logits}

    return {"encode": (encode, [_images_spec(model)]), "decode": (decode, [_z_spec(model)])}


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
    (`_check_fidelity`) before the folder replaces any previous one atomically.
    """
    _check_model(model)
    images, images_note = _check_images(model, check_images)
    base = _model_dir(out_dir, name)
    _remove_stale_temps(base)
    target = base / fmt
    reference = _keras_reference(model, images)
    with _temp_folder(base, fmt) as temp, _write_errors(target):
        files: dict[str, Any] = {}
        for part, signature in _PARTS.items():
            converted = convert(temp, part, signature)
            ref = reference[part]
            outputs = converted.run({i["name"]: ref[i["name"]] for i in converted.inputs})
            report = fidelity(outputs, ref)
            _check_fidelity(f"{part}.{fmt}", report, limits)
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
        _fsync_tree(temp)
        _replace_folder(temp, target)
        _fsync_dir(base)
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
    _check_model(model)
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    archive = _archive(model, _deterministic_endpoints(model))

    base = _model_dir(out_dir, name)
    with _temp_folder(base, "savedmodel") as source, _write_errors(base / "tflite"):
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
