"""The variational auto-encoder of Kingma & Welling as a Keras model.

Training maximises the evidence lower bound, per image
    ELBO(x) = E_q[ln p(x|z)] - KL(q(z|x) || p(z)),
with one reparameterized z ~ q(z|x) for the expectation and the analytic KL.
With several stochastic layers z_1 .. z_L (`latent_dim=(32, 16)`), the KL is
the sum over layers of the analytic KL between the two Gaussians
q(z_i | z_(i+1), x) and p(z_i | z_(i+1)) given the parents drawn from q
(`layers.TopDownEncoder`). Under the VampPrior the top layer's KL has no
closed form and is estimated from the same draw: log q(z_L|x) - log p(z_L).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.bodies import SIDES
from tfvae.config import ModelConfig, ObjectiveConfig
from tfvae.data.pipelines import array_batches
from tfvae.errors import ConfigError
from tfvae.layers import GaussianEncoder, ImageDecoder, TopDownEncoder, diag_normal
from tfvae.metrics import METRICS, MeanTerms
from tfvae.noise import training_batch

tfd = tfp.distributions

# Codes decoded at once by `sample` and `reconstruct`.
DECODE_BATCH = 1000


def _stateless_seed(seed):
    return tf.cast(seed, tf.int32)


@dataclasses.dataclass
class Draw:
    """z drawn from q(z|x) for a batch, layer by layer, bottom (z_1) first:
    each layer's q and p as `(mean, stddev)` (p given the layer above's z;
    None for the top layer, whose p is `top_prior`, the model's prior, made
    once per draw), its codes `z` `[k, batch, n_i]`, log p(x|z_1)
    `[k, batch]`, and for a conditional VAE the images' `labels` `[batch]`."""

    q: list[tuple[tf.Tensor, tf.Tensor]]
    p: list[tuple[tf.Tensor, tf.Tensor] | None]
    z: list[tf.Tensor]
    log_px_z: tf.Tensor
    top_prior: tfd.Distribution
    labels: tf.Tensor | None = None


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(keras.Model):
    """Encoder q(z|x), decoder p(x|z) and the prior p(z): N(0, I) on the top
    layer, or the VampPrior.

    Images are float32 `[batch, height, width, channels]` in [0, 1] (binary
    pixels for the Bernoulli likelihood as trained; see `tfvae.likelihoods`
    for the others); all metrics are in nats per image. `k` is the number of z
    drawn per image in training (IWAE's k; 1 for the ELBO). Codes `z` of one
    layer are `[batch, latent]`; with several layers, the decoder reads z_1
    and pictures and exports decode the top layer's codes (`code_dim`).

    A conditional VAE (`ModelConfig.classes`) models p(x|y) for the class y
    of each image: q(z|x, y) and p(x|z, y), with the prior p(z) as above.
    Its methods then take `labels`, int `[batch]` (the class indices, in
    the order of `classes`), beside the images or codes; an unconditional
    VAE ignores them.

    Every weight is created in `__init__`, so a model saves and reloads whole
    before it has seen a batch.

    Args:
        image_shape (tuple[int, int, int]): The images' `[height, width,
            channels]`.
        model_config (ModelConfig | None): The shape of the encoder and
            decoder (default: `ModelConfig()`, an MLP with one hidden layer
            of 400 units and 20 latent units).
        objective_config (ObjectiveConfig | None): What training minimises
            (default: `ObjectiveConfig()`, the negative ELBO).
        seed (int | None): Seeds the model's own draws: the pseudo-inputs'
            initial values, and the noise of `sample` and of plain image
            batches when they come without a seed of their own.
        **kwargs (Any): Either config's fields by name (`latent_dim=2`,
            `objective="iwae"`, `k=50`), as tfvae 0.1.0 took them and as
            saved configs hold them; `encoder_body=` and `decoder_body=`,
            your own Keras layers in place of the arch's networks, used as
            given (`tfvae.bodies` says their shapes); the rest go to
            `keras.Model`.

    Raises:
        ConfigError: A setting is invalid; the message names it.
    """

    def __init__(
        self,
        image_shape=(28, 28, 1),
        model_config: ModelConfig | None = None,
        objective_config: ObjectiveConfig | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        """Build the encoder, the decoder and, under the VampPrior, its pseudo-inputs."""
        bodies = {
            side: kwargs.pop(side)
            for side in SIDES
            if isinstance(kwargs.get(side), keras.layers.Layer)
        }
        model_settings, kwargs = ModelConfig.take(kwargs)
        objective_settings, kwargs = ObjectiveConfig.take(kwargs)
        super().__init__(**kwargs)
        model_config = model_config or model_settings or ModelConfig()
        self.model_config = dataclasses.replace(model_config, **bodies)  # kept as their configs
        self.objective_config = objective_config or objective_settings or ObjectiveConfig()
        hierarchical = len(self.model_config.latent_dims) > 1
        encoder = TopDownEncoder if hierarchical else GaussianEncoder
        self.encoder = encoder(
            image_shape, self.model_config, bodies.get("encoder_body"), name="encoder"
        )
        self.decoder = ImageDecoder(
            image_shape, self.model_config, bodies.get("decoder_body"), name="decoder"
        )
        self.image_shape = self.encoder.image_shape
        self.latent_dim = self.model_config.latent_dim
        self.latent_dims = self.model_config.latent_dims
        self.code_dim = self.model_config.code_dim
        self.classes = self.model_config.classes
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.terms = MeanTerms(METRICS)
        if self.model_config.pseudo_inputs:
            self.pseudo_inputs = self.add_weight(
                shape=(self.model_config.pseudo_inputs, *self.image_shape),
                initializer=keras.initializers.RandomUniform(0.0, 1.0, seed=seed),
                name="pseudo_inputs",
            )
        self.build()

    @property
    def conditional(self) -> bool:
        """True for a VAE of p(x|y), conditioned on each image's class."""
        return bool(self.classes)

    def class_index(self, name: str | int) -> int:
        """The label index of a class, for `labels`.

        Args:
            name: A class name of `classes`, or an index into them.

        Returns:
            The class's index in `classes`.

        Raises:
            ConfigError: The model is not conditional, or `name` is not one
                of its classes.
        """
        if not self.conditional:
            raise ConfigError(
                "this model is not conditional: --class needs a model trained with --conditional"
            )
        if str(name) in self.classes:
            return self.classes.index(str(name))
        if str(name).isdigit() and int(name) < len(self.classes):
            return int(name)
        shown = ", ".join(self.classes[:20]) + (", ..." if len(self.classes) > 20 else "")
        raise ConfigError(
            f"--class {name!r}: not a class of this model ({shown}); give a name or an index "
            f"0..{len(self.classes) - 1}"
        )

    def every_class(self, n: int) -> np.ndarray | None:
        """Labels that take every class in turn (0, 1, ..., 0, 1, ...), for
        `n` draws of a conditional VAE.

        Args:
            n: How many labels.

        Returns:
            int32 `[n]`, or None for an unconditional VAE.
        """
        return np.arange(n, dtype=np.int32) % len(self.classes) if self.conditional else None

    def _labels(self, labels):
        """`labels` as the layers take them: None for an unconditional VAE."""
        return labels if self.conditional else None

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

    @property
    def free_bits(self) -> float:
        return self.objective_config.free_bits

    # --- distributions ------------------------------------------------------

    @property
    def noise_dim(self) -> int:
        """The N(0, 1) numbers one draw of z takes: every layer's, bottom first."""
        return sum(self.latent_dims)

    def top_prior(self, temperature: float = 1.0) -> tfd.Distribution:
        """p(z_L), the prior of the top layer's codes: N(0, I), or the
        VampPrior (Tomczak & Welling, 2018), the equal mixture of q(z_L | u_k)
        at the K pseudo-inputs u_k (learned images, clipped to [0, 1]).

        A conditional VAE's pseudo-inputs have no class (a zero one-hot
        vector), so its prior stays p(z), the same for every class.

        Args:
            temperature: Scales the standard deviations (each mixture
                component's), as `sample` does.

        Returns:
            A distribution of event shape `[code_dim]`.
        """
        count = self.model_config.pseudo_inputs
        if not count:
            ones = tf.ones([self.code_dim])
            return diag_normal(tf.zeros([self.code_dim]), temperature * ones)
        pseudo_inputs = tf.clip_by_value(self.pseudo_inputs, 0.0, 1.0)
        no_class = tf.zeros([count, len(self.classes)]) if self.conditional else None
        mean, stddev = self.encoder.top_params(pseudo_inputs, no_class)
        components = diag_normal(mean, temperature * stddev)  # batch [K]
        mix = tfd.Categorical(logits=tf.zeros([count]))
        return tfd.MixtureSameFamily(mix, components)

    @property
    def prior(self) -> tfd.Distribution:
        """p(z): for one layer `top_prior()`, event shape `[latent]`; with
        several, one joint distribution drawn top first, each layer given the
        one above (`TopDownEncoder.prior`)."""
        top = self.top_prior()
        return top if len(self.latent_dims) == 1 else self.encoder.prior(top)

    def encode(self, images, labels=None) -> tfd.Distribution:
        """q(z|x), the approximate posterior of the codes of `images`.

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]` in
                [0, 1].
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`; ignored by an unconditional one.

        Returns:
            Batch shape `[batch]`, event shape `[latent]`; with several
                layers, one joint distribution drawn top first, whose samples
                are tuples `(z_L, ..., z_1)` (`TopDownEncoder`).
        """
        return self.encoder(images, self._labels(labels))

    def decode(self, z, labels=None) -> tfd.Distribution:
        """p(x|z_1), the pixel likelihood given the bottom layer's codes.

        Args:
            z (tf.Tensor): Codes `[batch, latent]` (z_1's, `[batch, n_1]`,
                with several layers; `decoded_means` starts from the top).
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`; ignored by an unconditional one.

        Returns:
            Batch shape `[batch]`, event shape `[height, width, channels]`,
                of the config's likelihood (`tfvae.likelihoods`).
        """
        return self.decoder(z, self._labels(labels))

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

    def call(self, images, labels=None):
        """Deterministic reconstruction: the pixel means of p(x|z) at the
        posterior means (layer by layer, each given the means above).

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]` in
                [0, 1].
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`; ignored by an unconditional one.

        Returns:
            (tf.Tensor): float32 `[batch, height, width, channels]`,
                intensities in [0, 1] (for the Bernoulli, its
                probabilities).
        """
        labels = self._labels(labels)
        if len(self.latent_dims) == 1:
            return self.decoder.mean(self.encode(images, labels).mean(), labels)
        _, _, z = self._mean_path(images, labels)
        return self.decoder.mean(z[0][0], labels)

    def _mean_path(self, images, labels=None):
        """q's and p's `(mean, stddev)` and z of every layer for zero noise:
        each layer at its posterior mean given the means above, `[1, batch, n_i]`."""
        noise = tf.zeros([1, tf.shape(images)[0], self.noise_dim])
        return self.encoder.draw(images, self._noise_by_layer(noise), self._labels(labels))

    def _batches(self, images, labels, batch_size: int):
        """`(x, labels)` of an array or streamed split, `batch_size` at a time
        (labels None but for a conditional VAE)."""
        for start, x in array_batches(images, batch_size):
            yield x, self.batch_labels(labels, start, len(x))

    def batch_labels(self, labels, start: int, size):
        """A conditional VAE's `labels[start : start + size]`, else None."""
        return None if not self.conditional else labels[start : start + size]

    def layer_means(self, images, batch_size: int = DECODE_BATCH, labels=None) -> list[np.ndarray]:
        """E_q[z_i | x] of every layer for every image; below the top, given
        the means of the layers above.

        Args:
            images (np.ndarray): float32 `[n, height, width, channels]`, an
                array or a streamed split.
            batch_size: Images encoded at once.
            labels (np.ndarray | None): A conditional VAE's classes, int `[n]`.

        Returns:
            One float32 array `[n, n_i]` per layer, bottom first.
        """
        batches = []
        for x, y in self._batches(images, labels, batch_size):
            q, _, _ = self._mean_path(x, y)
            batches.append([np.asarray(mean).reshape(len(x), -1) for mean, _ in q])
        return [np.concatenate(layer) for layer in zip(*batches, strict=True)]

    def posterior_means(self, images, batch_size: int = DECODE_BATCH, labels=None) -> np.ndarray:
        """E_q[z_L | x], the top layer's codes of every image: what the
        latent plots show and `decoded_means` decodes.

        Args:
            images (np.ndarray): float32 `[n, height, width, channels]`, an
                array or a streamed split.
            batch_size: Images encoded at once.
            labels (np.ndarray | None): A conditional VAE's classes, int `[n]`.

        Returns:
            float32 `[n, code_dim]`.
        """
        return np.concatenate(
            [
                np.asarray(self.encoder.top_params(x, y)[0])
                for x, y in self._batches(images, labels, batch_size)
            ]
        )

    def reconstruct(self, images, labels=None):
        """`call` on any number of images, `DECODE_BATCH` at a time, so memory
        stays bounded whatever their number.

        Args:
            images (np.ndarray | tf.Tensor): float32 `[n, height, width,
                channels]` in [0, 1].
            labels (np.ndarray | None): A conditional VAE's classes, int `[n]`.

        Returns:
            (tf.Tensor): float32 `[n, height, width, channels]`, pixel means
                in [0, 1].
        """
        parts = [
            self(images[i : i + DECODE_BATCH], labels=self.batch_labels(labels, i, DECODE_BATCH))
            for i in range(0, len(images), DECODE_BATCH)
        ]
        return tf.concat(parts, axis=0)

    def descend(self, codes, seed=None, temperature: float = 1.0):
        """The bottom layer's codes z_1 for top-layer `codes`, down the prior
        p(z_i | z_(i+1)) layer by layer. With one layer, the codes themselves.

        Args:
            codes (tf.Tensor): float32 `[batch, code_dim]`.
            seed (tf.Tensor | None): A stateless seed, int `[2]`: each layer
                is drawn from p(z_i | z_(i+1)). None: each layer is its mean.
            temperature: Scales each drawn layer's standard deviation.

        Returns:
            (tf.Tensor): float32 `[batch, n_1]`.
        """
        z = codes
        for i in reversed(range(len(self.latent_dims) - 1)):
            mean, stddev = self.encoder.prior_params(i, z)
            if seed is None:
                z = mean
            else:
                layer_seed = tf.random.experimental.stateless_fold_in(seed, i)
                z = mean + temperature * stddev * tf.random.stateless_normal(
                    tf.shape(mean), layer_seed, alg="philox"
                )
        return z

    def exported_decode(self, codes, labels=None):
        """The exported decoders' outputs (`Likelihood.exported`) for top-layer
        `codes` `[batch, code_dim]`, the layers below at the prior's means."""
        return self.decoder.exported(self.descend(codes), self._labels(labels))

    def decoded_means(self, codes, labels=None):
        """E[x|z_L], the images of top-layer codes: what the manifold,
        interpolations and exported decoders show. The layers below are at
        the prior's means (`descend`).

        Args:
            codes (tf.Tensor): float32 `[batch, code_dim]`.
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`; ignored by an unconditional one.

        Returns:
            (tf.Tensor): float32 `[batch, height, width, channels]`,
                intensities in [0, 1].
        """
        return self.decoder.mean(self.descend(codes), self._labels(labels))

    def sample(
        self,
        n: int,
        seed: int | None = None,
        binary: bool = False,
        labels=None,
        temperature: float = 1.0,
    ):
        """Draw `n` images from the model: ancestral sampling, the top layer
        from its prior, each layer below from p(z_i | z_(i+1)), then the pixels.

        Args:
            n: How many images. A Python int is decoded `DECODE_BATCH`
                codes at a time; a scalar tensor (inside a traced function,
                such as the SavedModel's signature) at once.
            seed: The same seed always gives the same images; None advances
                the model's seed generator.
            binary: Draw the pixels from p(x|z) (Bernoulli pixels for the
                Bernoulli) instead of returning its means.
            labels (np.ndarray | tf.Tensor | None): A conditional VAE's
                classes of the images, int `[n]`.
            temperature: t scales every layer's prior standard deviation
                (z ~ N(0, t^2 I) under the default prior), as Glow and NVAE
                sample: 1 draws from the model itself; below 1, codes nearer
                the prior's centre, where the decoder has seen more of them,
                give more typical and less varied images; 0 decodes the
                prior's means.

        Returns:
            (tf.Tensor): float32 `[n, height, width, channels]`, intensities in
                [0, 1].
        """
        draw = (seed, 0) if seed is not None else self.seed_generator.next()
        z_seed, x_seed = tf.unstack(
            tf.random.experimental.stateless_split(_stateless_seed(draw), 2)
        )
        z = self._prior_codes(n, z_seed, temperature)
        eager = isinstance(n, int | np.integer)
        step = DECODE_BATCH if eager else n
        likelihood, parts = self.decoder.likelihood, []
        for chunk, start in enumerate(range(0, n, step) if eager else [0]):
            y = self.batch_labels(labels, start, step)
            outputs = self.decoder.outputs(z[start : start + step], y)  # z ~ p(z)
            pixel_seed = tf.random.experimental.stateless_fold_in(x_seed, chunk)
            parts.append(
                likelihood.draw(outputs, pixel_seed) if binary else likelihood.mean(outputs)
            )
        return tf.concat(parts, axis=0)

    def _prior_codes(self, n, seed, temperature: float) -> tf.Tensor:
        """The bottom layer's codes of `n` ancestral draws from the prior,
        `[n, latent_dims[0]]`: the top layer first, then down the layers."""
        if self.model_config.pseudo_inputs:
            z = self.top_prior(temperature).sample(n, seed=seed)
        else:
            normal = tf.random.stateless_normal([n, self.code_dim], seed=seed, alg="philox")
            z = temperature * normal
        if len(self.latent_dims) > 1:
            layer_seed = tf.random.experimental.stateless_fold_in(seed, 1)
            z = self.descend(z, layer_seed, temperature)
        return z

    # --- objective ----------------------------------------------------------

    def _noise_by_layer(self, noise) -> list[tf.Tensor]:
        """`noise` `[..., noise_dim]` split into each layer's, bottom first."""
        if len(self.latent_dims) == 1:
            return [noise]
        return tf.split(noise, list(self.latent_dims), axis=-1)

    def draw(self, images, noise, labels=None) -> Draw:
        """z ~ q(z|x) for `images` from standard normal `noise` `[k, batch,
        noise_dim]`: z = mean + stddev * noise layer by layer, the
        reparameterization written out (the distributions' bijectors keep
        every traced graph alive in a global cache), and log p(x|z_1)."""
        labels = self._labels(labels)
        q, p, z = self.encoder.draw(images, self._noise_by_layer(noise), labels)
        log_px_z = self.log_likelihood(images, z[0], labels)
        return Draw(q, p, z, log_px_z, self.top_prior(), labels)

    def log_weights(self, draw: Draw):
        """Importance log-weights log p(x|z) + log p(z) - log q(z|x), summed
        over the layers: the one implementation behind the IWAE bound and the
        NLL estimate.

        Args:
            draw: k codes per image drawn from q(z|x) (`draw`).

        Returns:
            (tf.Tensor): float32 `[k, batch]`.
        """
        log_w = draw.log_px_z
        for q_i, p_i, z_i in zip(draw.q, draw.p, draw.z, strict=True):
            p_z = draw.top_prior if p_i is None else diag_normal(*p_i)
            log_w = log_w + p_z.log_prob(z_i) - diag_normal(*q_i).log_prob(z_i)
        return log_w

    def log_likelihood(self, images, z, labels=None):
        """log p(x|z_1) of `images` under several codes each.

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]`.
            z (tf.Tensor): The bottom layer's codes, `[samples, batch, n_1]`.
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`; ignored by an unconditional one.

        Returns:
            (tf.Tensor): float32 `[samples, batch]`, nats.
        """
        shape = tf.shape(z)
        labels = self._labels(labels)
        if labels is not None:
            labels = tf.reshape(tf.broadcast_to(labels, shape[:2]), [-1])
        outputs = self.decoder.outputs(tf.reshape(z, [-1, self.latent_dims[0]]), labels)
        outputs = tf.reshape(outputs, tf.concat([shape[:2], tf.shape(outputs)[1:]], 0))
        return self.decoder.likelihood.log_prob(images, outputs)

    def kl_divergences(self, draw: Draw) -> list[tf.Tensor]:
        """KL(q(z_i | z_(i+1), x) || p(z_i | z_(i+1))) of every layer: analytic
        between the two Gaussians given the parents drawn (averaged over the k
        draws); under the VampPrior, whose KL has no closed form, the top
        layer's is estimated from its draws, log q(z_L|x) - log p(z_L).

        Args:
            draw: Codes drawn from q(z|x) (`draw`).

        Returns:
            One float32 `[batch]` per layer, bottom first, nats.
        """
        found = []
        for q_i, p_i, z_i in zip(draw.q, draw.p, draw.z, strict=True):
            q_z = diag_normal(*q_i)
            if p_i is not None:
                found.append(tf.reduce_mean(tfd.kl_divergence(q_z, diag_normal(*p_i)), axis=0))
            elif self.model_config.pseudo_inputs:
                found.append(tf.reduce_mean(q_z.log_prob(z_i) - draw.top_prior.log_prob(z_i), 0))
            else:
                found.append(tfd.kl_divergence(q_z, draw.top_prior))
        return found

    def elbo_terms(self, images, noise=None, seed=None, labels=None) -> dict[str, tf.Tensor]:
        """Per-image terms of the objective, with z = z_mean + z_stddev * noise,
        the reparameterization.

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]`.
            noise (tf.Tensor | None): N(0, I) draws, `[batch, noise_dim]` for
                one z per image or `[batch, k, noise_dim]` for k. None: one
                draw from `seed`.
            seed (tuple[int, int] | None): A stateless seed for the noise;
                None advances the model's seed generator.
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`; ignored by an unconditional one.

        Returns:
            float32 `[batch]` each, in nats: `log_likelihood`, E_q[ln p(x|z)]
                averaged over the draws; `kl`, the sum of the layers' KLs
                (`kl_divergences`); `elbo`, their difference; `trained_kl`, the
                KL with free bits as training counts it; `iw_bound`, the
                importance-weighted bound ln (1/k) sum_k p(x, z_k) / q(z_k|x)
                (Burda et al.), a one-sample ELBO estimate for k = 1.
        """
        return self._terms(self._drawn(images, noise, seed, labels))

    def _drawn(self, images, noise=None, seed=None, labels=None) -> Draw:
        if noise is None:
            noise = self._standard_normal([tf.shape(images)[0], self.noise_dim], seed)
        noise = tf.convert_to_tensor(noise, tf.float32)
        if noise.shape.rank == 2:
            noise = noise[:, tf.newaxis, :]
        return self.draw(images, tf.transpose(noise, [1, 0, 2]), labels)  # [k, batch, noise_dim]

    def _terms(self, draw: Draw) -> dict[str, tf.Tensor]:
        log_w = self.log_weights(draw)
        k = tf.cast(tf.shape(draw.log_px_z)[0], tf.float32)
        log_likelihood = tf.reduce_mean(draw.log_px_z, axis=0)
        kls = self.kl_divergences(draw)
        kl = tf.add_n(kls)
        return {
            "elbo": log_likelihood - kl,
            "kl": kl,
            "trained_kl": self._with_free_bits(kls),
            "log_likelihood": log_likelihood,
            "iw_bound": tf.reduce_logsumexp(log_w, axis=0) - tf.math.log(k),
        }

    def dreg_surrogate(self, images, draw: Draw):
        """Per image `[batch]`, sum_i stop(w~_i^2) (log w_i + log q(stop z_i)),
        w~ the normalised importance weights, log q(stop z) evaluated with
        every z (parents included) held fixed.

        Its encoder gradient is the doubly reparameterized estimate of the
        IWAE bound's (Tucker et al. 2018, DReG): sum_i w~_i^2 (d log w_i / d z_i)
        (d z_i / d phi). The added term cancels log q's direct dependence on
        phi, the score term that makes the bound's own estimate noisy as k
        grows; the expectation is unchanged."""
        log_w = self.log_weights(draw)
        fixed = [tf.stop_gradient(z) for z in draw.z]
        log_q = self.encoder.log_prob_at(images, fixed, draw.labels)
        weights = tf.stop_gradient(tf.nn.softmax(log_w, axis=0))
        return tf.reduce_sum(tf.square(weights) * (log_w + log_q), axis=0)

    def _inference_and_generative_variables(self) -> tuple[list, list]:
        """q's own weights (the encoder's but its top-down network's), and the
        generative model's: the decoder's, the prior's top-down network's
        (shared with inference) and the VampPrior's pseudo-inputs."""
        shared = {id(w) for w in getattr(self.encoder, "generative_variables", [])}
        inference = [w for w in self.encoder.trainable_variables if id(w) not in shared]
        generative = [w for w in self.trainable_variables if all(w is not v for v in inference)]
        return inference, generative

    def _with_free_bits(self, kls: list[tf.Tensor]) -> tf.Tensor:
        """The KL the ELBO objective minimises, `[batch]`: each layer's counted
        as `free_bits` nats wherever its mean over the batch is below that,
        where it gets no gradient (free bits, Kingma et al. 2016)."""
        if not self.free_bits:
            return tf.add_n(kls)
        floor = tf.constant(self.free_bits, tf.float32)
        return tf.add_n([tf.where(tf.reduce_mean(kl) > floor, kl, floor) for kl in kls])

    def kl_weight(self):
        """beta, ramped up linearly from 0 over the first `kl_warmup_steps` steps."""
        if self.kl_warmup_steps <= 0:
            return tf.constant(self.beta)
        done = tf.cast(self.optimizer.iterations, tf.float32) / self.kl_warmup_steps
        return self.beta * tf.minimum(1.0, done)

    def per_example_loss(self, terms):
        """The objective training minimises, per image: the negative IW bound
        for `iwae`, else -(E_q[ln p(x|z)] - weight * KL), the negative ELBO
        when the weight (`kl_weight`) is 1.

        Args:
            terms (dict[str, tf.Tensor]): `elbo_terms`' output.

        Returns:
            (tf.Tensor): float32 `[batch]`, nats.
        """
        if self.objective == "iwae":
            return -terms["iw_bound"]
        return -(terms["log_likelihood"] - self.kl_weight() * terms["trained_kl"])

    def _standard_normal(self, shape, seed=None):
        seed = self.seed_generator.next() if seed is None else seed
        # philox explicitly: XLA's auto-selected generator is far slower on the
        # CPU (see docs/results/speed.md).
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
        """Images, reparameterization noise `[batch, k, latent]` and labels
        (None but for a conditional VAE) of a batch.

        In the one batch format (`tfvae.data.train_pipeline`, `image_pipeline`)
        each image's noise comes from its key, so the same weights always give
        the same scores. Plain images (what `fit(x)` and `evaluate(x)` on an
        array pass; uint8 levels are divided by 255) are used as they are,
        with noise from the model's seed generator: a Bernoulli model then
        scores grey levels as targets, and the figures vary from call to call
        (`tfvae.evaluate_elbo` gives the fixed ones)."""
        if isinstance(batch, dict) and "keys" in batch:
            images, noise = training_batch(batch, [self.k, self.noise_dim])
            return images, noise, self._labels(batch.get("labels"))
        labels = None
        if isinstance(batch, tuple | list):
            images, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            images = batch
        if isinstance(images, dict) or images is None:
            raise TypeError(
                "the VAE trains and evaluates on image arrays [batch, height, width, "
                "channels] or on batches of tfvae.data.train_pipeline / image_pipeline"
            )
        images = tf.convert_to_tensor(images)
        scale = 255.0 if images.dtype == tf.uint8 else 1.0
        images = tf.cast(images, tf.float32) / scale
        noise = self._standard_normal([tf.shape(images)[0], self.k, self.noise_dim])
        return images, noise, self._labels(labels)

    # tfvae's steps branch on Python values only, so AutoGraph has nothing to
    # convert: skipping it spares every process the start-up time of rewriting
    # their source (see docs/results/speed.md#process-start-up).
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        images, noise, labels = self._unpack(data)
        dreg = self.gradient_estimator == "dreg"
        with tf.GradientTape(persistent=dreg) as tape:
            drawn = self._drawn(images, noise, labels=labels)
            terms = self._terms(drawn)
            per_example = self.per_example_loss(terms)
            # Divide by the *global* batch: Keras sums replica gradients, so
            # this gives the same update on 1 or N replicas. Under mixed
            # precision the optimizer scales the loss against float16
            # underflow (and unscales the gradients in `apply`).
            scaled_loss = self.optimizer.scale_loss(tf.nn.compute_average_loss(per_example))
            if dreg:
                surrogate = tf.nn.compute_average_loss(-self.dreg_surrogate(images, drawn))
                scaled_surrogate = self.optimizer.scale_loss(surrogate)
        if dreg:  # the bound's own gradient for the generative side, DReG's for inference
            inference, generative = self._inference_and_generative_variables()
            variables = inference + generative
            gradients = tape.gradient(scaled_surrogate, inference) + tape.gradient(
                scaled_loss, generative
            )
        else:
            variables = self.trainable_variables
            gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._record(terms, per_example)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        images, noise, labels = self._unpack(data)
        terms = self.elbo_terms(images, noise, labels=labels)
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
