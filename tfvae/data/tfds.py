"""TensorFlow Datasets (TFDS) image sets as an `ImageDataset`: decoded once
into memory, or read from the records as training uses them (`TfdsImages`)
when they would pass `streams.stream_threshold()`.

TFDS downloads on first use, and without a network `tfds.load` retries for
minutes before it gives up. This loader therefore only reads sets that are
already prepared in `data_dir`, and otherwise fails at once with the command to
run on a machine that has internet.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfvae import memory
from tfvae.data.dataset import HELD_OUT_FRACTION, ImageDataset
from tfvae.data.images import area_resize
from tfvae.data.streams import (
    ARRAY_BATCH,
    StreamedImages,
    StreamedLabels,
    in_order,
    stream_threshold,
)
from tfvae.errors import DataError

log = logging.getLogger(__name__)

# Splits used as the test set, best first (binarized_mnist: train/validation/test).
TEST_SPLITS = ("test", "validation", "valid", "val")
# Examples decoded per step: bounds the extra memory next to the final arrays.
_READ_BATCH = 1024
# A streamed set is binary (pixels 0/1) when its first images are.
BINARY_CHECK = 1024
# Examples a streamed set's shuffle buffer holds, after shuffling its files.
SHUFFLE_BUFFER = 10_000


def load_tfds(
    name_config: str, data_dir: str | None = None, resize: tuple[int, int] | None = None
) -> ImageDataset:
    """Load the prepared TFDS set `NAME[/CONFIG]` as uint8 `[n, h, w, c]` arrays.

    Everything that can be checked without reading data (name, features,
    prepared files) is checked first, so mistakes fail at once, without a network
    call (tests/test_tfds.py records every attempt).
    """
    spec = f"tfds:{name_config}"
    builder = _builder(name_config, data_dir)
    info = builder.info
    image_key, label_key = pick_features(info.features, info.supervised_keys, spec, resize)
    if not builder.is_prepared():
        raise DataError(_not_prepared_message(name_config, builder, data_dir))
    train_split, test_split = pick_splits(list(info.splits.keys()), spec)
    image = info.features[image_key]
    held = sum(info.splits[split].num_examples for split in (train_split, test_split) if split)
    shape = (*(resize or image.shape[:2]), image.shape[2])
    if memory.images_need(held, shape).total > stream_threshold():
        splits = (train_split, test_split)
        data = _streamed(spec, builder, splits, (image_key, label_key), shape, resize)
        return dataclasses.replace(data, classes=_class_names(info, label_key))
    memory.check(memory.images_need(held, shape), f"decoding {spec}")

    keys = (image_key, label_key)
    train_images, train_labels = _read_split(builder, train_split, keys, spec, resize)
    if test_split is not None:
        test_images, test_labels = _read_split(builder, test_split, keys, spec, resize)
    else:
        n = len(train_images)
        if n < 2:
            raise DataError(f"{spec}: only {n} example(s), too few to hold out a test set")
        n_test = _held_out(spec, info, train_split, n)
        test_images, train_images = train_images[-n_test:], train_images[:-n_test]
        if train_labels is not None:
            test_labels, train_labels = train_labels[-n_test:], train_labels[:-n_test]
        else:
            test_labels = None

    return ImageDataset(
        name=spec,
        train_images=train_images,
        test_images=test_images,
        train_labels=train_labels,
        test_labels=test_labels,
        binary=is_binary(train_images, test_images),
        classes=_class_names(info, label_key),
    )


def _class_names(info, label_key: str | None) -> tuple[str, ...] | None:
    """The names of the label's classes, as the set's `ClassLabel` gives them."""
    if label_key is None:
        return None
    return tuple(str(name) for name in info.features[label_key].names)


def _held_out(spec: str, info, train_split: str, n: int) -> int:
    """How many of the `n` training examples a set without a test split tests on."""
    if n < 2:
        raise DataError(f"{spec}: only {n} example(s), too few to hold out a test set")
    n_test = max(1, round(n * HELD_OUT_FRACTION))
    log.warning(
        "%s has no test split (splits: %s); using the last %d of %d '%s' examples as test",
        spec,
        ", ".join(info.splits.keys()),
        n_test,
        n,
        train_split,
    )
    return n_test


@dataclasses.dataclass(frozen=True)
class TfdsImages(StreamedImages):
    """Examples `start`..`stop` of a prepared TFDS split, read from its
    records when used: uint8 `[h, w, c]` images (at `resize` if given)."""

    builder: Any
    split: str
    start: int
    stop: int
    image_key: str
    image_shape: tuple[int, int, int]
    resize: tuple[int, int] | None = None
    binary: bool = False
    # The integer label's feature, read beside the image for a conditional VAE.
    label_key: str | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: slice) -> TfdsImages:
        positions = in_order(index, len(self))
        start = self.start + positions.start
        return dataclasses.replace(self, start=start, stop=start + len(positions))

    @property
    def sliced(self) -> str:
        """The TFDS split string of these examples."""
        return f"{self.split}[{self.start}:{self.stop}]"

    @property
    def record_files(self) -> int:
        """How many record files hold these examples: under multi-worker each
        worker streams whole files of its own."""
        return len(self.builder.info.splits[self.sliced].file_instructions)

    def _read(self, seed: int | None = None, context=None, labels: bool = False):
        """`(index, image)`: the examples in order, or, with a `seed`, in
        shuffled file order (the files of pipeline `context` only); `index` is
        then a hash of the example's TFDS id, the same in every pass. With
        `labels`, `(index, image, label)`."""
        config = tfds.ReadConfig(
            try_autocache=False,
            shuffle_seed=seed,
            input_context=context,
            add_tfds_id=seed is not None,
        )
        examples = self.builder.as_dataset(
            split=self.sliced,
            shuffle_files=seed is not None,
            read_config=config,
        )

        def pick(example):
            image = example[self.image_key]
            image = image if self.resize is None else area_resize(image, self.resize)
            if seed is None:
                return image
            index = tf.strings.to_hash_bucket_fast(example["tfds_id"], 2**62)
            return (index, image, example[self.label_key]) if labels else (index, image)

        return examples.map(pick, num_parallel_calls=tf.data.AUTOTUNE)

    def read_labels(self) -> np.ndarray:
        """These examples' labels, int64 `[n]` in order, read without
        decoding the images."""
        examples = self.builder.as_dataset(
            split=self.sliced,
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
            decoders={self.image_key: tfds.decode.SkipDecoding()},
        )
        labels = examples.map(lambda example: example[self.label_key]).batch(_READ_BATCH)
        return np.concatenate(list(labels.as_numpy_iterator())).astype(np.int64)

    def batches(self, batch_size: int = ARRAY_BATCH):
        images = self._read().batch(batch_size)
        index = tf.data.Dataset.range(len(self)).batch(batch_size)
        return tf.data.Dataset.zip(index, images).prefetch(tf.data.AUTOTUNE)

    def shuffled(self, seed: int, share=None, labels: bool = False):
        """One pass in a shuffled order, `(index, image)` (and the `labels`
        if asked; see `_read`): the files shuffled, then `SHUFFLE_BUFFER`
        examples; under a `share` (`pipelines.Share`), only this worker's
        files."""
        context = None
        if share is not None:
            context = tf.distribute.InputContext(
                num_input_pipelines=share.total // share.replicas,
                input_pipeline_id=share.first // share.replicas,
                num_replicas_in_sync=share.total,
            )
        examples = self._read(seed, context, labels)
        return examples.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)


def _streamed(spec: str, builder, splits, keys, shape, resize) -> ImageDataset:
    """The set as `TfdsImages`, split as `load_tfds` splits it in memory."""
    (train_split, test_split), (image_key, label_key), info = splits, keys, builder.info

    def examples(split: str) -> TfdsImages:
        n = info.splits[split].num_examples
        return TfdsImages(builder, split, 0, n, image_key, shape, resize, label_key=label_key)

    train = examples(train_split)
    if test_split is not None:
        test = examples(test_split)
    else:
        n_test = _held_out(spec, info, train_split, len(train))
        train, test = train[:-n_test], train[-n_test:]
    binary = is_binary(np.asarray(train[:BINARY_CHECK]))
    train, test = (dataclasses.replace(part, binary=binary) for part in (train, test))
    return ImageDataset(
        name=spec,
        train_images=train,
        test_images=test,
        train_labels=None if label_key is None else StreamedLabels(train),
        test_labels=None if label_key is None else test.read_labels(),
        binary=binary,
    )


def is_binary(*arrays: np.ndarray) -> bool:
    """True when the pixels are already 0/1 (max 1), so they must not be rescaled."""
    return max((int(a.max()) for a in arrays if a.size), default=0) == 1


def pick_features(
    features: tfds.features.FeaturesDict,
    supervised_keys: tuple | None,
    spec: str,
    resize: tuple[int, int] | None = None,
) -> tuple[str, str | None]:
    """The keys of the image and of the integer label (None if unlabelled).

    `image`/`label` win when they have the right type (omniglot also has an
    `alphabet` label); otherwise the supervised keys, then a single feature of
    the type.
    """
    top = dict(features.items())
    image_key = _pick(top, tfds.features.Image, "image", supervised_keys, 0)
    if image_key is None:
        raise DataError(
            f"{spec}: no single image feature (features: {', '.join(top)}); "
            "only image data sets can be used"
        )
    image = top[image_key]
    if None in image.shape[:2] and resize is None:
        raise DataError(
            f"{spec}: images vary in size ('{image_key}' has shape {image.shape}); "
            "pass --resize H W to bring them to one size"
        )
    if len(image.shape) != 3 or image.shape[2] is None or np.dtype(image.np_dtype) != np.uint8:
        raise DataError(
            f"{spec}: '{image_key}' is {image.np_dtype} {image.shape}, "
            "expected uint8 images [height, width, channels]"
        )
    label_key = _pick(top, tfds.features.ClassLabel, "label", supervised_keys, 1)
    return image_key, label_key


def _pick(top: dict, kind: type, preferred: str, supervised_keys: tuple | None, index: int):
    if isinstance(top.get(preferred), kind):
        return preferred
    if isinstance(supervised_keys, tuple) and len(supervised_keys) == 2:
        key = supervised_keys[index]
        if isinstance(key, str) and isinstance(top.get(key), kind):
            return key
    matches = [key for key, feature in top.items() if isinstance(feature, kind)]
    return matches[0] if len(matches) == 1 else None


def pick_splits(names: list[str], spec: str) -> tuple[str, str | None]:
    """The train split and the test split (None: hold out part of train)."""
    if "train" in names:
        train = "train"
    elif len(names) == 1:
        train = names[0]
    else:
        raise DataError(f"{spec}: no 'train' split (splits: {', '.join(names) or 'none'})")
    test = next((s for s in TEST_SPLITS if s in names), None)
    return train, test


def _builder(name_config: str, data_dir: str | None):
    """`tfds.builder` with its errors turned into one-line `DataError`s.

    Making a builder reads only code and local metadata, never the network.
    """
    spec = f"tfds:{name_config}"
    try:
        return tfds.builder(name_config, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(_unknown_message(name_config)) from None
    except (ValueError, AssertionError, ImportError) as err:
        # Bad config or version, malformed name, optional package missing.
        message = _bad_config_message(name_config) or " ".join(str(err).split())
        raise DataError(f"{spec}: {message}") from None


def _bad_config_message(name_config: str) -> str | None:
    """Name the configs when CONFIG is wrong (TFDS 4.9.10 promises a list but prints none)."""
    name, _, config = name_config.partition("/")
    config = config.split(":")[0].split("/")[0]
    try:
        configs = [c.name for c in tfds.builder_cls(name).BUILDER_CONFIGS]
    except Exception:  # only a hint: the caller falls back on TFDS's own message
        return None
    if not config or config in configs:
        return None
    if not configs:
        return f"'{name}' has no configs; use tfds:{name}"
    return f"'{name}' has no config '{config}'; its configs: {', '.join(configs)}"


def _base_name(name_config: str) -> str:
    """`NAME` of `[NAMESPACE:]NAME[/CONFIG][:VERSION]`."""
    base = name_config.split("/")[0]
    head, _, tail = base.partition(":")
    return tail if tail and not tail[0].isdigit() else head


def _unknown_message(name_config: str) -> str:
    typed, name = name_config.split("/")[0], _base_name(name_config)
    known = tfds.list_builders(with_community_datasets=False)  # local; community needs GCS
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (
        f"tfds:{name_config}: TFDS has no data set named '{typed}'; {hint}"
        "see tensorflow_datasets.list_builders() for the names"
    )


def _not_prepared_message(name_config: str, builder, data_dir: str | None) -> str:
    root = _data_root(builder, data_dir)
    return (
        f"tfds:{name_config} is not downloaded in {root} (and it is not fetched here, "
        f"to never hang without a network): on a machine with internet run "
        f'`tfds build {name_config} --data_dir {root}` (or `python -c "import '
        f"tensorflow_datasets as tfds; tfds.load('{name_config}', data_dir='{root}')\"`), "
        f"copy that folder here if needed, then pass --data-dir {root}"
    )


def _data_root(builder, data_dir: str | None) -> str:
    """The TFDS data folder the builder looked in (`data_dir` or TFDS's default)."""
    if data_dir:
        return os.fspath(data_dir)
    variant = os.fspath(builder.data_dir)
    suffix = "/" + builder.info.full_name
    return variant[: -len(suffix)] if variant.endswith(suffix) else variant


def _read_split(
    builder,
    split: str,
    keys: tuple[str, str | None],
    spec: str,
    resize: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode one split in batches into uint8 images and int64 labels.

    `builder.as_dataset` never downloads; autocache is off because the arrays
    are the only copy we keep. Images are resized one by one before batching,
    so sets whose images differ in size can be stacked.
    """
    image_key, label_key = keys
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    wanted = (image_key,) if label_key is None else (image_key, label_key)

    def pick(example):
        image = example[image_key]
        if resize is not None:
            image = area_resize(image, resize)
        return (image, *(example[k] for k in wanted[1:]))

    ds = ds.map(pick).batch(_READ_BATCH)
    images, labels = [], []
    for batch in tfds.as_numpy(ds):
        images.append(batch[0])
        if label_key is not None:
            labels.append(batch[1])
    if not images:
        raise DataError(f"{spec}: split '{split}' is empty")
    return (
        np.concatenate(images).astype(np.uint8, copy=False),
        np.concatenate(labels).astype(np.int64, copy=False) if label_key else None,
    )
