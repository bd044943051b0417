"""Data sets and pipelines: bundled MNIST, IDX folders, binarization statistics, and the
validation images held out of training."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_streams import write_folder

from tfvae import data
from tfvae.config import BINARIZATIONS, TrainConfig
from tfvae.data import DataError, ImageDataset, sources
from tfvae.data.streams import STREAM_ENV
from tfvae.noise import training_batch

# The shared folder lies beside the checkout (`../shared`), wherever it is.
PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "mnist_data.py"


def _epoch(dataset) -> np.ndarray:
    """One pass of a training pipeline as the images the training step sees."""
    return np.concatenate([training_batch(batch, None)[0].numpy() for batch in dataset])


def _sorted_rows(images: np.ndarray) -> np.ndarray:
    """Images as flattened rows in lexicographic order: a multiset, order-free."""
    rows = images.reshape(len(images), -1).astype(np.uint8)
    return rows[np.lexsort(rows.T[::-1])]


# --- bundled MNIST -----------------------------------------------------------


def test_bundled_mnist_shapes_and_labels(mnist):
    """Bundled MNIST has the canonical shapes, dtype, labels and first labels."""
    assert mnist.name == "mnist" and not mnist.binary
    assert mnist.train_images.shape == (60000, 28, 28, 1)
    assert mnist.test_images.shape == (10000, 28, 28, 1)
    assert mnist.image_shape == (28, 28, 1)
    assert mnist.train_images.dtype == np.uint8 and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    for labels in (mnist.train_labels, mnist.test_labels):
        assert set(np.unique(labels).tolist()) == set(range(10))
    # the well-known normalisation constants: mean 0.1307, std 0.3081 (train, /255)
    x = mnist.intensities(mnist.train_images)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert abs(float(x.mean()) - 0.1307) < 1e-4 and abs(float(x.std()) - 0.3081) < 1e-4


def test_limit(mnist):
    """`limit` keeps the first n train / test images and their labels."""
    small = mnist.limit(10, 3)
    assert small.train_images.shape == (10, 28, 28, 1) and small.test_images.shape[0] == 3
    np.testing.assert_array_equal(small.train_labels, mnist.train_labels[:10])
    np.testing.assert_array_equal(small.test_images, mnist.test_images[:3])
    assert mnist.limit(5).test_images.shape[0] == 10000


def test_verify_checksums_detects_altered_file(tmp_path):
    """A copied bundle passes `verify_checksums`; flipping one byte of one file fails it."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for src in sources.bundled_mnist_dir().iterdir():
        shutil.copyfile(src, folder / src.name)  # copyfile: the copy is writable
    sources.verify_checksums(folder)
    victim = folder / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    victim.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="SHA256 mismatch") as err:
        sources.verify_checksums(folder)
    assert str(victim) in str(err.value)


def test_verify_checksums_missing_file_is_data_error(tmp_path):
    """A file listed in SHA256SUMS but absent from the folder is a DataError naming it."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for src in sources.bundled_mnist_dir().iterdir():
        if src.name != "t10k-labels-idx1-ubyte.gz":
            shutil.copyfile(src, folder / src.name)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        sources.verify_checksums(folder)


def test_load_dataset_mnist_refuses_a_damaged_bundle(tmp_path, monkeypatch):
    """`load_dataset("mnist")` checks the sums itself, on every load: pointed
    at a copy of the bundle with one byte changed, it refuses to load it."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for src in sources.bundled_mnist_dir().iterdir():
        shutil.copyfile(src, folder / src.name)
    victim = folder / "train-images-idx3-ubyte.gz"
    blob = bytearray(victim.read_bytes())
    blob[-100] ^= 0x01
    victim.write_bytes(bytes(blob))
    monkeypatch.setattr(sources, "bundled_mnist_dir", lambda: folder)
    with pytest.raises(DataError, match="SHA256 mismatch") as err:
        data.load_dataset("mnist")
    assert str(victim) in str(err.value)


def test_unknown_dataset():
    """An unknown spec is a DataError listing the accepted forms."""
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        data.load_dataset("nope")


# --- IDX folders -------------------------------------------------------------


def _make_folder(folder, write_idx, n_train=6, n_test=4, shape=(5, 3), test_stem="t10k"):
    """Four IDX files, two gzipped and two raw; returns the arrays written."""
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", arrays["train_images"], gz=True)
    write_idx(folder / "train-labels-idx1-ubyte", arrays["train_labels"])
    write_idx(folder / f"{test_stem}-images-idx3-ubyte", arrays["test_images"])
    write_idx(folder / f"{test_stem}-labels-idx1-ubyte.gz", arrays["test_labels"], gz=True)
    return arrays


@pytest.mark.parametrize("test_stem", ["t10k", "test"])
def test_load_idx_folder_mixed_gz_and_raw(tmp_path, write_idx, test_stem):
    """A folder of mixed gz/raw files (t10k- or test- names) loads exactly, adding a channel."""
    arrays = _make_folder(tmp_path / "set", write_idx, test_stem=test_stem)
    loaded = data.load_dataset(f"idx:{tmp_path / 'set'}")
    assert loaded.image_shape == (5, 3, 1)
    np.testing.assert_array_equal(loaded.train_images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(loaded.test_images[..., 0], arrays["test_images"])
    np.testing.assert_array_equal(loaded.train_labels, arrays["train_labels"])
    np.testing.assert_array_equal(loaded.test_labels, arrays["test_labels"])
    assert data.load_idx_folder(tmp_path / "set", name="x").name == "x"


def test_load_idx_folder_count_mismatch(tmp_path, write_idx):
    """7 train images with 6 train labels is a DataError naming both counts."""
    folder = tmp_path / "set"
    _make_folder(folder, write_idx, n_train=7)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(6, np.uint8))
    with pytest.raises(DataError, match="7 train images but 6 train labels"):
        data.load_idx_folder(folder)


def test_load_idx_folder_missing_file(tmp_path, write_idx):
    """A folder lacking the test labels is a DataError naming the missing stem."""
    folder = tmp_path / "set"
    _make_folder(folder, write_idx)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx.*found none"):
        data.load_idx_folder(folder)


def test_load_idx_folder_other_errors(tmp_path, write_idx):
    """Ambiguous duplicates, corrupt files, swapped files and absent folders are DataErrors."""
    folder = tmp_path / "set"
    arrays = _make_folder(folder, write_idx)
    write_idx(folder / "train-images-idx3-ubyte", arrays["train_images"])  # gz + raw twice
    with pytest.raises(DataError, match="expected one"):
        data.load_idx_folder(folder)
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    (folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="truncated header"):
        data.load_idx_folder(folder)
    write_idx(folder / "train-images-idx3-ubyte", arrays["train_labels"])  # labels as images
    with pytest.raises(DataError, match="1 dimensions, expected 3"):
        data.load_idx_folder(folder)
    with pytest.raises(DataError, match="no such folder"):
        data.load_idx_folder(tmp_path / "absent")


# --- binarization ------------------------------------------------------------


@pytest.fixture(scope="module")
def slice2000(mnist):
    return mnist.limit(2000, 500)


def test_dynamic_binarization_mean_matches_grey_levels(slice2000):
    """One dynamic epoch's pixel mean equals the grey-level mean within 4 binomial standard
    errors (SE = sqrt(sum p(1-p)) / N ~ 1.1e-4 for 2000 images); black/white pixels are exact."""
    binary = _epoch(data.train_pipeline(slice2000, 500, binarize="dynamic", seed=7))
    p = slice2000.intensities(slice2000.train_images).astype(np.float64)
    assert binary.shape == p.shape and binary.dtype == np.float32
    assert set(np.unique(binary).tolist()) == {0.0, 1.0}
    standard_error = np.sqrt((p * (1 - p)).sum()) / p.size
    assert 5e-5 < standard_error < 2e-4
    assert abs(binary.mean() - p.mean()) < 4 * standard_error
    # order-free: the multiset of per-image 1-counts sits within the bounds of pixel values
    counts = np.sort(binary.reshape(2000, -1).sum(1))
    assert np.sort((p == 1).reshape(2000, -1).sum(1))[0] <= counts[0]
    assert counts[-1] <= np.sort((p > 0).reshape(2000, -1).sum(1))[-1]


def test_dynamic_binarization_per_pixel_frequency(write_idx):
    """Many copies of one grey image: each pixel's frequency of 1s matches its intensity within
    4 standard errors (so the rule is `U < x`, not e.g. `U <= x` or a threshold at 0.5)."""
    grey = np.arange(0, 256, 16, dtype=np.uint8).reshape(1, 4, 4, 1)  # 0..240
    grey[0, -1, -1, 0] = 255
    copies = 4096
    dataset = ImageDataset("grey", np.repeat(grey, copies, axis=0), grey)
    freq = _epoch(data.train_pipeline(dataset, 1024, seed=3)).mean(axis=0)
    p = dataset.intensities(grey)[0]
    tolerance = 4 * np.sqrt(p * (1 - p) / copies)
    assert np.all(np.abs(freq - p) <= tolerance)  # exact for p = 0 and p = 1


def test_dynamic_is_fresh_each_pass_but_seed_deterministic():
    """Identical images isolate binarization from shuffling: a second pass redraws pixels,
    while two fresh pipelines with the same seed give identical first (and second) epochs."""
    images = np.full((64, 6, 6, 1), 128, np.uint8)
    dataset = ImageDataset("flat", images, images[:4])
    first = data.train_pipeline(dataset, 16, seed=11)
    a1, a2 = _epoch(first), _epoch(first)
    second = data.train_pipeline(dataset, 16, seed=11)
    b1, b2 = _epoch(second), _epoch(second)
    other = _epoch(data.train_pipeline(dataset, 16, seed=12))
    assert (a1 != a2).mean() > 0.3  # p = 0.502: fresh draws differ in ~half the pixels
    assert (a1 != other).mean() > 0.3
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)


def test_dynamic_mnist_pipeline_deterministic(slice2000):
    """On real digits, same-seed fresh pipelines agree exactly (shuffle order included)."""
    a = _epoch(data.train_pipeline(slice2000.limit(600), 128, seed=5))
    b = _epoch(data.train_pipeline(slice2000.limit(600), 128, seed=5))
    np.testing.assert_array_equal(a, b)
    assert [len(batch["keys"]) for batch in data.train_pipeline(slice2000.limit(600), 128)] == [
        128,
        128,
        128,
        128,
        88,
    ]


def test_static_binarization_same_images_every_pass(slice2000):
    """`static` reshuffles but serves the same binary images: the multiset of an epoch equals
    `fixed_binarization(seed)` on every pass; a different seed gives a different sample."""
    subset = slice2000.limit(500)
    pipeline = data.train_pipeline(subset, 128, binarize="static", seed=4)
    e1, e2 = _epoch(pipeline), _epoch(pipeline)
    expected = _sorted_rows(data.fixed_binarization(subset, subset.train_images, 4))
    assert not np.array_equal(e1, e2)  # order changed between passes
    np.testing.assert_array_equal(_sorted_rows(e1), expected)
    np.testing.assert_array_equal(_sorted_rows(e2), expected)
    other = _sorted_rows(data.fixed_binarization(subset, subset.train_images, 5))
    assert not np.array_equal(other, expected)


def test_binarize_none_trains_on_the_grey_levels(slice2000):
    """`none`: the training step's targets are the intensities x / 255 (grey
    levels, not 0/1), every image once per pass; the test set is scored on its
    intensities too."""
    subset = slice2000.limit(300, 20)
    pipeline = data.train_pipeline(subset, 64, binarize="none", seed=2)
    assert "intensities" not in next(iter(pipeline))  # nothing left for the step to draw
    targets = _epoch(pipeline)
    grey = subset.intensities(subset.train_images)
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(np.unique(targets), np.unique(grey))
    np.testing.assert_array_equal(
        _sorted_rows(np.round(targets * 255)), _sorted_rows(subset.train_images)
    )
    assert ((targets > 0) & (targets < 1)).mean() > 0.05  # grey pixels stay grey
    fixed = subset.fixed_binarized("test", "none")
    np.testing.assert_array_equal(fixed, subset.intensities(subset.test_images))
    scored = np.concatenate([b["images"].numpy() for b in data.test_pipeline(subset, 8, "none")])
    np.testing.assert_array_equal(scored, fixed)


def test_binary_dataset_never_rebinarized():
    """A data set marked `binary` is served as-is (0/1 floats) by both modes."""
    images = np.random.default_rng(0).integers(0, 2, (40, 3, 3, 1), dtype=np.uint8)
    dataset = ImageDataset("bin", images, images[:5], binary=True)
    for mode in BINARIZATIONS:
        out = _epoch(data.train_pipeline(dataset, 8, binarize=mode))
        np.testing.assert_array_equal(_sorted_rows(out), _sorted_rows(images))
    np.testing.assert_array_equal(dataset.fixed_binarized_test(), images[:5].astype(np.float32))
    for named in ({"binarize": "otsu"}, {"pixels": "otsu"}):  # the old name and the new
        with pytest.raises(ValueError, match="pixels must be one of"):
            data.train_pipeline(dataset, 8, **named)


def test_test_pipeline_is_the_fixed_binarization(mnist):
    """`test_pipeline` serves `fixed_binarized_test()` in order, identically on every call."""
    fixed = mnist.fixed_binarized_test()
    assert fixed.shape == (10000, 28, 28, 1) and fixed.dtype == np.float32
    first = np.concatenate([batch["images"].numpy() for batch in data.test_pipeline(mnist, 1000)])
    np.testing.assert_array_equal(first, fixed)
    again = np.concatenate([batch["images"].numpy() for batch in data.test_pipeline(mnist, 777)])
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(mnist.fixed_binarized_test(), fixed)
    keys = np.concatenate([batch["keys"].numpy() for batch in data.test_pipeline(mnist, 777)])
    np.testing.assert_array_equal(keys[:, 0], np.arange(10000))  # one fixed key per image
    assert len(np.unique(keys[:, 1])) == 1


def test_fixed_binarization_matches_peer_formula(mnist):
    """The test binarization is the peer's draw: default_rng(0).random((10000, 784), float32)
    < x / 255 on flattened images (same stream, so same pixels despite the other shape)."""
    x = mnist.test_images.reshape(10000, 784).astype(np.float32) / 255.0
    peer = (np.random.default_rng(0).random(x.shape, dtype=np.float32) < x).astype(np.float32)
    np.testing.assert_array_equal(mnist.fixed_binarized_test().reshape(10000, 784), peer)
    assert int(peer.sum()) == 1_038_819  # saved figure for seed 0 (13.25% of test pixels)


@pytest.mark.skipif(not PEER.is_file(), reason="PyTorch peer's mnist_data.py not present")
def test_fixed_binarization_matches_peer_module(mnist):
    """The peer's own IDX reader and `fixed_binarized_test`, run on the bundled test file,
    give exactly the same binary test set as tfvae (test split only, to stay fast)."""
    spec = importlib.util.spec_from_file_location("peer_mnist_data", PEER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    raw = peer._read_idx_images(str(sources.bundled_mnist_dir() / "t10k-images-idx3-ubyte.gz"))
    x_test = raw.astype(np.float32) / 255.0  # as peer.load_mnist scales it
    np.testing.assert_array_equal(
        peer.fixed_binarized_test(x_test), mnist.fixed_binarized_test().reshape(10000, 784)
    )


def test_resize_averages_areas(mnist):
    """--resize 14 14 on 28x28 MNIST: each pixel is the rounded mean of a 2x2 block."""
    small = data.load_dataset("mnist", resize=(14, 14))
    assert small.image_shape == (14, 14, 1) and len(small.train_images) == 60000
    block = mnist.test_images[0, :, :, 0].astype(np.float64).reshape(14, 2, 14, 2).mean((1, 3))
    np.testing.assert_allclose(small.test_images[0, :, :, 0], np.round(block), atol=1)


# --- validation images held out of training ----------------------------------


@pytest.mark.parametrize("source", ["mnist", "images", "images streamed"])
def test_validation_is_the_last_training_images_and_never_trained_on(
    source, mnist, tmp_path, monkeypatch
):
    """--validation N as a run loads it (`RunData.load`): the held-out
    images are the last N of the set's training images, in order, and one pass
    of the run's training pipeline feeds the step exactly the others, each
    once, so no validation image is trained on. Pixels are kept as intensities
    (`binarize="none"`), so every image compares exactly with its uint8 levels;
    the bundled MNIST (always in memory) against its raw arrays."""
    if source == "mnist":
        spec, original, n = "mnist", mnist.train_images, 10_000
    else:
        spec = f"images:{write_folder(tmp_path / 'images', 60)}"
        original, n = data.load_dataset(spec).train_images, 20  # 54 training images
        if source == "images streamed":
            monkeypatch.setenv(STREAM_ENV, "0")
    config = TrainConfig(dataset=spec, binarize="none", validation=n, batch_size=500)
    run_data = data.RunData.load(config)
    rest, validation = run_data.data, run_data.validation
    assert rest.streamed == (source == "images streamed")
    trained = _epoch(data.train_pipeline(rest, config.batch_size, config.pixels, config.seed))
    trained = _sorted_rows(np.round(trained * 255))
    levels = np.round(np.asarray(validation) * 255)
    held = _sorted_rows(levels)
    assert len(trained) == len(original) - n and len(held) == n
    seen = {row.tobytes() for row in trained}
    overlap = sum(row.tobytes() in seen for row in held)
    assert overlap == 0, f"{overlap} of the {n} validation images are trained on"
    np.testing.assert_array_equal(trained, _sorted_rows(original[:-n]))
    np.testing.assert_array_equal(levels, original[-n:])
