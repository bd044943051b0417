"""The variational auto-encoder of Kingma & Welling as a Keras model.

Training maximises the evidence lower bound, per image
    ELBO(x) = E_q[ln p(x|z)] - KL(q(z|x) || p(z)),
with one reparameterized z ~ q(z|x) for the expectation and the analytic KL.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.layers import BernoulliDecoder, GaussianEncoder

tfd = tfp.distributions

METRICS = ("loss", "elbo", "kl", "log_likelihood")


def _images(data):
    """`fit` may hand us `x` or `(x, y)`; the VAE only needs `x`."""
    return data[0] if isinstance(data, (tuple, list)) else data


def _stateless_seed(seed):
    return tf.cast(seed, tf.int32)


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(keras.Model):
    """Encoder q(z|x), decoder p(x|z) and the prior p(z) = N(0, I).

    Images are float32 `[batch, height, width, channels]` with binary pixels
    for training; all metrics are in nats per image.
    """

    def __init__(
        self,
        image_shape=(28, 28, 1),
        latent_dim: int = 20,
        arch: str = "mlp",
        hidden_units=(400,),
        activation: str = "relu",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        coder = dict(
            image_shape=image_shape,
            latent_dim=latent_dim,
            arch=arch,
            hidden_units=hidden_units,
            activation=activation,
        )
        self.encoder = GaussianEncoder(**coder, name="encoder")
        self.decoder = BernoulliDecoder(**coder, name="decoder")
        self.image_shape = self.encoder.image_shape
        self.latent_dim = self.encoder.latent_dim
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in METRICS}
        self.build()

    # --- distributions ------------------------------------------------------

    @property
    def prior(self) -> tfd.Distribution:
        """p(z) = N(0, I), event shape `[latent]`."""
        return tfd.MultivariateNormalDiag(
            loc=tf.zeros([self.latent_dim]), scale_diag=tf.ones([self.latent_dim])
        )

    def encode(self, images) -> tfd.Distribution:
        """q(z|x): batch shape `[batch]`, event shape `[latent]`."""
        return self.encoder(images)

    def decode(self, z) -> tfd.Distribution:
        """p(x|z): batch shape `[batch]`, event shape `[height, width, channels]`."""
        return self.decoder(z)

    def build(self, input_shape=None):
        """Create every weight up front: a custom `train_step` never calls `call`,
        and an unbuilt model would save (and reload) random weights."""
        self.encoder.build(input_shape)
        self.decoder.build(None)
        super().build((None, *self.image_shape))

    def call(self, images):
        """Deterministic reconstruction: pixel probabilities of p(x | z = E[q(z|x)])."""
        return self.decode(self.encode(images).mean()).mean()

    def reconstruct(self, images):
        return self(images)

    def sample(self, n: int, seed: int | None = None, binary: bool = False):
        """`n` images from the prior: pixel means, or Bernoulli draws if `binary`.

        The same `seed` always gives the same images; without one the model's
        seed generator advances.
        """
        draw = (seed, 0) if seed is not None else self.seed_generator.next()
        z_seed, x_seed = tf.unstack(
            tf.random.experimental.stateless_split(_stateless_seed(draw), 2)
        )
        p_x = self.decode(self.prior.sample(n, seed=z_seed))
        return p_x.sample(seed=x_seed) if binary else p_x.mean()

    # --- objective ----------------------------------------------------------

    def elbo_terms(self, images, seed=None) -> dict[str, tf.Tensor]:
        """Per-image `elbo`, `kl` and `log_likelihood`, each `[batch]`, in nats.

        log p(x|z) uses one reparameterized z ~ q(z|x); the KL is analytic.
        """
        q_z = self.encode(images)
        z = q_z.sample(seed=_stateless_seed(self.seed_generator.next() if seed is None else seed))
        log_likelihood = self.decode(z).log_prob(images)
        kl = tfd.kl_divergence(q_z, self.prior)
        return {"elbo": log_likelihood - kl, "kl": kl, "log_likelihood": log_likelihood}

    def _record(self, terms) -> dict[str, tf.Tensor]:
        self.trackers["loss"].update_state(-terms["elbo"])
        for name in ("elbo", "kl", "log_likelihood"):
            self.trackers[name].update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def train_step(self, data):
        images = _images(data)
        with tf.GradientTape() as tape:
            terms = self.elbo_terms(images)
            # Divide by the *global* batch: Keras sums replica gradients, so
            # this gives the same update on 1 or N replicas.
            loss = tf.nn.compute_average_loss(-terms["elbo"])
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._record(terms)

    def test_step(self, data):
        return self._record(self.elbo_terms(_images(data)))

    # --- serialization ------------------------------------------------------

    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "arch": self.encoder.arch,
            "hidden_units": list(self.encoder.hidden_units),
            "activation": self.encoder.activation,
            "seed": self.seed,
        }
