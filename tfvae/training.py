"""Training a VAE into a run folder, resumable after any interruption."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from tfvae import durable, memory
from tfvae.callbacks import (
    EpochBackup,
    EpochLog,
    EpochSeconds,
    MetricsCSV,
    StopOnNonFinite,
    Summaries,
)
from tfvae.config import MAX_SEED, PLACEMENT, TrainConfig
from tfvae.data import image_pipeline, load_dataset, test_pipeline, train_pipeline
from tfvae.data.pipelines import Share
from tfvae.errors import RunError
from tfvae.evaluation import evaluate_elbo
from tfvae.progress import Progress
from tfvae.runs import (
    BACKUP_DIR,
    CONFIG_FILE,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_FILE,
    RunState,
    checkpoints,
    code_version,
    default_run_dir,
    load_run,
    lock_folder,
    read_state,
    repair,
    unusable_model,
    versions,
    write_state,
)

# Test images shown in the run's pictures and used for the latent plot.
RECONSTRUCTION_IMAGES = 32
LATENT_PLOT_IMAGES = 5000


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    test: dict[str, float]
    initial_epoch: int
    model: object
    epochs: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        """What `tfvae train --json` prints."""
        return {
            "run_dir": str(self.run_dir),
            "epochs": self.epochs,
            "initial_epoch": self.initial_epoch,
            "test": self.test,
            "seconds": round(self.seconds, 1),
        }


def _check_run_dir(run_dir: Path, config: TrainConfig, overwrite: bool, extend: bool) -> bool:
    """Refuse to clobber what is not ours; allow resuming what is, and with
    `extend` a finished run and a new number of epochs too.

    Returns whether the folder holds an old run that `overwrite` replaces.
    """
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is a file; choose another --run-dir")
    if not (run_dir / CONFIG_FILE).is_file():
        # An interrupted --overwrite may have left only the old run's files.
        if overwrite and ((run_dir / MODEL_FILE).exists() or (run_dir / BACKUP_DIR).is_dir()):
            return True
        if any(run_dir.iterdir()):
            raise RunError(
                f"{run_dir}: exists and is not a tfvae run folder; choose another --run-dir"
            )
        return False
    if overwrite:
        return True
    state = read_state(run_dir)
    if state.status == "finished" and not extend:
        raise RunError(
            f"{run_dir}: this run has already finished; 'tfvae resume {run_dir} --epochs N' "
            "extends it, --overwrite trains it again, or choose another --run-dir"
        )
    old, new = state.config.to_dict(), config.to_dict()
    free = (*PLACEMENT, "epochs") if extend else PLACEMENT
    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k] and k not in free]
    if changed:
        raise RunError(
            f"{run_dir}: an unfinished run with other settings ({', '.join(changed)}); "
            f"'tfvae resume {run_dir}' resumes it, or use --overwrite"
        )
    return False


def save_model(model, run_dir: Path) -> None:
    """`model.keras`, all or nothing, durably."""
    with durable.atomic_path(run_dir / MODEL_FILE) as tmp:
        model.save(tmp)


def save_pictures(model, data, test_images, run_dir: Path) -> list[Path]:
    """The run's pictures as PNGs (`plots.run_pictures`), and for a 2-D
    latent space the latent scatter plot."""
    from tfvae import plots

    shown = np.asarray(test_images[:RECONSTRUCTION_IMAGES])
    paths = [
        plots.save_picture(picture, run_dir / f"{name}.png")
        for name, picture in plots.run_pictures(model, shown).items()
    ]
    if model.latent_dim == 2:
        labels = None if data.test_labels is None else data.test_labels[:LATENT_PLOT_IMAGES]
        paths.append(
            plots.latent_scatter(
                model, np.asarray(test_images[:LATENT_PLOT_IMAGES]), labels, run_dir / "latent.png"
            )
        )
    return paths


def _build_model(config: TrainConfig, image_shape, strategy, steps_per_epoch: int = 1):
    """The VAE and its optimizer, created under the strategy's scope.

    Mixed precision: float16 compute with float32 variables; the encoder and
    decoder hand float32 tensors to the distributions, so log-probabilities
    and the KL stay in float32. Keras wraps the optimizer in a loss scaler.
    """

    from tfvae.distribute import execution_settings
    from tfvae.model import VAE
    from tfvae.schedules import learning_rate

    jit_compile, steps_per_execution = execution_settings(config, strategy)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if config.mixed_precision else "float32")
    try:
        with strategy.scope():
            model = VAE(
                image_shape,
                config.model,
                seed=config.seed,
                objective=config.objective,
                beta=config.beta,
                kl_warmup_steps=config.kl_warmup * steps_per_epoch,
                k=config.k,
                gradient_estimator=config.gradient_estimator,
            )
            model.compile(
                optimizer=keras.optimizers.Adam(
                    learning_rate(
                        config.lr_schedule, config.learning_rate, config.epochs, steps_per_epoch
                    ),
                    epsilon=config.adam_epsilon,
                ),
                # XLA on by default, CPU included: the step's random numbers
                # are integer hashes (`tfvae.noise`), and fused the step runs faster
                # (benchmarks/RESULTS.md).
                jit_compile=jit_compile,
                steps_per_execution=steps_per_execution,
            )
    finally:
        keras.config.set_dtype_policy(previous)
    return model


def starting_weights(source_dir: Path, model) -> list:
    """The encoder's and decoder's weights of the finished run in `source_dir`,
    checked against `model`'s shapes.

    A warm start: the new run trains them further under its own schedule and
    a fresh optimizer (for example a final decay to 0 after a long run).
    """
    source = load_run(source_dir).model
    values = []
    for part in ("encoder", "decoder"):
        theirs = getattr(source, part).weights
        ours = getattr(model, part).weights
        shapes = [tuple(w.shape) for w in theirs]
        if shapes != [tuple(w.shape) for w in ours]:
            raise RunError(
                f"{source_dir}: its {part} has other shapes than this run's; "
                "--init-from needs the same --arch, --hidden, --latent-dim and image size"
            )
        values.extend(w.numpy() for w in theirs)
    return values


def pipeline_seed(seed: int, initial_epoch: int) -> int:
    """The training pipeline's seed: the run's own for a fresh run, and a
    different one for each epoch a run resumes after."""
    if initial_epoch == 0:
        return seed
    return (seed * 1_000_003 + initial_epoch) % (MAX_SEED + 1)


def _worker_folder(run_dir: Path, strategy) -> tuple[Path, bool]:
    """Where this process writes, and whether it is the chief.

    Under multi-worker training only the chief writes the run folder; every
    other worker keeps its own state (backups, a throwaway model file) in a
    sibling folder, which it removes when the job finishes.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return run_dir, True
    task_id = resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief):
        return run_dir, True
    return run_dir.with_name(f".{run_dir.name}.{task_type}-{task_id}"), False


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] | Progress = print,
    verbose: int | None = None,
    extend: bool = False,
) -> TrainResult:
    """Train `config` into `run_dir`, resuming it if it holds an unfinished run.

    The folder is locked first, so a second process on it is refused at once
    (`lock_folder`). `extend` (what `resume` passes) lets the run change its
    number of epochs and continue a finished run. `echo` takes the log's
    lines (or is a `Progress`, which also draws the live line); `verbose`
    0 turns the live line off, 1 on (default: on when stdout is a terminal).
    """
    from tfvae.distribute import make_strategy

    start = time.perf_counter()
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
    progress = echo if isinstance(echo, Progress) else Progress(echo, live=_live(verbose))
    strategy = make_strategy(config.strategy)
    folder, is_chief = _worker_folder(run_dir, strategy)
    with lock_folder(folder):
        result = _train(config, run_dir, folder, is_chief, strategy, overwrite, extend, progress)
    result.seconds = time.perf_counter() - start
    return result


def _live(verbose: int | None) -> bool | None:
    return None if verbose is None else bool(verbose)


def resume(
    run_dir: str | Path,
    epochs: int | None = None,
    echo: Callable[[str], None] | Progress = print,
    verbose: int | None = None,
    restart: bool = False,
    **placement,
) -> TrainResult:
    """Continue the run in `run_dir` with the settings of its `config.json`.

    `placement` may change where it runs (`strategy`, `jit_compile`,
    `steps_per_execution`; None keeps the run's). `epochs` sets a new total:
    more than a finished run's extends it. The learning-rate schedule is
    stretched to the new total and continues from the step the run reached:
    a cosine that had reached 0 rises to the stretched curve's rate there
    (half the peak rate when the epochs double), a constant rate stays.
    A finished run whose `model.keras` is lost is rebuilt from its last
    checkpoint if one is kept; `restart` trains the run again from scratch
    with its settings, replacing its files.
    """
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    changes = {key: value for key, value in placement.items() if value is not None}
    if unknown := set(changes) - set(PLACEMENT):
        raise RunError(f"resume can change only {', '.join(PLACEMENT)}, not {sorted(unknown)}")
    if epochs is not None:
        changes["epochs"] = epochs
    config = dataclasses.replace(state.config, **changes)
    if restart:
        return train(config, run_dir, overwrite=True, echo=echo, verbose=verbose)
    finished = state.status == "finished"
    if finished and (problem := unusable_model(run_dir)):
        if not checkpoints(run_dir / BACKUP_DIR):
            raise RunError(
                f"{run_dir / MODEL_FILE}: {problem}, though the run finished; {repair(run_dir)}"
            )
        finished = False  # rebuilt from its last checkpoint
    done = state.config.epochs if finished else _checkpointed(run_dir)
    if finished and epochs is None:
        raise RunError(
            f"{run_dir}: this run has finished its {done} epochs; give --epochs N "
            f"(more than {done}) to extend it"
        )
    if epochs is not None and epochs <= done:
        raise RunError(
            f"{run_dir}: --epochs {epochs} must be more than the {done} epochs it has trained"
        )
    return train(config, run_dir, echo=echo, verbose=verbose, extend=True)


def _checkpointed(run_dir: Path) -> int:
    """The newest epoch an unfinished run holds a checkpoint of (0: none)."""
    return max((epoch for epoch, _ in checkpoints(run_dir / BACKUP_DIR)), default=0)


def _train(config, run_dir, folder, is_chief, strategy, overwrite, extend, progress: Progress):
    """Four phases: prepare the folder (nothing is written before the data set
    and the starting weights have loaded, so a bad request leaves no folder
    behind), choose the starting weights, fit, finish (model, scores,
    pictures, status)."""
    from tfvae.distribute import peer_failures

    replace_old = _check_run_dir(folder, config, overwrite, extend)
    data, validation = _load_data(config, progress)
    progress.say(f"Data: {data.describe(0 if validation is None else len(validation))}")
    progress.say(f"Likelihood: {config.describe_likelihood()}")
    # Streamed images are read as used: only images in memory count.
    in_memory = 0 if data.streamed else 1
    held = len(data.test_images) + (0 if validation is None else len(validation))
    need = memory.training_need(
        config, data.image_shape, in_memory * len(data.train_images), in_memory * held
    )
    memory.check(need, "training")
    # Before the model and the pipelines: the weights' initializers and
    # tf.data's op seeds derive from the global seed.
    keras.utils.set_random_seed(config.seed)
    model = _build_model(config, data.image_shape, strategy, _steps_per_epoch(config, data))
    _check_streamed_workers(data, model, strategy)
    backup = EpochBackup(folder / BACKUP_DIR)
    if extend and not replace_old and _is_finished(folder) and not unusable_model(folder):
        _checkpoint_finished(folder, model, backup, strategy)
    # Checked before anything is written; a run that resumes from its own
    # checkpoints no longer needs its source.
    resumable = not replace_old and bool(backup.epochs())
    source = _source_weights(config, model) if not resumable else None
    state = _start_folder(folder, config, data, model, strategy, replace_old)
    progress.say(f"Training on {state.extra['placement']}, in {folder}")
    # Lowering a setting needs --overwrite: a resume must keep its settings.
    lower = "--batch-size, --k or --hidden (with --overwrite); the last checkpoint is kept"
    with peer_failures(strategy), memory.out_of_memory("training", lower):
        initial_epoch = _starting_point(config, model, backup, strategy, source, progress.say)
        log = EpochLog(progress, config.epochs, "test" if validation is None else "validation")
        _fit(config, model, data, validation, folder, backup, initial_epoch, is_chief, log)
        # Every worker saves (saving can read synchronised variables, a
        # collective step all workers must join); only the chief's copy is kept.
        save_model(model, folder)
    if not is_chief:
        shutil.rmtree(folder, ignore_errors=True)
        progress.say(f"Worker finished; the chief wrote {run_dir}")
        return TrainResult(run_dir, {}, initial_epoch, model, config.epochs)
    test = _finish(model, data, validation, state, folder, config)
    progress.say(f"Run folder: {run_dir}")
    progress.say(
        f"Test ELBO: {test['elbo']:.2f} nats (KL {test['kl']:.2f}, "
        f"log-likelihood {test['log_likelihood']:.2f})"
    )
    return TrainResult(run_dir, test, initial_epoch, model, config.epochs)


def _is_finished(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and read_state(folder).status == "finished"


def _checkpoint_finished(folder: Path, model, backup: EpochBackup, strategy) -> None:
    """Make a finished run resumable before it is marked running again: its
    `model.keras` (weights and Adam's state) becomes the checkpoint of its
    last epoch, so a kill at any moment leaves a run that resumes from there."""
    from tfvae.distribute import is_multi_worker

    if is_multi_worker(strategy):
        raise RunError(
            f"{folder}: extend a finished run in one process (without --strategy "
            "multi-worker); resume it under multi-worker once it has a checkpoint"
        )
    with strategy.scope():
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(folder / MODEL_FILE)
    backup.save(model, read_state(folder).config.epochs)


def _load_data(config: TrainConfig, progress: Progress | None = None):
    """The run's data set (limited to `--limit` images) and its validation
    images (the last `--validation` training images, held out; or None)."""
    data = load_dataset(config.dataset, config.data_dir, config.resize, progress)
    if config.limit is not None:
        data = data.limit(config.limit, config.limit)
    if not config.validation:
        return data, None
    return data.hold_out(config.validation, config.pixels)


def _steps_per_epoch(config: TrainConfig, data) -> int:
    return math.ceil(len(data.train_images) / config.batch_size)


def _source_weights(config: TrainConfig, model) -> list | None:
    """The `--init-from` run's weights, loaded and checked against `model`."""
    if config.init_from is None:
        return None
    return starting_weights(Path(config.init_from), model)


def _start_folder(folder: Path, config, data, model, strategy, replace_old: bool) -> RunState:
    """Replace an old run if asked, create the folder and its `config.json`."""
    from tfvae.distribute import describe

    for leftover in folder.parent.glob(f".{folder.name}.deleting-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # of an --overwrite that was killed
    now = datetime.datetime.now().isoformat(timespec="seconds")
    # Every start of the run (the first and each resume) says which code ran it.
    resumed = not replace_old and (folder / CONFIG_FILE).is_file()
    earlier = read_state(folder).extra.get("provenance", []) if resumed else []
    if replace_old:
        # Rename first: a kill while deleting leaves no half-deleted run folder.
        doomed = folder.with_name(f".{folder.name}.deleting-{os.getpid()}")
        folder.rename(doomed)
        shutil.rmtree(doomed)
    folder.mkdir(parents=True, exist_ok=True)
    state = RunState(
        config,
        data.image_shape,
        extra={
            "versions": versions(),
            **describe(strategy),
            "jit_compile": bool(model.jit_compile),
            "steps_per_execution": int(model.steps_per_execution),
            "started": now,
            "provenance": [
                *earlier,
                {"started": now, "epochs": config.epochs, **code_version()},
            ],
        },
    )
    write_state(folder, state)
    return state


def _starting_point(config, model, backup: EpochBackup, strategy, source, echo) -> int:
    """Load the newest checkpoint (the one all workers agree on), or the
    `--init-from` weights on a fresh start; return the epoch to start after."""
    from tfvae.distribute import common_epoch, is_multi_worker

    agreed = (
        common_epoch(strategy, backup.epochs(), config.epochs)
        if is_multi_worker(strategy)
        else None
    )
    initial_epoch = backup.restore(model, agreed)
    if initial_epoch:
        rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        echo(
            f"Resuming after epoch {initial_epoch} of {config.epochs} "
            f"(learning rate {rate:.3g}, {config.lr_schedule} schedule)"
        )
    elif config.init_from is not None:
        # Every worker starts from the source when they agree on epoch 0,
        # even one that holds checkpoints of its own.
        values = source or starting_weights(Path(config.init_from), model)
        for variable, value in zip(
            [*model.encoder.weights, *model.decoder.weights], values, strict=True
        ):
            variable.assign(value)
        echo(f"Starting from the weights of {config.init_from}")
    return initial_epoch


def _fit(config, model, data, validation, folder: Path, backup, initial_epoch, is_chief, log):
    """`model.fit` from `initial_epoch` to `config.epochs`, scored after every
    epoch on the validation images, or on the test images without them."""
    import tensorflow as tf

    options = tf.data.Options()
    # Every worker builds the same pipeline and keeps its share of each batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # A fresh pipeline starts its shuffle and draws from the beginning:
    # seeded as before, a resumed run would replay epoch 1's batches.
    seed = pipeline_seed(config.seed, initial_epoch)
    train_ds, steps_per_epoch = _train_input(model.distribute_strategy, data, config, seed, options)
    batch_size = max(config.batch_size, 500)
    if validation is None:
        held_out, held_out_ds = "test", test_pipeline(data, batch_size, config.pixels)
    else:
        held_out, held_out_ds = "validation", image_pipeline(validation, batch_size)
    callbacks = [
        StopOnNonFinite(),
        EpochSeconds(),
        MetricsCSV(folder / METRICS_FILE, initial_epoch, held_out),
    ]
    if is_chief:
        shown = np.asarray(data.fixed_binarized("test", config.pixels)[:RECONSTRUCTION_IMAGES])
        summaries = Summaries(folder / LOGS_DIR, held_out, shown, config.pictures_every)
        callbacks += [log, summaries]
    with warnings.catch_warnings():
        # A streamed set's one pass has no length Keras knows: it learns it
        # when the first epoch ends, and warns then that the data "ran out".
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            train_ds,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=held_out_ds.with_options(options),
            shuffle=False,
            verbose=0,  # `log` says what a person needs, on a terminal or in a file
            callbacks=[*callbacks, backup],
        )


def _check_streamed_workers(data, model, strategy) -> None:
    """Refuse what a streamed set cannot do under multi-worker: several steps
    per call (each worker streams without end, so Keras would run whole calls
    past the end of an epoch), and fewer TFDS record files than workers (each
    worker reads whole files of its own)."""
    from tfvae.distribute import input_pipelines, is_multi_worker

    if not (data.streamed and is_multi_worker(strategy)):
        return
    if model.steps_per_execution > 1:
        raise RunError(
            f"{data.name} streams from disk: under --strategy multi-worker it trains one "
            "step per call; leave --steps-per-execution at its default"
        )
    workers = input_pipelines(strategy)
    files = getattr(data.train_images, "record_files", workers)  # image folders: any
    if files < workers:
        raise RunError(
            f"{data.name} streams from {files} record file(s), fewer than the {workers} "
            "workers, and each worker reads files of its own: prepare it in at least "
            f"{workers} (tfds.download.DownloadConfig(num_shards={workers})), train on fewer "
            "workers, or keep it in memory (raise TFVAE_STREAM_ABOVE_MB)"
        )


def _train_input(strategy, data, config: TrainConfig, seed: int, options):
    """The training batches and the steps of an epoch (None: until they end).

    Under multi-worker, a streamed set gives each worker an endless pipeline
    that decodes only its own rows of every global batch; otherwise one
    pipeline of one pass, which `tf.distribute` splits (`options`)."""
    from tfvae.distribute import is_multi_worker

    if data.streamed and is_multi_worker(strategy):
        batches = strategy.distribute_datasets_from_function(
            lambda context: train_pipeline(
                data, config.batch_size, config.pixels, seed, Share.of(context)
            )
        )
        return batches, _steps_per_epoch(config, data)
    batches = train_pipeline(data, config.batch_size, config.pixels, seed)
    return batches.with_options(options), None


def _finish(model, data, validation, state: RunState, folder: Path, config) -> dict[str, float]:
    """Score the test set (and the validation images), draw the pictures,
    mark the run finished."""
    test_images = data.fixed_binarized("test", config.pixels)
    test = evaluate_elbo(model, test_images)
    if validation is not None:
        state.extra["validation"] = evaluate_elbo(model, validation)
    save_pictures(model, data, test_images, folder)
    state.status = "finished"
    state.extra["test"] = test
    state.extra["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    write_state(folder, state)
    shutil.rmtree(folder / BACKUP_DIR, ignore_errors=True)
    return test
