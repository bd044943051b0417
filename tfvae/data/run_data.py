"""A run's images as its settings make them: the one place a run's data set is
rebuilt, by training and by everything that reads a finished run (evaluation,
pictures, export)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from tfvae.data.dataset import ImageDataset
from tfvae.data.sources import load_dataset
from tfvae.errors import DataError

if TYPE_CHECKING:
    from tfvae.config import TrainConfig
    from tfvae.data.streams import ScoredImages
    from tfvae.progress import Progress

# The splits a run's images can be scored on: the training images it trained
# on, the validation images it held out of them, and the test images.
SPLITS = ("test", "train", "validation")


@dataclasses.dataclass(frozen=True)
class RunData:
    """The data set of a run as its settings make it: the one place a run's
    images are rebuilt, by training and by everything that reads a finished
    run.

    Attributes:
        data: The set, its training images without those held out (the last
            `--validation` of them), and its test images.
        validation: The held-out images as scored; None without them.
        pixels: The pixel treatment the images are trained and scored under.
        validation_facts: The held-out images' labels and files, each None
            where the set has none.
    """

    data: ImageDataset
    validation: np.ndarray | ScoredImages | None
    pixels: str
    validation_facts: tuple[np.ndarray | None, tuple[str, ...] | None] = (None, None)

    @classmethod
    def load(cls, config: TrainConfig, progress: Progress | None = None) -> RunData:
        """The set `config` names, as the run trains on it.

        Args:
            config: The run's settings: its data set, `limit`, `validation`
                and pixel treatment.
            progress: Hears how far the check of an image folder's files is.

        Returns:
            The set, limited to `limit` images, with the last `validation`
                training images held out.

        Raises:
            DataError: The set cannot be loaded, or holds too few images.
        """
        data = load_dataset(config.dataset, config.data_dir, config.resize, progress)
        if config.limit is not None:
            data = data.limit(config.limit, config.limit)
        validation, facts = None, (None, None)
        if config.validation:
            facts = data.facts("train", config.validation)
            data, validation = data.hold_out(config.validation, config.pixels)
        return cls(data, validation, config.pixels, facts)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.data.image_shape

    @property
    def held_out(self) -> str:
        """The split scored after every epoch: `validation`, or without it `test`."""
        return "test" if self.validation is None else "validation"

    def scored(self, split: str, limit: int | None = None) -> np.ndarray | ScoredImages:
        """A split's images as they are scored.

        Args:
            split: `test`, `train` (the images trained on, without the
                validation images) or `validation`.
            limit: Only the first this many images; None for all.

        Returns:
            float32 `[n, height, width, channels]` in [0, 1].

        Raises:
            DataError: An unknown split, or `validation` of a run that held
                none out.
        """
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if split == "validation":
            if self.validation is None:
                raise DataError(
                    f"{self.data.name}: this run held no validation images out "
                    "(trained without --validation); use --split test or train"
                )
            images = self.validation
        else:
            images = self.data.scored(split, self.pixels)
        return images if limit is None else np.asarray(images[:limit])

    def facts(self, split: str) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
        """A split's labels and image files.

        Args:
            split: `test`, `train` or `validation`.

        Returns:
            The labels, int `[n]`, and the files, each None where the set
                has none.
        """
        if split == "validation":
            return self.validation_facts
        return self.data.facts(split)

    def in_memory(self) -> tuple[int, int]:
        """How many training images, and how many scored (test and validation)
        images, are held in memory: streamed images are read as they are used."""
        if self.data.streamed:
            return 0, 0
        held = len(self.data.test_images) + (0 if self.validation is None else len(self.validation))
        return len(self.data.train_images), held

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.data.train_images) / batch_size)

    def describe(self) -> str:
        """What the log says the run's data holds (`ImageDataset.describe`)."""
        return self.data.describe(0 if self.validation is None else len(self.validation))
