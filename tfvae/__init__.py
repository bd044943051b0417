"""tfvae: the variational auto-encoder of Kingma & Welling in Keras 3 and TFP.

The public API is loaded on first use, so `import tfvae` (and the command
line's `--help`) stays instant until TensorFlow is really needed.
"""

import importlib

# The one version string; pyproject.toml reads it from here.
__version__ = "0.1.0"

_API = {
    "VAE": "tfvae.model",
    "GaussianEncoder": "tfvae.layers",
    "ImageDecoder": "tfvae.layers",
    "BernoulliDecoder": "tfvae.layers",
    "ImageDataset": "tfvae.data",
    "load_dataset": "tfvae.data",
    "train_pipeline": "tfvae.data",
    "test_pipeline": "tfvae.data",
    "image_pipeline": "tfvae.data",
    "ModelConfig": "tfvae.config",
    "TrainConfig": "tfvae.config",
    "load_run": "tfvae.runs",
    "train": "tfvae.training",
    "resume": "tfvae.training",
    "evaluate_elbo": "tfvae.evaluation",
    "iw_log_likelihood": "tfvae.evaluation",
    "score_run": "tfvae.evaluation",
    "export_run": "tfvae.export",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tfvae' has no attribute {name!r}")
