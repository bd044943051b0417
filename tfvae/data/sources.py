"""Where data sets come from: the bundled MNIST, folders of IDX files, folders
of image files (`tfvae.data.folders`) and TensorFlow Datasets
(`tfvae.data.tfds`), each loaded into an `ImageDataset`."""

from __future__ import annotations

import dataclasses
import hashlib
from importlib import resources
from pathlib import Path

import numpy as np

from tfvae import memory
from tfvae.config import dataset_problem
from tfvae.data.dataset import ImageDataset
from tfvae.data.idx import IdxError, read_idx
from tfvae.errors import DataError
from tfvae.progress import Progress

_IDX_PARTS = {
    "train_images": ("train-images", 3),
    "train_labels": ("train-labels", 1),
    "test_images": ("t10k-images", 3),
    "test_labels": ("t10k-labels", 1),
}


def bundled_mnist_dir() -> Path:
    return Path(str(resources.files("tfvae") / "resources" / "mnist"))


def verify_checksums(folder: Path) -> None:
    """Check every file named in `folder/SHA256SUMS` against its digest."""
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing; reinstall tfvae to restore the bundled MNIST")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(
                f"{path}: SHA256 mismatch (file corrupt or replaced); "
                "reinstall tfvae to restore the bundled MNIST"
            )


def _find_idx_file(folder: Path, stem: str) -> Path:
    aliases = [stem, stem.replace("t10k", "test")]
    matches = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and any(f"{alias}-idx" in p.name for alias in aliases)
    )
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(p.name for p in matches)
        raise DataError(
            f"{folder}: expected one '*{stem}-idx*' file (gzipped or raw), found {found}"
        )
    return matches[0]


def load_idx_folder(folder: str | Path, name: str | None = None) -> ImageDataset:
    """Read the four MNIST-format IDX files of `folder` (Fashion-MNIST, KMNIST...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; give a folder with the four IDX files")
    arrays = {}
    try:
        for key, (stem, ndim) in _IDX_PARTS.items():
            arrays[key] = read_idx(_find_idx_file(folder, stem), ndim=ndim)
    except IdxError as err:
        raise DataError(str(err)) from None
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DataError(
                f"{folder}: {n_images} {split} images but {n_labels} {split} labels; "
                "the files do not belong together"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(f"{folder}: train and test images differ in size")
    for key in ("train_images", "test_images"):
        arrays[key] = arrays[key][..., np.newaxis]
    return ImageDataset(name=name or f"idx:{folder}", **arrays)


def load_dataset(
    spec: str = "mnist",
    data_dir: str | None = None,
    resize: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> ImageDataset:
    """Load a data set by name.

    Args:
        spec: `mnist` (bundled), `idx:DIR` (four MNIST-format IDX files),
            `images:DIR` (PNG, JPEG, BMP or GIF; class subfolders give labels,
            `train/` and `test/` the splits) or `tfds:NAME[/CONFIG]`.
        data_dir: TFDS's data folder, for `tfds:` sets.
        resize: `(height, width)` to bring every image to (area averaging),
            for sets whose images differ in size; None keeps their size.
        progress: Hears how far the check of an image folder's files is.

    Returns:
        The train and test images, uint8 `[n, height, width, channels]`, in
            memory or (large image folders and TFDS sets) streamed from disk.

    Raises:
        DataError: The spec is malformed, or the set is missing, damaged or
            not what it should be; the message says what to do.
    """
    if problem := dataset_problem(spec):
        raise DataError(problem)
    if spec.startswith("tfds:"):
        from tfvae.data.tfds import load_tfds

        return load_tfds(spec[len("tfds:") :], data_dir=data_dir, resize=resize)
    if spec.startswith("images:"):
        from tfvae.data.folders import load_image_folder

        return load_image_folder(spec[len("images:") :], resize=resize, progress=progress)
    if spec == "mnist":
        folder = bundled_mnist_dir()
        verify_checksums(folder)
        data = load_idx_folder(folder, name="mnist")
    else:
        data = load_idx_folder(spec[len("idx:") :])
    return data if resize is None else _resized(data, spec, resize)


def _resized(data: ImageDataset, spec: str, resize: tuple[int, int]) -> ImageDataset:
    """An IDX set's images brought to `resize`, if memory holds them."""
    n_images = len(data.train_images) + len(data.test_images)
    shape = (*resize, data.image_shape[2])
    memory.check(memory.images_need(n_images, shape), f"resizing {spec} to {resize[0]}x{resize[1]}")
    return dataclasses.replace(
        data,
        train_images=resize_images(data.train_images, resize),
        test_images=resize_images(data.test_images, resize),
    )


def resize_images(images: np.ndarray, size: tuple[int, int], batch: int = 4096) -> np.ndarray:
    """uint8 `[n, h, w, c]` images to `[n, *size, c]` by area averaging, rounded
    (so 0/1 images stay 0/1)."""

    from tfvae.data.images import area_resize

    if images.shape[1:3] == tuple(size):
        return images
    parts = [area_resize(images[i : i + batch], size).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else images
