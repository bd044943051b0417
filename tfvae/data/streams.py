"""Image sets read from disk as they are used, for sets too big to decode
into memory (`images:DIR` folders and `tfds:` sets above `stream_threshold()`).

A `StreamedImages` split behaves like the uint8 array `[n, h, w, c]` the
in-memory sets hold: `len`, `.shape`, slicing and `np.asarray` (for the few
images a picture needs). `ImageFiles` (image files, read in any order) is one;
`tfds.TfdsImages` (TFDS records, read in sequence) the other. `ScoredImages`
is such a split as it is scored (`ImageDataset.fixed_binarized`): every image
gets its fixed binarization or dequantization from its own key (its index and
a seed), so no draw over the whole set is ever held.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf

from tfvae import noise
from tfvae.data.images import decode_image

# Above this many MiB of decoded uint8 pixels, image folders stream from
# disk; below it they are decoded once into memory, which is faster.
STREAM_ENV = "TFVAE_STREAM_ABOVE_MB"
DEFAULT_STREAM_MB = 64
# Images decoded at once when a slice is turned into an array.
ARRAY_BATCH = 256


def stream_threshold() -> int:
    """Bytes of decoded images above which a folder streams (`TFVAE_STREAM_ABOVE_MB`)."""
    value = os.environ.get(STREAM_ENV, str(DEFAULT_STREAM_MB))
    try:
        megabytes = float(value)
    except ValueError:
        from tfvae.errors import DataError

        raise DataError(
            f"{STREAM_ENV}={value!r} is not a number; give the decoded size in MiB "
            "above which image folders stream (0: always)"
        ) from None
    return int(megabytes * 2**20)


def in_order(index: slice, length: int) -> range:
    """The positions a slice of a streamed split of `length` images takes."""
    positions = range(length)[index]
    if positions.step != 1:
        raise TypeError("streamed images are sliced in order, without a step")
    return positions


class StreamedImages:
    """A split read from disk: `image_shape`, `binary` (pixels already 0/1),
    `len`, in-order `batches` and slices (without a step) of its subclasses."""

    image_shape: tuple[int, int, int]
    binary: bool = False

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.image_shape)

    def batches(self, batch_size: int = ARRAY_BATCH):
        """The images in order, `(index, images)` per batch: int64 `[m]` (from
        0 in this split), uint8 `[m, h, w, c]`."""
        raise NotImplementedError

    def as_scored(self, treatment: str, seed: int) -> ScoredImages:
        """These images as scored (`ImageDataset.fixed_binarized`)."""
        return ScoredImages(self, treatment, seed)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for index, images in self.batches().as_numpy_iterator():
            out[index] = images
        return out if dtype is None else out.astype(dtype)


@dataclasses.dataclass(frozen=True)
class StreamedLabels:
    """The labels of streamed `images`, read (`images.read_labels()`) only
    when used as an array: a run reads the labels it needs, a held-out
    slice's say, not a pass over the whole split. Training reads each
    example's label beside its image instead (`TfdsImages.shuffled`)."""

    images: StreamedImages

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> StreamedLabels:
        return StreamedLabels(self.images[index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        labels = self.images.read_labels()
        return labels if dtype is None else labels.astype(dtype)


@dataclasses.dataclass(frozen=True)
class ImageFiles(StreamedImages):
    """A split of image files, decoded only when read: uint8 `[h, w, c]` each."""

    paths: tuple[str, ...]
    image_shape: tuple[int, int, int]
    resize: tuple[int, int] | None = None
    # Each file's EXIF orientation (`images.orientation`); None: all upright.
    orientations: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> ImageFiles:
        positions = in_order(index, len(self))
        part = slice(positions.start, positions.stop)
        turns = None if self.orientations is None else self.orientations[part]
        return dataclasses.replace(self, paths=self.paths[part], orientations=turns)

    @functools.cached_property
    def _files_tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The paths as one string tensor and the orientations as one int32
        tensor, made eagerly (lifted out of any function being traced) so
        that pipelines capture them: as a constant inside a `tf.data`
        function, whose graph its rewrites copy, the paths would be held
        many times over; captured, once (see docs/results/memory.md#streamed-image-folders)."""
        turns = self.orientations or (1,) * len(self.paths)
        with tf.init_scope():
            return tf.constant(self.paths), tf.constant(turns, tf.int32)

    def decode(self, index):
        """The uint8 images `[m, h, w, c]` at int64 `index` `[m]` (graph-safe, so
        a `tf.data` map can call it on a batch of indices), upright."""
        paths, turns = (tf.gather(files, index) for files in self._files_tensors)

        def one(path_turn):
            path, turn = path_turn
            image = decode_image(tf.io.read_file(path), self.resize, self.image_shape[2], turn)
            return tf.ensure_shape(image, self.image_shape)

        return tf.map_fn(
            one,
            (paths, turns),
            fn_output_signature=tf.TensorSpec(self.image_shape, tf.uint8),
            parallel_iterations=os.cpu_count() or 1,
        )

    def batches(self, batch_size: int = ARRAY_BATCH):
        """`StreamedImages.batches`, several batches decoded in parallel."""
        index = tf.data.Dataset.range(len(self)).batch(batch_size)
        return index.map(
            lambda i: (i, self.decode(i)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        ).prefetch(tf.data.AUTOTUNE)


def scored(images, index, treatment: str, seed: int, binary: bool = False):
    """uint8 `images` `[m, h, w, c]` at int64 `index` `[m]` as scored, float32:
    `none` the intensities, `dequantize` (level + u) / 256, otherwise one
    binarization (u < intensity), drawn as the training step draws them
    (`noise`) from each image's own key (index, seed): the same whatever
    batch the image is in. `binary` images (0/1 already) are used as they are."""
    if binary:
        return tf.cast(images, tf.float32)
    if treatment == "none":
        return tf.cast(images, tf.float32) / 255.0
    keys = tf.cast(
        tf.stack([index, tf.fill(tf.shape(index), tf.cast(seed, tf.int64))], 1), tf.uint32
    )
    if treatment == "dequantize":
        return noise.dequantize(images, keys)
    return noise.binarize(images, keys)


@dataclasses.dataclass(frozen=True)
class ScoredImages:
    """Streamed images as scored (`scored`), float32 `[h, w, c]` each, read in order.

    `offset` is the first image's index in the split it was sliced from, so a
    slice keeps every image's fixed draw."""

    files: StreamedImages
    treatment: str
    seed: int
    offset: int = 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.files.shape

    def __getitem__(self, index: slice) -> ScoredImages:
        positions = in_order(index, len(self))
        return dataclasses.replace(
            self, files=self.files[index], offset=self.offset + positions.start
        )

    def batches(self, batch_size: int = ARRAY_BATCH):
        """float32 batches `[m, h, w, c]` in order, decoded in parallel."""
        return self.files.batches(batch_size).map(
            lambda index, images: scored(
                images, index + self.offset, self.treatment, self.seed, self.files.binary
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        start = 0
        for batch in self.batches().as_numpy_iterator():
            out[start : start + len(batch)] = batch
            start += len(batch)
        return out if dtype is None else out.astype(dtype)
