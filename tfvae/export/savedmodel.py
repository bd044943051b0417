"""The SavedModel for TF Serving: named signatures over the trained model.

Input policy of every image signature: pixels are float32 in [0, 1]; finite
values outside that range are clipped to it; NaN or +-Inf pixels (and codes
`z`) are refused with an `InvalidArgumentError` ("... Tensor had NaN
values"), and the batch shape is checked again inside the graph (TF
Serving's C++ runtime does not check fed shapes). An empty batch gives empty
outputs.

A conditional VAE's signatures also take each image's (or code's) class,
`labels` int32 `[batch]` (indices into the model's `classes`), and `sample`
takes one `label` for all its images; a label outside the classes is
refused with an `InvalidArgumentError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfvae import durable
from tfvae.errors import ExportError
from tfvae.export.publish import (
    check_model,
    model_dir,
    next_version,
    remove_stale_temps,
    temp_folder,
    write_errors,
)
from tfvae.export.warmup import write_warmup_file
from tfvae.scoring import (
    REGRET_SEED,
    anomaly_scores,
    complexity_bits,
    default_score,
    image_levels,
    regret_of_batch,
)

if TYPE_CHECKING:
    from tfvae.model import VAE

SIGNATURES = ("serving_default", "reconstruct", "encode", "decode", "sample", "elbo", "score")
# The `elbo` signature draws its one z ~ q(z|x) with this stateless seed, so the
# same images always give the same numbers (equal to `model.elbo_terms(x, seed=ELBO_SEED)`).
ELBO_SEED = (0, 0)
# The `score` signature's importance samples per image, drawn in chunks of
# SCORE_CHUNK with this stateless seed (a fixed K, so a server's cost per
# image is known; `tfvae score -k` takes any K).
SCORE_K = 100
SCORE_CHUNK = 10
SCORE_SEED = (0, 1)
# A `sample` request allocates count * pixels floats; cap it so one request cannot
# exhaust a server's memory (10k MNIST images are 31 MB).
MAX_SAMPLE_COUNT = 10_000


def images_spec(model: VAE, batch: int | None = None) -> tf.TensorSpec:
    """`[batch, h, w, c]` float32 images; a None batch is dynamic."""
    return tf.TensorSpec([batch, *model.image_shape], tf.float32, name="images")


def z_spec(model: VAE, batch: int | None = None) -> tf.TensorSpec:
    """`[batch, code_dim]` float32 codes (the top layer's); a None batch is dynamic."""
    return tf.TensorSpec([batch, model.code_dim], tf.float32, name="z")


def labels_spec(batch: int | None = None) -> tf.TensorSpec:
    """`[batch]` int32 class indices of a conditional VAE's inputs."""
    return tf.TensorSpec([batch], tf.int32, name="labels")


def class_inputs(model: VAE, batch: int | None = None) -> list[tf.TensorSpec]:
    """The class input a conditional VAE's signatures take beside the
    images or codes; none for an unconditional one."""
    return [labels_spec(batch)] if model.conditional else []


def _checked_labels(model: VAE, labels: tf.Tensor) -> tf.Tensor:
    """Labels that are class indices of the model, or an `InvalidArgumentError`."""
    message = f"labels must be class indices in 0..{len(model.classes) - 1}"
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, len(model.classes), message=message),
        ]
    ):
        return tf.identity(labels)


def _checked_images(model: VAE, images: tf.Tensor) -> tf.Tensor:
    """Shape check, NaN/Inf refusal and clipping to [0, 1] (see the module docstring)."""
    images = tf.ensure_shape(images, [None, *model.image_shape])
    images = tf.debugging.check_numerics(images, "images must be finite pixels in [0, 1]")
    return tf.clip_by_value(images, 0.0, 1.0)


def _checked_count(count: tf.Tensor) -> tf.Tensor:
    """A `sample` request's count, refused outside 0..`MAX_SAMPLE_COUNT`."""
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(count, message="count must be >= 0"),
            tf.debugging.assert_less_equal(
                count, MAX_SAMPLE_COUNT, message=f"count must be <= {MAX_SAMPLE_COUNT}"
            ),
        ]
    ):
        return tf.identity(count)


def _checked_z(model: VAE, z: tf.Tensor) -> tf.Tensor:
    z = tf.ensure_shape(z, [None, model.code_dim])
    return tf.debugging.check_numerics(z, "z must be finite")


def _serving_endpoints(model: VAE) -> dict[str, tuple[Callable, list[tf.TensorSpec]]]:
    """The signatures: name -> (function returning a dict of named outputs, inputs)."""
    images, z, y = images_spec(model), z_spec(model), class_inputs(model)
    mean_name = model.decoder.likelihood.mean_name

    def labels_of(given: tuple) -> tf.Tensor | None:
        return _checked_labels(model, given[0]) if given else None

    def reconstruct(images, *labels):
        return {mean_name: model(_checked_images(model, images), labels=labels_of(labels))}

    def encode(images, *labels):
        z_mean, z_stddev = model.encoder.top_params(
            _checked_images(model, images), labels_of(labels)
        )
        return {"z_mean": z_mean, "z_stddev": z_stddev}

    def decode(z, *labels):
        return model.exported_decode(_checked_z(model, z), labels_of(labels))

    def sample(count, seed, *label):
        count = _checked_count(count)
        labels = labels_of(tuple(tf.fill([count], value) for value in label))
        return {mean_name: model.sample(count, seed=seed, labels=labels)}

    def elbo(images, *labels):
        checked = _checked_images(model, images)
        terms = model.elbo_terms(checked, seed=ELBO_SEED, labels=labels_of(labels))
        return {key: terms[key] for key in ("elbo", "kl", "log_likelihood")}

    def score(images, *labels):
        return serving_scores(model, _checked_images(model, images), labels_of(labels))

    scalar = [
        tf.TensorSpec([], tf.int32, name="count"),
        tf.TensorSpec([], tf.int32, name="seed"),
    ]
    label = [tf.TensorSpec([], tf.int32, name="label")] if model.conditional else []
    return {
        "serving_default": (reconstruct, [images, *y]),
        "reconstruct": (reconstruct, [images, *y]),
        "encode": (encode, [images, *y]),
        "decode": (decode, [z, *y]),
        "sample": (sample, scalar + label),
        "elbo": (elbo, [images, *y]),
        "score": (score, [images, *y]),
    }


def serving_scores(model: VAE, images: tf.Tensor, labels=None) -> dict[str, tf.Tensor]:
    """What the `score` signature returns for `images` `[B, h, w, c]`, each
    `[B]` float32: the `elbo` signature's terms, `nll` (the IW estimate at
    `SCORE_K` from `SCORE_SEED`, nats), `bits_per_dim`, `complexity_bits`
    and `score`, the anomaly score `tfvae score` gives by default
    (`scoring.default_score`; the Likelihood Regret from `REGRET_SEED`, as
    `tfvae score` draws it for the first 500 images); a conditional VAE's
    given the images' `labels`."""
    terms = model.elbo_terms(images, seed=ELBO_SEED, labels=labels)
    batch = tf.shape(images)[0]
    log_sums = []
    for chunk in range(SCORE_K // SCORE_CHUNK):  # bounded memory: one chunk of z at a time
        shape = tf.stack([SCORE_CHUNK, batch, model.noise_dim])
        noise = tf.random.stateless_normal(shape, seed=[SCORE_SEED[0], SCORE_SEED[1] + chunk])
        draw = model.draw(images, noise, labels)
        log_sums.append(tf.reduce_logsumexp(model.log_weights(draw), 0))
    nll = math.log(SCORE_K) - tf.reduce_logsumexp(tf.stack(log_sums), axis=0)
    bits = complexity_bits(image_levels(model, images))
    scores = anomaly_scores(nll, bits)
    if default_score(model) == "regret":
        scores["regret"] = regret_of_batch(model, images, seed=[REGRET_SEED, 0], labels=labels)
    dims = math.prod(model.image_shape)
    return {
        **{key: terms[key] for key in ("elbo", "kl", "log_likelihood")},
        "nll": nll,
        "bits_per_dim": nll / (dims * math.log(2)),
        "complexity_bits": bits,
        "score": scores[default_score(model)],
    }


def _warmup_requests(
    model: VAE,
    endpoints: dict[str, tuple[Callable, list[tf.TensorSpec]]],
    warmup_images: np.ndarray | None,
) -> dict[str, dict[str, np.ndarray]]:
    """Signature -> inputs of one real batch-1 request: the first of
    `warmup_images` (else one binary sample of the model, in-distribution
    without a data set), its posterior mean as `z`, one seeded sample; a
    conditional VAE's of its first class."""
    first = model.every_class(1)
    if warmup_images is None:
        image = np.asarray(model.sample(1, seed=0, binary=True, labels=first), np.float32)
    else:
        given = np.asarray(warmup_images, np.float32)
        image = given[:1] if given.ndim else given
        # TF Serving refuses to load a version whose warm-up request fails: no NaN here.
        if image.shape != (1, *model.image_shape) or not np.isfinite(image).all():
            raise ExportError(
                "warmup_images must be a non-empty [n, "
                f"{', '.join(map(str, model.image_shape))}] array of finite pixels, "
                f"got shape {given.shape}"
            )
    z = model.encoder.top_params(tf.constant(image), first)[0].numpy()
    feeds = {"images": image, "z": z, "count": np.int32(1), "seed": np.int32(0)}
    feeds |= {"labels": np.zeros([1], np.int32), "label": np.int32(0)}
    return {
        name: {spec.name: feeds[spec.name] for spec in specs}
        for name, (_, specs) in endpoints.items()
    }


def export_archive(model: VAE, endpoints: dict[str, tuple[Callable, list[tf.TensorSpec]]]):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    return archive


def export_savedmodel(
    model: VAE,
    out_dir: str | os.PathLike,
    name: str,
    version: int | None = None,
    warmup_images: np.ndarray | None = None,
) -> Path:
    """Write `out_dir/<name>/<version>/` (saved_model.pb, variables/ and TF
    Serving's warm-up requests, one per signature) for TF Serving.

    `version=None` takes the next free integer (one above the highest, so TF
    Serving switches to it); an existing version is refused. The export appears
    atomically: it is written to `.tmp-<version>-<host>-<pid>` and renamed.
    `warmup_images`: real images of the model's data (the first is used) for
    the warm-up requests. Returns the version folder.
    """
    check_model(model)
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise ExportError(f"version must be a positive integer, got {version!r}")
    endpoints = _serving_endpoints(model)
    requests = _warmup_requests(model, endpoints, warmup_images)
    base = model_dir(out_dir, name)
    remove_stale_temps(base)
    if version is not None and (base / str(version)).exists():
        raise ExportError(
            f"{base / str(version)} already exists; pick another --version or omit it"
        )
    archive = export_archive(model, endpoints)
    chosen = version if version is not None else next_version(out_dir, name)
    with temp_folder(base, chosen) as temp, write_errors(base / str(chosen)):
        archive.write_out(str(temp), verbose=False)
        write_warmup_file(temp, name, requests)
        durable.fsync_tree(temp)
        while True:
            target = base / str(chosen)
            try:
                if target.exists():  # os.rename would silently replace an empty folder
                    raise FileExistsError(target)
                os.rename(temp, target)
                break
            except OSError as err:
                if not isinstance(err, FileExistsError) and not target.exists():
                    raise
                if version is not None:  # another process took it meanwhile
                    raise ExportError(f"{target} already exists; pick another --version") from None
                chosen = next_version(out_dir, name)
        durable.fsync(base)
    return target
