"""The objectives beyond the plain ELBO: beta-VAE, KL warm-up and the IWAE
bound, each checked against the formula it implements."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvae.model import VAE
from tfvae.noise import standard_normal

LOG_2PI = np.log(2 * np.pi)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = (rng.random((6, 8, 8, 1)) < 0.4).astype(np.float32)
    return images, rng


def model_with(**settings):
    model = VAE(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,), seed=0, **settings)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.optimizer.build(model.trainable_variables)
    return model


def test_beta_weights_the_kl(batch):
    images, rng = batch
    noise = rng.standard_normal((6, 3)).astype(np.float32)
    for beta in (0.0, 1.0, 4.0):
        model = model_with(beta=beta)
        terms = model.elbo_terms(images, noise)
        expected = -(terms["log_likelihood"] - beta * terms["kl"])
        np.testing.assert_allclose(model.per_example_loss(terms), expected, rtol=1e-6)
    np.testing.assert_allclose(-terms["elbo"], -(terms["log_likelihood"] - terms["kl"]))


def test_kl_warmup_ramps_linearly_with_the_step_count():
    model = model_with(beta=2.0, kl_warmup_steps=10)
    weights = []
    for step in (0, 5, 10, 25):
        model.optimizer.iterations.assign(step)
        weights.append(float(model.kl_weight()))
    assert weights == pytest.approx([0.0, 1.0, 2.0, 2.0])


def test_iw_bound_matches_a_numpy_computation(batch):
    """ln (1/k) sum_k p(x|z_k) p(z_k) / q(z_k|x) with z_k = mu + sigma * eps_k."""
    images, rng = batch
    model = model_with(objective="iwae")
    noise = rng.standard_normal((6, 7, 3)).astype(np.float32)  # [batch, k, latent]
    terms = model.elbo_terms(images, noise)
    mu, sigma = (t.numpy().astype(np.float64) for t in model.encoder.params(images))
    z = mu[:, None] + sigma[:, None] * noise  # [batch, k, latent]
    logits = model.decoder.outputs(z.reshape(-1, 3).astype(np.float32)).numpy()
    logits = logits.reshape(6, 7, -1).astype(np.float64)
    x = images.reshape(6, 1, -1)
    log_px_z = (x * logits - np.logaddexp(0, logits)).sum(-1)
    log_pz = -0.5 * (z**2 + LOG_2PI).sum(-1)
    log_qz = (-0.5 * (noise.astype(np.float64) ** 2 + LOG_2PI) - np.log(sigma[:, None])).sum(-1)
    log_w = log_px_z + log_pz - log_qz
    top = log_w.max(1)
    expected = top + np.log(np.exp(log_w - top[:, None]).mean(1))
    np.testing.assert_allclose(terms["iw_bound"], expected, rtol=1e-5)
    np.testing.assert_allclose(terms["log_likelihood"], log_px_z.mean(1), rtol=1e-5)
    np.testing.assert_allclose(model.per_example_loss(terms), -expected, rtol=1e-5)


def test_iw_bound_is_above_the_elbo_on_average(batch):
    """Jensen: E[IW_k] >= ELBO; with k = 50 on a fresh model the gap is nats wide."""
    images, rng = batch
    model = model_with()
    noise = rng.standard_normal((6, 50, 3)).astype(np.float32)
    terms = model.elbo_terms(images, noise)
    assert float(tf.reduce_mean(terms["iw_bound"] - terms["elbo"])) > 0.1


def test_training_minimises_the_chosen_objective(batch):
    """The logged loss of an IWAE step is -mean(IW bound) on its batch."""
    images, rng = batch
    model = model_with(objective="iwae", k=5)
    keys = rng.integers(0, 2**32, (6, 2), dtype=np.uint32)
    noise = standard_normal(keys, [5, 3])  # what the step draws for k = 5
    expected = -float(tf.reduce_mean(model.elbo_terms(images, noise)["iw_bound"]))
    data = tf.data.Dataset.from_tensors({"images": images, "keys": keys})
    logged = model.fit(data, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    assert logged == pytest.approx(expected, rel=1e-5)  # SGD(0): weights unchanged
