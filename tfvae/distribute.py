"""Choosing the `tf.distribute` strategy a run trains under."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from tfvae.config import STRATEGIES
from tfvae.errors import RunError


class PeerLostError(RunError):
    """Another worker of a multi-worker job stopped, so this one cannot go on.

    TensorFlow's collectives cannot recover inside the process; starting it
    again with the same command rejoins the job from the last checkpoint that
    every worker holds.
    """


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """`auto`: all GPUs mirrored when there are several, one GPU alone, else the
    default (CPU) strategy. `multi-worker` reads the cluster from `TF_CONFIG`."""
    if name not in STRATEGIES:
        raise RunError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    if name == "multi-worker":
        # First, before any other TensorFlow call: collective ops can only be
        # configured while the runtime is still uninitialised.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one-device" if gpus else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one-device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError) as err:
        raise RunError(f"--strategy tpu: no TPU found ({err}); use another strategy") from None
    return tf.distribute.TPUStrategy(resolver)


def describe(strategy: tf.distribute.Strategy) -> dict[str, object]:
    """What went into the run's config: the strategy, as its class and as
    people say it, and the replica count."""
    return {
        "strategy_class": type(strategy).__name__,
        "placement": placement_name(strategy),
        "replicas": int(strategy.num_replicas_in_sync),
    }


def placement_name(strategy: tf.distribute.Strategy) -> str:
    """Where a strategy trains, as people say it: `one CPU`, `one GPU`,
    `2 GPUs (mirrored)`, `multi-worker, 4 workers`, `TPU, 8 cores`."""
    replicas = int(strategy.num_replicas_in_sync)
    if is_multi_worker(strategy):
        workers = input_pipelines(strategy)
        each = replicas // workers
        per_worker = f", {each} GPUs each" if each > 1 else ""
        return f"multi-worker, {workers} workers{per_worker}"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return f"TPU, {replicas} cores"
    if isinstance(strategy, tf.distribute.OneDeviceStrategy | tf.distribute.MirroredStrategy):
        devices = strategy.extended.worker_devices
        gpu = any(tf.DeviceSpec.from_string(d).device_type == "GPU" for d in devices)
    else:  # the default strategy: where TensorFlow places ops
        gpu = bool(tf.config.list_logical_devices("GPU"))
    kind = "GPU" if gpu else "CPU"
    mirrored = " (mirrored)" if isinstance(strategy, tf.distribute.MirroredStrategy) else ""
    if replicas == 1:
        return f"one {kind}{mirrored}"
    return f"{replicas} {kind}s{mirrored}"


def execution_settings(config, strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """`(jit_compile, steps_per_execution)` for a run: the config's values, or
    where they are left to auto, 32 steps per call and XLA (on the CPU for the
    MLP only).

    Under MirroredStrategy and MultiWorkerMirroredStrategy, Keras' multi-step
    loop and XLA-compiled replica steps fail on the CPU (seen with TF 2.21), so
    auto means no XLA and one step per call there, and asking for them on a
    machine without a GPU is refused up front.
    """
    replicated = isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    )
    gpus = tf.config.list_logical_devices("GPU")
    # XLA speeds the MLP up on the CPU but slows the conv body down
    # (benchmarks/RESULTS.md); on GPUs it helps both.
    auto_jit = not replicated and (config.arch == "mlp" or bool(gpus))
    jit = auto_jit if config.jit_compile is None else config.jit_compile
    steps = (
        (1 if replicated else 32)
        if config.steps_per_execution is None
        else config.steps_per_execution
    )
    if replicated and (jit or steps > 1) and not gpus:
        raise RunError(
            f"--strategy {config.strategy} on the CPU cannot use --jit-compile or "
            "--steps-per-execution above 1; leave both at their defaults"
        )
    return jit, steps


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def input_pipelines(strategy: tf.distribute.Strategy) -> int:
    """How many input pipelines `distribute_datasets_from_function` makes: one
    per worker (the chief counts as one) under multi-worker, else one."""
    if not is_multi_worker(strategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


def common_epoch(strategy: tf.distribute.Strategy, epochs: list[int], horizon: int) -> int:
    """The newest epoch (at most `horizon`) that every worker holds a
    checkpoint of; 0 if there is none.

    A worker killed while writing its checkpoint restarts one epoch behind the
    others; resuming each from its own newest would desynchronise the replicas'
    collectives. Each worker marks the epochs it has, and one all-reduce counts
    the marks: an epoch every replica marked is one all of them can load.
    """
    marks = np.zeros(horizon + 1, np.float32)
    marks[0] = 1.0
    marks[[e for e in epochs if e <= horizon]] = 1.0

    @tf.function  # an eager collective under this strategy only adds a warning
    def count():
        per_replica = strategy.run(lambda: tf.constant(marks))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    counts = count().numpy()
    return int(np.flatnonzero(counts >= strategy.num_replicas_in_sync).max())


# What a collective raises when a peer's process dies (connection reset) or
# stops answering (the strategy's health check aborts the collectives).
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@contextlib.contextmanager
def peer_failures(strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Turns a multi-worker collective failure into `PeerLostError`."""
    try:
        yield
    except _PEER_ERRORS as err:
        if not is_multi_worker(strategy):
            raise
        raise PeerLostError(
            f"another worker stopped (collective op failed with {type(err).__name__}); "
            "rerun the same command on every stopped worker to rejoin from the last "
            "common checkpoint"
        ) from None
