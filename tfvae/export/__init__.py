"""Export a trained VAE for serving: TF Serving SavedModels, LiteRT (TFLite)
files and ONNX, each published atomically where servers watch.

`export_run` exports a run folder as `tfvae export` does; `export_savedmodel`,
`export_tflite` and `export_onnx` take a model. Modules: `savedmodel` (the
signatures), `files` (TFLite and ONNX), `fidelity` (the check of converted
files), `warmup` (TF Serving's warm-up requests), `publish` (versions,
temporary folders, the final rename), `run`.
"""

from tfvae.errors import ExportError
from tfvae.export.fidelity import FIDELITY, fidelity_report, scaled_error
from tfvae.export.files import QUANTIZATIONS, export_onnx, export_tflite
from tfvae.export.publish import next_version
from tfvae.export.run import CHECK_IMAGES, describe_artifact, export_run
from tfvae.export.savedmodel import (
    ELBO_SEED,
    MAX_SAMPLE_COUNT,
    SCORE_K,
    SIGNATURES,
    export_savedmodel,
)

__all__ = [
    "CHECK_IMAGES",
    "ELBO_SEED",
    "FIDELITY",
    "MAX_SAMPLE_COUNT",
    "QUANTIZATIONS",
    "SCORE_K",
    "SIGNATURES",
    "ExportError",
    "describe_artifact",
    "export_onnx",
    "export_run",
    "export_savedmodel",
    "export_tflite",
    "fidelity_report",
    "next_version",
    "scaled_error",
]
