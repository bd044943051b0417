"""KL(q(z|x) || p(z)) against the closed form and Monte Carlo, and the ELBO's parts."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.layers import diag_normal
from tfvae.model import VAE

tfd = tfp.distributions


def _kl_formula(mu, sigma):
    """0.5 * sum(mu^2 + sigma^2 - 1 - ln sigma^2) in float64 (the seed's closed form)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    return 0.5 * np.sum(mu**2 + sigma**2 - 1.0 - np.log(sigma**2), axis=-1)


@pytest.fixture(scope="module")
def model():
    vae = VAE(latent_dim=20)
    vae.build((None, 28, 28, 1))
    return vae


def _random_posterior(batch, latent=20, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(scale=1.5, size=(batch, latent)).astype(np.float32)
    sigma = np.exp(rng.uniform(-2.5, 1.0, size=(batch, latent))).astype(np.float32)
    return mu, sigma


def test_prior_is_standard_normal(model):
    """p(z) = N(0, I) with event shape [latent]."""
    assert model.prior.event_shape.as_list() == [20] and model.prior.batch_shape.as_list() == []
    np.testing.assert_array_equal(model.prior.mean(), np.zeros(20))
    np.testing.assert_array_equal(model.prior.stddev(), np.ones(20))


def test_analytic_kl_matches_formula(model):
    """tfd.kl_divergence(q, prior) equals the closed form to 1e-5 (relative) for random q."""
    mu, sigma = _random_posterior(64)
    q = diag_normal(mu, sigma)
    kl = tfd.kl_divergence(q, model.prior).numpy()
    assert kl.shape == (64,)
    np.testing.assert_allclose(kl, _kl_formula(mu, sigma), rtol=1e-5)
    # q = prior gives exactly zero
    zeros, ones = np.zeros((1, 20), np.float32), np.ones((1, 20), np.float32)
    q0 = diag_normal(zeros, ones)
    np.testing.assert_allclose(tfd.kl_divergence(q0, model.prior), [0.0], atol=1e-6)


def test_monte_carlo_kl_agrees(model):
    """mean(log q(z) - log p(z)) over 100k z ~ q lies within 4 standard errors of the KL."""
    mu, sigma = _random_posterior(4, seed=1)
    q = diag_normal(mu, sigma)
    z = q.sample(100_000, seed=tf.constant([3, 4]))
    log_ratio = (q.log_prob(z) - model.prior.log_prob(z)).numpy().astype(np.float64)
    estimate = log_ratio.mean(axis=0)
    standard_error = log_ratio.std(axis=0) / np.sqrt(len(log_ratio))
    analytic = _kl_formula(mu, sigma)
    assert np.all(np.abs(estimate - analytic) < 4 * standard_error)
    assert np.all(standard_error < 0.05 * analytic)  # the check is tight, not vacuous


def test_elbo_terms_consistent(model, mnist):
    """Per image: elbo == log_likelihood - kl; kl matches the formula on encoder.params(x);
    log_likelihood is the numpy Bernoulli log_prob at z = mu + sigma * noise."""
    x = mnist.fixed_binarized_test()[:8]
    noise = np.random.default_rng(7).standard_normal((8, model.latent_dim)).astype(np.float32)
    terms = {k: v.numpy() for k, v in model.elbo_terms(x, noise).items()}
    assert all(v.shape == (8,) for v in terms.values())
    np.testing.assert_allclose(terms["elbo"], terms["log_likelihood"] - terms["kl"], rtol=1e-6)
    mu, sigma = (t.numpy() for t in model.encoder.params(x))
    np.testing.assert_allclose(terms["kl"], _kl_formula(mu, sigma), rtol=1e-5)
    logits = model.decoder.outputs(mu + sigma * noise).numpy().astype(np.float64)
    expected = (x * logits - np.logaddexp(0.0, logits)).reshape(8, -1).sum(1)
    np.testing.assert_allclose(terms["log_likelihood"], expected, rtol=1e-5)
    assert np.all(terms["log_likelihood"] < 0) and np.all(terms["kl"] >= 0)
    # the same seed repeats exactly; no seed advances the model's generator
    seed = tf.constant([5, 6], tf.int32)
    once, again = (model.elbo_terms(x, seed=seed)["log_likelihood"].numpy() for _ in range(2))
    np.testing.assert_array_equal(once, again)
    first, second = (model.elbo_terms(x)["log_likelihood"].numpy() for _ in range(2))
    assert not np.array_equal(first, second)
