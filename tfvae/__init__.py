"""tfvae: the variational auto-encoder of Kingma & Welling in Keras 3 and TFP.

The public API is loaded on first use, so `import tfvae` (and the command
line's `--help`) stays instant until TensorFlow is really needed. Keras still
finds tfvae's classes in a `.keras` file as soon as both are imported, in
either order: `import tfvae; keras.saving.load_model("model.keras")` works
in safe mode.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# The one version string; pyproject.toml reads it from here.
__version__ = "0.2.0"

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
    "load_model": "tfvae.runs",
    "open_run": "tfvae.runs",
    "train": "tfvae.training",
    "resume": "tfvae.training",
    "evaluate_elbo": "tfvae.evaluation",
    "iw_log_likelihood": "tfvae.evaluation",
    "score_run": "tfvae.runs",
    "RunFolder": "tfvae.runs",
    "ObjectiveConfig": "tfvae.config",
    "RunData": "tfvae.data",
    "export_run": "tfvae.export",
    "score": "tfvae.scoring",
    "score_report": "tfvae.scoring",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tfvae' has no attribute {name!r}")


# The classes tfvae registers with Keras (as "tfvae>NAME") and their modules.
_KERAS_CLASSES = {
    "VAE": "tfvae.model",
    "GaussianEncoder": "tfvae.layers",
    "ImageDecoder": "tfvae.layers",
    "TopDownEncoder": "tfvae.layers",
    "MeanTerms": "tfvae.metrics",
    "ResidualBlock": "tfvae.resnet",
}


class _Deferred:
    """Stands in Keras' registry for a tfvae class until its module is
    imported (which then registers the class itself): Keras builds objects
    with `from_config`, which imports the module and hands over."""

    def __init__(self, name: str):
        self.name = name

    def from_config(self, config):
        cls = getattr(importlib.import_module(_KERAS_CLASSES[self.name]), self.name)
        return cls.from_config(config)


def _register_with(keras) -> None:
    objects = keras.saving.get_custom_objects()
    for name in _KERAS_CLASSES:
        objects.setdefault(f"tfvae>{name}", _Deferred(name))


class _WhenKerasLoads(importlib.abc.MetaPathFinder):
    """Registers tfvae's classes once Keras' own import finishes. Importing
    Keras here would cost seconds (it imports TensorFlow); the classes'
    modules import TFP, so only stand-ins are registered (`_Deferred`)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register_with(module)

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_with(sys.modules["keras"])
else:
    sys.meta_path.insert(0, _WhenKerasLoads())
