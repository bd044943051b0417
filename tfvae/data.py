"""Image data sets and the `tf.data` pipelines that feed the VAE.

Images are kept in memory as uint8 `[n, height, width, channels]` (decoded
once); pipelines gather whole batches by index and prefetch, so the input
never waits on Python. Dynamic binarization happens in the training step
(`tfvae.noise`), which is where its random numbers are cheapest.
"""

from __future__ import annotations

import dataclasses
import hashlib
from importlib import resources
from pathlib import Path

import numpy as np

from tfvae.choices import BINARIZATIONS
from tfvae.idx import IdxError, read_idx

# The test split is binarized once with this seed (numpy PCG64), the same
# draw as the PyTorch peer's, so test figures compare across runs and packages.
TEST_BINARIZATION_SEED = 0
PREFETCH = 4  # batches made ahead of the step


class DataError(ValueError):
    """A data set that cannot be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Train and test images (uint8) with optional integer labels.

    `binary` marks sets whose pixels are already 0/1 (then they are never
    binarized again); otherwise pixels are grey levels 0..255.
    """

    name: str
    train_images: np.ndarray
    test_images: np.ndarray
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    binary: bool = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train_images.shape[1:])

    def intensities(self, images: np.ndarray) -> np.ndarray:
        """Pixel values in [0, 1] as float32, the Bernoulli means."""
        scale = 1.0 if self.binary else 255.0
        return images.astype(np.float32) / np.float32(scale)

    def limit(self, n_train: int | None, n_test: int | None = None) -> ImageDataset:
        """The first `n_train` / `n_test` images, for quick runs and tests."""

        def head(array, n):
            return array if array is None or n is None else array[:n]

        return dataclasses.replace(
            self,
            train_images=head(self.train_images, n_train),
            train_labels=head(self.train_labels, n_train),
            test_images=head(self.test_images, n_test),
            test_labels=head(self.test_labels, n_test),
        )

    def fixed_binarized_test(self) -> np.ndarray:
        """The test images under the one fixed binarization, float32 0/1."""
        return self.fixed_binarized("test")

    def fixed_binarized(self, split: str, binarize: str = "dynamic") -> np.ndarray:
        """A split's images as scored: one fixed binarization (float32 0/1), or
        the intensities themselves when the run trains with `binarize="none"`."""
        images = {"train": self.train_images, "test": self.test_images}[split]
        if binarize == "none":
            return self.intensities(images)
        return fixed_binarization(self, images, TEST_BINARIZATION_SEED)


def fixed_binarization(data: ImageDataset, images: np.ndarray, seed: int) -> np.ndarray:
    """One Bernoulli draw of `images`: pixel = 1 where U < intensity."""
    x = data.intensities(images)
    if data.binary:
        return x
    u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    return (u < x).astype(np.float32)


# --- sources ---------------------------------------------------------------

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
    spec: str = "mnist", data_dir: str | None = None, resize: tuple[int, int] | None = None
) -> ImageDataset:
    """Load a data set by name.

    `mnist` (bundled, offline), `idx:DIR` (four MNIST-format IDX files) or
    `tfds:NAME[/CONFIG]` (the TensorFlow Datasets catalog; `data_dir` is
    TFDS's data folder). `resize=(height, width)` brings every image to that
    size (area averaging), for sets whose images differ in size.
    """
    if spec.startswith("tfds:"):
        from tfvae.tfds_source import load_tfds

        return load_tfds(spec[len("tfds:") :], data_dir=data_dir, resize=resize)
    if spec == "mnist":
        folder = bundled_mnist_dir()
        verify_checksums(folder)
        data = load_idx_folder(folder, name="mnist")
    elif spec.startswith("idx:"):
        data = load_idx_folder(spec[len("idx:") :])
    else:
        raise DataError(f"unknown dataset '{spec}'; use 'mnist', 'idx:DIR' or 'tfds:NAME[/CONFIG]'")
    if resize is None:
        return data
    return dataclasses.replace(
        data,
        train_images=resize_images(data.train_images, resize),
        test_images=resize_images(data.test_images, resize),
    )


def resize_images(images: np.ndarray, size: tuple[int, int], batch: int = 4096) -> np.ndarray:
    """uint8 `[n, h, w, c]` images to `[n, *size, c]` by area averaging, rounded
    (so 0/1 images stay 0/1)."""
    import tensorflow as tf

    if images.shape[1:3] == tuple(size):
        return images
    parts = [
        tf.cast(
            tf.round(tf.image.resize(images[i : i + batch], size, method="area")), tf.uint8
        ).numpy()
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else images


# --- pipelines -------------------------------------------------------------


def _as_float(images, binary: bool):
    import tensorflow as tf

    return tf.cast(images, tf.float32) / (1.0 if binary else 255.0)


def _with_noise(x, noise_shape, seed):
    """Pair a batch with fixed standard-normal noise for its reparameterized
    draws, so every evaluation of the same weights gives the same numbers."""
    import tensorflow as tf

    if noise_shape is None:
        return x
    shape = tf.concat([tf.shape(x)[:1], noise_shape], axis=0)
    return x, tf.random.stateless_normal(shape, seed=seed, alg="philox")


def _quiet(dataset):
    """A pipeline on one private thread, without autotuning: its work per batch
    is a gather, and on a 2-core CPU autotuning stalled some epochs' start by
    0.5-1.4 s while extra threads competed with the training step."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return dataset.prefetch(PREFETCH).with_options(options)


def train_pipeline(data: ImageDataset, batch_size: int, binarize: str = "dynamic", seed: int = 0):
    """Shuffled batches of training images, each a dict with the images' `keys`
    (uint32 `[batch, 2]`) and either `intensities` (uint8 `[batch, h, w, c]`, to
    binarize) or `images` (float32, used as they are).

    `dynamic` binarizes every batch afresh on every pass (the usual choice in
    the literature): the training step draws the pixels from the keys, so the
    pipeline ships uint8 and never touches a random pixel (`noise.training_batch`
    turns a batch into images and noise, as `VAE.train_step` does). `static`
    draws one binary sample up front; `none` keeps the intensities in [0, 1] as
    Bernoulli targets (for colour or grey-level sets). Sets that are already
    binary are never binarized. Deterministic for a given `seed` (and
    TensorFlow global seed).
    """
    import tensorflow as tf

    if binarize not in BINARIZATIONS:
        raise ValueError(f"binarize must be one of {BINARIZATIONS}, got {binarize!r}")
    n = len(data.train_images)
    images, binary = tf.constant(data.train_images), data.binary
    if binarize == "static" and not data.binary:
        images = tf.constant(fixed_binarization(data, data.train_images, seed).astype(np.uint8))
        binary = True
    dynamic = binarize == "dynamic" and not binary

    def gather(idx, pair):
        keys = tf.random.stateless_uniform(
            [tf.size(idx), 2], seed=pair, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
        )
        batch = tf.gather(images, idx)
        if dynamic:
            return {"intensities": batch, "keys": keys}
        return {"images": _as_float(batch, binary), "keys": keys}

    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return _quiet(tf.data.Dataset.zip(indices.batch(batch_size), seeds).map(gather))


def test_pipeline(
    data: ImageDataset,
    batch_size: int,
    noise_shape: tuple[int, ...] | None = None,
    seed: int = 1,
    binarize: str = "dynamic",
):
    """Batches of the test images under their one fixed binarization, in order.

    With `noise_shape`, each batch comes with fixed noise too, so every
    evaluation of the same weights gives the same numbers.
    """
    import tensorflow as tf

    x = data.fixed_binarized("test", binarize)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    return _quiet(
        tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(x).batch(batch_size), seeds).map(
            lambda b, pair: _with_noise(b, noise_shape, pair)
        )
    )
