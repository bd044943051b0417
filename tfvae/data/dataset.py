"""The image data set type: train and test images as uint8 arrays, and the
one fixed binarization every score is computed on."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from tfvae.config import LEVELS, pixel_treatment

if TYPE_CHECKING:
    from tfvae.data.streams import ScoredImages, StreamedImages, StreamedLabels

# The test split is binarized once with this seed (numpy PCG64), the same
# draw as the PyTorch peer's, so test figures compare across runs and packages.
TEST_BINARIZATION_SEED = 0
# The validation images (held out of the training split) get their own draw.
VALIDATION_BINARIZATION_SEED = 1
# Sets with no test split give up the last tenth of `train`, always the same images.
HELD_OUT_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Train and test images with optional integer labels, as
    `load_dataset` gives them.

    Attributes:
        name: The set's name in logs and errors: its spec (`mnist`,
            `idx:DIR`, `images:DIR`), or a TFDS set's `NAME[/CONFIG]`.
        train_images: uint8 `[n, height, width, channels]`, in memory or
            streamed from disk (`streams.StreamedImages`).
        test_images: uint8 `[n, height, width, channels]`, likewise.
        train_labels: int `[n]`, or None; a TFDS set streamed from its
            records reads them when they are used (`streams.StreamedLabels`).
        test_labels: int `[n]`, or None.
        binary: The pixels are already 0/1, and are never binarized again;
            otherwise they are grey levels 0..255.
        classes: The class names by label index, where the set names them
            (folders, TFDS).
        train_paths: Each training image's file, for sets read from image
            files.
        test_paths: Each test image's file, likewise.
    """

    name: str
    train_images: np.ndarray | StreamedImages
    test_images: np.ndarray | StreamedImages
    train_labels: np.ndarray | StreamedLabels | None = None
    test_labels: np.ndarray | None = None
    binary: bool = False
    # The class names by label index, where the set names them (folders, TFDS).
    classes: tuple[str, ...] | None = None
    # Each image's file, for sets read from image files (in split order).
    train_paths: tuple[str, ...] | None = None
    test_paths: tuple[str, ...] | None = None

    @property
    def streamed(self) -> bool:
        """True when the images are read from disk as used (`streams.StreamedImages`)."""
        return not isinstance(self.train_images, np.ndarray)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The images' `(height, width, channels)`."""
        return tuple(int(d) for d in self.train_images.shape[1:])

    def describe(self, validation: int = 0) -> str:
        """What the log says the set holds: its name, the images of each split
        (`validation` of them held out of the training images), their shape
        and classes, as Keras' "Found N files belonging to C classes" does."""
        counts = [f"{len(self.train_images):,} training"]
        if validation:
            counts.append(f"{validation:,} validation (held out of training)")
        counts.append(f"{len(self.test_images):,} test images")
        height, width, channels = self.image_shape
        kinds = {1: "grey", 3: "RGB"}
        kind = "binary" if self.binary else kinds.get(channels, f"{channels}-channel")
        parts = [", ".join(counts[:-1]) + " and " + counts[-1], f"{height}x{width} {kind}"]
        parts.append(self._classes_text())
        if self.streamed:
            parts.append("streamed from disk")
        return f"{self.name}: " + ", ".join(parts)

    def _classes_text(self) -> str:
        labels = [x for x in (self.train_labels, self.test_labels) if x is not None]
        if not labels:
            return "no labels"
        n = len(self.classes) if self.classes else len(np.unique(np.concatenate(labels)))
        names = f" ({', '.join(self.classes)})" if self.classes and n <= 10 else ""
        return f"{n} classes{names}"

    def facts(
        self, split: str, last: int | None = None
    ) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
        """A split's labels and image files (of its `last` images), each None
        where the set has none."""
        labels, paths = {
            "train": (self.train_labels, self.train_paths),
            "test": (self.test_labels, self.test_paths),
        }[split]
        if last is not None:
            labels = None if labels is None else labels[-last:]
            paths = None if paths is None else paths[-last:]
        return None if labels is None else np.asarray(labels), paths

    def class_names(self) -> tuple[str, ...]:
        """The names of the classes a conditional VAE reads, by label index.

        Returns:
            The set's own names (folders, TFDS), or the labels as numbers
                (the digits of MNIST).

        Raises:
            DataError: The set has no labels.
        """
        from tfvae.errors import DataError

        if self.train_labels is None:
            raise DataError(
                f"{self.name}: this set has no labels, and --conditional reads each image's "
                "class; use a labelled set (class folders, IDX labels, a TFDS set with a label)"
            )
        if self.classes:
            return self.classes
        labels = [x for x in (self.train_labels, self.test_labels) if x is not None]
        return tuple(str(i) for i in range(int(max(x.max() for x in labels)) + 1))

    def intensities(self, images: np.ndarray) -> np.ndarray:
        """Pixel values in [0, 1] as float32, the Bernoulli means."""
        scale = 1.0 if self.binary else 255.0
        return images.astype(np.float32) / np.float32(scale)

    def limit(self, n_train: int | None, n_test: int | None = None) -> ImageDataset:
        """The set cut to its first images, for quick runs and tests.

        Args:
            n_train: Training images kept; None keeps all.
            n_test: Test images kept; None keeps all.

        Returns:
            A new set with those images, and their labels and files.
        """

        def head(array, n):
            return array if array is None or n is None else array[:n]

        return dataclasses.replace(
            self,
            train_images=head(self.train_images, n_train),
            train_labels=head(self.train_labels, n_train),
            test_images=head(self.test_images, n_test),
            test_labels=head(self.test_labels, n_test),
            train_paths=head(self.train_paths, n_train),
            test_paths=head(self.test_paths, n_test),
        )

    def hold_out(
        self, n: int, pixels: str = "dynamic", *, binarize: str | None = None
    ) -> tuple[ImageDataset, np.ndarray | ScoredImages]:
        """Hold the last `n` training images out: a validation split that
        training never sees, always the same images.

        Args:
            n: Images held out, from 1 to one less than the training images.
            pixels: The pixel treatment they are scored under (`scored`),
                with a fixed draw of their own.
            binarize: The old name of `pixels`, still taken.

        Returns:
            (tuple[ImageDataset, np.ndarray | ScoredImages]): The set without
                them, and the held-out images as scored, float32.

        Raises:
            DataError: `n` leaves no training image, or is not positive.
        """
        from tfvae.errors import DataError

        if not 0 < n < len(self.train_images):
            raise DataError(
                f"{self.name}: cannot hold out {n} of its {len(self.train_images)} training "
                "images for validation; give --validation between 1 and one less than that"
            )
        held = self.train_images[-n:]
        rest = dataclasses.replace(
            self,
            train_images=self.train_images[:-n],
            train_labels=None if self.train_labels is None else self.train_labels[:-n],
            train_paths=None if self.train_paths is None else self.train_paths[:-n],
        )
        treatment = pixel_treatment(pixels, binarize)
        return rest, self._as_scored(held, treatment, VALIDATION_BINARIZATION_SEED)

    def fixed_binarized_test(self) -> np.ndarray:
        """The test images under the one fixed binarization, float32 0/1."""
        return self.scored("test")

    def scored(self, split: str, pixels: str = "dynamic") -> np.ndarray | ScoredImages:
        """A split's images as every score sees them: fixed, so scores
        compare across runs and packages.

        Args:
            split: `train` or `test`.
            pixels: The pixel treatment: `dynamic` or `static`, one fixed
                binarization (float32 0/1, the same draw for every run);
                `none`, the intensities themselves; `dequantize`, one fixed
                uniform dequantization.

        Returns:
            float32 `[n, height, width, channels]` in [0, 1]; streamed
                splits are decoded as they are read.
        """
        images = {"train": self.train_images, "test": self.test_images}[split]
        return self._as_scored(images, pixel_treatment(pixels), TEST_BINARIZATION_SEED)

    def fixed_binarized(self, split: str, binarize: str = "dynamic") -> np.ndarray | ScoredImages:
        """`scored`, under the name it had when it only binarized."""
        return self.scored(split, binarize)

    def _as_scored(
        self, images: np.ndarray | StreamedImages, pixels: str, seed: int
    ) -> np.ndarray | ScoredImages:
        if not isinstance(images, np.ndarray):
            return images.as_scored(pixels, seed)
        if pixels == "none":
            return self.intensities(images)
        if pixels == "dequantize":
            return fixed_dequantization(images, seed)
        return fixed_binarization(self, images, seed)


def fixed_binarization(data: ImageDataset, images: np.ndarray, seed: int) -> np.ndarray:
    """One Bernoulli draw of `images`: pixel = 1 where U < intensity."""
    x = data.intensities(images)
    if data.binary:
        return x
    u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    return (u < x).astype(np.float32)


def fixed_dequantization(images: np.ndarray, seed: int) -> np.ndarray:
    """One uniform dequantization of uint8 `images`: (level + U[0, 1)) / 256."""
    u = np.random.default_rng(seed).random(images.shape, dtype=np.float32)
    return (images.astype(np.float32) + u) / np.float32(LEVELS)
