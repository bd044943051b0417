"""`tfvae export --format web`: a page that runs the model in any current
browser with LiteRT.js (the WASM build of LiteRT, on the CPU).

LiteRT.js, like TFLite Micro and the Edge TPU compiler, runs static shapes
only, so the folder holds TFLite files with a fixed batch: the encoder at 1,
the decoder at 1 and at `SAMPLE_BATCH` (the sample grid and the 2-D manifold
in few calls). Each is converted and checked against Keras by
`export_tflite(batch=...)` before the page is written around it, and the
folder is published atomically like every export. A conditional model's
files also take the class (`labels`), and the page gets a class picker.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from tfvae.export.fidelity import check_inputs
from tfvae.export.files import export_tflite
from tfvae.export.publish import (
    check_model,
    model_dir,
    publish_folder,
    remove_stale_temps,
    temp_folder,
    write_errors,
)

if TYPE_CHECKING:
    from tfvae.model import VAE

# The LiteRT.js release the page was tested with (tests/browser/package.json).
LITERT_JS_VERSION = "2.5.3"
LITERT_JS_PACKAGES = ("core", "wasm-utils")
_CDN = "https://cdn.jsdelivr.net/npm/@litertjs/{package}@{version}/dist/index.js"
_ASSETS = resources.files("tfvae") / "resources" / "web"
# Test images shipped with the page, shown with their reconstructions.
EXAMPLES = 8
SAMPLE_BATCH = 16
# Latent units given a slider when the latent space is not 2-D.
SLIDERS = 5


def import_map(litert_js: str | None = None) -> dict[str, Any]:
    """Where the page imports LiteRT.js from: `litert_js` a folder or URL laid
    out as `node_modules/@litertjs/` is (`BASE/core/dist/index.js`, ...), or
    None for the CDN at the tested version."""
    if litert_js is None:
        urls = {p: _CDN.format(package=p, version=LITERT_JS_VERSION) for p in LITERT_JS_PACKAGES}
    else:
        base = litert_js.rstrip("/")
        urls = {p: f"{base}/{p}/dist/index.js" for p in LITERT_JS_PACKAGES}
    return {"imports": {f"@litertjs/{p}": url for p, url in urls.items()}}


def _static_files(
    model: VAE, scratch: Path, images: np.ndarray, labels: np.ndarray | None
) -> dict[str, list[dict]]:
    """`{encoders, decoders}`: the checked static-shape files, copied into
    `scratch`, each with its batch, input shape and measured fidelity."""
    found: dict[str, list[dict]] = {"encoders": [], "decoders": []}
    for batch in (1, SAMPLE_BATCH):
        folder = export_tflite(
            model,
            scratch / "tflite",
            f"b{batch}",
            check_images=images,
            batch=batch,
            check_labels=labels,
        )
        manifest = json.loads((folder / "manifest.json").read_text())
        for part, shape in (("decoder", [model.code_dim]), ("encoder", list(model.image_shape))):
            if part == "encoder" and batch != 1:
                continue  # the page encodes a handful of images, one at a time
            name = f"{part}-b{batch}.tflite"
            shutil.copyfile(folder / f"{part}.tflite", scratch / name)
            fidelity = manifest["files"][part]["fidelity"]
            found[f"{part}s"].append(
                {"file": name, "batch": batch, "shape": shape, "fidelity": fidelity}
            )
        shutil.rmtree(folder.parent)
    shutil.rmtree(scratch / "tflite")
    return found


def _explore(model: VAE, images: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """The units the sliders move: those whose posterior means spread most
    over the images (for a 2-D space, both, shown as the manifold)."""
    spread = model.posterior_means(images, labels=labels).std(axis=0)
    units = [int(u) for u in np.argsort(-spread)[: min(SLIDERS, model.code_dim)]]
    return {"units": units, "spread": [round(float(spread[u]), 4) for u in units]}


def _page(name: str, litert_js: str | None) -> str:
    template = (_ASSETS / "index.html").read_text()
    return template.replace("{{name}}", name).replace(
        "{{import_map}}", json.dumps(import_map(litert_js), indent=1)
    )


def export_web(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    check_images: np.ndarray | None = None,
    litert_js: str | None = None,
    check_labels: np.ndarray | None = None,
) -> Path:
    """Write `out_dir/<name>/web/`: `index.html`, `app.js`, the static-shape
    TFLite files, `model.json` (shapes, files, fidelity) and `examples.json`
    (the first `EXAMPLES` check images, shown with their reconstructions).

    `check_images` are real images of the model's data (default: its own
    samples; a conditional model's with their `check_labels`, also shipped
    in `examples.json`); `litert_js` is where the page loads LiteRT.js from (see
    `import_map`). Serve the folder over HTTP (`python -m http.server`):
    browsers load neither ES modules nor WASM from `file://`.
    """
    check_model(model)
    images, labels, _ = check_inputs(model, check_images, labels=check_labels)
    base = model_dir(out_dir, name)
    remove_stale_temps(base)
    target = base / "web"
    with temp_folder(base, "web") as temp, write_errors(target):
        files = _static_files(model, temp, images, labels)
        info = {
            "name": name,
            "image_shape": list(model.image_shape),
            "latent_dim": int(model.code_dim),
            "classes": list(model.classes) if model.conditional else None,
            # The decoder output the page draws: E[x|z] as intensities.
            "mean_output": model.decoder.likelihood.mean_name,
            **files,
            "explore": _explore(model, images, labels),
            "litert_js": import_map(litert_js)["imports"],
            "tensorflow_version": tf.__version__,
        }
        (temp / "model.json").write_text(json.dumps(info, indent=1) + "\n")
        examples = images[:EXAMPLES].reshape(min(EXAMPLES, len(images)), -1)
        shown = {"images": examples.tolist()}
        if labels is not None:
            shown["labels"] = labels[:EXAMPLES].tolist()
        (temp / "examples.json").write_text(json.dumps(shown))
        (temp / "index.html").write_text(_page(name, litert_js))
        (temp / "app.js").write_bytes((_ASSETS / "app.js").read_bytes())
        publish_folder(temp, target)
    return target
