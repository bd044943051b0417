"""Image data: the data set type, its sources and the pipelines that feed the VAE.

`load_dataset("mnist" | "idx:DIR" | "images:DIR" | "tfds:NAME[/CONFIG]")` gives
an `ImageDataset`; `train_pipeline` and `test_pipeline` turn it into batches.
"""

from tfvae.data.dataset import TEST_BINARIZATION_SEED, ImageDataset, fixed_binarization
from tfvae.data.pipelines import image_pipeline, test_pipeline, train_pipeline
from tfvae.data.run_data import SPLITS, RunData
from tfvae.data.sources import load_dataset, load_idx_folder
from tfvae.errors import DataError

__all__ = [
    "TEST_BINARIZATION_SEED",
    "DataError",
    "ImageDataset",
    "RunData",
    "SPLITS",
    "fixed_binarization",
    "image_pipeline",
    "load_dataset",
    "load_idx_folder",
    "test_pipeline",
    "train_pipeline",
]
