"""The `tf.data` pipelines that feed the VAE.

Small sets are kept in memory as uint8 `[n, height, width, channels]`
(decoded once); pipelines gather whole batches by index and prefetch, so the
input never waits on Python. Streamed sets (`streams.ImageFiles`) shuffle the
indices of all their images, the same way, and decode each batch's files in
parallel: memory holds the indices and a few batches, whatever the set's
size. Dynamic binarization happens in the training step (`tfvae.noise`),
which is where its random numbers are cheapest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tfvae.config import pixel_treatment
from tfvae.data.dataset import ImageDataset, fixed_binarization

if TYPE_CHECKING:
    from tfvae.data.streams import ScoredImages

PREFETCH = 4  # batches made ahead of the step


def _as_float(images, binary: bool):
    import tensorflow as tf

    return tf.cast(images, tf.float32) / (1.0 if binary else 255.0)


def _quiet(dataset):
    """A pipeline on one private thread, without autotuning: its work per batch
    is a gather, and on a CPU of few cores autotuning delayed the start of
    some epochs while extra threads competed with the training step (see
    docs/results/speed.md#random-numbers-drawn-in-the-step)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return dataset.prefetch(PREFETCH).with_options(options)


class Share(NamedTuple):
    """Which rows of every global batch a pipeline yields, for a worker of
    `--strategy multi-worker` that reads only its own images: the rows of
    replicas `first .. first + replicas - 1` of `total`, one batch per replica."""

    first: int
    replicas: int
    total: int

    @classmethod
    def of(cls, context) -> Share:
        """The share of the pipeline `context` (a `tf.distribute.InputContext`) describes."""
        local = context.num_replicas_in_sync // context.num_input_pipelines
        return cls(context.input_pipeline_id * local, local, context.num_replicas_in_sync)


def train_pipeline(
    data: ImageDataset,
    batch_size: int,
    pixels: str = "dynamic",
    seed: int = 0,
    share: Share | None = None,
    *,
    binarize: str | None = None,
    labels: bool = False,
):
    """Shuffled batches of training images, in the one batch format the VAE
    trains on. The training step draws random pixels from the images' keys
    (`noise.training_batch`), so the pipeline ships uint8 and is deterministic
    for a given `seed`; streamed files give the batches memory gives.

    Args:
        data: The set whose training images are batched.
        batch_size: Images per batch (the global batch).
        pixels: The pixel treatment: `dynamic` (a fresh binarization every
            pass), `static` (one binary draw up front), `none` (intensities
            in [0, 1], the Bernoulli's targets for grey or colour sets, and
            what the other likelihoods score) or `dequantize` ((level + u) /
            256 afresh every pass). Sets that are already binary are never
            binarized.
        seed: Seeds the shuffling and the images' keys.
        share: For a multi-worker job whose workers read their own images:
            the rows of every global batch this worker yields, without end.
            None: whole batches (the in-memory path is split by
            `tf.distribute`).
        binarize: The old name of `pixels`, still taken.
        labels: Add each image's class, for a conditional VAE.

    Returns:
        (tf.data.Dataset): dicts with the images' `keys` (uint32
            `[batch, 2]`) and either `intensities` (uint8 `[batch, height,
            width, channels]`, to binarize), `levels` (uint8, to dequantize)
            or `images` (float32, used as they are); with `labels`, int32
            `[batch]`.

    Raises:
        ValueError: `pixels` is not a pixel treatment, or `labels` is asked
            of a set without labels.
    """
    pixels = pixel_treatment(pixels, binarize)
    if data.streamed:
        return _streamed_train(data, batch_size, pixels, seed, share, labels)
    return _memory_train(data, batch_size, pixels, seed, labels)


def _memory_train(data: ImageDataset, batch_size: int, pixels: str, seed: int, labels: bool):
    """`train_pipeline` of images held in memory."""
    classes = _label_table(data.train_labels) if labels else None
    import tensorflow as tf

    images, binary = tf.constant(data.train_images), data.binary
    if pixels == "static" and not data.binary:
        images = tf.constant(fixed_binarization(data, data.train_images, seed).astype(np.uint8))
        binary = True
    dynamic = pixels == "dynamic" and not binary

    def gather(idx, keys):
        batch = tf.gather(images, idx)
        name = "intensities" if dynamic else "levels" if pixels == "dequantize" else "images"
        pixels_of = batch if name != "images" else _as_float(batch, binary)
        return _with_labels({name: pixels_of, "keys": keys}, classes, idx)

    return _quiet(_shuffled(len(data.train_images), batch_size, seed).map(gather))


def _label_table(labels: np.ndarray | None):
    """A split's labels as one int32 tensor to gather batches' from."""
    import tensorflow as tf

    if labels is None:
        raise ValueError("labels=True needs a data set with labels")
    return tf.constant(np.asarray(labels, np.int32))


def _with_labels(batch: dict, table, idx) -> dict:
    """`batch` with the labels of its images (rows `idx` of `table`), if any."""
    import tensorflow as tf

    return batch if table is None else {**batch, "labels": tf.gather(table, idx)}


def _shuffled(n: int, batch_size: int, seed: int):
    """Batches of shuffled indices `[batch]` (int64) with their images' keys
    `[batch, 2]` (uint32), reshuffled and redrawn on every pass."""
    import tensorflow as tf

    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(indices.batch(batch_size), seeds).map(
        lambda idx, pair: (idx, _keys(tf.size(idx), pair))
    )


def _keys(size, pair):
    """`size` images' keys, uint32 `[size, 2]`, drawn from one seed pair."""
    import tensorflow as tf

    return tf.random.stateless_uniform(
        [size, 2], seed=pair, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
    )


def _streamed_train(
    data: ImageDataset,
    batch_size: int,
    pixels: str,
    seed: int,
    share: Share | None,
    labels: bool = False,
):
    """`train_pipeline` for `streams.StreamedImages`: `(index, uint8 images,
    keys)` batches (`_file_batches` or `_record_batches`) in the one batch
    format; with `labels`, image files' gathered from the split's labels by
    index, records' read beside their images.

    Alone it is one pass of unknown length: Keras then makes one iterator
    for each of the first two epochs, so one process trains on the passes 1
    and 2 a worker trains on (for a set of known length Keras makes a spare
    iterator at each epoch's end, which reshuffles: passes 1, 3, 5...). From
    the third epoch Keras knows the length and makes spares again: every
    epoch is still one whole reshuffled pass, but one process's and the
    workers' passes differ from then on. With a `share` it is endless, for
    `fit` with `steps_per_epoch`: on a worker's pipeline of unknown length
    Keras ran an extra, empty step per epoch, which moved Adam's weights.
    """
    import tensorflow as tf

    from tfvae.data.streams import scored

    images = data.train_images
    batches, classes = _stream_batches(data, batch_size, seed, share, labels)

    def as_batch(idx, levels, *read):
        *label, keys = read
        batch = _with_labels(pixels_of(idx, levels, keys), classes, idx)
        return {**batch, "labels": tf.cast(label[0], tf.int32)} if label else batch

    def pixels_of(idx, levels, keys):
        if images.binary:
            return {"images": tf.cast(levels, tf.float32), "keys": keys}
        if pixels == "dynamic":
            return {"intensities": levels, "keys": keys}
        if pixels == "dequantize":
            return {"levels": levels, "keys": keys}
        # `static`: one fixed draw per image, from its own key (index, seed).
        treatment = "dynamic" if pixels == "static" else pixels
        return {"images": scored(levels, idx, treatment, seed), "keys": keys}

    if share is None:
        batches = batches.filter(lambda *batch: True)  # length unknown
    return batches.map(as_batch).prefetch(PREFETCH)


def _stream_batches(data: ImageDataset, batch_size: int, seed: int, share, labels: bool):
    """A streamed split's `(index, levels, [labels,] keys)` batches, and the
    table image files' labels are gathered from by index (records carry
    their labels in the batch)."""
    images = data.train_images
    if hasattr(images, "decode"):
        classes = _label_table(data.train_labels) if labels else None
        return _file_batches(images, batch_size, seed, share), classes
    return _record_batches(images, batch_size, seed, share, labels), None


def _file_batches(images, batch_size: int, seed: int, share: Share | None):
    """Image files: the in-memory path's shuffled indices and keys, each
    batch's files decoded in parallel (several batches at once); with a
    `share`, only its rows of every global batch, without end."""
    import tensorflow as tf

    batches = _shuffled(len(images), batch_size, seed)
    if share is not None:
        batches = batches.repeat().flat_map(lambda idx, keys: _replica_rows(idx, keys, share))
    return batches.map(
        lambda idx, keys: (idx, images.decode(idx), keys),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _record_batches(images, batch_size: int, seed: int, share: Share | None, labels: bool = False):
    """TFDS records, read in shuffled file order through a shuffle buffer
    (with their `labels` if asked); with a `share`, each worker reads its
    own files (`_worker_batches`)."""
    import tensorflow as tf

    examples = images.shuffled(seed, share, labels)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    if share is None:
        read = examples.batch(batch_size)
    else:
        read = _worker_batches(examples, batch_size, share)
        # Workers read the same seed stream: fold in the share, or row j of
        # every worker's batch would get the same noise.
        fold_in = tf.random.experimental.stateless_fold_in
        seeds = seeds.map(lambda pair: fold_in(pair, share.first))
    return tf.data.Dataset.zip(read, seeds).map(
        lambda batch, pair: (*batch, _keys(tf.size(batch[0]), pair))
    )


def _replica_rows(idx, keys, share: Share):
    """One batch per replica of `share`: replica j of N takes rows
    [j m / N, (j + 1) m / N) of a global batch of m, as even as they can be."""
    import tensorflow as tf

    m = tf.size(idx, out_type=tf.int64)

    def rows(j):
        start, stop = j * m // share.total, (j + 1) * m // share.total
        return idx[start:stop], keys[start:stop]

    replicas = tf.data.Dataset.range(share.first, share.first + share.replicas)
    return replicas.map(rows)


def _worker_batches(examples, batch_size: int, share: Share):
    """A worker's own `examples` (`(index, image)`, and labels if read),
    without end, as one batch per replica of `share`, sized as
    `_replica_rows` splits a global batch.

    The examples repeat before they are batched, so no batch is cut short
    where the worker's pass ends: the workers' passes differ in length (each
    reads its own files), and a short batch on one replica would weigh its
    images above the rest of the global batch (each replica divides its loss
    by the global batch size)."""
    import tensorflow as tf

    bounds = [j * batch_size // share.total for j in range(share.total + 1)]
    offset = bounds[share.first]
    rows = examples.repeat().batch(bounds[share.first + share.replicas] - offset)

    def replicas(*parts):
        def rows_of(j):
            start, stop = tf.gather(bounds, j) - offset, tf.gather(bounds, j + 1) - offset
            return tuple(part[start:stop] for part in parts)

        return tf.data.Dataset.range(share.first, share.first + share.replicas).map(rows_of)

    return rows.flat_map(replicas)


def array_batches(images, batch_size: int):
    """`(start, float32 images)` in order, of an array or streamed images:
    for work on a few images at a time whatever the split's size."""
    for start in range(0, len(images), batch_size):
        yield start, np.asarray(images[start : start + batch_size], np.float32)


def fixed_keys(n: int, seed: int = 1):
    """uint32 `[n, 2]` keys (index, seed): the same image always gets the
    same key, so its reparameterization noise is the same in every pass."""
    import tensorflow as tf

    index = tf.range(n, dtype=tf.int64)
    return tf.cast(tf.stack([index, tf.fill([n], tf.cast(seed, tf.int64))], axis=1), tf.uint32)


def image_pipeline(
    images: np.ndarray | ScoredImages,
    batch_size: int,
    seed: int = 1,
    labels: np.ndarray | None = None,
):
    """Batches of images in order, in the training batch format with fixed
    keys, so every evaluation of the same weights gives the same numbers.

    Args:
        images (np.ndarray | ScoredImages): float32 `[n, height, width,
            channels]`, as scored (`ImageDataset.scored`); streamed images
            are decoded as the batches are read.
        batch_size: Images per batch.
        seed: Seeds the keys, and so each image's draws of z.
        labels: A conditional VAE's classes, int `[n]`.

    Returns:
        (tf.data.Dataset): dicts of `images` (float32 `[batch, height,
            width, channels]`), `keys` (uint32 `[batch, 2]`) and, when given,
            `labels` (int32 `[batch]`).
    """
    import tensorflow as tf

    fixed = {"keys": fixed_keys(len(images), seed)}
    if labels is not None:
        fixed["labels"] = np.asarray(labels, np.int32)
    if not isinstance(images, np.ndarray):
        facts = tf.data.Dataset.from_tensor_slices(fixed).batch(batch_size)
        batches = tf.data.Dataset.zip(images.batches(batch_size), facts)
        return batches.map(lambda x, batch: {"images": x, **batch}).prefetch(PREFETCH)
    batches = tf.data.Dataset.from_tensor_slices(
        {"images": np.asarray(images, np.float32), **fixed}
    )
    return _quiet(batches.batch(batch_size))


def test_pipeline(
    data: ImageDataset,
    batch_size: int,
    pixels: str = "dynamic",
    seed: int = 1,
    *,
    binarize: str | None = None,
):
    """Batches of the test images as scored, in order, with fixed keys
    (`image_pipeline`).

    Args:
        data: The set whose test images are batched.
        batch_size: Images per batch.
        pixels: The pixel treatment they are scored under
            (`ImageDataset.scored`).
        seed: Seeds the keys, and so each image's draws of z.
        binarize: The old name of `pixels`, still taken.

    Returns:
        (tf.data.Dataset): dicts of `images` and `keys`, as `image_pipeline`
            gives them.
    """
    return image_pipeline(data.scored("test", pixel_treatment(pixels, binarize)), batch_size, seed)
