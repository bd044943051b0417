"""The settings of a training run, validated, and the named choices they take.

Kept free of TensorFlow imports so the command line can offer them (and
check them) instantly; the model and the training are built from these.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from typing import Any, ClassVar

from tfvae.errors import ConfigError

ARCHS = ("mlp", "conv", "resnet")
# The arches whose bodies convolve: XLA slows them down on the CPU.
CONV_ARCHS = ("conv", "resnet")
# The settings of the resnet body alone (`tfvae.resnet`).
RESNET_SETTINGS = ("channels", "blocks")
ACTIVATIONS = ("relu", "tanh", "elu", "softplus")
BINARIZATIONS = ("dynamic", "static", "none")
# p(x|z) per pixel (`tfvae.likelihoods`): Bernoulli for binary and binarized
# pixels; for grey or colour levels, the continuous Bernoulli on [0, 1], the
# discretized logistic over the 256 levels of 8-bit pixels, and a Gaussian
# on the uniformly dequantized levels.
LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "logistic", "gaussian")
# What the pipelines do to the pixels before the model sees them: a
# binarization (`bernoulli`), or, for `gaussian`, uniform dequantization.
PIXEL_TREATMENTS = (*BINARIZATIONS, "dequantize")


def pixel_treatment(pixels: str = "dynamic", binarize: str | None = None) -> str:
    """The pixel treatment asked for, one of `PIXEL_TREATMENTS`: `pixels`, or
    `binarize`, its name before it also carried `dequantize` (kept so that
    scripts written then still run)."""
    treatment = pixels if binarize is None else binarize
    if treatment not in PIXEL_TREATMENTS:
        raise ValueError(f"pixels must be one of {PIXEL_TREATMENTS}, got {treatment!r}")
    return treatment


# p(z) on the top stochastic layer: N(0, I), or the VampPrior (Tomczak &
# Welling, 2018), a mixture of the posteriors at K learned pseudo-inputs.
PRIOR = re.compile(r"normal|vamp:[1-9][0-9]*")
MAX_PSEUDO_INPUTS = 10_000
# A conditional VAE's classes: each is one input of the encoder's and decoder's.
MAX_CLASSES = 10_000
# The grey levels of 8-bit pixels: dequantized images are (level + u) / LEVELS.
LEVELS = 256
STRATEGIES = ("auto", "default", "one-device", "mirrored", "multi-worker", "tpu")
OBJECTIVES = ("elbo", "iwae")
# The encoder's gradient of the IWAE bound: the bound's own (`standard`), or
# the doubly reparameterized estimator of Tucker et al. (2018), `dreg`.
GRADIENT_ESTIMATORS = ("standard", "dreg")
LR_SCHEDULES = ("constant", "burda", "cosine")

# Settings that say where and how fast a run executes and what it shows, not
# what it computes:
# a run may resume under other values of them.
PLACEMENT = ("strategy", "jit_compile", "steps_per_execution", "pictures_every")

# Seeds become int32 stateless-random seeds: larger values would wrap.
MAX_SEED = 2**31 - 1


DATASET_FORMS = "mnist, idx:DIR, images:DIR or tfds:NAME[/CONFIG]"


def dataset_problem(spec: str) -> str | None:
    """What is wrong with a data set spec (`DATASET_FORMS`), with the spec
    the user probably meant; None when it is well formed (whether the set
    exists is checked when it loads)."""
    if spec == "mnist":
        return None
    scheme, _, rest = spec.partition(":")
    if scheme in ("idx", "images", "tfds") and not rest:
        return f"give {'a TFDS name' if scheme == 'tfds' else 'a folder'} after '{scheme}:'"
    if "://" in spec:
        return (
            f"{spec!r}: remote paths are not read; copy the images to a local folder "
            "and give images:DIR (or idx:DIR)"
        )
    if scheme in ("idx", "images", "tfds"):
        return None
    if os.path.isdir(spec):
        kind = "idx" if any("-idx" in name for name in os.listdir(spec)) else "images"
        return f"{spec!r} is a folder: give it as {kind}:{spec}"
    known = f"unknown dataset {spec!r}; use {DATASET_FORMS}"
    if ":" in spec:
        return known
    guess = f"tfds:{spec}" if "/" not in spec else f"images:{spec}"
    return f"{known} (for example {guess})"


def conv_padded(size: int, halvings: int = 2) -> int:
    """An image side as a convolutional body sees it: padded up to a
    multiple of 2^halvings, the times the body halves it (twice for conv)."""
    step = 2**halvings
    return step * math.ceil(size / step)


def pixel_parameters(likelihood: str) -> int:
    """Numbers per pixel and channel a decoder outputs for `likelihood`:
    logits, or a location and a scale."""
    return 2 if likelihood in ("logistic", "gaussian") else 1


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


Rule = tuple[Callable[[Any], bool], str]  # (accepts the value?, what is allowed)


def _one_of(options: tuple[str, ...]) -> Rule:
    return (lambda value: value in options, f"one of {', '.join(options)}")


def _number(low: float, high: float, text: str, low_open=False, high_open=False) -> Rule:
    def accepts(value) -> bool:
        if not isinstance(value, float):
            return False
        above = low < value if low_open else low <= value
        below = value < high if high_open else value <= high
        return above and below

    return (accepts, text)


_POSITIVE: Rule = (lambda value: is_int(value) and value >= 1, "a positive integer")
_OPTIONAL_POSITIVE: Rule = (
    lambda value: value is None or (is_int(value) and value >= 1),
    "a positive integer or null (auto)",
)


class Settings:
    """What every group of settings shares: each field checked against its
    `RULES` once, when the group is made, and plain JSON in and out."""

    RULES: ClassVar[dict[str, Rule]] = {}

    def __post_init__(self):
        for field, (accepts, allowed) in self.RULES.items():
            value = getattr(self, field)
            if not accepts(value):
                raise ConfigError(f"config: {field}={value!r} is invalid; {allowed}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """The settings of untrusted JSON, such as a `config.json`, validated.

        Args:
            values: Field names to JSON values (lists for tuples).

        Returns:
            (Settings): An instance of this class.

        Raises:
            ConfigError: An unknown key, or a value of the wrong type or range.
        """
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"config: unknown settings {sorted(unknown)}")
        values = dict(values)
        for field in ("hidden_units", "resize", "latent_dim", "channels", "classes"):
            if isinstance(values.get(field), list):
                values[field] = tuple(values[field])
        for field in ("learning_rate", "adam_epsilon", "beta", "free_bits", "clip_norm"):
            if is_int(values.get(field)):
                values[field] = float(values[field])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (lists for tuples), which
        `from_dict` reads back."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def take(cls, settings: dict[str, Any]):
        """This group's settings among keyword `settings` (None if there are
        none), and the other settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        mine = {key: value for key, value in settings.items() if key in names}
        rest = {key: value for key, value in settings.items() if key not in names}
        return (cls.from_dict(mine) if mine else None), rest


_BODY: Rule = (
    lambda value: value is None or (isinstance(value, dict) and "class_name" in value),
    "a Keras layer, or its Keras config (keras.saving.serialize_keras_object)",
)

_OBJECTIVE_RULES: dict[str, Rule] = {
    "objective": _one_of(OBJECTIVES),
    "gradient_estimator": _one_of(GRADIENT_ESTIMATORS),
    "k": _POSITIVE,
    "beta": _number(0, 1000, "a number in [0, 1000]"),
    "free_bits": _number(0, 1000, "nats in [0, 1000] per layer"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
    """The shape of the encoder and decoder: with the image shape, all that
    the VAE's weights depend on. Layer sizes run from the image to z; the
    decoder mirrors them.

    Attributes:
        arch: The networks: `mlp` (dense layers), `conv` (two stride-2
            convolutions before the dense layers, as in the keras.io
            example) or `resnet` (residual stages, `tfvae.resnet`).
        latent_dim: The size of z; or one size per stochastic layer, bottom
            first (`(32, 16)`), for a hierarchical VAE.
        hidden_units: The dense layers' sizes, from the image towards z.
        activation: `relu`, `tanh`, `elu` or `softplus`.
        likelihood: p(x|z) per pixel: `bernoulli`, `continuous-bernoulli`,
            `logistic` or `gaussian` (`tfvae.likelihoods`).
        prior: `normal`, N(0, I), or `vamp:K`, the VampPrior of K
            pseudo-inputs.
        encoder_body: Your own encoder network (`tfvae.bodies`) as its Keras
            config; a Keras layer given here is stored as its config.
        decoder_body: Your own decoder network, likewise.
        channels: The resnet body's channels, one per stage; each stage
            halves the grid.
        blocks: Residual blocks in each resnet stage.
        classes: A conditional VAE's class names by label index; None for
            an unconditional VAE.

    Raises:
        ConfigError: A value is out of its range, or `channels` and `blocks`
            are given for an arch other than `resnet`.
    """

    arch: str = "mlp"
    latent_dim: int | tuple[int, ...] = 20
    hidden_units: tuple[int, ...] = (400,)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    prior: str = "normal"
    # Your own networks in place of the arch's (`tfvae.bodies`): a Keras
    # layer, kept as its Keras config so that the model rebuilds from this.
    encoder_body: dict[str, Any] | None = None
    decoder_body: dict[str, Any] | None = None
    # The resnet body's stages (`tfvae.resnet`): the channels of each, which
    # halves the grid, and the residual blocks in each.
    channels: tuple[int, ...] = (32, 64)
    blocks: int = 2
    # A conditional VAE's class names, by label index (None: unconditional):
    # q(z|x, y) and p(x|z, y) read the class as a one-hot vector.
    classes: tuple[str, ...] | None = None

    RULES: ClassVar[dict[str, Rule]] = {
        "arch": _one_of(ARCHS),
        "classes": (
            lambda names: (
                names is None
                or (
                    isinstance(names, tuple)
                    and 2 <= len(names) <= MAX_CLASSES
                    and all(isinstance(name, str) for name in names)
                )
            ),
            f"null, or 2 to {MAX_CLASSES} class names",
        ),
        "encoder_body": _BODY,
        "decoder_body": _BODY,
        "channels": (
            lambda units: (
                isinstance(units, tuple)
                and 0 < len(units) <= 6
                and all(is_int(u) and u >= 1 for u in units)
            ),
            "positive channel counts, one per stage (at most 6)",
        ),
        "blocks": (lambda value: is_int(value) and 0 <= value <= 64, "an integer in 0..64"),
        "latent_dim": (
            lambda v: (
                (is_int(v) and v >= 1)
                or (isinstance(v, tuple) and len(v) >= 2 and all(is_int(d) and d >= 1 for d in v))
            ),
            "a positive integer, or one per stochastic layer, bottom first (32,16)",
        ),
        "prior": (
            lambda v: isinstance(v, str) and PRIOR.fullmatch(v) is not None,
            f"normal, or vamp:K with K pseudo-inputs in 1..{MAX_PSEUDO_INPUTS}",
        ),
        "hidden_units": (
            lambda units: (
                isinstance(units, tuple)
                and len(units) > 0
                and all(is_int(u) and u >= 1 for u in units)
            ),
            "positive layer sizes",
        ),
        "activation": _one_of(ACTIVATIONS),
        "likelihood": _one_of(LIKELIHOODS),
    }

    def __post_init__(self):
        # One stochastic layer is said as one number: (20,) is 20, today's model.
        if isinstance(self.latent_dim, tuple | list) and len(self.latent_dim) == 1:
            object.__setattr__(self, "latent_dim", self.latent_dim[0])
        for side in ("encoder_body", "decoder_body"):
            if getattr(self, side) is not None and not isinstance(getattr(self, side), dict):
                from tfvae.bodies import body_config  # a layer: TensorFlow is loaded already

                object.__setattr__(self, side, body_config(getattr(self, side), side))
        super().__post_init__()
        defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
        if self.arch != "resnet" and any(
            getattr(self, name) != defaults[name] for name in RESNET_SETTINGS
        ):
            raise ConfigError(
                f"config: channels={list(self.channels)} and blocks={self.blocks} shape the "
                f"resnet body, not {self.arch}; use them with arch='resnet' (--arch resnet)"
            )
        if self.pseudo_inputs > MAX_PSEUDO_INPUTS:
            raise ConfigError(
                f"config: prior={self.prior!r} is invalid; at most vamp:{MAX_PSEUDO_INPUTS}"
            )

    @property
    def latent_dims(self) -> tuple[int, ...]:
        """The size of each stochastic layer's z, bottom (next to x) first."""
        return self.latent_dim if isinstance(self.latent_dim, tuple) else (self.latent_dim,)

    @property
    def code_dim(self) -> int:
        """The size of the top layer's z: what is sampled from the prior N(0, I)
        (or the VampPrior) and what pictures and exports decode."""
        return self.latent_dims[-1]

    @property
    def pseudo_inputs(self) -> int:
        """The VampPrior's number of pseudo-inputs K (0: the prior N(0, I))."""
        return int(self.prior.split(":")[1]) if self.prior.startswith("vamp:") else 0

    def layer_settings(self) -> dict[str, Any]:
        """`to_dict` without the settings tfvae 0.1.0 did not know, where they
        hold its behaviour: the layers' saved configs, so a Bernoulli model's
        `.keras` file stays what 0.1.0 wrote and reads in it."""
        settings = self.to_dict()
        for key, default in (("likelihood", "bernoulli"), ("prior", "normal")):
            if settings[key] == default:
                del settings[key]
        for key in ("encoder_body", "decoder_body", "classes"):
            if settings[key] is None:
                del settings[key]
        if self.arch != "resnet":
            for name in RESNET_SETTINGS:
                del settings[name]
        return settings

    @property
    def num_classes(self) -> int:
        """The classes a conditional VAE reads (0: unconditional)."""
        return len(self.classes) if self.classes else 0

    @property
    def halvings(self) -> int:
        """How many times a convolutional body halves the image's grid."""
        return len(self.channels) if self.arch == "resnet" else 2

    def padded(self, size: int) -> int:
        """An image side as the convolutional body sees it (`conv_padded`)."""
        return conv_padded(size, self.halvings)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(Settings):
    """What training minimises per image: the negative ELBO, with its KL
    weighted by `beta` and ramped up from 0 over `kl_warmup_steps` steps, and
    each layer's KL counted as at least `free_bits` nats over the batch (no
    gradient below: Kingma et al. 2016); or the negative importance-weighted
    bound of `k` samples (`iwae`), whose encoder gradient is the bound's own
    or DReG's (`gradient_estimator`). With the image shape and the
    `ModelConfig`, all a VAE is built from.

    Attributes:
        objective: `elbo` (Kingma & Welling) or `iwae` (the importance-weighted
            bound of Burda et al.).
        k: Samples of z per image: the IWAE's k; the ELBO averages over them.
        beta: The KL's weight (a beta-VAE); 1 is the ELBO.
        kl_warmup_steps: Steps over which the KL's weight ramps up linearly
            from 0 to `beta`; 0 for none.
        gradient_estimator: The encoder's gradient of the IWAE bound:
            `standard`, the bound's own, or `dreg`, the doubly reparameterized
            estimator of Tucker et al. (2018), less noisy as k grows.
        free_bits: Nats of KL each layer counts as at least, over the batch;
            0 for none.

    Raises:
        ConfigError: A value is out of its range, or `dreg` is asked for with
            the ELBO.
    """

    objective: str = "elbo"
    k: int = 1
    beta: float = 1.0
    kl_warmup_steps: int = 0
    gradient_estimator: str = "standard"
    free_bits: float = 0.0

    RULES: ClassVar[dict[str, Rule]] = {
        **_OBJECTIVE_RULES,
        "kl_warmup_steps": (lambda v: is_int(v) and v >= 0, "steps >= 0"),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.gradient_estimator == "dreg" and self.objective != "iwae":
            raise ConfigError(
                "config: gradient_estimator='dreg' is an estimator of the IWAE bound's "
                "gradient; use it with objective='iwae'"
            )

    def saved(self) -> dict[str, Any]:
        """The settings as a VAE's saved config holds them: as tfvae 0.1.0
        wrote them, the gradient estimator only when it is not the default."""
        settings = self.to_dict()
        if settings["gradient_estimator"] == "standard":
            del settings["gradient_estimator"]
        if not settings["free_bits"]:
            del settings["free_bits"]
        return settings


@dataclasses.dataclass(frozen=True)
class TrainConfig(ModelConfig):
    """Every setting of a training run: the model's (inherited, so
    `config.json` stays one flat object) and the data, objective, optimizer
    and execution settings. Stored in `config.json`.

    Defaults are the seed's model (784-400-20 MLP, Adam, batch 128), trained
    for 250 epochs with the learning rate falling from 2e-3 to 0 along a
    cosine: of the schedules and lengths tried within a small CPU's short
    budget, the one with the best likelihood, and chosen again on held-out
    validation images (docs/results/likelihoods.md#how-the-defaults-were-chosen compares them).

    Every `ModelConfig` field is a field here too; the others are:

    Attributes:
        likelihood: As in `ModelConfig`; None picks `logistic` for image
            folders and `bernoulli` for the rest, as the MNIST-family
            literature scores them.
        dataset: `mnist`, `idx:DIR`, `images:DIR` or `tfds:NAME[/CONFIG]`
            (`tfvae.data.load_dataset`).
        data_dir: TFDS's data folder, for `tfds:` sets.
        resize: `(height, width)` every image is brought to; None keeps
            their size.
        epochs: Passes over the training images.
        batch_size: The global batch, split across replicas.
        learning_rate: Adam's learning rate; the peak under `cosine`.
        lr_schedule: `cosine` (from the rate down to 0 over the run),
            `constant` or `burda` (Burda et al.'s stages, scaled to `epochs`).
        adam_epsilon: Adam's epsilon.
        binarize: For the Bernoulli: `dynamic` (a fresh draw every pass),
            `static` (one fixed draw) or `none` (grey levels as targets).
        objective: As in `ObjectiveConfig`.
        gradient_estimator: As in `ObjectiveConfig`.
        k: As in `ObjectiveConfig`.
        beta: As in `ObjectiveConfig`.
        kl_warmup: Epochs over which the KL's weight ramps up from 0.
        free_bits: As in `ObjectiveConfig`.
        clip_norm: The gradient's global norm is clipped to this; None for
            no clipping.
        seed: Seeds the weights, the shuffling and every draw of the run.
        strategy: The `tf.distribute` strategy: `auto`, `default`,
            `one-device`, `mirrored`, `multi-worker` or `tpu`.
        jit_compile: XLA-compile the training step; None: on, but off for
            the convolutional bodies on the CPU and under the mirrored and
            multi-worker strategies.
        mixed_precision: float16 compute with float32 variables and losses.
        steps_per_execution: Training steps per call into TensorFlow; None:
            32, but 1 under the mirrored and multi-worker strategies.
        limit: Use only the first N training and test images.
        validation: Training images held out and scored after every epoch;
            0 scores the test images instead.
        init_from: A finished run folder whose weights the run starts from.
        pictures_every: Epochs between TensorBoard pictures; 0 for none.
        conditional: Condition on the data set's labels; `classes` is then
            filled from the set.
    """

    # None: `logistic` for image folders, `bernoulli` (binarized) for the rest,
    # as the MNIST-family literature scores them. Resolved when the config is made.
    likelihood: str | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    resize: tuple[int, int] | None = None
    epochs: int = 250
    batch_size: int = 128
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"
    adam_epsilon: float = 1e-7
    binarize: str = "dynamic"
    objective: str = "elbo"
    gradient_estimator: str = "standard"
    k: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    free_bits: float = 0.0
    clip_norm: float | None = None
    seed: int = 0
    strategy: str = "auto"
    jit_compile: bool | None = None
    mixed_precision: bool = False
    steps_per_execution: int | None = None
    limit: int | None = None
    validation: int = 0
    init_from: str | None = None
    pictures_every: int = 1
    # Condition on the data set's labels; `classes` is filled from the set.
    conditional: bool = False

    RULES: ClassVar[dict[str, Rule]] = {
        **ModelConfig.RULES,
        "dataset": (lambda v: isinstance(v, str) and bool(v), "a data set name"),
        "data_dir": (lambda v: v is None or isinstance(v, str), "a folder"),
        "resize": (
            lambda v: (
                v is None
                or (
                    isinstance(v, tuple)
                    and len(v) == 2
                    and all(is_int(d) and 1 <= d <= 4096 for d in v)
                )
            ),
            "two sizes in 1..4096 (height, width)",
        ),
        "epochs": _POSITIVE,
        "batch_size": _POSITIVE,
        **_OBJECTIVE_RULES,
        "learning_rate": _number(0, 10, "a number in (0, 10)", low_open=True, high_open=True),
        "adam_epsilon": _number(0, 1, "a number in (0, 1]", low_open=True),
        "lr_schedule": _one_of(LR_SCHEDULES),
        "binarize": _one_of(BINARIZATIONS),
        "seed": (lambda v: is_int(v) and 0 <= v <= MAX_SEED, f"an integer in 0..{MAX_SEED}"),
        "strategy": _one_of(STRATEGIES),
        "kl_warmup": (lambda v: is_int(v) and v >= 0, "epochs >= 0"),
        "clip_norm": (
            lambda v: v is None or (isinstance(v, float) and 0 < v <= 1e6),
            "a gradient norm in (0, 1e6] or null (none)",
        ),
        "jit_compile": (lambda v: v is None or isinstance(v, bool), "true, false or null (auto)"),
        "steps_per_execution": _OPTIONAL_POSITIVE,
        "mixed_precision": (lambda v: isinstance(v, bool), "true or false"),
        "limit": (lambda v: v is None or (is_int(v) and v >= 1), "> 0"),
        "validation": (lambda v: is_int(v) and v >= 0, "a number of images >= 0"),
        "pictures_every": (lambda v: is_int(v) and v >= 0, "epochs >= 0 (0: none)"),
        "conditional": (lambda v: isinstance(v, bool), "true or false"),
        "init_from": (
            lambda v: v is None or (isinstance(v, str) and bool(v)),
            "a finished run folder or null",
        ),
    }

    def __post_init__(self):
        self._resolve_likelihood()
        super().__post_init__()
        self.objective_config()  # the objective's own rules, said in one place

    def objective_config(self, steps_per_epoch: int = 1) -> ObjectiveConfig:
        """The objective's settings, from which the VAE is built with `model`.

        Args:
            steps_per_epoch: Training steps per epoch, to count the KL
                warm-up's epochs in steps.

        Returns:
            The objective's settings, the KL warm-up in steps.
        """
        return ObjectiveConfig(
            objective=self.objective,
            k=self.k,
            beta=self.beta,
            kl_warmup_steps=self.kl_warmup * steps_per_epoch,
            gradient_estimator=self.gradient_estimator,
            free_bits=self.free_bits,
        )

    def _resolve_likelihood(self) -> None:
        """Fill in the default likelihood; binarization belongs to `bernoulli`,
        the others see the pixels as they are (`binarize` is stored as `none`
        for them, and `static`, which would feed them binary pixels, is refused)."""
        if self.likelihood is None:
            object.__setattr__(self, "likelihood", self.default_likelihood)
        if self.likelihood == "bernoulli" or self.likelihood not in LIKELIHOODS:
            return
        if self.binarize == "static":
            raise ConfigError(
                f"config: binarize='static' makes binary pixels, which only the bernoulli "
                f"likelihood scores; drop it for likelihood={self.likelihood!r}"
            )
        object.__setattr__(self, "binarize", "none")

    @property
    def default_likelihood(self) -> str:
        """The likelihood a run gets unless it asks for one: the discretized
        logistic for image folders, the Bernoulli for the MNIST family."""
        return "logistic" if self.dataset.startswith("images:") else "bernoulli"

    def describe_likelihood(self) -> str:
        """What the log says of p(x|z): the likelihood, what it does to the
        pixels, and whether it was chosen for the user."""
        treatment = {
            "dynamic": "binarized afresh every pass",
            "static": "binarized once",
            "none": "their grey levels in [0, 1] as targets",
        }
        what = {
            "bernoulli": f"Bernoulli pixels, {treatment[self.binarize]}",
            "continuous-bernoulli": "continuous Bernoulli on intensities in [0, 1]",
            "logistic": "discretized logistic over the 256 levels of 8-bit pixels",
            "gaussian": "Gaussian on uniformly dequantized levels",
        }[self.likelihood]
        if self.likelihood != self.default_likelihood:
            return what
        kind = "for image folders" if self.dataset.startswith("images:") else "here"
        return f"{what} (the default {kind}; --likelihood changes it)"

    def describe_bodies(self) -> str | None:
        """What the log says of the networks when one is the user's (None
        when both are the arch's)."""
        sides = {"encoder": self.encoder_body, "decoder": self.decoder_body}
        if not any(sides.values()):
            return None
        return ", ".join(
            f"{side} body your own {body.get('class_name')}" if body else f"{side} {self.arch}"
            for side, body in sides.items()
        )

    def kl_terms(self) -> list[str]:
        """How each layer's KL is computed, bottom first: `analytic` between
        Gaussians, or `sampled` on top under the VampPrior."""
        top = "sampled" if self.pseudo_inputs else "analytic"
        return ["analytic"] * (len(self.latent_dims) - 1) + [top]

    def describe_objective(self) -> str:
        """What the log says is minimised, and which KL terms are analytic."""
        layers = len(self.latent_dims)
        model = f"{layers} stochastic layers ({', '.join(map(str, self.latent_dims))})"
        model = model if layers > 1 else f"z of {self.latent_dim}"
        prior = "N(0, I)" if not self.pseudo_inputs else f"a VampPrior of {self.pseudo_inputs}"
        if self.objective == "iwae":
            gradient = ", DReG gradients" if self.gradient_estimator == "dreg" else ""
            return f"IWAE bound, k={self.k}{gradient}; {model}, prior {prior}{self._given_class()}"
        kl = "analytic" if not self.pseudo_inputs else "analytic below the top, sampled on top"
        return f"ELBO, KL {kl}; {model}, prior {prior}{self._given_class()}"

    def _given_class(self) -> str:
        if not self.conditional:
            return ""
        count = f" ({len(self.classes)} classes)" if self.classes else ""
        return f"; conditional on the class{count}: q(z|x, y), p(x|z, y)"

    @property
    def pixels(self) -> str:
        """What the pipelines do to the pixels, one of `PIXEL_TREATMENTS`."""
        return "dequantize" if self.likelihood == "gaussian" else self.binarize

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        # Runs from before the setting existed trained at a constant rate;
        # resuming one under today's default would switch schedules mid-run.
        return super().from_dict({"lr_schedule": "constant", **values})

    @property
    def model(self) -> ModelConfig:
        """The model's own settings, from which the VAE is built."""
        return ModelConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}
        )
