"""Scores of a trained model: the importance-weighted estimate of log p(x)
against exact numerical integration, the active-unit count, and a run
scored on the split asked for."""

import os

import numpy as np
import pytest
import tensorflow as tf
from test_data import _make_folder

from tfvae.config import TrainConfig
from tfvae.data import ImageDataset
from tfvae.evaluation import (
    active_units,
    evaluate_elbo,
    iw_log_likelihood,
)
from tfvae.model import VAE
from tfvae.runs import score_run
from tfvae.training import train


@pytest.fixture(scope="module")
def tiny():
    """A 1-D latent model over 4x4 images: log p(x) = log of a 1-D integral."""
    model = VAE(image_shape=(4, 4, 1), latent_dim=1, hidden_units=(8,), activation="tanh", seed=3)
    model.build()
    rng = np.random.default_rng(0)
    # Larger weights than the default init, so p(x|z) really depends on z.
    for weight in model.decoder.weights:
        weight.assign(rng.normal(0, 1.0, weight.shape).astype(np.float32))
    # q(z|x) = N(0.3, 1.5^2) for every x: broad enough to cover each posterior,
    # and different from the prior, so log q and log p(z) both matter.
    kernel, bias = model.encoder.body.layers[-1].weights
    kernel.assign(np.zeros(kernel.shape, np.float32))
    raw_scale = np.log(np.expm1(1.5 - 1e-4))  # softplus^-1
    bias.assign(np.array([0.3, raw_scale], np.float32))
    images = (rng.random((6, 4, 4, 1)) < 0.5).astype(np.float32)
    return model, images


def exact_log_px(model, images) -> np.ndarray:
    """log p(x) = log int p(x|z) N(z; 0, 1) dz by the trapezoid rule on [-12, 12]
    (20001 points; the integrand is smooth with Gaussian tails, so the rule is
    exact far below 1e-3 nats)."""
    z = np.linspace(-12, 12, 20001, dtype=np.float32)[:, None]
    logits = model.decoder.outputs(z).numpy().astype(np.float64).reshape(len(z), -1)
    x = images.reshape(len(images), -1).astype(np.float64)
    log_px_z = x @ logits.T - np.logaddexp(0, logits).sum(1)  # [images, grid]
    log_joint = log_px_z - 0.5 * (z[:, 0].astype(np.float64) ** 2 + np.log(2 * np.pi))
    peak = log_joint.max(1, keepdims=True)
    step = float(z[1, 0] - z[0, 0])
    weights = np.full(len(z), step)
    weights[[0, -1]] /= 2
    return peak[:, 0] + np.log(np.exp(log_joint - peak) @ weights)


def test_iw_estimate_converges_to_exact_log_likelihood(tiny):
    model, images = tiny
    exact = exact_log_px(model, images)
    estimate = iw_log_likelihood(model, images, k=20_000, batch_size=6)
    np.testing.assert_allclose(estimate, exact, atol=0.02)


def test_iw_bound_tightens_with_k_and_never_exceeds_log_px(tiny):
    """E[IW_K] rises with K towards log p(x) (Burda et al., Theorem 1); the
    ELBO (K=1) is the loosest. Averaged over images and seeds to beat noise."""
    model, images = tiny
    many = np.repeat(images, 50, axis=0)
    exact = exact_log_px(model, images).mean()
    means = [iw_log_likelihood(model, many, k=k, batch_size=100).mean() for k in (1, 10, 500)]
    assert means[0] < means[1] < means[2] <= exact + 0.01
    elbo = evaluate_elbo(model, many)["elbo"]
    assert elbo == pytest.approx(means[0], abs=0.3)  # both are one-sample ELBO estimates
    assert elbo < exact


def test_iw_chunks_do_not_change_the_estimate(tiny, monkeypatch):
    """Splitting the K samples into chunks is exact: log-sum-exp of parts."""
    import tfvae.evaluation as evaluation

    model, images = tiny
    whole = iw_log_likelihood(model, images, k=4000, batch_size=6)
    pixels = np.prod(images.shape[1:])
    monkeypatch.setattr(evaluation, "IW_NUMBERS", 6 * 70 * pixels)  # chunks of 70 samples
    chunked = iw_log_likelihood(model, images, k=4000, batch_size=6)
    assert not np.allclose(whole, chunked, atol=0)  # other draws, same estimator...
    np.testing.assert_allclose(chunked, exact_log_px(model, images), atol=0.05)  # ...same target


def test_active_units_counts_units_whose_mean_varies():
    model = VAE(image_shape=(4, 4, 1), latent_dim=3, hidden_units=(5,))
    model.build()
    kernel, bias = model.encoder.body.layers[-1].weights
    k = np.zeros(kernel.shape, np.float32)
    k[:, 0] = 3.0  # z_0's mean follows the hidden layer; z_1, z_2 are constant
    kernel.assign(k)
    bias.assign(np.zeros(bias.shape, np.float32))
    images = (np.random.default_rng(1).random((200, 4, 4, 1)) < 0.5).astype(np.float32)
    assert active_units(model, images) == 1


def test_active_units_compare_the_variance_of_the_mean_with_the_threshold():
    """Units whose posterior mean has variance 0.05, 0.011, 0.009, 0.001 and 0
    across the data: two are active (Cov_x > 0.01). Their standard deviations
    all exceed 0.01 but the last one's, so a count by standard deviation gives 4.
    The one hidden unit reads pixel 0 (relu(x_0) = x_0, 0 or 1, in exactly half
    the images) and unit u's mean is a_u (2 x_0 - 1) = +-a_u: variance a_u^2."""
    variances = np.array([0.05, 0.011, 0.009, 0.001, 0.0])
    a = np.sqrt(variances).astype(np.float32)
    model = VAE(image_shape=(2, 2, 1), latent_dim=len(a), hidden_units=(1,))
    hidden_kernel, hidden_bias = model.encoder.body.layers[-2].weights
    hidden_kernel.assign(np.array([[1.0], [0.0], [0.0], [0.0]], np.float32))
    hidden_bias.assign(np.zeros(1, np.float32))
    kernel, bias = model.encoder.body.layers[-1].weights
    kernel.assign(np.concatenate([2 * a, np.zeros_like(a)])[None, :])
    bias.assign(np.concatenate([-a, np.zeros_like(a)]))
    images = (np.random.default_rng(2).random((200, 2, 2, 1)) < 0.5).astype(np.float32)
    images[:, 0, 0, 0] = np.arange(200) % 2
    means = model.posterior_means(images).astype(np.float64)
    np.testing.assert_allclose(np.var(means, axis=0), variances, rtol=1e-6, atol=1e-12)
    counts = [active_units(model, images), active_units(model, images, threshold=0.005)]
    assert counts == [2, 3]


@pytest.mark.slow
def test_repeated_estimates_do_not_keep_their_graphs_alive():
    """Each call traces a new graph; drawing z through TFP's bijector kept
    every one of them in its global cache (about 1 MB a call for this model,
    30 MB over these 30 calls). Drawn explicitly, memory stays flat."""
    import gc

    model = VAE(image_shape=(28, 28, 1), latent_dim=8, hidden_units=(64,))
    model.build()
    images = (np.random.default_rng(0).random((20, 28, 28, 1)) < 0.3).astype(np.float32)

    def resident_mb():
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    for _ in range(10):
        iw_log_likelihood(model, images, k=10, batch_size=10)
    gc.collect()
    before = resident_mb()
    for _ in range(30):
        iw_log_likelihood(model, images, k=10, batch_size=10)
    gc.collect()
    assert resident_mb() - before < 10


def test_iw_estimate_matches_a_float64_numpy_estimate_at_latent_3():
    """The NLL behind every figure, at latent 3 with an encoder that depends on
    x, against log-mean-exp of log p(x|z) + log p(z) - log q(z|x) written in
    numpy (float64), on the same z: averaging the log-densities over latent
    dimensions instead of summing them, or any other slip in the weights,
    moves it by nats."""
    model = VAE(image_shape=(5, 5, 1), latent_dim=3, hidden_units=(16,), activation="tanh", seed=4)
    rng = np.random.default_rng(5)
    images = (rng.random((7, 5, 5, 1)) < 0.5).astype(np.float32)
    k, seed = 40, 2
    got = iw_log_likelihood(model, images, k=k, batch_size=7, seed=seed)
    mu, sigma = (t.numpy().astype(np.float64) for t in model.encoder.params(images))
    assert np.ptp(mu, axis=0).min() > 1e-3  # the encoder depends on x
    # The estimator's own draws (one chunk: k * batch * pixels < IW_NUMBERS).
    noise = tf.random.stateless_normal([k, 7, 3], seed=[seed, 0], alg="philox").numpy()
    z = mu + sigma * noise.astype(np.float64)  # [k, batch, latent]
    logits = model.decoder.outputs(z.reshape(-1, 3).astype(np.float32)).numpy()
    logits = logits.reshape(k, 7, -1).astype(np.float64)
    x = images.reshape(1, 7, -1).astype(np.float64)
    log_px_z = (x * logits - np.logaddexp(0, logits)).sum(-1)
    log_pz = (-0.5 * (z**2 + np.log(2 * np.pi))).sum(-1)
    log_qz = (-0.5 * (noise**2 + np.log(2 * np.pi)) - np.log(sigma)).sum(-1)
    log_w = log_px_z + log_pz - log_qz
    want = np.logaddexp.reduce(log_w, axis=0) - np.log(k)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_a_run_is_scored_on_the_split_asked_for(tmp_path, write_idx):
    """`score_run(run, split)`, what `tfvae evaluate --split` prints: on an
    `idx:` set of 300 training and 100 test images, each split's figures are
    the ELBO of that split's images under the fixed binarization, computed
    here from the arrays written, and the two splits' figures differ."""
    arrays = _make_folder(tmp_path / "set", write_idx, n_train=300, n_test=100, shape=(8, 8))
    config = TrainConfig(
        dataset=f"idx:{tmp_path / 'set'}",
        hidden_units=(16,),
        latent_dim=2,
        batch_size=100,
        epochs=1,
        jit_compile=False,  # XLA's compile would take longer than the run
        pictures_every=0,
    )
    model = train(config, tmp_path / "run", echo=lambda _: None, verbose=0).model
    written = ImageDataset(
        "written", arrays["train_images"][..., None], arrays["test_images"][..., None]
    )
    got = {split: score_run(tmp_path / "run", split) for split in ("train", "test")}
    for split, n_images in (("train", 300), ("test", 100)):
        assert (got[split]["split"], got[split]["n_images"]) == (split, n_images)
        want = evaluate_elbo(model, written.fixed_binarized(split))
        for term in ("elbo", "kl", "log_likelihood"):
            assert got[split][term] == pytest.approx(want[term], abs=1e-5), (split, term)
    assert abs(got["train"]["elbo"] - got["test"]["elbo"]) > 0.01
