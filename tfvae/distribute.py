"""Where a run trains: the `tf.distribute` strategy, this process's part in
it, and everything about the run that follows from them (`Placement`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfvae.config import CONV_ARCHS, STRATEGIES, TrainConfig
from tfvae.data import ImageDataset, RunData, image_pipeline, train_pipeline
from tfvae.data.pipelines import Share
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


# What a collective raises when a peer's process dies (connection reset) or
# stops answering (the strategy's health check aborts the collectives).
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where this process trains a run: under `strategy`; as the chief (which
    writes the run folder) or as another worker of a multi-worker job; in
    `folder`, the run folder, or for another worker a sibling of it that it
    keeps its own state in and removes when the job ends. Everything that
    differs between one process and several workers is answered here."""

    strategy: tf.distribute.Strategy
    folder: Path
    is_chief: bool = True

    @classmethod
    def make(cls, name: str, run_dir: Path) -> Placement:
        """The placement of a run in `run_dir` under the strategy `name`
        (`make_strategy`)."""
        return cls.of(make_strategy(name), Path(run_dir))

    @classmethod
    def of(cls, strategy: tf.distribute.Strategy, run_dir: Path) -> Placement:
        """This process's place under `strategy`: worker 0 is the chief
        unless the cluster names one; every other task writes
        `.<run>.<type>-<index>` beside the run folder."""
        resolver = getattr(strategy, "cluster_resolver", None)
        task_type = getattr(resolver, "task_type", None)
        if task_type is None:
            return cls(strategy, run_dir)
        task_id = resolver.task_id
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        if task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief):
            return cls(strategy, run_dir)
        return cls(strategy, run_dir.with_name(f".{run_dir.name}.{task_type}-{task_id}"), False)

    @property
    def multi_worker(self) -> bool:
        return isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def name(self) -> str:
        """Where it trains, as people say it: `one CPU`, `one GPU`, `2 GPUs
        (mirrored)`, `multi-worker, 4 workers`, `TPU, 8 cores`."""
        if self.multi_worker:
            workers = self.input_pipelines()
            each = self.replicas // workers
            return f"multi-worker, {workers} workers" + (f", {each} GPUs each" if each > 1 else "")
        if isinstance(self.strategy, tf.distribute.TPUStrategy):
            return f"TPU, {self.replicas} cores"
        mirrored = isinstance(self.strategy, tf.distribute.MirroredStrategy)
        if mirrored or isinstance(self.strategy, tf.distribute.OneDeviceStrategy):
            devices = self.strategy.extended.worker_devices
            gpu = any(tf.DeviceSpec.from_string(d).device_type == "GPU" for d in devices)
        else:  # the default strategy: where TensorFlow places ops
            gpu = bool(tf.config.list_logical_devices("GPU"))
        kind, how = ("GPU" if gpu else "CPU"), (" (mirrored)" if mirrored else "")
        return f"one {kind}{how}" if self.replicas == 1 else f"{self.replicas} {kind}s{how}"

    def describe(self) -> dict[str, object]:
        """What goes into the run's config: the strategy class, where it
        trains as people say it, and the replica count."""
        return {
            "strategy_class": type(self.strategy).__name__,
            "placement": self.name,
            "replicas": self.replicas,
        }

    def execution(self, config: TrainConfig, data: ImageDataset | None = None) -> tuple[bool, int]:
        """`(jit_compile, steps_per_execution)` for a run on `data`: the
        config's values, or where they are left to auto, 32 steps per call
        and XLA (on the CPU for the MLP only); what the data cannot do here
        is refused (`check_streamed`).

        Under MirroredStrategy and MultiWorkerMirroredStrategy, Keras'
        multi-step loop and XLA-compiled replica steps fail on the CPU (seen
        with TF 2.21), so auto means no XLA and one step per call there, and
        asking for them on a machine without a GPU is refused up front.
        """
        replicated = isinstance(
            self.strategy,
            (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy),
        )
        gpus = tf.config.list_logical_devices("GPU")
        # XLA speeds the MLP up on the CPU but slows the conv body down; on GPUs
        # it helps both (docs/results/speed.md#the-conv-body-and-a-mirrored-strategy-on-the-cpu).
        auto_jit = not replicated and (config.arch not in CONV_ARCHS or bool(gpus))
        jit = auto_jit if config.jit_compile is None else config.jit_compile
        steps = config.steps_per_execution or (1 if replicated else 32)
        if replicated and (jit or steps > 1) and not gpus:
            raise RunError(
                f"--strategy {config.strategy} on the CPU cannot use --jit-compile or "
                "--steps-per-execution above 1; leave both at their defaults"
            )
        if data is not None:
            self.check_streamed(data, steps)
        return jit, steps

    def input_pipelines(self) -> int:
        """How many input pipelines `distribute_datasets_from_function` makes:
        one per worker (the chief counts as one) under multi-worker, else one."""
        if not self.multi_worker:
            return 1
        spec = self.strategy.cluster_resolver.cluster_spec()
        return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)

    def common_epoch(self, epochs: list[int], horizon: int) -> int | None:
        """The checkpoint epoch to resume from: alone, None (its own newest);
        under multi-worker the newest (at most `horizon`) of which every
        worker holds a checkpoint among its `epochs`, 0 if there is none.

        A worker killed while writing its checkpoint restarts one epoch behind
        the others; resuming each from its own newest would desynchronise the
        replicas' collectives. Each worker marks the epochs it has, and one
        all-reduce counts the marks: an epoch every replica marked is one all
        of them can load.
        """
        if not self.multi_worker:
            return None
        strategy = self.strategy
        marks = np.zeros(horizon + 1, np.float32)
        marks[0] = 1.0
        marks[[e for e in epochs if e <= horizon]] = 1.0

        @tf.function  # an eager collective under this strategy only adds a warning
        def count():
            per_replica = strategy.run(lambda: tf.constant(marks))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        counts = count().numpy()
        return int(np.flatnonzero(counts >= self.replicas).max())

    def check_extending(self, folder: Path) -> None:
        """Extending a finished run needs its checkpoint on every worker."""
        if self.multi_worker:
            raise RunError(
                f"{folder}: extend a finished run in one process (without --strategy "
                "multi-worker); resume it under multi-worker once it has a checkpoint"
            )

    def check_streamed(self, data: ImageDataset, steps_per_execution: int) -> None:
        """Refuse what a streamed set cannot do under multi-worker: several
        steps per call (each worker streams without end, so Keras would run
        whole calls past the end of an epoch), and fewer TFDS record files
        than workers (each worker reads whole files of its own)."""
        if not (data.streamed and self.multi_worker):
            return
        if steps_per_execution > 1:
            raise RunError(
                f"{data.name} streams from disk: under --strategy multi-worker it trains one "
                "step per call; leave --steps-per-execution at its default"
            )
        workers = self.input_pipelines()
        files = getattr(data.train_images, "record_files", workers)  # image folders: any
        if files < workers:
            raise RunError(
                f"{data.name} streams from {files} record file(s), fewer than the {workers} "
                "workers, and each worker reads files of its own: prepare it in at least "
                f"{workers} (tfds.download.DownloadConfig(num_shards={workers})), train on "
                "fewer workers, or keep it in memory (raise TFVAE_STREAM_ABOVE_MB)"
            )

    def batches(self, data: RunData, config: TrainConfig, seed: int):
        """A run's input: its training batches, the steps of an epoch (None:
        until they end), and the held-out images scored after each epoch.

        Under multi-worker, a streamed set gives each worker an endless
        pipeline that decodes only its own rows of every global batch;
        otherwise one pipeline of one pass, which `tf.distribute` splits."""
        images, conditional = data.data, config.conditional
        held_out_labels = data.facts(data.held_out)[0] if conditional else None
        held_out = image_pipeline(
            data.scored(data.held_out), max(config.batch_size, 500), labels=held_out_labels
        )
        held_out = held_out.with_options(_split_by_data())
        if images.streamed and self.multi_worker:
            batches = self.strategy.distribute_datasets_from_function(
                lambda context: train_pipeline(
                    images,
                    config.batch_size,
                    config.pixels,
                    seed,
                    Share.of(context),
                    labels=conditional,
                )
            )
            return batches, math.ceil(len(images.train_images) / config.batch_size), held_out
        batches = train_pipeline(images, config.batch_size, config.pixels, seed, labels=conditional)
        return batches.with_options(_split_by_data()), None, held_out

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turns a multi-worker collective failure into `PeerLostError`."""
        try:
            yield
        except _PEER_ERRORS as err:
            if not self.multi_worker:
                raise
            raise PeerLostError(
                f"another worker stopped (collective op failed with {type(err).__name__}); "
                "rerun the same command on every stopped worker to rejoin from the last "
                "common checkpoint"
            ) from None


def _split_by_data() -> tf.data.Options:
    """Every worker builds the same pipeline and keeps its share of each batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
