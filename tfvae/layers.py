"""The probabilistic encoder q(z|x) and decoder p(x|z) as Keras layers.

Both return TensorFlow Probability distributions, so the model's objective is
written with `log_prob` and `kl_divergence` instead of hand-made formulas.
Shapes: images `[batch, height, width, channels]`, codes `[batch, latent]`.
With several stochastic layers (`latent_dim=(32, 16)`), `TopDownEncoder`
gives q(z|x) over all of them and the top-down network the prior shares.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.bodies import body_layer, decoder_layers, encoder_layers
from tfvae.config import CONV_ARCHS, ModelConfig, pixel_parameters
from tfvae.likelihoods import LIKELIHOOD, SCALE_FLOOR
from tfvae.resnet import decoder_stages, encoder_stages

tfd = tfp.distributions


def _own_body(config: ModelConfig, side: str, given: keras.layers.Layer | None):
    """The user's body for `side`: the layer given, or one rebuilt from the
    config (a loaded model); None for the arch's own."""
    if given is not None or getattr(config, side) is None:
        return given
    return body_layer(getattr(config, side), side)


def _encoder_body(
    image_shape, config: ModelConfig, head: bool = True, own: keras.layers.Layer | None = None
) -> keras.Sequential:
    """Image -> 2 * latent numbers (the mean and the raw scale of q(z|x));
    without the `head`, the last hidden layer's features (with the user's
    `own` body: a dense layer as wide as the last of `hidden_units`)."""
    arch, activation = config.arch, config.activation
    height, width, _ = image_shape
    layers: list[keras.layers.Layer] = []
    if own is not None:
        top = 2 * config.latent_dim if head else config.hidden_units[-1]
        last = keras.layers.Dense(top, activation=None if head else activation)
        return keras.Sequential([*encoder_layers(own, image_shape), last], name="body")
    if arch in CONV_ARCHS:
        pad_h, pad_w = config.padded(height) - height, config.padded(width) - width
        if pad_h or pad_w:
            layers.append(keras.layers.ZeroPadding2D(((0, pad_h), (0, pad_w))))
    if arch == "conv":
        layers += [
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation=activation),
            keras.layers.Conv2D(64, 3, strides=2, padding="same", activation=activation),
        ]
    elif arch == "resnet":
        layers += encoder_stages(config)
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation=activation) for units in config.hidden_units]
    if head:
        layers.append(keras.layers.Dense(2 * config.latent_dim))
    return keras.Sequential(layers, name="body")


def _decoder_body(
    image_shape, config: ModelConfig, own: keras.layers.Layer | None = None
) -> keras.Sequential:
    """z -> the likelihood's parameters per pixel (`[h, w, c * parameters]`):
    the hidden layers in reverse order; for conv, then transposed
    convolutions back up through the encoder's grid sizes (their channels
    are the decoder's own: 64 then 32, as in the keras.io example); or the
    user's `own` body and its head (`tfvae.bodies.decoder_layers`)."""
    arch, activation = config.arch, config.activation
    height, width, channels = image_shape
    channels *= pixel_parameters(config.likelihood)
    if own is not None:
        code_size = config.latent_dims[0] + config.num_classes
        return keras.Sequential(decoder_layers(own, image_shape, code_size, channels), name="body")
    layers: list[keras.layers.Layer] = [
        keras.layers.Dense(units, activation=activation) for units in reversed(config.hidden_units)
    ]
    if arch == "mlp":
        layers += [
            keras.layers.Dense(height * width * channels),
            keras.layers.Reshape((height, width, channels)),
        ]
    else:
        scale = 2**config.halvings
        grid = (config.padded(height) // scale, config.padded(width) // scale)
        top = 64 if arch == "conv" else config.channels[-1]
        layers += [
            keras.layers.Dense(grid[0] * grid[1] * top, activation=activation),
            keras.layers.Reshape((*grid, top)),
        ]
        if arch == "conv":
            layers += [
                keras.layers.Conv2DTranspose(
                    64, 3, strides=2, padding="same", activation=activation
                ),
                keras.layers.Conv2DTranspose(
                    32, 3, strides=2, padding="same", activation=activation
                ),
                keras.layers.Conv2DTranspose(channels, 3, padding="same"),
            ]
        else:
            layers += decoder_stages(config, channels)
        crop_h, crop_w = config.padded(height) - height, config.padded(width) - width
        if crop_h or crop_w:
            layers.append(keras.layers.Cropping2D(((0, crop_h), (0, crop_w))))
    return keras.Sequential(layers, name="body")


def gaussian_params(raw) -> tuple[tf.Tensor, tf.Tensor]:
    """A Gaussian's `(mean, stddev)` from 2n raw numbers per row: the mean,
    and a raw scale that softplus (plus a small floor) makes positive."""
    mean, raw_scale = tf.split(raw, 2, axis=-1)
    return tf.cast(mean, tf.float32), tf.cast(tf.nn.softplus(raw_scale) + SCALE_FLOOR, tf.float32)


def diag_normal(loc, scale, name: str = "diag_normal") -> tfd.Distribution:
    """N(loc, diag(scale^2)), event shape `[latent]`: the one Gaussian type of
    q(z|x), the prior and the objective.

    Independent univariate normals rather than `MultivariateNormalDiag`:
    the same density, but sampling and `log_prob` need no bijector, whose
    global cache keeps every graph that ever called them alive (a user
    sampling the posterior in a loop, or a process that trains and exports
    repeatedly, would leak memory).
    """
    return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1, name=name)


# softplus^-1(1): a fresh q's stddev is its prior's.
_SOFTPLUS_OF_ONE = math.log(math.e - 1)


def _on_rows(layer, x):
    """`layer` (a layer or a function of layers) on the last axis of `x`
    whatever its leading axes: none, as a joint distribution's event alone
    has, or several (`[k, batch, n]`)."""
    x = tf.convert_to_tensor(x)
    rows = layer(tf.reshape(x, [-1, x.shape[-1]]))
    return tf.reshape(rows, tf.concat([tf.shape(x)[:-1], tf.shape(rows)[-1:]], axis=0))


class _Coder(keras.layers.Layer):
    """What the encoder and decoder share: the image shape `[height, width,
    channels]` and the `ModelConfig` their bodies are made from (given, or
    from its fields as keyword arguments)."""

    def __init__(self, image_shape, model_config: ModelConfig | None = None, **kwargs):
        settings, kwargs = ModelConfig.take(kwargs)
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.model_config = model_config or settings or ModelConfig()
        self.latent_dim = self.model_config.latent_dim
        self.num_classes = self.model_config.num_classes
        # A user's body, run as given (`through`).
        self.own_body = False

    def _class_labels(self, labels) -> tf.Tensor:
        if labels is None:
            raise ValueError(
                f"this VAE is conditional on the class ({self.num_classes} classes): "
                "give each image's label (labels=)"
            )
        return tf.convert_to_tensor(labels)

    def conditioned(self, x, labels):
        """`x` `[..., n]` with each row's class appended as a one-hot vector,
        `[..., n + classes]`, for a conditional VAE (`labels` int `[...]`, the
        trailing axes of `x`'s leading ones; float `labels` `[..., classes]`
        are the vectors themselves, a blend of classes, zeros for none); `x`
        itself for an unconditional one. What a user's decoder body reads."""
        if not self.num_classes:
            return x
        labels = self._class_labels(labels)
        if labels.dtype.is_floating:
            one_hot = tf.cast(labels, x.dtype)
        else:
            one_hot = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=x.dtype)
        shape = tf.concat([tf.shape(x)[:-1], [self.num_classes]], axis=0)
        return tf.concat([x, tf.broadcast_to(one_hot, shape)], axis=-1)

    def class_dense(self, dense: keras.layers.Dense, x, labels):
        """`dense(self.conditioned(x, labels))`, computed as `x`'s product with
        the kernel's first n rows plus the class's own row (a blend's
        combination of rows): the same numbers with no one-hot vector in the
        graph, whose 0 and 1 an int8 file would quantize on `x`'s scale."""
        if not self.num_classes:
            return dense(x)
        labels = self._class_labels(labels)
        x = tf.cast(x, dense.compute_dtype)
        kernel = tf.cast(dense.kernel, x.dtype)
        n = x.shape[-1]
        if labels.dtype.is_floating:
            rows = tf.matmul(tf.cast(labels, x.dtype), kernel[n:])
        else:
            rows = tf.gather(kernel[n:], tf.cast(labels, tf.int32))
        out = tf.matmul(x, kernel[:n]) + rows
        if dense.use_bias:
            out += tf.cast(dense.bias, x.dtype)
        return dense.activation(out)

    def through(self, body: keras.Sequential, x, labels=None):
        """`body` on `x`. In a conditional VAE built on tfvae's own networks
        every dense layer reads the class beside its input (`class_dense`),
        so the class shapes every stage rather than one (see
        docs/results/likelihoods.md#a-class-conditional-vae); a user's body
        runs as given."""
        if not self.num_classes or self.own_body:
            return body(x)
        for layer in body.layers:
            dense = isinstance(layer, keras.layers.Dense)
            x = self.class_dense(layer, x, labels) if dense else layer(x)
        return x

    def build_through(self, body: keras.Sequential, shape) -> None:
        """Build `body` for inputs of `shape` as `through` runs it."""
        if not self.num_classes or self.own_body:
            return body.build(shape)
        x = keras.KerasTensor(shape)
        for layer in body.layers:
            if isinstance(layer, keras.layers.Dense):
                x = keras.KerasTensor((*x.shape[:-1], x.shape[-1] + self.num_classes))
            x = layer(x)
        body.built = True

    def get_config(self):
        # Flat, as tfvae 0.1.0 wrote it, so files load in either version.
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            **self.model_config.layer_settings(),
        }


@keras.saving.register_keras_serializable(package="tfvae")
class GaussianEncoder(_Coder):
    """q(z|x) = N(z_mean, diag(z_stddev^2)): images -> `diag_normal`, batch
    shape `[batch]`, event shape `[latent]`.

    The body outputs 2 * latent numbers per image: the mean and a raw scale
    that softplus (plus a small floor) makes positive. A conditional VAE's,
    q(z|x, y), reads the class (`labels` `[batch]`) in a last dense layer,
    the `head`, and in every dense layer of tfvae's own body.
    """

    def __init__(self, image_shape, model_config: ModelConfig | None = None, body=None, **kwargs):
        """Make the body (and a conditional encoder's head) from the config.

        Args:
            image_shape (tuple[int, int, int]): The images' `[height, width,
                channels]`.
            model_config: The network's shape (default: `ModelConfig()`).
            body (keras.layers.Layer | None): Your own body in place of the
                arch's network (`tfvae.bodies`).
            **kwargs (Any): `ModelConfig` fields by name, as saved configs
                hold them, and `keras.layers.Layer`'s own arguments.
        """
        super().__init__(image_shape, model_config, **kwargs)
        own = _own_body(self.model_config, "encoder_body", body)
        head = not self.num_classes
        self.body = _encoder_body(self.image_shape, self.model_config, head=head, own=own)
        self.own_body = own is not None
        if self.num_classes:
            self.head = keras.layers.Dense(2 * self.latent_dim, name="head")

    def build(self, input_shape=None):
        self.build_through(self.body, (None, *self.image_shape))
        if self.num_classes:
            self.head.build((None, self.model_config.hidden_units[-1] + self.num_classes))

    def params(self, images, labels=None):
        """q(z|x)'s parameters as plain tensors, the form the exports use.

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]`.
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`.

        Returns:
            (tuple[tf.Tensor, tf.Tensor]): `(z_mean, z_stddev)`, float32
                `[batch, latent]` each.
        """
        if not self.num_classes:
            return gaussian_params(self.body(images))
        features = self.through(self.body, images, labels)
        return gaussian_params(self.class_dense(self.head, features, labels))

    def top_params(self, images, labels=None):
        """q(z|x)'s parameters, the top (and only) layer's."""
        return self.params(images, labels)

    def draw(self, images, noise: list, labels=None):
        """q's `(mean, stddev)` `[batch, latent]`, no p below it, and codes
        z = mean + stddev * noise `[k, batch, latent]` for the one layer's
        `noise` (a list of one, as `TopDownEncoder.draw` takes)."""
        (noise,) = noise
        q = self.params(images, labels)
        return [q], [None], [q[0] + q[1] * noise]

    def log_prob_at(self, images, z: list, labels=None):
        """log q(z|x) `[k, batch]` of given codes (a list of one)."""
        (z,) = z
        return diag_normal(*self.params(images, labels)).log_prob(z)

    def call(self, images, labels=None):
        """q(z|x) of `images`.

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]`.
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`.

        Returns:
            (tfd.Distribution): `diag_normal`, batch shape `[batch]`, event
                shape `[latent]`.
        """
        return diag_normal(*self.params(images, labels))


@keras.saving.register_keras_serializable(package="tfvae")
class TopDownEncoder(_Coder):
    """q(z|x) over stochastic layers z_1 (next to x) .. z_L (the top), and the
    top-down network that inference and the prior share (the Ladder VAE of
    Sonderby et al. 2016; as in IAF and NVAE).

    A bottom-up deterministic pass over x gives features d_1 .. d_L: d_1 the
    body's last hidden layer, d_i = act(W d_(i-1)). One top-down pass then
    serves both: q(z_L | x) = N(head(d_L)) on top, whose prior is the
    model's; below it the top-down state h_i = act(W z_(i+1)) gives
    p(z_i | z_(i+1)) = N(mu_p, sigma_p) = N(head(h_i)), and q joins it with
    the bottom-up features as NVAE's residual normal (Vahdat & Kautz,
    2020): q(z_i | z_(i+1), x) = N(mu_p + dmu, sigma_p r) with (dmu, r) from
    [d_i, h_i], so a fresh q is its prior and the KL measures only what x
    adds. Every upper layer is as wide as the body's last hidden layer.
    (With tanh, the learned priors' scales drift up and saturate the
    decoder: deep models want relu or elu; see
    docs/results/likelihoods.md#tanh-saturates-relu-trains.)

    `call` returns q over all layers as one `tfd.JointDistributionCoroutine`
    drawn top first: a sample is a tuple `(z_L, ..., z_1)` (its fields named
    `z_L` .. `z_1`), each `[batch, n_i]`, and `log_prob` of such a tuple is
    log q(z|x) `[batch]`, the sum of the layers' conditionals. `prior(top)`
    is p(z) in the same form, `top` the top layer's prior (its samples
    `[n_L]` per draw, so `prior(top).sample(n)` gives `[n, n_i]` each).
    """

    def __init__(self, image_shape, model_config: ModelConfig | None = None, body=None, **kwargs):
        """Make the body and the layers' networks from the config, whose
        `latent_dim` gives one size per stochastic layer, bottom first.

        Args:
            image_shape (tuple[int, int, int]): The images' `[height, width,
                channels]`.
            model_config: The network's shape (default: `ModelConfig()`).
            body (keras.layers.Layer | None): Your own body in place of the
                arch's network (`tfvae.bodies`).
            **kwargs (Any): `ModelConfig` fields by name, as saved configs
                hold them, and `keras.layers.Layer`'s own arguments.
        """
        super().__init__(image_shape, model_config, **kwargs)
        config = self.model_config
        dims, width, act = config.latent_dims, config.hidden_units[-1], config.activation
        own = _own_body(config, "encoder_body", body)
        self.body = _encoder_body(self.image_shape, config, head=False, own=own)
        self.own_body = own is not None
        dense = keras.layers.Dense
        self.up = [dense(width, activation=act, name=f"up_{i + 1}") for i in range(1, len(dims))]
        self.down = [
            dense(width, activation=act, name=f"down_{i + 1}") for i in range(len(dims) - 1)
        ]
        self.q_heads = [dense(2 * n, name=f"q_{i + 1}") for i, n in enumerate(dims)]
        self.p_heads = [dense(2 * n, name=f"p_{i + 1}") for i, n in enumerate(dims[:-1])]

    def build(self, input_shape=None):
        dims, width = self.model_config.latent_dims, self.model_config.hidden_units[-1]
        self.build_through(self.body, (None, *self.image_shape))
        for layer in self.up + self.p_heads:
            layer.build((None, width))
        for i, layer in enumerate(self.down):
            layer.build((None, dims[i + 1]))
        for i, layer in enumerate(self.q_heads):
            layer.build((None, width + self.num_classes if i == len(dims) - 1 else 2 * width))

    @property
    def generative_variables(self) -> list:
        """The weights of the prior's top-down network (shared with inference)."""
        return [w for layer in self.down + self.p_heads for w in layer.trainable_weights]

    def features(self, images, labels=None) -> list[tf.Tensor]:
        """The bottom-up features `[d_1, ..., d_L]`, each `[batch, width]`."""
        found = [self.through(self.body, images, labels)]
        for layer in self.up:
            found.append(layer(found[-1]))
        return found

    def top_params(self, images, labels=None):
        """q(z_L | x)'s parameters, from the bottom-up pass alone: the top
        layer's codes are what pictures and exports decode.

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]`.
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`.

        Returns:
            (tuple[tf.Tensor, tf.Tensor]): `(mean, stddev)`, float32
                `[batch, n_L]` each.
        """
        return self._top(self.features(images, labels), labels)

    def _top(self, features, labels):
        return gaussian_params(self.class_dense(self.q_heads[-1], features[-1], labels))

    def prior_params(self, i: int, z_above):
        """p(z_i | z_(i+1))'s parameters: the prior of a layer below the top,
        given the codes of the layer above.

        Args:
            i: The layer, 0 for the bottom one (z_1), at most L - 2.
            z_above (tf.Tensor): The codes of layer i + 1, `[..., n_(i+1)]`.

        Returns:
            (tuple[tf.Tensor, tf.Tensor]): `(mean, stddev)`, float32
                `[..., n_i]` each.
        """
        return gaussian_params(_on_rows(lambda z: self.p_heads[i](self.down[i](z)), z_above))

    def posterior_params(self, i: int, d_i, z_above):
        """q(z_i | z_(i+1), x)'s and p(z_i | z_(i+1))'s `(mean, stddev)` for
        layer `i` below the top, given its bottom-up features `d_i`
        `[batch, width]` and the layer above's codes `[..., batch, n_(i+1)]`."""
        h = _on_rows(self.down[i], z_above)
        d = tf.broadcast_to(tf.cast(d_i, h.dtype), tf.shape(h))
        p_mean, p_stddev = gaussian_params(self.p_heads[i](h))
        shift, raw_ratio = tf.split(self.q_heads[i](tf.concat([d, h], axis=-1)), 2, axis=-1)
        ratio = tf.nn.softplus(tf.cast(raw_ratio, tf.float32) + _SOFTPLUS_OF_ONE) + SCALE_FLOOR
        return (p_mean + tf.cast(shift, tf.float32), p_stddev * ratio), (p_mean, p_stddev)

    def draw(self, images, noise: list, labels=None):
        """z ~ q(z|x) top down from each layer's standard normal `noise`
        (bottom first, `[k, batch, n_i]`): every layer's q and p as
        `(mean, stddev)` (p None on top, where it is the model's prior) and
        its codes `[k, batch, n_i]`, bottom first."""
        found = self.features(images, labels)
        last = len(found) - 1
        q, p, z = [None] * len(found), [None] * len(found), [None] * len(found)
        q[last] = self._top(found, labels)
        z[last] = q[last][0] + q[last][1] * noise[last]
        for i in reversed(range(last)):
            q[i], p[i] = self.posterior_params(i, found[i], z[i + 1])
            z[i] = q[i][0] + q[i][1] * noise[i]
        return q, p, z

    def log_prob_at(self, images, z: list, labels=None):
        """log q(z|x) `[k, batch]` of given codes (bottom first), summed over
        the layers, each given the codes above it."""
        found = self.features(images, labels)
        total = diag_normal(*self._top(found, labels)).log_prob(z[-1])
        for i in reversed(range(len(found) - 1)):
            q_i, _ = self.posterior_params(i, found[i], z[i + 1])
            total = total + diag_normal(*q_i).log_prob(z[i])
        return total

    def call(self, images, labels=None):
        """q(z|x) over all the layers of `images`.

        Args:
            images (tf.Tensor): float32 `[batch, height, width, channels]`.
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`.

        Returns:
            (tfd.JointDistributionCoroutine): Drawn top first; a sample is
                the tuple `(z_L, ..., z_1)`, each `[batch, n_i]`.
        """
        found = self.features(images, labels)
        top = self._top(found, labels)
        return self._joint(top, lambda i, z: self.posterior_params(i, found[i], z)[0])

    def prior(self, top: tfd.Distribution) -> tfd.Distribution:
        """p(z) over all the layers, in the same form as `call`'s q(z|x).

        Args:
            top: The top layer's prior, event shape `[n_L]`
                (`VAE.top_prior`).

        Returns:
            A joint distribution drawn top first, each layer below given the
                one above; `sample(n)` gives a tuple `(z_L, ..., z_1)`, each
                `[n, n_i]`.
        """
        return self._joint(top, self.prior_params)

    def _joint(self, top, below) -> tfd.Distribution:
        """The layers drawn top first: `top` (a distribution, or the
        `(mean, stddev)` of q's top layer), then each layer i from
        `below(i, z_(i+1))`'s `(mean, stddev)`."""
        names = [f"z_{i + 1}" for i in range(len(self.q_heads))]
        # The top layer is named z_L in q and p alike, so a draw of one is a
        # value of the other by name (`p.log_prob(**q_draw._asdict())`).
        top = (
            diag_normal(*top, name=names[-1])
            if isinstance(top, tuple)
            else top.copy(name=names[-1])
        )

        def layers():
            z = yield tfd.JointDistributionCoroutine.Root(top)
            for i in reversed(range(len(names) - 1)):
                z = yield diag_normal(*below(i, z), name=names[i])

        return tfd.JointDistributionCoroutine(layers)


@keras.saving.register_keras_serializable(package="tfvae")
class ImageDecoder(_Coder):
    """p(x|z) = prod over pixels of the config's likelihood (`tfvae.likelihoods`):
    codes `[batch, latent]` -> image distribution, event shape `[h, w, c]`.

    The body's output is the likelihood's per-pixel parameters (logits, or a
    location and a scale); a Bernoulli is built from logits, never
    probabilities, so log p(x|z) stays exact for saturated pixels. A
    conditional VAE's, p(x|z, y), reads the class (`labels` `[batch]`) in
    every dense layer of its body (a user's body reads the codes with the
    class appended).
    """

    def __init__(self, image_shape, model_config: ModelConfig | None = None, body=None, **kwargs):
        """Make the body from the config; its `likelihood` picks p(x|z).

        Args:
            image_shape (tuple[int, int, int]): The images' `[height, width,
                channels]`.
            model_config: The network's shape (default: `ModelConfig()`).
            body (keras.layers.Layer | None): Your own body in place of the
                arch's network (`tfvae.bodies`).
            **kwargs (Any): `ModelConfig` fields by name, as saved configs
                hold them, and `keras.layers.Layer`'s own arguments.
        """
        super().__init__(image_shape, model_config, **kwargs)
        self.likelihood = LIKELIHOOD[self.model_config.likelihood]
        own = _own_body(self.model_config, "decoder_body", body)
        self.body = _decoder_body(self.image_shape, self.model_config, own)
        self.own_body = own is not None

    def build(self, input_shape=None):
        codes = self.model_config.latent_dims[0] + (self.num_classes if self.own_body else 0)
        self.build_through(self.body, (None, codes))

    def outputs(self, z, labels=None):
        """The body's raw output, the likelihood's parameters per pixel.

        Args:
            z (tf.Tensor): Codes `[batch, latent]` (z_1's with several layers).
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`.

        Returns:
            (tf.Tensor): float32 pixel logits `[batch, height, width,
                channels]`, or locations then raw scales `[batch, height,
                width, 2 * channels]` (`Likelihood.split`).
        """
        codes = self.conditioned(z, labels) if self.own_body else z
        return tf.cast(self.through(self.body, codes, labels), tf.float32)

    def call(self, z, labels=None):
        """p(x|z) of codes `z`.

        Args:
            z (tf.Tensor): Codes `[batch, latent]` (z_1's with several layers).
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`.

        Returns:
            (tfd.Distribution): batch shape `[batch]`, event shape `[height,
                width, channels]`.
        """
        return self.likelihood.distribution(self.outputs(z, labels))

    def mean(self, z, labels=None):
        """E[x|z], the images a code stands for.

        Args:
            z (tf.Tensor): Codes `[batch, latent]` (z_1's with several layers).
            labels (tf.Tensor | None): A conditional VAE's classes, int
                `[batch]`.

        Returns:
            (tf.Tensor): float32 `[batch, height, width, channels]`,
                intensities in [0, 1].
        """
        return self.likelihood.mean(self.outputs(z, labels))

    def exported(self, z, labels=None):
        """The exported decoders' outputs for codes `z` (`Likelihood.exported`)."""
        return self.likelihood.exported(self.outputs(z, labels))


# The name of tfvae 0.1.0, whose only likelihood was the Bernoulli (the default).
BernoulliDecoder = ImageDecoder
"""`ImageDecoder` under its tfvae 0.1.0 name, when the Bernoulli was the only
likelihood; kept so that code written then still runs."""
