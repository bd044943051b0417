"""A folder of the user's own image files as an `ImageDataset` (`images:DIR`).

The layout is the one Keras' `image_dataset_from_directory` and torchvision's
`ImageFolder` read: one subfolder per class gives integer labels (classes in
sorted name order), images loose in the folder give none. `train/` and `test/`
subfolders, when both exist, are the splits; otherwise a fixed tenth of the
images is held out as the test split, always the same ones for the same files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfvae import memory
from tfvae.data.dataset import HELD_OUT_FRACTION, ImageDataset
from tfvae.data.images import decode_image, orientation
from tfvae.data.streams import ImageFiles, stream_threshold
from tfvae.errors import DataError
from tfvae.progress import Progress

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "test")
# A folder without split folders is shuffled with this seed (numpy PCG64)
# before its test images are taken from the end.
SPLIT_SEED = 0
_KINDS = "PNG, JPEG, BMP or GIF files (.png .jpg .jpeg .bmp .gif, any case)"
# What reading a file in the pipeline raises for a bad or unreadable file.
_UNREADABLE = (
    tf.errors.InvalidArgumentError,
    tf.errors.NotFoundError,
    tf.errors.PermissionDeniedError,
)


class Split(NamedTuple):
    """A split's folder and its image files, relative to that folder (so the
    first part of a path in a class subfolder is the class)."""

    root: Path
    files: list[Path]


def load_image_folder(
    folder: str | Path,
    resize: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> ImageDataset:
    """Every image under `folder` as uint8 `[n, h, w, c]` splits: `c` is 1 if
    every image is grey, else 3 (RGB, alpha dropped). Decoded into memory up
    to `streams.stream_threshold()` bytes, streamed from disk above it.

    `resize=(height, width)` brings each image to that size (area averaging,
    rounded), for folders whose images differ in size. Every file is decoded
    once to check it; `progress` hears how far that is.
    """
    if not os.fspath(folder):
        # Path("") is the working directory, which nobody means here.
        raise DataError("images: give a folder of image files after 'images:'")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; give a folder of {_KINDS}")
    found = _image_files(folder)
    if not found:
        raise DataError(f"{folder}: no image files in it or its subfolders; put {_KINDS} there")
    train, test = _splits(folder, found)
    paths = [split.root / path for split in (train, test) for path in split.files]
    images = _decode(paths, folder, resize, progress or Progress.quiet())
    labels, classes = _labels([train, test])
    n_train = len(train.files)
    return ImageDataset(
        name=f"images:{folder}",
        train_images=images[:n_train],
        test_images=images[n_train:],
        train_labels=None if labels is None else labels[0],
        test_labels=None if labels is None else labels[1],
        binary=False,
        classes=classes,
        train_paths=tuple(os.fspath(path) for path in paths[:n_train]),
        test_paths=tuple(os.fspath(path) for path in paths[n_train:]),
    )


def _image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, relative to it, sorted by path parts
    (an order that is the same on every system, so the held-out split is too).
    Hidden files and folders (names starting with '.') are skipped."""
    found = []
    # An unreadable subfolder raises rather than silently dropping its images.
    for root, dirs, files in os.walk(folder, onerror=_raise):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found += [
            Path(root, name).relative_to(folder)
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found, key=lambda path: path.parts)


def _raise(error: OSError) -> None:
    raise error


def _splits(folder: Path, found: list[Path]) -> tuple[Split, Split]:
    """The train and test splits: the `train/` and `test/` folders if there
    are both, else a held-out part of all the images."""
    present = [name for name in SPLITS if (folder / name).is_dir()]
    if not present:
        return _hold_out(folder, found)
    if len(present) == 1:
        (have,) = present
        (missing,) = set(SPLITS) - {have}
        raise DataError(
            f"{folder}: has {have}/ but no {missing}/; give both split folders, or neither "
            "(then a tenth of the images is held out for testing)"
        )
    splits = tuple(
        Split(folder / name, [path.relative_to(name) for path in found if path.parts[0] == name])
        for name in SPLITS
    )
    for name, split in zip(SPLITS, splits, strict=True):
        if not split.files:
            raise DataError(f"{split.root}: no {name} images in it; put {_KINDS} there")
    outside = [path for path in found if path.parts[0] not in SPLITS]
    if outside:
        log.warning(
            "images:%s: train/ and test/ are the splits; ignoring %d image(s) outside them (%s...)",
            folder,
            len(outside),
            folder / outside[0],
        )
    return splits


def _hold_out(folder: Path, found: list[Path]) -> tuple[Split, Split]:
    """All images shuffled with `SPLIT_SEED`, the last tenth (at least one) as test."""
    if len(found) < 2:
        raise DataError(
            f"{folder}: only 1 image, too few to hold out a test image; add images, "
            "or give train/ and test/ folders"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(found))
    shuffled = [found[i] for i in order]
    n_test = max(1, round(len(found) * HELD_OUT_FRACTION))
    return Split(folder, shuffled[:-n_test]), Split(folder, shuffled[-n_test:])


def _labels(splits: list[Split]) -> tuple[list[np.ndarray] | None, tuple[str, ...] | None]:
    """Each split's labels, with one class-to-index map for all of them, and
    the class names by index; None when any image lies loose in its split's
    folder, outside every class."""
    files = [path for split in splits for path in split.files]
    if any(len(path.parts) == 1 for path in files):
        return None, None
    classes = tuple(sorted({path.parts[0] for path in files}))
    index = {name: i for i, name in enumerate(classes)}
    labels = [
        np.array([index[path.parts[0]] for path in split.files], np.int64) for split in splits
    ]
    return labels, classes


def _decode(
    paths: list[Path], folder: Path, resize: tuple[int, int] | None, progress: Progress
) -> np.ndarray | ImageFiles:
    """`paths` decoded into one uint8 array, grey `[n, h, w, 1]` if every image
    is grey (with or without alpha), else RGB `[n, h, w, 3]`; or, when that
    array would pass `stream_threshold()`, the same as `ImageFiles` that are
    decoded as training reads them (each file was decoded once here, so a bad
    one fails now, not in epoch 12)."""
    turns = tuple(orientation(path) for path in paths)
    with progress.stage(f"Checking the {len(paths):,} image files of {folder}", len(paths)) as seen:
        scan = _scan(paths, turns, folder, resize, stream_threshold(), seen)
    shape = (*scan.size, 1 if scan.grey else 3)
    if scan.images is None:
        return ImageFiles(tuple(os.fspath(path) for path in paths), shape, resize, turns)
    # Only now is the channel count known; the budget already counts the
    # decoded images, so this asks whether the stacked copy fits beside them.
    memory.check(memory.images_need(len(scan.images), shape), f"decoding images:{folder}")
    images = np.empty((len(scan.images), *shape), np.uint8)
    for i, image in enumerate(scan.images):
        # A grey channel broadcasts to RGB's three; alpha is dropped.
        images[i] = image[..., :1] if image.shape[2] < 3 else image[..., :3]
    return images


class Scan(NamedTuple):
    """What decoding every file found: their one size `(h, w)`, whether all
    are grey, and the images themselves (None once they passed the budget)."""

    size: tuple[int, int]
    grey: bool
    images: list[np.ndarray] | None


def _scan(
    paths: list[Path],
    turns: tuple[int, ...],
    folder: Path,
    resize: tuple[int, int] | None,
    keep: int,
    seen: Callable[[int], None],
) -> Scan:
    """Decode each image with its own channels, upright (EXIF orientations
    `turns`) and at `resize` if given, in parallel and in order, keeping
    them while they total at most `keep` bytes; without `resize` all must
    have one size. `seen(1)` after each."""
    names = [os.fspath(path) for path in paths]
    dataset = tf.data.Dataset.from_tensor_slices((names, list(turns))).map(
        lambda path, turn: decode_image(tf.io.read_file(path), resize, orientation=turn),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    kept: list[np.ndarray] | None = []
    first, grey, done, total = None, True, 0, 0
    try:
        for image in dataset.as_numpy_iterator():
            if first is None:
                first = image
            elif resize is None and image.shape[:2] != first.shape[:2]:
                raise _sizes_differ(folder, (paths[0], first), (paths[done], image))
            grey = grey and image.shape[2] < 3
            # Judged on the first image's size times their number, so a big
            # folder never holds a kept image, then on the running total.
            total += image.nbytes
            if kept is not None and max(total, first.nbytes * len(paths)) <= keep:
                kept.append(image)
            else:
                kept = None
            done += 1
            seen(1)
    except _UNREADABLE:
        # In order, the failure comes at the first bad file: find it from there.
        _check_one_by_one(paths[done:], resize)
        raise
    return Scan(first.shape[:2], grey, kept)


def _check_one_by_one(paths: list[Path], resize: tuple[int, int] | None) -> None:
    """Raise a `DataError` naming the first of `paths` that does not decode
    (an `OSError` naming one that cannot be read)."""
    for path in paths:
        try:
            decode_image(path.read_bytes(), resize, orientation=orientation(path))
        except tf.errors.InvalidArgumentError as err:
            raise DataError(
                f"{path}: does not decode as an image ({_reason(err)}); remove or replace it"
            ) from None


def _reason(err: tf.errors.OpError) -> str:
    """TensorFlow's message without the op names it wraps it in."""
    return " ".join(err.message.split("}}")[-1].split("[Op:")[0].split()).rstrip(".")


def _sizes_differ(
    folder: Path, first: tuple[Path, np.ndarray], other: tuple[Path, np.ndarray]
) -> DataError:
    """The error for two images, each `(path, image)`, of different sizes."""
    (path1, image1), (path2, image2) = first, other
    (h1, w1), (h2, w2) = image1.shape[:2], image2.shape[:2]
    return DataError(
        f"images:{folder}: images differ in size ({path1} is {h1}x{w1}, {path2} is {h2}x{w2}, "
        "height x width); pass --resize H W to bring them to one size"
    )
