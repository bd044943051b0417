"""The suite's one harness: tfvae's command line in this process or as a real
process, the named tiny settings of its training runs, the committed run
folders, and the one check every Keras class of tfvae passes."""

from __future__ import annotations

import numpy as np

from tfvae.data import ImageDataset, RunData


def blank_run_data(image_shape, n_train: int) -> RunData:
    """A run's data of `n_train` blank images of `image_shape`: all a model is
    built from (its shape, and the steps of an epoch)."""
    blank = np.zeros((n_train, *image_shape), np.uint8)
    return RunData(ImageDataset("blank", blank, blank[:1]), None, "dynamic")
