"""tfvae: the variational auto-encoder of Kingma & Welling in Keras 3 and TFP.

The public API is loaded on first use, so `import tfvae` (and the command
line's `--help`) stays instant until TensorFlow is really needed.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "VAE": "tfvae.model",
    "GaussianEncoder": "tfvae.layers",
    "BernoulliDecoder": "tfvae.layers",
    "ImageDataset": "tfvae.data",
    "load_dataset": "tfvae.data",
    "train_pipeline": "tfvae.data",
    "test_pipeline": "tfvae.data",
    "TrainConfig": "tfvae.runs",
    "load_run": "tfvae.runs",
    "train": "tfvae.training",
    "evaluate_elbo": "tfvae.evaluation",
    "iw_log_likelihood": "tfvae.evaluation",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tfvae' has no attribute {name!r}")
