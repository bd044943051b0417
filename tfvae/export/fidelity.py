"""How far a converted file is from the Keras model, and the limits it is held to.

The measure is the scaled error |file - keras| / (1 + |keras|) of every value
of every output users consume (`z_mean`, `z_stddev`, and the decoder's
mean and parameters, `tfvae.likelihoods.Likelihood.exported`); a file is
refused when its mean or 99th percentile is above the limit of its
quantization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfvae.errors import ExportError

if TYPE_CHECKING:
    from tfvae.model import VAE

# The most a converted file may differ from the Keras model, per quantization
# (`FIDELITY["none"]` also for ONNX): the mean and the 99th percentile of the
# scaled error over every value of every output. Set from trained models,
# with margin (benchmarks/export_fidelity.py; see
# docs/results/export-fidelity.md#intact-and-broken-conversions);
# a file that lost weights or an op is far above them. int8 has the least
# room: a trained decoder's logits span hundreds, so its int8 logits step by
# whole units, and the p99 limit sits between the intact files and the
# broken ones with less margin on either side (the mean is the wide guard).
FIDELITY: dict[str, dict[str, float]] = {
    "none": {"mean": 1e-5, "p99": 1e-4},
    "float16": {"mean": 2e-3, "p99": 2e-2},
    "dynamic": {"mean": 5e-2, "p99": 4e-1},
    "int8": {"mean": 0.15, "p99": 0.6},
}
# Without check images, the files are checked on this many samples of the model.
DEFAULT_CHECK_IMAGES = 256


def scaled_error(converted: np.ndarray, keras_value: np.ndarray) -> np.ndarray:
    """|converted - keras| / (1 + |keras|): absolute where values are small
    (probabilities, stddevs), relative where they are large (a trained
    decoder's logits reach tens, and float rounding scales with them)."""
    keras_value = np.asarray(keras_value, np.float64)
    return np.abs(np.asarray(converted, np.float64) - keras_value) / (1.0 + np.abs(keras_value))


def fidelity_report(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """Per output: the mean, 99th percentile and maximum of the scaled error,
    and the largest absolute difference. A NaN output value makes its figures NaN."""
    report = {}
    for key, value in sorted(outputs.items()):
        error = scaled_error(value, reference[key])
        report[key] = {
            "mean": float(error.mean()),
            "p99": float(np.quantile(error, 0.99)),
            "max": float(error.max()),
            "max_abs_diff": float(np.abs(value - reference[key]).max()),
        }
    return report


def check_fidelity(label: str, report: dict, limits: dict[str, float]) -> None:
    """Refuse a file whose mean or 99th-percentile scaled error on any output
    is above `limits`: rounding and quantization stay far below them, a file
    that lost weights or an op lands far above (see
    docs/results/export-fidelity.md#intact-and-broken-conversions)."""
    for key, stats in report.items():
        for stat, limit in limits.items():
            if not stats[stat] <= limit:  # also catches NaN
                raise ExportError(
                    f"{label} differs from the Keras model ({key}: {stat} scaled error "
                    f"{stats[stat]:.3g} > {limit:g}); the conversion is broken, not exported"
                )


def check_inputs(
    model: VAE, check_images: np.ndarray | None, what: str = "check_images", labels=None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The images as float32, their labels (a conditional model's: given, or
    for its own samples every class in turn; else None) and a note saying
    what they are; `what` names the argument in errors (the int8
    calibration images are checked here too)."""
    if check_images is None:
        # In-distribution without a data set: the model's own samples, drawn binary
        # as the training images were.
        labels = model.every_class(DEFAULT_CHECK_IMAGES)
        images = model.sample(DEFAULT_CHECK_IMAGES, seed=0, binary=True, labels=labels)
        note = f"{DEFAULT_CHECK_IMAGES} binary samples of the model (seed 0)"
        return np.asarray(images, np.float32), labels, note
    images = np.asarray(check_images, dtype=np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.image_shape) or not len(images):
        raise ExportError(
            f"{what} must be a non-empty [n, {', '.join(map(str, model.image_shape))}] "
            f"array, got shape {images.shape}"
        )
    if not np.isfinite(images).all():
        raise ExportError(f"{what} must be finite pixels in [0, 1]; found NaN or Inf")
    return images, _checked_labels(model, labels, len(images), what), f"{len(images)} given images"


def _checked_labels(model: VAE, labels, n: int, what: str) -> np.ndarray | None:
    """A conditional model's labels of `n` given images as int32, checked."""
    if not model.conditional:
        return None
    found = None if labels is None else np.asarray(labels)
    if (
        found is None
        or found.shape != (n,)
        or not np.issubdtype(found.dtype, np.integer)
        or not ((found >= 0) & (found < len(model.classes))).all()
    ):
        raise ExportError(
            f"{what} of a conditional model need their labels: {n} class indices in "
            f"0..{len(model.classes) - 1}"
        )
    return found.astype(np.int32)


def keras_reference(
    model: VAE, images: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Inputs and Keras outputs of each file: the encoder on `images`, the
    decoder on their posterior means and on as many draws from the prior (a
    conditional model's given the images' `labels`, both times)."""
    z_mean, z_stddev = model.encoder.top_params(tf.constant(images), labels)
    prior_z = tf.random.stateless_normal(tf.shape(z_mean), seed=(0, 1), alg="philox")
    z = tf.concat([z_mean, prior_z], axis=0)
    classes = {}
    if labels is not None:
        classes = {"labels": labels}
        labels = np.concatenate([labels, labels])
    decoded = {key: value.numpy() for key, value in model.exported_decode(z, labels).items()}
    encoder = {"images": images, **classes, "z_mean": z_mean.numpy(), "z_stddev": z_stddev.numpy()}
    decoder_classes = {} if labels is None else {"labels": labels}
    return {"encoder": encoder, "decoder": {"z": z.numpy(), **decoder_classes, **decoded}}
