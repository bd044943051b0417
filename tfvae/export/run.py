"""A finished run's model to the formats people deploy, as `tfvae export` does."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tfvae.errors import ExportError
from tfvae.export.files import export_onnx, export_tflite
from tfvae.export.savedmodel import SIGNATURES, export_savedmodel
from tfvae.export.web import export_web
from tfvae.model import VAE
from tfvae.progress import Progress
from tfvae.runs import HUB_PREFIX, KERAS_SUFFIX, MODEL_FILE, Run, open_run

# Real test images that the TFLite and ONNX files are checked on against Keras
# (the first also goes into the SavedModel's warm-up requests).
CHECK_IMAGES = 256
# Training images the int8 TFLite files are calibrated on.
CALIBRATION_IMAGES = 500
# The split each is taken from, how many, and the seed of the draws from p(x|z)
# that stand in for them when a model file has no data.
_IMAGES = {"test": (CHECK_IMAGES, 0), "train": (CALIBRATION_IMAGES, 1)}


def default_name(source: str | Path) -> str:
    """The run folder's name, or a model file's (its folder's for a run's
    `model.keras`), made safe as a TF Serving model name."""
    path = Path(str(source).removeprefix(HUB_PREFIX)).resolve()
    name = path.parent.name if path.name == MODEL_FILE else path.name.removesuffix(KERAS_SUFFIX)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "vae"


def export_run(
    run_dir: str | Path,
    formats: str = "savedmodel",
    out: str | Path = "exports",
    name: str | None = None,
    version: int | None = None,
    quantize: str = "none",
    batch: int | None = None,
    litert_js: str | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Export a trained model to the formats people deploy, as `tfvae export`
    does. Every converted file is run and checked against the Keras model on
    the run's test images first; every folder is published atomically.

    Args:
        run_dir: A finished run folder or a model file (`open_run`).
        formats: `savedmodel` (TF Serving), `tflite`, `onnx`, `all` (the
            three; ONNX where its extra is installed) or `web` (a page).
        out: The folder exports go under, `out/name/`.
        name: The model's name; None: the run folder's.
        version: The SavedModel's version folder; None: the next free one.
        quantize: The TFLite files' quantization: `none` (float32),
            `float16`, `dynamic` (int8 weights) or `int8` (integer only,
            calibrated on training images).
        batch: A fixed batch for the TFLite files; None: dynamic.
        litert_js: Where the web page loads LiteRT.js from (`import_map`).
        progress: Hears each stage.

    Returns:
        One record per artifact written: its format, folder, files and (for
            the SavedModel) version, or why it was skipped.

    Raises:
        ExportError: An option that shapes nothing the formats write, or a
            converted file that differs from the Keras model.
        RunError: The run cannot be opened.
    """
    _check_options(formats, version, quantize, batch, litert_js)
    progress = progress or Progress.quiet()
    run = open_run(run_dir)
    request = _Request(
        run, *_images(run, "test"), Path(out), name or default_name(run_dir), version,
        quantize, batch, litert_js,
    )  # fmt: skip
    stages = _stages(formats)
    return [
        _EXPORTS[kind](request, progress, f"[{step}/{len(stages)}] " if len(stages) > 1 else "")
        for step, kind in enumerate(stages, 1)
    ]


@dataclasses.dataclass(frozen=True)
class _Request:
    """One `export_run`: the model, its check images (and a conditional
    model's labels of them) and the options."""

    run: Run
    images: np.ndarray
    labels: np.ndarray | None
    out: Path
    name: str
    version: int | None
    quantize: str
    batch: int | None
    litert_js: str | None

    @property
    def model(self) -> VAE:
        return self.run.model

    @property
    def check(self) -> dict[str, np.ndarray | None]:
        """The check images and labels, as every export takes them."""
        return {"check_images": self.images, "check_labels": self.labels}

    @property
    def checked(self) -> str:
        what = "test images" if self.run.file is None else "images drawn from the model"
        return f"checked against Keras on {len(self.images)} {what}"


def _images(run: Run, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Images to check (`test`) or calibrate (`train`) the files on, and a
    conditional model's labels of them: the run's own, or for a model file
    its draws from p(x|z) (of every class in turn)."""
    count, seed = _IMAGES[split]
    if run.file is None:
        return run.split(split, count)
    labels = run.model.every_class(count)
    return np.asarray(run.model.sample(count, seed=seed, binary=True, labels=labels)), labels


def _savedmodel(request: _Request, progress: Progress, head: str) -> dict[str, Any]:
    with progress.stage(f"{head}SavedModel: writing {request.out / request.name}/"):
        path = export_savedmodel(
            request.model, request.out, request.name, request.version, warmup_images=request.images
        )
    return {**_record("savedmodel", path), "version": int(path.name)}


def _tflite(request: _Request, progress: Progress, head: str) -> dict[str, Any]:
    _say_replaced(progress, request.out / request.name / "tflite", request.quantize, request.batch)
    calibration = None, None
    if request.quantize == "int8":  # calibrated on training images, checked on test images
        calibration = _images(request.run, "train")
    with progress.stage(f"{head}TFLite ({request.quantize}): converting, {request.checked}"):
        path = export_tflite(
            request.model,
            request.out,
            request.name,
            request.quantize,
            calibration_images=calibration[0],
            batch=request.batch,
            calibration_labels=calibration[1],
            **request.check,
        )
    return {**_record("tflite", path), "quantization": request.quantize, "batch": request.batch}


def _onnx(request: _Request, progress: Progress, head: str) -> dict[str, Any]:
    with progress.stage(f"{head}ONNX: converting, {request.checked}"):
        path = export_onnx(request.model, request.out, request.name, **request.check)
    return _record("onnx", path)


def _web(request: _Request, progress: Progress, head: str) -> dict[str, Any]:
    with progress.stage(f"{head}Web page: converting its four TFLite files, {request.checked}"):
        path = export_web(
            request.model, request.out, request.name, litert_js=request.litert_js, **request.check
        )
    return _record("web", path)


def _onnx_if_installed(request: _Request, progress: Progress, head: str) -> dict[str, Any]:
    """`--format all` exports ONNX where its extra is installed, and says so where not."""
    if not _has_onnx():
        return {"format": "onnx", "skipped": "install the extra: pip install 'tfvae[onnx]'"}
    return _onnx(request, progress, head)


_EXPORTS = {
    "savedmodel": _savedmodel,
    "tflite": _tflite,
    "onnx": _onnx,
    "onnx if installed": _onnx_if_installed,
    "web": _web,
}


def _stages(formats: str) -> list[str]:
    if formats == "all":
        return ["savedmodel", "tflite", "onnx if installed"]
    return [formats]


def _check_options(
    formats: str, version: int | None, quantize: str, batch: int | None, litert_js: str | None
) -> None:
    """Refuse options that would shape nothing the formats write."""
    if version is not None and formats not in ("savedmodel", "all"):
        raise ExportError(
            f"--model-version numbers SavedModels; --format {formats} writes none: drop it"
        )
    tflite = formats in ("tflite", "all")
    if not tflite and (quantize != "none" or batch is not None):
        given = "--quantize" if quantize != "none" else "--batch-size"
        why = (
            "the web page's files are float32 at the batches it needs"
            if formats == "web"
            else f"--format {formats} writes no TFLite file"
        )
        raise ExportError(f"{given} shapes TFLite files and {why}: drop it, or add --format tflite")
    if litert_js is not None and formats != "web":
        raise ExportError(f"--litert-js is for --format web; --format {formats} has no page")


def _say_replaced(progress: Progress, folder: Path, quantize: str, batch: int | None) -> None:
    """Say so when the export replaces TFLite files of another kind."""
    try:
        old = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    before = (old.get("quantization"), old.get("batch"))
    if before != (quantize, batch):
        progress.say(
            f"Replacing {folder} (quantization {before[0]}, batch {before[1] or 'dynamic'}) "
            f"with quantization {quantize}, batch {batch or 'dynamic'}"
        )


def _record(kind: str, path: Path) -> dict[str, Any]:
    files = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    return {"format": kind, "path": str(path), "files": files}


def describe_artifact(record: dict[str, Any]) -> str:
    """One line a person reads for an `export_run` record."""
    if "skipped" in record:
        return f"ONNX skipped: {record['skipped']}"
    if record["format"] == "savedmodel":
        return f"SavedModel: {record['path']} (signatures: {', '.join(SIGNATURES)})"
    if record["format"] == "tflite":
        return f"TFLite ({record['quantization']}): {record['path']} (see manifest.json)"
    if record["format"] == "web":
        return (
            f"Web page: {record['path']} (serve it over HTTP: "
            f"python -m http.server -d {record['path']})"
        )
    return f"ONNX: {record['path']} (see manifest.json)"


def _has_onnx() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))
