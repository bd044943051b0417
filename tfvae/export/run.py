"""A finished run's model to the formats people deploy, as `tfvae export` does."""

from __future__ import annotations

import re
from pathlib import Path

from tfvae.evaluation import run_images
from tfvae.export.files import export_onnx, export_tflite
from tfvae.export.savedmodel import SIGNATURES, export_savedmodel

# Real test images that the TFLite and ONNX files are checked on against Keras.
CHECK_IMAGES = 256


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
) -> list[str]:
    """Export the run in `formats` (savedmodel, tflite, onnx or all); return
    one line per artifact written, saying where it is."""
    run, images = run_images(run_dir, "test", limit=CHECK_IMAGES)
    name = name or default_name(Path(run_dir))
    lines = []
    if formats in ("savedmodel", "all"):
        path = export_savedmodel(run.model, out, name, version)
        lines.append(f"SavedModel: {path} (signatures: {', '.join(SIGNATURES)})")
    if formats in ("tflite", "all"):
        path = export_tflite(run.model, out, name, quantize, check_images=images)
        lines.append(f"TFLite ({quantize}): {path} (see manifest.json)")
    if formats == "onnx" or (formats == "all" and _has_onnx()):
        path = export_onnx(run.model, out, name, check_images=images)
        lines.append(f"ONNX: {path} (see manifest.json)")
    elif formats == "all":
        lines.append("ONNX skipped: install the extra with pip install 'tfvae[onnx]'")
    return lines


def _has_onnx() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))
