"""The epoch's running means of the objective's terms, as one Keras metric."""

from __future__ import annotations

import keras
import tensorflow as tf

# The terms every step reports, per image in nats: the minimised loss, the
# ELBO and its two terms. Their one home: the logs, metrics.csv and
# TensorBoard all name them so.
METRICS = ("loss", "elbo", "kl", "log_likelihood")


@keras.saving.register_keras_serializable(package="tfvae")
class MeanTerms(keras.metrics.Metric):
    """Per-image means of named terms (loss, ELBO, KL, ...) since the last reset.

    One `total` vector `[terms]` and one `count` rather than a
    `keras.metrics.Mean` per term: under XLA on the CPU every Mean update is a
    few tiny kernels of its own, and four of them took a large share of a
    batch-20 training step (see
    docs/results/speed.md#where-a-step-spends-its-time). `result()` is a
    dict, which Keras spreads into the logs.
    """

    def __init__(self, names, name: str = "terms", **kwargs):
        super().__init__(name=name, **kwargs)
        self.names = tuple(names)
        self.total = self.add_variable(
            shape=(len(self.names),), initializer="zeros", dtype="float32", name="total"
        )
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, values: dict[str, tf.Tensor]) -> None:
        """`values`: every name's per-image values, each `[batch]`."""
        stacked = tf.stack([tf.cast(values[name], tf.float32) for name in self.names])
        self.total.assign_add(tf.reduce_sum(stacked, axis=1))
        self.count.assign_add(tf.cast(tf.shape(stacked)[1], tf.float32))

    def result(self) -> dict[str, tf.Tensor]:
        means = tf.math.divide_no_nan(self.total, self.count)
        return {name: means[i] for i, name in enumerate(self.names)}

    def reset_state(self) -> None:
        self.total.assign(tf.zeros_like(self.total))
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "names": list(self.names)}
