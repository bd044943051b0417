"""Fitting a run's epochs: its model compiled as the settings say, its input,
and the callbacks that checkpoint, log and stop it (`tfvae.training` is the
flow around them)."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from tfvae.callbacks import (
    EpochBackup,
    EpochLog,
    EpochSeconds,
    MetricsCSV,
    StopOnNonFinite,
    Summaries,
)
from tfvae.config import MAX_SEED, TrainConfig
from tfvae.data import RunData
from tfvae.distribute import Placement
from tfvae.model import VAE
from tfvae.runs import LOGS_DIR, METRICS_FILE, RECONSTRUCTION_IMAGES, Job
from tfvae.schedules import learning_rate


def compiled_vae(config: TrainConfig, data: RunData, placement: Placement) -> VAE:
    """The VAE of `config` for the images of `data`, with its Adam and
    schedule over the run's epochs, created under the placement's strategy
    and run as it says (`Placement.execution`). The global seed is set
    first: the weights' initializers and tf.data's op seeds derive from it.

    Mixed precision: float16 compute with float32 variables; the encoder and
    decoder hand float32 tensors to the distributions, so log-probabilities
    and the KL stay in float32. Keras wraps the optimizer in a loss scaler.
    """
    keras.utils.set_random_seed(config.seed)
    jit_compile, steps_per_execution = placement.execution(config, data.data)
    steps_per_epoch = data.steps_per_epoch(config.batch_size)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if config.mixed_precision else "float32")
    try:
        with placement.strategy.scope():
            objective = config.objective_config(steps_per_epoch)
            model = VAE(data.image_shape, config.model, objective, config.seed)
            rate = learning_rate(
                config.lr_schedule, config.learning_rate, config.epochs, steps_per_epoch
            )
            model.compile(
                optimizer=keras.optimizers.Adam(
                    rate, epsilon=config.adam_epsilon, global_clipnorm=config.clip_norm
                ),
                # XLA on by default, CPU included: the step's random numbers
                # are integer hashes (`tfvae.noise`), and fused the step runs
                # faster (see docs/results/speed.md#random-numbers-drawn-in-the-step).
                jit_compile=jit_compile,
                steps_per_execution=steps_per_execution,
            )
    finally:
        keras.config.set_dtype_policy(previous)
    return model


def pipeline_seed(seed: int, initial_epoch: int) -> int:
    """The training pipeline's seed: the run's own for a fresh run, and a
    different one for each epoch a run resumes after (a fresh pipeline starts
    its shuffle and draws from the beginning: seeded as before, a resumed run
    would replay epoch 1's batches)."""
    if initial_epoch == 0:
        return seed
    return (seed * 1_000_003 + initial_epoch) % (MAX_SEED + 1)


def fit(job: Job, model: VAE, data: RunData, epoch: int) -> None:
    """`model.fit` after `epoch` to the run's epochs, scored after every
    epoch on the held-out split (the validation images, or the test
    images). The callbacks, every epoch: stop before a non-finite loss is
    kept, time it, write its row of `metrics.csv`; on the chief, the log and
    TensorBoard; last, the checkpoint, once the non-finite check passed."""
    config, folder = job.config, job.run.path
    seed = pipeline_seed(config.seed, epoch)
    batches, steps_per_epoch, held_out = job.placement.batches(data, config, seed)
    callbacks = [
        StopOnNonFinite(),
        EpochSeconds(),
        MetricsCSV(folder / METRICS_FILE, epoch, data.held_out),
    ]
    if job.placement.is_chief:
        shown = np.asarray(data.scored("test", RECONSTRUCTION_IMAGES))
        labels = data.facts("test")[0]
        labels = None if labels is None else labels[:RECONSTRUCTION_IMAGES]
        callbacks += [
            EpochLog(job.progress, config.epochs, data.held_out),
            Summaries(folder / LOGS_DIR, data.held_out, shown, config.pictures_every, labels),
        ]
    with warnings.catch_warnings():
        # A streamed set's one pass has no length Keras knows: it learns it
        # when the first epoch ends, and warns then that the data "ran out".
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            batches,
            epochs=config.epochs,
            initial_epoch=epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=held_out,
            shuffle=False,
            verbose=0,  # `EpochLog` says what a person needs, on a terminal or in a file
            callbacks=[*callbacks, EpochBackup(job.run.checkpoints)],
        )
