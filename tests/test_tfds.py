"""The TFDS source, offline: `tfds.testing.mock_data` stands in for the records.

A set counts as prepared when its `dataset_info.json` exists, so each mocked
test first writes that metadata (with the split names and sizes) into a
temporary data folder; `mock_data(data_dir=...)` then serves random examples
for it. Nothing here may reach the network: every attempt is recorded.
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import logging  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from tiny_tfds import write_tiny_streamed  # noqa: E402

from tfvae.data import DataError, ImageDataset, load_dataset, train_pipeline  # noqa: E402
from tfvae.data.tfds import is_binary, load_tfds, pick_features, pick_splits  # noqa: E402

N_EXAMPLES = 24  # mock_data serves this many examples for every split


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every attempt to reach the network from Python, recorded and refused
    (TF's C++ I/O is not covered): what makes `tfds.load` hang for minutes
    offline is its download retries, so an error path that makes no attempt
    cannot hang."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("test tried to open a network connection")

    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def prepare_metadata(root: Path, name: str, splits: dict[str, int]) -> None:
    """Write the metadata a prepared `name` would have in `root` (no records)."""
    builder = tfds.builder(name, data_dir=str(root))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=split, shard_lengths=[n], num_bytes=0, filename_template=None
                )
                for split, n in splits.items()
            ]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


def load_mocked(root: Path, name: str, splits: dict[str, int], **mock_kwargs) -> ImageDataset:
    prepare_metadata(root, name, splits)
    with tfds.testing.mock_data(num_examples=N_EXAMPLES, data_dir=str(root), **mock_kwargs):
        return load_dataset(f"tfds:{name}", data_dir=str(root))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, ImageDataset]:
    """mnist (grey) and cifar10 (colour), loaded once for the shape and training tests."""
    root = tmp_path_factory.mktemp("tfds")
    return {
        name: load_mocked(root, name, {"train": 60, "test": 10}) for name in ("mnist", "cifar10")
    }


@pytest.mark.parametrize(("name", "shape"), [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_mocked_set_decodes_to_uint8_with_labels(loaded, name, shape):
    data = loaded[name]
    assert data.name == f"tfds:{name}"
    assert data.image_shape == shape
    for images, labels in [
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
    ]:
        assert images.shape == (N_EXAMPLES, *shape)
        assert images.dtype == np.uint8
        assert labels is not None and labels.shape == (N_EXAMPLES,)
        assert labels.min() >= 0 and labels.max() < 10
    assert not data.binary
    assert data.train_images.max() > 1  # grey levels, not rescaled


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_one_training_step(loaded, name):
    import keras

    from tfvae.model import VAE

    data = loaded[name]
    keras.utils.set_random_seed(0)
    model = VAE(image_shape=data.image_shape, arch="conv", hidden_units=(64,), latent_dim=4)
    model.build()
    model.compile(optimizer="adam")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(train_pipeline(data, batch_size=16), epochs=1, steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))


def test_binarized_mnist_is_binary_and_uses_test_split(tmp_path):
    # mock_data draws integers in [0, max_value): 0/1 pixels, as in the real set.
    data = load_mocked(
        tmp_path, "binarized_mnist", {"train": 50, "validation": 10, "test": 10}, max_value=2
    )
    assert data.binary
    assert data.train_labels is None and data.test_labels is None
    assert data.image_shape == (28, 28, 1)
    assert set(np.unique(data.train_images)) <= {0, 1}
    assert len(data.test_images) == N_EXAMPLES


def test_binary_detection():
    grey = np.array([[0, 7], [255, 1]], np.uint8)
    ones = np.array([[0, 1], [1, 0]], np.uint8)
    assert is_binary(ones, ones)
    assert not is_binary(grey, ones)
    assert not is_binary(np.zeros(4, np.uint8))


def test_train_only_set_holds_out_last_tenth(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tfvae.data.tfds"):
        data = load_mocked(tmp_path, "mnist", {"train": 100})
    n_test = round(N_EXAMPLES * 0.1)
    assert len(data.test_images) == n_test
    assert len(data.train_images) == N_EXAMPLES - n_test
    assert len(data.test_labels) == n_test
    assert "no test split" in caplog.text


def test_split_choice():
    assert pick_splits(["train", "validation", "test"], "x") == ("train", "test")
    assert pick_splits(["train", "test", "small1", "small2"], "x") == ("train", "test")
    assert pick_splits(["train", "validation"], "x") == ("train", "validation")
    assert pick_splits(["train"], "x") == ("train", None)
    assert pick_splits(["all"], "x") == ("all", None)
    with pytest.raises(DataError, match="no 'train' split"):
        pick_splits(["a", "b"], "x")


def test_feature_choice_from_builder_info(tmp_path):
    def keys(name):
        info = tfds.builder(name, data_dir=str(tmp_path)).info
        return pick_features(info.features, info.supervised_keys, name)

    assert keys("omniglot") == ("image", "label")  # not 'alphabet'
    assert keys("binarized_mnist") == ("image", None)
    assert keys("emnist/digits") == ("image", "label")


def error_of(spec: str, data_dir: Path) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(spec, data_dir=str(data_dir))
    return str(err.value)


def test_unknown_name_fails_without_the_network_and_suggests(tmp_path, offline):
    message = error_of("tfds:mnistt", tmp_path)
    assert offline == []
    assert "mnistt" in message and "'mnist'" in message and "list_builders" in message
    assert "\n" not in message


def test_unprepared_set_fails_without_the_network_with_instructions(tmp_path, offline):
    for spec in ("tfds:fashion_mnist", "tfds:emnist/digits"):
        message = error_of(spec, tmp_path)
        assert offline == [], spec
        name = spec[len("tfds:") :]
        assert f"tfds build {name}" in message
        assert f"--data-dir {tmp_path}" in message
        assert "\n" not in message


def test_bad_config_and_varying_size_fail_without_the_network(tmp_path, offline):
    message = error_of("tfds:emnist/nope", tmp_path)
    assert "'nope'" in message and "digits" in message
    with pytest.raises(DataError, match="--resize H W"):
        load_tfds("caltech101", data_dir=str(tmp_path))
    assert offline == []


def test_real_records_read_in_a_fixed_order(tmp_path):
    """A real (not mocked) prepared set, pixel value = example index, label =
    index % 3, read twice: the same split, every example once."""
    write_tiny_streamed(tmp_path, "grey")
    first = load_tfds("tiny_streamed/grey", data_dir=str(tmp_path))
    again = load_tfds("tiny_streamed/grey", data_dir=str(tmp_path))
    assert first.image_shape == (6, 5, 1)
    assert (len(first.train_images), len(first.test_images)) == (36, 4)
    np.testing.assert_array_equal(first.test_images, again.test_images)
    index = np.concatenate([first.train_images, first.test_images])[:, 0, 0, 0]
    labels = np.concatenate([first.train_labels, first.test_labels])
    assert sorted(index) == list(range(40))  # every example once, none lost in the split
    np.testing.assert_array_equal(labels, index % 3)  # labels stay with their images


class TinyVarying(tfds.core.GeneratorBasedBuilder):
    """A real prepared set whose images differ in size; pixel value = index."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Image(shape=(None, None, 1))}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(4)}

    def _generate_examples(self, n: int):
        for i in range(n):
            yield i, {"image": np.full((5 + i, 3 + 2 * i, 1), 10 * i, np.uint8)}


def test_resize_brings_varying_sizes_to_one(tmp_path):
    """Without --resize the set is refused; with it every image is 8x8 and an
    image of one grey level keeps it (area averaging)."""
    TinyVarying(data_dir=str(tmp_path)).download_and_prepare()
    with pytest.raises(DataError, match="--resize H W"):
        load_tfds("tiny_varying", data_dir=str(tmp_path))
    data = load_dataset("tfds:tiny_varying", data_dir=str(tmp_path), resize=(8, 8))
    assert data.train_images.shape == (12, 8, 8, 1) and data.train_labels is None
    levels = sorted(int(image.min()) for image in data.train_images)
    assert levels == [10 * i for i in range(12)]
    assert all(image.min() == image.max() for image in data.train_images)
