"""One training step moves the weights along the gradient of the chosen
objective: the model is built from `TrainConfig` as `tfvae train` builds it,
the objective is written again here from its formulas (float64 where it
matters), and one plain-SGD step must equal `w - lr * gradient` of it.

The logged loss is computed apart from the loss whose gradient is taken, so
checking it would not catch a step whose gradient ignores `--objective`,
`--beta` or `--kl-warmup`; the weights do.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import blank_run_data

from tfvae.config import TrainConfig
from tfvae.distribute import Placement
from tfvae.fitting import compiled_vae
from tfvae.noise import standard_normal

LR = 0.05
BATCH = 16
SHAPE = (6, 6, 1)


def independent_loss(model, images, noise, objective: str, kl_weight: float) -> tf.Tensor:
    """The per-batch objective from its formulas: z = mu + sigma * eps,
    log p(x|z) = sum x log s(l) + (1 - x) log(1 - s(l)), log N densities by
    hand; the ELBO's KL in closed form; the IW bound by log-mean-exp."""
    body = model.encoder.body(images)
    mu, raw = body[:, : model.latent_dim], body[:, model.latent_dim :]
    sigma = tf.nn.softplus(raw) + 1e-4
    eps = tf.transpose(noise, [1, 0, 2])  # [k, batch, latent]
    z = mu + sigma * eps
    k = z.shape[0]
    logits = tf.reshape(model.decoder.body(tf.reshape(z, [-1, model.latent_dim])), [k, BATCH, -1])
    x = tf.reshape(images, [1, BATCH, -1])
    log_px_z = tf.reduce_sum(
        x * tf.math.log_sigmoid(logits) + (1 - x) * tf.math.log_sigmoid(-logits), -1
    )
    if objective == "iwae":
        log_norm = -0.5 * math.log(2 * math.pi)
        log_pz = tf.reduce_sum(log_norm - 0.5 * z**2, -1)
        log_qz = tf.reduce_sum(log_norm - tf.math.log(sigma) - 0.5 * eps**2, -1)
        log_w = log_px_z + log_pz - log_qz
        per_image = -(tf.reduce_logsumexp(log_w, 0) - math.log(k))
    else:
        kl = 0.5 * tf.reduce_sum(sigma**2 + mu**2 - 1 - 2 * tf.math.log(sigma), -1)
        per_image = -(tf.reduce_mean(log_px_z, 0) - kl_weight * kl)
    return tf.reduce_mean(per_image)


def sgd_model(**settings):
    """The small model of these tests, built from `TrainConfig` as `tfvae
    train` builds it (10 steps an epoch), compiled with plain SGD."""
    config = TrainConfig(
        latent_dim=3,
        hidden_units=(8,),
        activation="tanh",
        jit_compile=False,
        steps_per_execution=1,
        batch_size=BATCH,
        **settings,
    )
    placement = Placement(tf.distribute.get_strategy(), Path("unused"))
    model = compiled_vae(config, blank_run_data(SHAPE, 10 * BATCH), placement)
    model.compile(optimizer=keras.optimizers.SGD(LR), jit_compile=False)
    return config, model


@pytest.mark.parametrize(
    "settings,steps_done,kl_weight",
    [
        (dict(), 0, 1.0),
        (dict(objective="iwae", k=5), 0, None),
        (dict(objective="elbo", k=3), 0, 1.0),
        (dict(beta=4.0), 0, 4.0),
        # --kl-warmup 1 with 10 steps an epoch, after 4 steps: 0.4 of beta
        (dict(kl_warmup=1, beta=2.0), 4, 0.8),
    ],
    ids=["elbo", "iwae-k5", "elbo-k3", "beta4", "inside-warmup"],
)
def test_one_sgd_step_follows_the_gradient_of_the_chosen_objective(settings, steps_done, kl_weight):
    config, model = sgd_model(**settings)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(steps_done)
    rng = np.random.default_rng(0)
    images = (rng.random((BATCH, *SHAPE)) < 0.4).astype(np.float32)
    keys = rng.integers(0, 2**32, (BATCH, 2), dtype=np.uint32)
    noise = standard_normal(keys, [config.k, config.latent_dim])  # what the step draws
    with tf.GradientTape() as tape:
        loss = independent_loss(model, images, noise, config.objective, kl_weight)
    grads = tape.gradient(loss, model.trainable_variables)
    before = [w.numpy() for w in model.trainable_variables]
    batch = tf.data.Dataset.from_tensors({"images": images, "keys": keys})
    model.fit(batch, epochs=1, verbose=0, shuffle=False)
    for w, w0, g in zip(model.trainable_variables, before, grads, strict=True):
        # The update itself, not the weights: a wrong objective moves it by far
        # more than the float32 rounding of w - w0 (about 3e-8 at |w| = 0.5).
        np.testing.assert_allclose(w.numpy() - w0, -LR * g.numpy(), rtol=1e-3, atol=1e-7)


def independent_dreg_gradients(model, images, noise) -> list[tf.Tensor]:
    """DReG's gradients from their formulas (Tucker et al. 2018): the decoder's
    is the IW bound's; the encoder's is -(1/batch) sum_b sum_i w~_bi^2
    (d log w_bi / d z_bi) (d z_bi / d phi), with d log w / d z taken at fixed
    mu and sigma and w~ the normalised weights."""
    encoder, decoder = model.encoder.trainable_variables, model.decoder.trainable_variables
    with tf.GradientTape() as tape:
        loss = independent_loss(model, images, noise, "iwae", None)
    decoder_grads = tape.gradient(loss, decoder)
    eps = tf.transpose(noise, [1, 0, 2])
    with tf.GradientTape() as outer:
        body = model.encoder.body(images)
        mu, sigma = body[:, : model.latent_dim], tf.nn.softplus(body[:, model.latent_dim :]) + 1e-4
        z = mu + sigma * eps
    fixed_z, fixed_mu, fixed_sigma = tf.identity(z), tf.identity(mu), tf.identity(sigma)
    with tf.GradientTape() as inner:
        inner.watch(fixed_z)
        k = fixed_z.shape[0]
        logits = tf.reshape(
            model.decoder.body(tf.reshape(fixed_z, [-1, model.latent_dim])), [k, BATCH, -1]
        )
        x = tf.reshape(images, [1, BATCH, -1])
        log_px_z = tf.reduce_sum(
            x * tf.math.log_sigmoid(logits) + (1 - x) * tf.math.log_sigmoid(-logits), -1
        )
        log_norm = -0.5 * math.log(2 * math.pi)
        log_pz = tf.reduce_sum(log_norm - 0.5 * fixed_z**2, -1)
        scaled = (fixed_z - fixed_mu) / fixed_sigma
        log_qz = tf.reduce_sum(log_norm - tf.math.log(fixed_sigma) - 0.5 * scaled**2, -1)
        log_w = log_px_z + log_pz - log_qz  # [k, batch]
    dlogw_dz = inner.gradient(log_w, fixed_z)  # each log w_bi depends on z_bi alone
    weights = tf.nn.softmax(log_w, axis=0)[..., tf.newaxis]
    encoder_grads = outer.gradient(z, encoder, output_gradients=-(weights**2) * dlogw_dz / BATCH)
    return [*encoder_grads, *decoder_grads]


@pytest.mark.parametrize("estimator", ["dreg", "standard"])
def test_dreg_steps_along_its_own_estimate(estimator):
    """With --gradient-estimator dreg one SGD step moves the encoder by DReG's
    formula and the decoder by the bound's gradient; the standard estimator's
    step (k = 5) is far from it, so a step that ignored the option would fail."""
    config, model = sgd_model(objective="iwae", k=5, gradient_estimator=estimator)
    assert model.trainable_variables == [
        *model.encoder.trainable_variables,
        *model.decoder.trainable_variables,
    ]
    rng = np.random.default_rng(1)
    images = (rng.random((BATCH, *SHAPE)) < 0.4).astype(np.float32)
    keys = rng.integers(0, 2**32, (BATCH, 2), dtype=np.uint32)
    noise = standard_normal(keys, [config.k, config.latent_dim])
    grads = independent_dreg_gradients(model, images, noise)
    before = [w.numpy() for w in model.trainable_variables]
    batch = tf.data.Dataset.from_tensors({"images": images, "keys": keys})
    model.fit(batch, epochs=1, verbose=0, shuffle=False)
    steps = [w.numpy() - w0 for w, w0 in zip(model.trainable_variables, before, strict=True)]
    expected = [-LR * g.numpy() for g in grads]
    encoder = len(model.encoder.trainable_variables)
    for step, want in zip(steps[encoder:], expected[encoder:], strict=True):  # decoder
        np.testing.assert_allclose(step, want, rtol=1e-3, atol=1e-7)
    gap = max(np.abs(s - e).max() for s, e in zip(steps[:encoder], expected[:encoder], strict=True))
    if estimator == "dreg":
        assert gap < 1e-6
    else:
        assert gap > 1e-4  # the estimators differ by far more than rounding
