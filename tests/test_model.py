"""The VAE model: save/load round trips, sampling, config, and a short real training run."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvae import data
from tfvae.model import VAE


def _assert_same_weights(a, b):
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights], "weight lists differ"
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb), err_msg=wa.path)


def _assert_same_outputs(a, b, x):
    np.testing.assert_array_equal(a(x), b(x))
    for ta, tb in zip(a.encoder.params(x), b.encoder.params(x), strict=True):
        np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(a.sample(4, seed=9), b.sample(4, seed=9))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(image_shape=(30, 22, 3), arch="conv", latent_dim=5, hidden_units=(32, 16)),
        dict(objective="iwae", k=3, gradient_estimator="dreg"),
    ],
    ids=["mlp-mnist", "conv-30x22x3", "iwae-dreg"],
)
def test_save_load_round_trip(tmp_path, kwargs):
    """A built model reloads (safe_mode) with identical weights, reconstructions,
    encoder params and seeded samples."""
    model = VAE(**kwargs)
    shape = model.image_shape
    x = np.random.default_rng(0).integers(0, 2, (3, *shape)).astype(np.float32)
    model(x)  # builds
    path = tmp_path / "vae.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, VAE) and loaded.get_config() == model.get_config()
    assert len(loaded.weights) == len(model.weights) > 0
    _assert_same_weights(model, loaded)
    _assert_same_outputs(model, loaded, x)


# --- a short real training run, shared by the tests below ----------------------

TRAIN_IMAGES, EPOCHS, BATCH = 5000, 8, 128  # 8 x 40 = 320 Adam steps


@pytest.fixture(scope="module")
def fit_320_steps(mnist):
    """A VAE fit with the plain Keras API (compile + fit, no explicit build; note that
    tfvae.training does call build) on 5000 images; returns the model, the test metrics
    before and after, and the fit history. No global seeding: the margins are wide."""
    model = VAE(seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    small = mnist.limit(TRAIN_IMAGES)
    before = model.evaluate(data.test_pipeline(small, 1000), return_dict=True, verbose=0)
    history = model.fit(data.train_pipeline(small, BATCH, seed=0), epochs=EPOCHS, verbose=0).history
    after = model.evaluate(data.test_pipeline(small, 1000), return_dict=True, verbose=0)
    return model, before, after, history


def test_training_raises_test_elbo(fit_320_steps):
    """320 Adam steps (lr 1e-3, batch 128, 5000 images) lift the test ELBO (10k fixed-binarized
    images) from ~ -784 ln 2 = -543 nats (logits ~ 0 at init) to above -200 (seen: ~ -140)."""
    _, before, after, history = fit_320_steps
    assert -600 < before["elbo"] < -500
    assert after["elbo"] > -200
    assert after["elbo"] - before["elbo"] > 300
    assert history["loss"][-1] < history["loss"][0] - 100
    for metrics in (before, after):
        assert metrics["loss"] == pytest.approx(-metrics["elbo"], rel=1e-6)
        assert metrics["elbo"] == pytest.approx(metrics["log_likelihood"] - metrics["kl"], rel=1e-4)
        assert metrics["kl"] > 0
    assert after["kl"] > 5  # the latent code is in use after training


def test_one_step_gradients_finite(fit_320_steps, mnist):
    """Gradients of the train loss are present, finite and nonzero for every trainable
    variable, both at a fresh initialisation and after training."""
    x = mnist.fixed_binarized_test()[:128]
    fresh = VAE()
    fresh.build((None, 28, 28, 1))
    for model in (fresh, fit_320_steps[0]):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(-model.elbo_terms(x, seed=(1, 2))["elbo"])
        grads = tape.gradient(loss, model.trainable_variables)
        assert len(grads) == len(model.trainable_variables) == 8
        for var, grad in zip(model.trainable_variables, grads, strict=True):
            assert grad is not None, var.path
            grad = np.asarray(tf.convert_to_tensor(grad))
            assert np.isfinite(grad).all() and np.abs(grad).max() > 0, var.path


def test_fit_then_save_reloads_trained_weights(fit_320_steps, tmp_path, mnist):
    """A model trained with fit (no explicit build) and saved reloads the same weights."""
    model = fit_320_steps[0]
    assert len(model.weights) == 8  # the sublayers did get built inside train_step
    path = tmp_path / "trained.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    _assert_same_weights(model, loaded)
    _assert_same_outputs(model, loaded, mnist.fixed_binarized_test()[:4])


def test_explicit_build_before_fit_saves_trained_weights(tmp_path, mnist):
    """An explicit `build()` before fit is harmless: the trained weights round-trip."""
    model = VAE(hidden_units=(64,))
    model.build((None, 28, 28, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    initial = [np.asarray(w).copy() for w in model.weights]
    model.fit(data.train_pipeline(mnist.limit(256), 128), epochs=1, verbose=0)
    assert any(
        not np.array_equal(a, np.asarray(w)) for a, w in zip(initial, model.weights, strict=True)
    )
    model.save(tmp_path / "built.keras")
    loaded = keras.models.load_model(tmp_path / "built.keras", safe_mode=True)
    _assert_same_weights(model, loaded)
    _assert_same_outputs(model, loaded, mnist.fixed_binarized_test()[:4])


# --- sampling and config ------------------------------------------------------


def test_sample_seeded_reproducible(fit_320_steps):
    """sample(n, seed) repeats exactly, differs across seeds, and stays in [0, 1];
    binary samples are 0/1 and reproducible; unseeded calls advance the generator."""
    model = fit_320_steps[0]
    a, b, c = model.sample(6, seed=3), model.sample(6, seed=3), model.sample(6, seed=4)
    assert a.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1
    assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 1.0
    bits = np.asarray(model.sample(6, seed=3, binary=True))
    assert set(np.unique(bits).tolist()) <= {0, 1}
    np.testing.assert_array_equal(bits, model.sample(6, seed=3, binary=True))
    assert not np.array_equal(model.sample(6), model.sample(6))


def test_config_round_trip_keeps_architecture():
    """from_config(get_config()) rebuilds the same architecture: config, layer kinds, weight
    shapes and output shapes (conv, odd 30x22x3 images, elu, two hidden layers)."""
    model = VAE(
        image_shape=(30, 22, 3),
        latent_dim=5,
        arch="conv",
        hidden_units=(32, 16),
        activation="elu",
        seed=7,
    )
    model.build((None, 30, 22, 3))
    config = model.get_config()
    assert {k: config[k] for k in ("image_shape", "latent_dim", "arch", "hidden_units")} == {
        "image_shape": [30, 22, 3],
        "latent_dim": 5,
        "arch": "conv",
        "hidden_units": [32, 16],
    }
    assert config["activation"] == "elu" and config["seed"] == 7
    clone = VAE.from_config(config)
    clone.build((None, 30, 22, 3))
    assert clone.get_config() == config
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    for a, b in ((model.encoder, clone.encoder), (model.decoder, clone.decoder)):
        assert [type(layer) for layer in a.body.layers] == [type(layer) for layer in b.body.layers]
    x = np.zeros((2, 30, 22, 3), np.float32)
    assert clone(x).shape == model(x).shape == (2, 30, 22, 3)
    assert clone.encode(x).event_shape.as_list() == [5]


def test_sampling_and_scoring_the_posterior_in_fresh_functions_keeps_no_graph_alive():
    """q(z|x) and p(z) are one Gaussian type without a bijector: a user who
    samples and scores the posterior in freshly traced functions (as exports
    and loops of experiments do) gets every graph back. With TFP's
    `MultivariateNormalDiag` each of these graphs stays in the bijector cache."""
    model = VAE(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(8,))
    x = tf.zeros([4, 8, 8, 1])
    graphs = []
    for i in range(5):
        fn = tf.function(
            lambda x, i=i: model.encode(x).log_prob(model.encode(x).sample(seed=(i, 0)))
        )
        graphs.append(weakref.ref(fn.get_concrete_function(x).graph))
        assert fn(x).shape == (4,)
        del fn
    gc.collect()
    assert [graph() for graph in graphs] == [None] * 5
    assert type(model.encode(x)) is type(model.prior)
