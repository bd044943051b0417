"""The variational auto-encoder of Kingma & Welling as a Keras model.

Training maximises the evidence lower bound, per image
    ELBO(x) = E_q[ln p(x|z)] - KL(q(z|x) || p(z)),
with one reparameterized z ~ q(z|x) for the expectation and the analytic KL.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.config import ModelConfig, ObjectiveConfig
from tfvae.data.pipelines import array_batches
from tfvae.layers import GaussianEncoder, ImageDecoder, diag_normal
from tfvae.metrics import METRICS, MeanTerms
from tfvae.noise import training_batch

tfd = tfp.distributions

# Codes decoded at once by `sample` and `reconstruct`.
DECODE_BATCH = 1000


def _stateless_seed(seed):
    return tf.cast(seed, tf.int32)


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(keras.Model):
    """Encoder q(z|x), decoder p(x|z) and the prior p(z) = N(0, I).

    Images are float32 `[batch, height, width, channels]` in [0, 1] (binary
    pixels for the Bernoulli likelihood as trained; see `tfvae.likelihoods`
    for the others); all metrics are in nats per image. `k` is the number of z
    drawn per image in training (IWAE's k; 1 for the ELBO).
    """

    def __init__(
        self,
        image_shape=(28, 28, 1),
        model_config: ModelConfig | None = None,
        objective_config: ObjectiveConfig | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        """Built from the image shape `[h, w, c]` and two configs: the
        `ModelConfig` shapes the encoder and decoder, the `ObjectiveConfig`
        says what training minimises. Either may also come as its fields in
        keyword arguments (`latent_dim=2`, `objective="iwae"`, `k=50`), as
        tfvae 0.1.0 took them and as saved configs hold them."""
        model_settings, kwargs = ModelConfig.take(kwargs)
        objective_settings, kwargs = ObjectiveConfig.take(kwargs)
        super().__init__(**kwargs)
        self.model_config = model_config or model_settings or ModelConfig()
        self.objective_config = objective_config or objective_settings or ObjectiveConfig()
        self.encoder = GaussianEncoder(image_shape, self.model_config, name="encoder")
        self.decoder = ImageDecoder(image_shape, self.model_config, name="decoder")
        self.image_shape = self.encoder.image_shape
        self.latent_dim = self.model_config.latent_dim
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.terms = MeanTerms(METRICS)
        self.build()

    @property
    def objective(self) -> str:
        return self.objective_config.objective

    @property
    def k(self) -> int:
        """z drawn per image in training (IWAE's k; 1 for the ELBO)."""
        return self.objective_config.k

    @property
    def beta(self) -> float:
        return self.objective_config.beta

    @property
    def kl_warmup_steps(self) -> int:
        return self.objective_config.kl_warmup_steps

    @property
    def gradient_estimator(self) -> str:
        return self.objective_config.gradient_estimator

    # --- distributions ------------------------------------------------------

    @property
    def prior(self) -> tfd.Distribution:
        """p(z) = N(0, I), event shape `[latent]`."""
        return diag_normal(tf.zeros([self.latent_dim]), tf.ones([self.latent_dim]))

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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras pulls one batch and all-reduces it here only to infer shapes
        for an unbuilt model, which fails under MultiWorkerMirroredStrategy
        (a PerReplica batch cannot be reduced). The VAE is built in `__init__`,
        so only the optimizer is left to build, under the strategy's scope."""
        with self.distribute_strategy.scope():
            self._symbolic_build()

    def call(self, images):
        """Deterministic reconstruction: the pixel means of p(x | z = E[q(z|x)]),
        as intensities in [0, 1] (for the Bernoulli, its probabilities)."""
        return self.decoder.mean(self.encode(images).mean())

    def posterior_means(self, images, batch_size: int = DECODE_BATCH) -> np.ndarray:
        """E_q[z | x] for every image of an array or streamed split, `[n, latent]`."""
        return np.concatenate(
            [np.asarray(self.encoder.params(x)[0]) for _, x in array_batches(images, batch_size)]
        )

    def reconstruct(self, images):
        """`call` on `images` `[n, height, width, channels]`, `DECODE_BATCH` at a
        time, so memory stays bounded whatever n is."""
        parts = [self(images[i : i + DECODE_BATCH]) for i in range(0, len(images), DECODE_BATCH)]
        return tf.concat(parts, axis=0)

    def sample(self, n: int, seed: int | None = None, binary: bool = False):
        """`n` images from the prior as intensities in [0, 1]: pixel means, or
        draws from p(x|z) if `binary` (Bernoulli pixels for the Bernoulli).

        The same `seed` always gives the same images; without one the model's
        seed generator advances. A Python `n` is decoded `DECODE_BATCH` codes
        at a time; a tensor `n` (inside a traced function such as the
        SavedModel's signature) at once.
        """
        draw = (seed, 0) if seed is not None else self.seed_generator.next()
        z_seed, x_seed = tf.unstack(
            tf.random.experimental.stateless_split(_stateless_seed(draw), 2)
        )
        z = tf.random.stateless_normal([n, self.latent_dim], seed=z_seed, alg="philox")
        eager = isinstance(n, int | np.integer)
        step = DECODE_BATCH if eager else n
        likelihood, parts = self.decoder.likelihood, []
        for chunk, start in enumerate(range(0, n, step) if eager else [0]):
            outputs = self.decoder.outputs(z[start : start + step])  # z ~ p(z) = N(0, I)
            pixel_seed = tf.random.experimental.stateless_fold_in(x_seed, chunk)
            parts.append(
                likelihood.draw(outputs, pixel_seed) if binary else likelihood.mean(outputs)
            )
        return tf.concat(parts, axis=0)

    # --- objective ----------------------------------------------------------

    def log_weights(self, images, q_z, z, log_px_z=None):
        """Importance log-weights log p(x|z) + log p(z) - log q(z|x), `[samples, batch]`,
        for codes `z` `[samples, batch, latent]` drawn from `q_z` = q(z|x);
        the one implementation behind the IWAE bound and the NLL estimate.
        `log_px_z` is log p(x|z) when the caller has it already."""
        if log_px_z is None:
            log_px_z = self.log_likelihood(images, z)
        return log_px_z + self.prior.log_prob(z) - q_z.log_prob(z)

    def log_likelihood(self, images, z):
        """log p(x|z) `[samples, batch]` for codes `z` `[samples, batch, latent]`."""
        shape = tf.shape(z)
        outputs = self.decoder.outputs(tf.reshape(z, [-1, self.latent_dim]))
        outputs = tf.reshape(outputs, tf.concat([shape[:2], tf.shape(outputs)[1:]], 0))
        return self.decoder.likelihood.log_prob(images, outputs)

    def elbo_terms(self, images, noise=None, seed=None) -> dict[str, tf.Tensor]:
        """Per-image terms of the objective, each `[batch]`, in nats.

        z = z_mean + z_stddev * noise, the reparameterization, with noise ~ N(0, I)
        `[batch, latent]` or `[batch, k, latent]` for k samples per image (given,
        or one sample drawn from `seed` / the model's seed generator).
        `log_likelihood` is E_q[ln p(x|z)] averaged over the samples, `kl` the
        analytic KL(q(z|x) || p(z)), `elbo` their difference, and `iw_bound`
        the importance-weighted bound ln (1/k) sum_k p(x, z_k) / q(z_k|x)
        (Burda et al.), which equals a one-sample ELBO estimate for k = 1.
        """
        return self._terms(*self._sampled(images, noise, seed))

    def _sampled(self, images, noise=None, seed=None):
        """q(z|x)'s `z_mean`, `z_stddev` `[batch, latent]`, codes `z`
        `[k, batch, latent]` drawn from it, and log p(x|z) `[k, batch]`."""
        z_mean, z_stddev = self.encoder.params(images)
        if noise is None:
            noise = self._standard_normal([tf.shape(images)[0], self.latent_dim], seed)
        noise = tf.convert_to_tensor(noise, tf.float32)
        if noise.shape.rank == 2:
            noise = noise[:, tf.newaxis, :]
        # The reparameterization, written out rather than through the
        # distribution's bijector, whose global cache would keep every traced
        # graph alive.
        z = z_mean + z_stddev * tf.transpose(noise, [1, 0, 2])  # [k, batch, latent]
        return z_mean, z_stddev, z, self.log_likelihood(images, z)

    def _terms(self, z_mean, z_stddev, z, log_px_z) -> dict[str, tf.Tensor]:
        q_z = diag_normal(z_mean, z_stddev)
        log_w = self.log_weights(None, q_z, z, log_px_z)
        k = tf.cast(tf.shape(z)[0], tf.float32)
        log_likelihood = tf.reduce_mean(log_px_z, axis=0)
        kl = tfd.kl_divergence(q_z, self.prior)
        return {
            "elbo": log_likelihood - kl,
            "kl": kl,
            "log_likelihood": log_likelihood,
            "iw_bound": tf.reduce_logsumexp(log_w, axis=0) - tf.math.log(k),
        }

    def dreg_surrogate(self, z_mean, z_stddev, z, log_px_z):
        """Per image `[batch]`, sum_i stop(w~_i^2) log w_i with q's parameters
        held fixed inside log q(z_i|x), w~ the normalised importance weights.

        Its encoder gradient is the doubly reparameterized estimate of the
        IWAE bound's (Tucker et al. 2018, DReG): sum_i w~_i^2 (d log w_i / d z_i)
        (d z_i / d phi). The score term that makes the bound's own estimate
        noisy as k grows is gone; the expectation is unchanged."""
        q_fixed = diag_normal(tf.stop_gradient(z_mean), tf.stop_gradient(z_stddev))
        log_w = self.log_weights(None, q_fixed, z, log_px_z)
        weights = tf.stop_gradient(tf.nn.softmax(log_w, axis=0))
        return tf.reduce_sum(tf.square(weights) * log_w, axis=0)

    def kl_weight(self):
        """beta, ramped up linearly from 0 over the first `kl_warmup_steps` steps."""
        if self.kl_warmup_steps <= 0:
            return tf.constant(self.beta)
        done = tf.cast(self.optimizer.iterations, tf.float32) / self.kl_warmup_steps
        return self.beta * tf.minimum(1.0, done)

    def per_example_loss(self, terms):
        """The minimised objective per image: -IW bound for `iwae`, else
        -(E_q[ln p(x|z)] - weight * KL) (the negative ELBO when the weight is 1)."""
        if self.objective == "iwae":
            return -terms["iw_bound"]
        return -(terms["log_likelihood"] - self.kl_weight() * terms["kl"])

    def _standard_normal(self, shape, seed=None):
        seed = self.seed_generator.next() if seed is None else seed
        # philox explicitly: XLA's auto-selected generator is far slower on the
        # CPU (benchmarks/RESULTS.md).
        return tf.random.stateless_normal(shape, seed=_stateless_seed(seed), alg="philox")

    def _record(self, terms, loss) -> dict[str, tf.Tensor]:
        self.terms.update_state({**terms, "loss": loss})
        results = self.terms.result()
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces multi-worker logs along axis 0, which a scalar lacks
            # (tensorflow/tensorflow#72388).
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    @property
    def metrics(self):
        return [self.terms]

    def _unpack(self, batch):
        """Images and reparameterization noise `[batch, k, latent]` of a batch.

        In the one batch format (`tfvae.data.train_pipeline`, `image_pipeline`)
        each image's noise comes from its key, so the same weights always give
        the same scores. Plain images (what `fit(x)` and `evaluate(x)` on an
        array pass; uint8 levels are divided by 255) are used as they are,
        with noise from the model's seed generator: a Bernoulli model then
        scores grey levels as targets, and the figures vary from call to call
        (`tfvae.evaluate_elbo` gives the fixed ones)."""
        if isinstance(batch, dict) and "keys" in batch:
            return training_batch(batch, [self.k, self.latent_dim])
        images = batch[0] if isinstance(batch, tuple | list) else batch
        if isinstance(images, dict) or images is None:
            raise TypeError(
                "the VAE trains and evaluates on image arrays [batch, height, width, "
                "channels] or on batches of tfvae.data.train_pipeline / image_pipeline"
            )
        images = tf.convert_to_tensor(images)
        scale = 255.0 if images.dtype == tf.uint8 else 1.0
        images = tf.cast(images, tf.float32) / scale
        noise = self._standard_normal([tf.shape(images)[0], self.k, self.latent_dim])
        return images, noise

    # tfvae's steps branch on Python values only, so AutoGraph has nothing to
    # convert: skipping it saves about 3 s of source rewriting per process.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        images, noise = self._unpack(data)
        dreg = self.gradient_estimator == "dreg"
        with tf.GradientTape(persistent=dreg) as tape:
            sampled = self._sampled(images, noise)
            terms = self._terms(*sampled)
            per_example = self.per_example_loss(terms)
            # Divide by the *global* batch: Keras sums replica gradients, so
            # this gives the same update on 1 or N replicas. Under mixed
            # precision the optimizer scales the loss against float16
            # underflow (and unscales the gradients in `apply`).
            scaled_loss = self.optimizer.scale_loss(tf.nn.compute_average_loss(per_example))
            if dreg:
                surrogate = tf.nn.compute_average_loss(-self.dreg_surrogate(*sampled))
                scaled_surrogate = self.optimizer.scale_loss(surrogate)
        if dreg:  # the bound's own gradient for the decoder, DReG's for the encoder
            encoder, decoder = self.encoder.trainable_variables, self.decoder.trainable_variables
            variables = encoder + decoder
            gradients = tape.gradient(scaled_surrogate, encoder) + tape.gradient(
                scaled_loss, decoder
            )
        else:
            variables = self.trainable_variables
            gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._record(terms, per_example)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        images, noise = self._unpack(data)
        terms = self.elbo_terms(images, noise)
        return self._record(terms, self.per_example_loss(terms))

    # --- serialization ------------------------------------------------------

    def get_config(self):
        # Flat, as tfvae 0.1.0 wrote it, so files load in either version.
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            **self.model_config.layer_settings(),
            "seed": self.seed,
            **self.objective_config.saved(),
        }
