"""How far exported files are from the Keras model, and how far broken ones are.

For each run folder, converts the model to TFLite (every quantization) and
ONNX and runs the files (LiteRT, onnxruntime) on the run's own test images,
with the export check's limits lifted, and reports the check's figures per
output: mean, 99th percentile and maximum of |file - keras| / (1 + |keras|).
The int8 files are calibrated on the run's first training images, as
`tfvae export` does. Then does the same for broken conversions (float32 and
int8), compared with the intact model: the damaged copies of
`tfvae.testing.damaged_copy` (what a conversion that lost its weights or an
op would give).

These are the numbers `tfvae.export.FIDELITY` is set from. Writes
benchmarks/results/export_fidelity.json with the machine it ran on.

    python benchmarks/export_fidelity.py runs/mnist [runs/other ...] [--images 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, quiet_tensorflow, write_results  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402

from tfvae import export  # noqa: E402
from tfvae.export import files  # noqa: E402
from tfvae.export.run import CALIBRATION_IMAGES  # noqa: E402
from tfvae.runs import run_images  # noqa: E402
from tfvae.testing import DAMAGES, damaged_copy  # noqa: E402


def measure(
    model, images, fmt: str, quantize: str, reference_model, calibration=None
) -> dict[str, Any]:
    """The export's fidelity report for `model`'s files against `reference_model`."""
    unlimited = {"mean": np.inf, "p99": np.inf}
    saved = dict(export.FIDELITY), files.keras_reference
    export.FIDELITY.update({q: unlimited for q in export.QUANTIZATIONS})
    files.keras_reference = lambda _, x, labels: saved[1](reference_model, x, labels)
    try:
        with tempfile.TemporaryDirectory() as out:
            if fmt == "onnx":
                folder = export.export_onnx(model, out, "m", check_images=images)
            else:
                folder = export.export_tflite(
                    model, out, "m", quantize, check_images=images, calibration_images=calibration
                )
            manifest = json.loads((folder / "manifest.json").read_text())
    finally:
        export.FIDELITY.update(saved[0])
        files.keras_reference = saved[1]
    return {part: info["fidelity"] for part, info in manifest["files"].items()}


def print_rows(label: str, report: dict[str, Any]) -> None:
    for part, outputs in report.items():
        for key, stats in outputs.items():
            print(
                f"{label:<36} {part:<8} {key:<14} mean {stats['mean']:.2e}  "
                f"p99 {stats['p99']:.2e}  max {stats['max']:.2e}  "
                f"max|diff| {stats['max_abs_diff']:.2e}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("--images", type=int, default=1000, help="test images per check")
    parser.add_argument("--no-broken", action="store_true", help="skip the broken copies")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    results: dict[str, Any] = {}
    for run_dir in args.runs:
        run, images = run_images(run_dir, "test", limit=args.images)
        calibration = run_images(run_dir, "train", limit=CALIBRATION_IMAGES)[1]
        model, rows = run.model, {}
        cases = [("tflite", q) for q in export.QUANTIZATIONS] + [("onnx", "none")]
        for fmt, quantize in cases:
            label = f"{run_dir.name} {fmt}/{quantize}"
            report = measure(model, images, fmt, quantize, model, calibration)
            rows[f"{fmt}/{quantize}"] = report
            print_rows(label, report)
        for how in () if args.no_broken else DAMAGES:
            for quantize in ("none", "int8"):
                label = f"{run_dir.name} tflite/{quantize} {how}"
                broken = damaged_copy(model, how)
                report = measure(broken, images, "tflite", quantize, model, calibration)
                rows["broken/" + how + ("/int8" if quantize == "int8" else "")] = report
                print_rows(label, report)
        results[str(run_dir)] = {"config": run.state.config.to_dict(), "fidelity": rows}
    path = write_results(
        "export_fidelity",
        {
            "images": args.images,
            "calibration_images": CALIBRATION_IMAGES,
            "limits": export.FIDELITY,
            "runs": results,
            "machine": machine(with_gpus=False),
        },
        args.out,
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
