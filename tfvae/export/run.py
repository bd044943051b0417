"""A finished run's model to the formats people deploy, as `tfvae export` does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tfvae.errors import ExportError
from tfvae.evaluation import run_images
from tfvae.export.files import export_onnx, export_tflite
from tfvae.export.savedmodel import SIGNATURES, export_savedmodel
from tfvae.export.web import export_web

# Real test images that the TFLite and ONNX files are checked on against Keras
# (the first also goes into the SavedModel's warm-up requests).
CHECK_IMAGES = 256
# Training images the int8 TFLite files are calibrated on.
CALIBRATION_IMAGES = 500


def default_name(run_dir: Path) -> str:
    """The run folder's name, made safe as a TF Serving model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(run_dir).resolve().name).strip(".-") or "vae"


def export_run(
    run_dir: str | Path,
    formats: str = "savedmodel",
    out: str | Path = "exports",
    name: str | None = None,
    version: int | None = None,
    quantize: str = "none",
    batch: int | None = None,
    litert_js: str | None = None,
) -> list[dict[str, Any]]:
    """Export the run in `formats` (savedmodel, tflite, onnx, all or web);
    return one record per artifact written: its format, folder, files and
    (for the SavedModel) version, or why it was skipped. `batch` fixes the
    TFLite files' batch dimension; `litert_js` is where a web page loads
    LiteRT.js from (`tfvae.export.web.import_map`)."""
    if formats == "web" and (quantize != "none" or batch is not None):
        raise ExportError(
            "--quantize and --batch shape TFLite files; the web page's files are float32 "
            "at the batches it needs (drop them, or export --format tflite as well)"
        )
    run, images = run_images(run_dir, "test", limit=CHECK_IMAGES)
    name = name or default_name(Path(run_dir))
    written = []
    if formats in ("savedmodel", "all"):
        path = export_savedmodel(run.model, out, name, version, warmup_images=images)
        written.append({**_record("savedmodel", path), "version": int(path.name)})
    if formats in ("tflite", "all"):
        calibration = None
        if quantize == "int8":  # calibrated on training images, checked on test images
            calibration = run_images(run_dir, "train", limit=CALIBRATION_IMAGES)[1]
        path = export_tflite(
            run.model,
            out,
            name,
            quantize,
            check_images=images,
            calibration_images=calibration,
            batch=batch,
        )
        written.append({**_record("tflite", path), "quantization": quantize, "batch": batch})
    if formats == "onnx" or (formats == "all" and _has_onnx()):
        written.append(_record("onnx", export_onnx(run.model, out, name, check_images=images)))
    elif formats == "all":
        written.append(
            {"format": "onnx", "skipped": "install the extra: pip install 'tfvae[onnx]'"}
        )
    if formats == "web":
        path = export_web(run.model, out, name, check_images=images, litert_js=litert_js)
        written.append(_record("web", path))
    return written


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
