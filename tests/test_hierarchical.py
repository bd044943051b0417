"""Several stochastic layers (`latent_dim=(n_1, ..., n_L)`, `TopDownEncoder`):
each layer's KL, the joint log-probabilities of q(z|x) and p(z), and the
importance-weighted likelihood, each against a computation of its own."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvae.evaluation import iw_log_likelihood
from tfvae.model import VAE


def model(latent_dim=(5, 3, 2), prior="normal", shape=(6, 6, 1), seed=3) -> VAE:
    """A small model whose encoder depends on x in every layer (tanh, so no
    unit is dead), its weights drawn from `seed`."""
    keras.utils.set_random_seed(seed)
    return VAE(
        shape, latent_dim=latent_dim, hidden_units=(12,), activation="tanh", prior=prior, seed=seed
    )


def images(n=9, shape=(6, 6, 1), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *shape)) < 0.4).astype(np.float32)


def numpy_kl(q, p) -> np.ndarray:
    """KL(N(mq, sq^2) || N(mp, sp^2)) summed over the last axis, in float64."""
    (mq, sq), (mp, sp) = ([np.asarray(t, np.float64) for t in g] for g in (q, p))
    return (np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum(-1)


def numpy_log_normal(z, mean, stddev) -> np.ndarray:
    z, mean, stddev = (np.asarray(t, np.float64) for t in (z, mean, stddev))
    return (-0.5 * ((z - mean) / stddev) ** 2 - np.log(stddev) - 0.5 * np.log(2 * np.pi)).sum(-1)


def test_each_layers_kl_is_the_closed_form_between_its_two_gaussians():
    """Three layers, k = 4 draws: layer i's KL is the float64 closed form
    between q(z_i | z_(i+1), x) and p(z_i | z_(i+1)) at each draw of the
    parents, averaged over the draws; the top's is against N(0, I); the
    ELBO's KL is their sum."""
    vae, x = model(), images()
    noise = tf.random.stateless_normal([4, len(x), vae.noise_dim], seed=[1, 2])
    draw = vae.draw(x, noise)
    got = [kl.numpy() for kl in vae.kl_divergences(draw)]
    for i in range(2):
        assert draw.q[i][0].shape == (4, len(x), vae.latent_dims[i])
        np.testing.assert_allclose(got[i], numpy_kl(draw.q[i], draw.p[i]).mean(0), rtol=1e-5)
    top = draw.q[2]
    standard = (np.zeros_like(top[0]), np.ones_like(top[1]))
    np.testing.assert_allclose(got[2], numpy_kl(top, standard), rtol=1e-5)
    terms = vae._terms(draw)
    np.testing.assert_allclose(terms["kl"], sum(got), rtol=1e-5)
    assert all(np.ptp(kl) > 1e-3 for kl in got)  # they depend on x


@pytest.mark.parametrize("prior", ["normal", "vamp:7"])
def test_the_joint_log_probs_are_the_sums_of_the_layers_parts(prior):
    """q(z|x) and p(z) are one distribution each (drawn top first): their
    log_prob of a draw is the sum of each layer's Gaussian log-density at it,
    given the parents drawn (float64 numpy); p's top layer is N(0, I), or
    the VampPrior's equal mixture over the pseudo-inputs' posteriors."""
    vae, x = model(prior=prior), images()
    q = vae.encode(x)
    z = q.sample(seed=(4, 5))  # (z_3, z_2, z_1)
    found = vae.encoder.features(x)
    want = numpy_log_normal(z[0], *vae.encoder.top_params(x))
    for i, above in ((1, z[0]), (0, z[1])):
        q_i, _ = vae.encoder.posterior_params(i, found[i], above)
        want = want + numpy_log_normal(z[2 - i], *q_i)
    np.testing.assert_allclose(q.log_prob(z), want, rtol=1e-5)

    p = vae.prior
    z = p.sample(6, seed=(6, 7))
    if prior == "normal":
        want = numpy_log_normal(z[0], np.zeros(2), np.ones(2))
    else:
        pseudo = np.clip(vae.pseudo_inputs.numpy(), 0, 1)
        means, stddevs = vae.encoder.top_params(pseudo)
        each = numpy_log_normal(np.asarray(z[0])[:, None], means, stddevs)  # [6, K]
        want = np.logaddexp.reduce(each, axis=1) - np.log(7)
    for i, above in ((1, z[0]), (0, z[1])):
        want = want + numpy_log_normal(z[2 - i], *vae.encoder.prior_params(i, above))
    np.testing.assert_allclose(p.log_prob(z), want, rtol=1e-5)


def test_the_iw_estimate_of_two_layers_converges_to_the_exact_likelihood():
    """Two 1-D layers over 2x2 binary images: p(x) = integral of
    p(x|z_1) p(z_1|z_2) p(z_2) over a fine grid (float64) is exact to far
    below the tolerance; the importance-weighted estimate at K = 20,000 (q
    made wider than the posterior, so it converges) is within 0.03 nats of
    it for every image."""
    vae = model(latent_dim=(1, 1), shape=(2, 2, 1), seed=1)
    for head in vae.encoder.q_heads:  # q wider than the posterior: the estimate converges
        kernel, bias = head.weights
        bias.assign(bias.numpy() + np.array([0.0, 2.0], np.float32))
    x = np.array([[[0, 1], [1, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 1]]], np.float32)[..., None]
    z2 = np.linspace(-9, 9, 721)
    z1 = np.linspace(-12, 12, 961)
    log_p2 = numpy_log_normal(z2[:, None], 0.0, 1.0)  # [721]
    mean1, stddev1 = (
        np.asarray(t, np.float64)[:, 0]
        for t in vae.encoder.prior_params(0, z2[:, None].astype(np.float32))
    )
    log_p1 = (
        -0.5 * ((z1[None] - mean1[:, None]) / stddev1[:, None]) ** 2
        - np.log(stddev1[:, None])
        - 0.5 * np.log(2 * np.pi)
    )
    logits = (
        vae.decoder.outputs(z1[:, None].astype(np.float32))
        .numpy()
        .reshape(len(z1), -1)
        .astype(np.float64)
    )
    dz = (z1[1] - z1[0]) * (z2[1] - z2[0])
    exact = []
    for image in x.reshape(len(x), -1).astype(np.float64):
        log_px_z1 = (image * logits - np.logaddexp(0, logits)).sum(-1)  # [961]
        joint = log_p2[:, None] + log_p1 + log_px_z1[None]
        exact.append(np.logaddexp.reduce(joint.ravel()) + np.log(dz))
    estimate = iw_log_likelihood(vae, x, k=20_000, batch_size=3)
    np.testing.assert_allclose(estimate, exact, atol=0.03)


def test_sampling_is_ancestral_shaped_and_fixed_by_its_seed():
    vae = model(prior="vamp:4")
    a, b, c = (vae.sample(5, seed=s).numpy() for s in (9, 9, 10))
    assert a.shape == (5, 6, 6, 1) and ((a >= 0) & (a <= 1)).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    binary = vae.sample(5, seed=9, binary=True).numpy()
    assert set(np.unique(binary)) <= {0.0, 1.0}


@pytest.mark.parametrize("latent_dim", [4, (5, 3, 2)])
def test_a_temperature_scales_the_priors_spread(latent_dim):
    """Temperature 1 is the model's own draw; 0 decodes the prior's means:
    under N(0, I) the decoder at z = 0 (descended along the layers' means),
    under a VampPrior one of its components' means; 0.5 lies between."""
    for prior in ("normal", "vamp:3"):
        vae = model(latent_dim, prior)
        drawn = {t: vae.sample(6, seed=4, temperature=t).numpy() for t in (0.0, 0.5, 1.0)}
        np.testing.assert_array_equal(drawn[1.0], vae.sample(6, seed=4).numpy())
        if prior == "normal":
            means = vae.decoded_means(np.zeros((1, vae.code_dim), np.float32)).numpy()
        else:
            centres = vae.top_prior().components_distribution.mean()
            means = vae.decoded_means(centres).numpy()
        gaps = np.abs(drawn[0.0][:, None] - means[None]).reshape(6, len(means), -1).max(-1)
        assert gaps.min(axis=1).max() < 1e-5
        spread = {t: np.abs(d - drawn[0.0]).mean() for t, d in drawn.items()}
        assert 0 < spread[0.5] < spread[1.0]


def test_a_hierarchical_vamp_model_survives_a_safe_mode_keras_round_trip(tmp_path):
    """Saved and loaded in safe mode: the same class and settings, and the
    same reconstructions and ELBO terms for the same noise."""
    import keras

    vae, x = model(prior="vamp:5"), images()
    path = tmp_path / "model.keras"
    vae.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is VAE and loaded.latent_dims == (5, 3, 2)
    assert loaded.model_config == vae.model_config
    np.testing.assert_allclose(loaded(x), vae(x), rtol=1e-6)
    noise = np.random.default_rng(2).standard_normal((len(x), 3, vae.noise_dim)).astype(np.float32)
    for key in ("elbo", "kl", "iw_bound"):
        np.testing.assert_allclose(
            loaded.elbo_terms(x, noise)[key], vae.elbo_terms(x, noise)[key], rtol=1e-5
        )


def test_free_bits_stop_the_gradient_of_a_layer_under_its_floor():
    """Free bits between the layers' KLs: the layers whose KL averages over
    the batch below the floor are counted as the floor and give no gradient;
    the trained KL's gradient is exactly that of the other layers' KLs."""
    from tfvae.config import ObjectiveConfig

    x = images()
    noise = tf.random.stateless_normal([1, len(x), 10], seed=[3, 4])
    vae = model(latent_dim=(5, 3, 2))
    kls = [float(tf.reduce_mean(kl)) for kl in vae.kl_divergences(vae.draw(x, noise))]
    floor = sorted(kls)[1] + 1e-3  # the two smallest under it, the largest above
    vae.objective_config = ObjectiveConfig(free_bits=floor)
    above = [kl > floor for kl in kls]
    weights = vae.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        terms = vae._terms(vae.draw(x, noise))
        trained = tf.reduce_mean(terms["trained_kl"])
        kept = tf.reduce_mean(
            tf.add_n(
                [
                    kl
                    for kl, up in zip(vae.kl_divergences(vae.draw(x, noise)), above, strict=True)
                    if up
                ]
            )
        )
    assert sum(above) == 1
    want = sum(kl if up else floor for kl, up in zip(kls, above, strict=True))
    assert float(trained) == pytest.approx(want, rel=1e-5)
    assert float(tf.reduce_mean(terms["kl"])) == pytest.approx(sum(kls), rel=1e-5)
    for got, expected in zip(
        tape.gradient(trained, weights), tape.gradient(kept, weights), strict=True
    ):
        if expected is None:
            assert got is None or float(tf.norm(got)) == 0
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_clip_norm_reaches_the_optimizer():
    from pathlib import Path

    from harness import blank_run_data

    from tfvae.config import TrainConfig
    from tfvae.distribute import Placement
    from tfvae.fitting import compiled_vae

    config = TrainConfig(hidden_units=(8,), latent_dim=(3, 2), clip_norm=5.0)
    placement = Placement(tf.distribute.get_strategy(), Path("unused"))
    vae = compiled_vae(config, blank_run_data((6, 6, 1), 10), placement)
    assert vae.optimizer.global_clipnorm == 5.0


@pytest.mark.parametrize("prior", ["normal", "vamp:7"])
def test_log_weights_are_the_joint_densities_of_the_draw(prior):
    """Three layers of 5, 3 and 2 units, k = 4: each importance log-weight
    less log p(x|z_1) is log p(z) - log q(z|x) of the draw, as the two joint
    distributions give them (every unit of every layer counted once)."""
    vae, x = model(prior=prior), images()
    noise = tf.random.stateless_normal([4, len(x), vae.noise_dim], seed=[8, 9])
    draw = vae.draw(x, noise)
    top_first = tuple(reversed(draw.z))
    want = vae.prior.log_prob(top_first) - vae.encode(x).log_prob(top_first)
    got = vae.log_weights(draw) - draw.log_px_z
    assert got.shape == (4, len(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
