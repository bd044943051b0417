"""Every Keras class tfvae registers ("tfvae>NAME") passes one check, in the
manner of keras-hub's `run_layer_test` / `run_serialization_test`: it builds
and calls, its outputs (tensors or TFP distributions) have the documented
structure, and it comes back identical from `get_config()` and from a
safe-mode `.keras` file. A test below fails when a class is registered and
not added to the cases."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfvae
from tfvae.config import ModelConfig, ObjectiveConfig
from tfvae.layers import GaussianEncoder, ImageDecoder, TopDownEncoder, diag_normal
from tfvae.metrics import METRICS, MeanTerms
from tfvae.model import VAE
from tfvae.resnet import ResidualBlock

tfd = tfp.distributions

# Copies holding the same weights run the same ops in the same process: their
# outputs agree to float32 round-off at most (seen: bit for bit).
RTOL = ATOL = 1e-6
# The stateless seed every distribution is sampled with.
SEED = (1, 2)


def check_keras_class(instance, inputs, expected, extra: dict | None = None) -> None:
    """The one check every Keras class of tfvae passes. Why: runs are rebuilt
    from saved configs and `.keras` files (in safe mode), so a setting a config
    drops or a weight a file loses changes the model silently.

    Builds and calls `instance` on `inputs`, checks the outputs' structure
    against `expected` (`Tensor`, `Dist`, or dicts and tuples of them), then
    that `from_config(get_config())` and a `.keras` file loaded in safe mode
    give the same config and, with the same weights, the same outputs.
    `extra`: more outputs compared so, `{name: (fn(instance, inputs),
    expected)}`. A metric is updated, read and reset instead of called."""
    if isinstance(instance, keras.metrics.Metric):
        _check_metric(instance, inputs, expected)
        return
    probes = {"call": (lambda obj, x: obj(x), expected), **(extra or {})}

    def observe(obj) -> dict[str, np.ndarray]:
        found = {}
        for name, (probe, spec) in probes.items():
            found.update(_observe(probe(obj, inputs), spec, name))
        return found

    original = observe(instance)
    assert instance.built, f"{type(instance).__name__} is not built after a call"
    assert instance.weights, f"{type(instance).__name__} has no weights"

    # get_config -> JSON (as a .keras file holds it) -> from_config.
    config = instance.get_config()
    from_json = json.loads(json.dumps(config))
    assert from_json == config, "get_config() is not plain JSON (a tuple, a numpy value?)"
    revived = type(instance).from_config(from_json)
    assert revived.get_config() == config
    observe(revived)  # builds it, with its own random weights
    _assert_same_weight_shapes(instance, revived)
    revived.set_weights(instance.get_weights())
    _assert_same(original, observe(revived), "from_config")

    # Serialized by the registered name, deserialized in safe mode.
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(instance)))
    assert serialized["registered_name"] == keras.saving.get_registered_name(type(instance))
    deserialized = keras.saving.deserialize_keras_object(serialized, safe_mode=True)
    assert type(deserialized) is type(instance) and deserialized.get_config() == config

    # A .keras file, loaded in this process in safe mode.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "instance.keras"
        keras.saving.save_model(instance, path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(instance) and loaded.get_config() == config
    _assert_same_weight_shapes(instance, loaded)
    for ours, theirs in zip(instance.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(theirs), np.asarray(ours), err_msg=ours.path)
    _assert_same(original, observe(loaded), ".keras")


@dataclasses.dataclass(frozen=True)
class Tensor:
    """An expected tensor: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class Dist:
    """An expected TFP distribution: batch and event shapes and dtype; for a
    joint distribution each is a dict by part name (`z_2`, `z_1`, ...), top
    first."""

    batch: tuple[int, ...] | dict[str, tuple[int, ...]]
    event: tuple[int, ...] | dict[str, tuple[int, ...]]
    dtype: str | dict[str, str] = "float32"


def _check_metric(metric, batches, expected) -> None:
    """A metric: `result()` after `update_state` on each of `batches` has the
    `expected` structure; a `from_config` copy fed the same batches gives the
    same result; `reset_state` zeroes it, and then only the batches after the
    reset count (as a fresh copy fed only those). No `.keras` file: Keras
    saves no metric on its own (it asks for `built`, which metrics lack), so
    the safe-mode round trip is `serialize_keras_object` and back."""
    config = metric.get_config()
    assert json.loads(json.dumps(config)) == config, "get_config() is not plain JSON"
    revived = type(metric).from_config(json.loads(json.dumps(config)))
    assert revived.get_config() == config
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(metric)))
    deserialized = keras.saving.deserialize_keras_object(serialized, safe_mode=True)
    assert type(deserialized) is type(metric) and deserialized.get_config() == config
    assert [v.shape for v in revived.variables] == [v.shape for v in metric.variables]

    for batch in batches:
        metric.update_state(batch)
        revived.update_state(batch)
    result = _observe(metric.result(), expected, "result")
    assert all(np.any(value != 0) for value in result.values()), "the batches give zeros"
    _assert_same(result, _observe(revived.result(), expected, "result"), "from_config")

    metric.reset_state()
    for name, value in _observe(metric.result(), expected, "reset").items():
        np.testing.assert_array_equal(value, 0.0, err_msg=name)
    metric.update_state(batches[0])
    fresh = type(metric).from_config(config)
    fresh.update_state(batches[0])
    _assert_same(
        _observe(fresh.result(), expected, "result"),
        _observe(metric.result(), expected, "result"),
        "reset_state",
    )


def _assert_same_weight_shapes(a, b) -> None:
    assert [tuple(w.shape) for w in b.weights] == [tuple(w.shape) for w in a.weights]


def _assert_same(expected: dict, got: dict, what: str) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(
            got[name], value, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {name}"
        )


def _parts(structure) -> list[tuple[str, Any]]:
    """`(name, value)` per part: of a joint distribution's structure (a
    StructTuple) or a joint `Dist`'s dict; one unnamed part otherwise."""
    if hasattr(structure, "_asdict"):
        return list(structure._asdict().items())
    return list(structure.items()) if isinstance(structure, dict) else [("", structure)]


def _observe(output, spec, path: str) -> dict[str, np.ndarray]:
    """Assert that `output` has the structure of `spec`, and return its numbers
    by path: a tensor's values; a distribution's `sample(seed=SEED)`, its
    `log_prob` (finite) and, where TFP defines it, its `mean()`."""
    if isinstance(spec, dict):
        assert isinstance(output, dict) and set(output) == set(spec), f"{path}: {output!r}"
        return {
            key: value
            for name in spec
            for key, value in _observe(output[name], spec[name], f"{path}.{name}").items()
        }
    if isinstance(spec, tuple):
        assert isinstance(output, tuple | list) and len(output) == len(spec), path
        return {
            key: value
            for i, (part, part_spec) in enumerate(zip(output, spec, strict=True))
            for key, value in _observe(part, part_spec, f"{path}[{i}]").items()
        }
    if isinstance(spec, Tensor):
        assert tuple(output.shape) == spec.shape, f"{path}: shape {output.shape}"
        assert keras.backend.standardize_dtype(output.dtype) == spec.dtype, f"{path}: dtype"
        return {path: np.asarray(output)}
    assert isinstance(output, tfd.Distribution), f"{path}: {type(output).__name__}"
    for what, actual, want, as_plain in (
        ("batch", output.batch_shape, spec.batch, tuple),
        ("event", output.event_shape, spec.event, tuple),
        ("dtype", output.dtype, spec.dtype, keras.backend.standardize_dtype),
    ):
        got = [(name, as_plain(value)) for name, value in _parts(actual)]
        assert got == _parts(want), f"{path}: {what} {actual}"

    sample = output.sample(seed=SEED)
    log_prob = output.log_prob(sample)
    found = {}
    for (_, value), (name, batch), (_, event), (_, dtype) in zip(
        _parts(sample), *map(_parts, (spec.batch, spec.event, spec.dtype)), strict=True
    ):
        key = f"{path}.sample{'.' + name if name else ''}"
        assert tuple(value.shape) == batch + event, f"{key}: {value.shape}"
        assert keras.backend.standardize_dtype(value.dtype) == dtype, f"{key}: dtype"
        found[key] = np.asarray(value)
    (batch,) = {batch for _, batch in _parts(spec.batch)}  # tfvae's joints: one batch
    assert tuple(log_prob.shape) == batch and log_prob.dtype == tf.float32, f"{path}.log_prob"
    assert np.isfinite(log_prob).all(), f"{path}: log_prob of its own sample {log_prob}"
    found[f"{path}.log_prob"] = np.asarray(log_prob)
    joint = isinstance(spec.event, dict)
    if not joint:
        try:
            mean = output.mean()
        except NotImplementedError:  # the discretized logistic has none in TFP
            pass
        else:
            assert tuple(mean.shape) == spec.batch + spec.event, f"{path}.mean: {mean.shape}"
            found[f"{path}.mean"] = np.asarray(mean)
    return found


# --- the cases: every registered class, tiny ---------------------------------

SHAPE = (6, 6, 1)  # the conv body pads it to 8 x 8 and the decoder crops back
BATCH = 3
_rng = np.random.default_rng(0)
IMAGES = (_rng.random((BATCH, *SHAPE)) < 0.4).astype(np.float32)
CODES = {n: _rng.normal(size=(BATCH, n)).astype(np.float32) for n in (2, 4)}
TERM_BATCHES = [
    {name: _rng.normal(loc=1.0, size=n).astype(np.float32) for name in METRICS} for n in (2, 5, 3)
]


def model_config(**settings) -> ModelConfig:
    return ModelConfig(**{"latent_dim": 2, "hidden_units": (8,), **settings})


def pixels(likelihood: str) -> str:
    """The dtype of a likelihood's events: TFP's Bernoulli counts in int32."""
    return "int32" if likelihood == "bernoulli" else "float32"


# The top-down encoder's joint over (z_2, z_1), latent_dim (4, 2), drawn top first.
HIERARCHY_EVENT = {"z_2": (2,), "z_1": (4,)}
HIERARCHY_Q = Dist(
    {"z_2": (BATCH,), "z_1": (BATCH,)}, HIERARCHY_EVENT, {"z_2": "float32", "z_1": "float32"}
)
# p(z) likewise, one draw.
HIERARCHY_P = Dist({"z_2": (), "z_1": ()}, HIERARCHY_EVENT, {"z_2": "float32", "z_1": "float32"})


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    cls: type
    make: Callable[[], Any]
    inputs: Any
    expected: Any
    extra: dict = dataclasses.field(default_factory=dict)


# The resnet body at a size these tiny images can take.
SMALL_RESNET = {"arch": "resnet", "channels": (4, 8), "blocks": 1}


def encoder_case(arch: str) -> Case:
    params = (Tensor((BATCH, 2)), Tensor((BATCH, 2)))
    settings = SMALL_RESNET if arch == "resnet" else {"arch": arch}
    return Case(
        f"GaussianEncoder-{arch}",
        GaussianEncoder,
        lambda: GaussianEncoder(SHAPE, model_config(**settings)),
        IMAGES,
        Dist((BATCH,), (2,)),
        {"params": (lambda e, x: e.params(x), params)},
    )


def top_down_case(arch: str) -> Case:
    standard = diag_normal(tf.zeros([2]), tf.ones([2]))
    return Case(
        f"TopDownEncoder-{arch}",
        TopDownEncoder,
        lambda: TopDownEncoder(SHAPE, model_config(arch=arch, latent_dim=(4, 2))),
        IMAGES,
        HIERARCHY_Q,
        {
            "top_params": (lambda e, x: e.top_params(x), (Tensor((BATCH, 2)),) * 2),
            "prior": (lambda e, x: e.prior(standard), HIERARCHY_P),
        },
    )


def decoder_case(arch: str, likelihood: str, latent_dim=2) -> Case:
    n_1 = latent_dim[0] if isinstance(latent_dim, tuple) else latent_dim
    if likelihood in ("logistic", "gaussian"):
        names = ("mean", "location", "scale")
    else:
        names = ("probabilities" if likelihood == "bernoulli" else "mean", "logits")
    exported = {name: Tensor((BATCH, *SHAPE)) for name in names}
    shape = SMALL_RESNET if arch == "resnet" else {"arch": arch}
    config = model_config(**shape, likelihood=likelihood, latent_dim=latent_dim)
    layers = "" if n_1 == 2 else f"-latent{'x'.join(map(str, latent_dim))}"
    return Case(
        f"ImageDecoder-{arch}-{likelihood}{layers}",
        ImageDecoder,
        lambda: ImageDecoder(SHAPE, config),
        CODES[n_1],
        Dist((BATCH,), SHAPE, pixels(likelihood)),
        {
            "mean": (lambda d, z: d.mean(z), Tensor((BATCH, *SHAPE))),
            "exported": (lambda d, z: d.exported(z), exported),
        },
    )


ELBO_TERMS = ("elbo", "kl", "trained_kl", "log_likelihood", "iw_bound")


def vae_case(name: str, objective: ObjectiveConfig | None = None, **settings) -> Case:
    config = model_config(**settings)
    hierarchical = len(config.latent_dims) > 1
    if hierarchical:
        encoded, prior = HIERARCHY_Q, HIERARCHY_P
    else:
        encoded, prior = Dist((BATCH,), (2,)), Dist((), (2,))
    return Case(
        f"VAE-{name}",
        VAE,
        lambda: VAE(SHAPE, config, objective or ObjectiveConfig(), seed=0),
        IMAGES,
        Tensor((BATCH, *SHAPE)),
        {
            "encode": (lambda m, x: m.encode(x), encoded),
            "prior": (lambda m, x: m.prior, prior),
            # z drawn from the seed: the VampPrior's pseudo-inputs enter the KL.
            "elbo_terms": (
                lambda m, x: m.elbo_terms(x, seed=SEED),
                {name: Tensor((BATCH,)) for name in ELBO_TERMS},
            ),
            "sample": (lambda m, x: m.sample(4, seed=9), Tensor((4, *SHAPE))),
        },
    )


def metric_case(name: str, metric: Callable[[], MeanTerms], names) -> Case:
    return Case(
        f"MeanTerms-{name}",
        MeanTerms,
        metric,
        [{key: batch[key] for key in names} for batch in TERM_BATCHES],
        {key: Tensor(()) for key in names},
    )


CASES = [
    encoder_case("mlp"),
    encoder_case("conv"),
    encoder_case("resnet"),
    Case(
        "ResidualBlock",
        ResidualBlock,
        lambda: ResidualBlock(4, "elu"),
        _rng.normal(size=(BATCH, 6, 6, 4)).astype(np.float32),
        Tensor((BATCH, 6, 6, 4)),
    ),
    top_down_case("mlp"),
    top_down_case("conv"),
    *(
        decoder_case("mlp", likelihood)
        for likelihood in ("bernoulli", "continuous-bernoulli", "logistic", "gaussian")
    ),
    decoder_case("conv", "bernoulli"),
    decoder_case("conv", "logistic"),
    decoder_case("resnet", "logistic"),
    decoder_case("mlp", "bernoulli", latent_dim=(4, 2)),
    vae_case("mlp"),
    vae_case("conv", arch="conv", likelihood="continuous-bernoulli"),
    vae_case("resnet", **SMALL_RESNET, likelihood="gaussian"),
    vae_case(
        "logistic-iwae-dreg",
        ObjectiveConfig("iwae", k=3, gradient_estimator="dreg"),
        likelihood="logistic",
    ),
    vae_case(
        "gaussian-beta",
        ObjectiveConfig(beta=0.5, kl_warmup_steps=10, free_bits=0.25),
        likelihood="gaussian",
    ),
    vae_case("hierarchical", latent_dim=(4, 2)),
    vae_case("vamp", prior="vamp:3"),
    vae_case("hierarchical-vamp", latent_dim=(4, 2), prior="vamp:3"),
    metric_case("all", lambda: MeanTerms(METRICS), METRICS),
    metric_case("two", lambda: MeanTerms(["kl", "loss"], name="two_terms"), ("kl", "loss")),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_keras_class(case: Case):
    """The case's instance passes `check_keras_class`."""
    keras.utils.set_random_seed(0)
    instance = case.make()
    assert type(instance) is case.cls
    check_keras_class(instance, case.inputs, case.expected, case.extra)


# --- every registered class is a case ---------------------------------------


def _tfvae_modules() -> list:
    """Every module of tfvae, imported (each registers its classes), and the
    lazily registered classes touched so the real ones replace their stand-ins."""
    modules = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(tfvae.__path__, "tfvae.")
        if not info.name.endswith("__main__")  # runs the command line
    ]
    for name in ("VAE", "GaussianEncoder", "ImageDecoder"):
        getattr(tfvae, name)
    return modules


def _registered() -> dict[str, Any]:
    _tfvae_modules()
    objects = keras.saving.get_custom_objects()
    return {key: value for key, value in objects.items() if key.startswith("tfvae>")}


def test_every_registered_class_is_a_case():
    """The classes registered as "tfvae>NAME" are exactly the cases' classes:
    registering a class without adding a case fails here."""
    registered = _registered()
    assert registered, "nothing is registered under tfvae>"
    for key, cls in registered.items():
        assert isinstance(cls, type), f"{key} is still a stand-in: {cls!r}"
        assert keras.saving.get_registered_name(cls) == key
    assert {keras.saving.get_registered_name(case.cls) for case in CASES} == set(registered)


def test_every_keras_class_tfvae_defines_is_registered():
    """Every public Keras layer, model and metric defined in tfvae's modules is
    registered as "tfvae>NAME" (so the test above sees it)."""
    defined = {
        cls
        for module in _tfvae_modules()
        for cls in vars(module).values()
        if isinstance(cls, type)
        and issubclass(cls, keras.layers.Layer | keras.metrics.Metric)
        and cls.__module__.startswith("tfvae")
        and not cls.__name__.startswith("_")
    }
    assert defined, "no Keras class found in tfvae"
    for cls in defined:
        assert keras.saving.get_registered_name(cls) == f"tfvae>{cls.__name__}", cls


@pytest.mark.parametrize(
    "cls",
    [pytest.param(cls, id=cls.__name__) for cls in dict.fromkeys(case.cls for case in CASES)],
)
def test_each_class_has_a_stand_in_until_its_module_loads(cls):
    """`import tfvae` registers a stand-in for every class (`_KERAS_CLASSES`),
    naming the module that defines it, so a `.keras` file loads in safe mode
    before that module is imported."""
    assert tfvae._KERAS_CLASSES.get(cls.__name__) == cls.__module__


@pytest.mark.parametrize("prior", ["normal", "vamp:3"])
def test_the_hierarchical_prior_names_its_layers_as_q_does(prior):
    """p(z) is "in the same form" as q(z|x) (TopDownEncoder's docstring): a
    draw's fields are named z_L .. z_1, top first, in both."""
    vae = VAE(SHAPE, model_config(latent_dim=(4, 2), prior=prior))
    q_draw = vae.encode(IMAGES).sample(seed=SEED)
    assert q_draw._fields == ("z_2", "z_1")
    assert vae.prior.sample(seed=SEED)._fields == q_draw._fields
