"""Training a VAE into a run folder, resumable after any interruption."""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from tfvae.runs import (
    BACKUP_DIR,
    CONFIG_FILE,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_FILE,
    RunError,
    RunState,
    TrainConfig,
    default_run_dir,
    read_state,
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


def _check_run_dir(run_dir: Path, config: TrainConfig, overwrite: bool) -> bool:
    """Refuse to clobber what is not ours; allow resuming what is.

    Returns whether the folder holds an old run that `overwrite` replaces.
    """
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is a file; choose another --run-dir")
    if not (run_dir / CONFIG_FILE).is_file():
        if any(run_dir.iterdir()):
            raise RunError(
                f"{run_dir}: exists and is not a tfvae run folder; choose another --run-dir"
            )
        return False
    if overwrite:
        return True
    state = read_state(run_dir)
    if state.status == "finished":
        raise RunError(
            f"{run_dir}: this run has already finished; use --overwrite to train it again "
            "or choose another --run-dir"
        )
    if state.config != config:
        old, new = state.config.to_dict(), config.to_dict()
        changed = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k])
        raise RunError(
            f"{run_dir}: an unfinished run with other settings ({changed}); repeat its "
            "original command to resume it, or use --overwrite"
        )
    return False


def _save_model(model, run_dir: Path) -> None:
    """`model.keras`, written under a temporary name and renamed into place."""
    tmp = run_dir / f".tmp-{os.getpid()}-{MODEL_FILE}"
    model.save(tmp)
    os.replace(tmp, run_dir / MODEL_FILE)


def save_pictures(model, data, run_dir: Path) -> list[Path]:
    """The run's pictures: reconstructions and samples, and for a 2-D latent
    space the manifold and the latent scatter plot."""
    from tfvae import plots

    test = data.fixed_binarized_test()
    paths = [
        plots.save_png(
            plots.reconstructions(model, test[:RECONSTRUCTION_IMAGES]),
            run_dir / "reconstructions.png",
        ),
        plots.save_png(plots.samples(model, 64, seed=0), run_dir / "samples.png"),
    ]
    if model.latent_dim == 2:
        paths.append(plots.save_png(plots.manifold(model), run_dir / "manifold.png"))
        labels = None if data.test_labels is None else data.test_labels[:LATENT_PLOT_IMAGES]
        paths.append(
            plots.latent_scatter(model, test[:LATENT_PLOT_IMAGES], labels, run_dir / "latent.png")
        )
    return paths


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    verbose: int | None = None,
) -> TrainResult:
    """Train `config` into `run_dir`, resuming it if it holds an unfinished run.

    Nothing is written before the data set has loaded, so a bad data set leaves
    no folder behind.
    """
    import keras

    from tfvae import data as datasets
    from tfvae.callbacks import EpochBackup, EpochSeconds, MetricsCSV, StopOnNonFinite
    from tfvae.distribute import describe, make_strategy
    from tfvae.evaluation import evaluate_elbo
    from tfvae.model import VAE

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
    replace_old = _check_run_dir(run_dir, config, overwrite)

    data = datasets.load_dataset(config.dataset, data_dir=config.data_dir)
    if config.limit is not None:
        data = data.limit(config.limit, config.limit)
    if replace_old:
        shutil.rmtree(run_dir)
    # Before the pipelines: tf.data combines its op seeds with the global seed.
    keras.utils.set_random_seed(config.seed)
    train_ds = datasets.train_pipeline(data, config.batch_size, config.binarize, config.seed)
    test_ds = datasets.test_pipeline(data, max(config.batch_size, 500))

    strategy = make_strategy(config.strategy)
    with strategy.scope():
        model = VAE(
            image_shape=data.image_shape,
            latent_dim=config.latent_dim,
            arch=config.arch,
            hidden_units=config.hidden_units,
            activation=config.activation,
            seed=config.seed,
        )
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))

    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(
        config,
        data.image_shape,
        extra={
            "versions": versions(),
            **describe(strategy),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        },
    )
    write_state(run_dir, state)
    echo(
        f"Training in {run_dir} under {state.extra['strategy_class']} "
        f"({state.extra['replicas']} replica(s))"
    )

    backup = EpochBackup(run_dir / BACKUP_DIR)
    initial_epoch = backup.restore(model)
    if initial_epoch:
        echo(f"Resuming after epoch {initial_epoch} of {config.epochs}")
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    model.fit(
        train_ds,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        validation_data=test_ds,
        shuffle=False,
        verbose=verbose,
        callbacks=[
            StopOnNonFinite(),
            EpochSeconds(),
            MetricsCSV(run_dir / METRICS_FILE, initial_epoch),
            keras.callbacks.TensorBoard(str(run_dir / LOGS_DIR)),
            backup,
        ],
    )

    _save_model(model, run_dir)
    test = evaluate_elbo(model, data.fixed_binarized_test())
    save_pictures(model, data, run_dir)
    state.status = "finished"
    state.extra["test"] = test
    state.extra["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    write_state(run_dir, state)
    shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
    echo(f"Run folder: {run_dir}")
    echo(
        f"Test ELBO: {test['elbo']:.2f} nats (KL {test['kl']:.2f}, "
        f"log-likelihood {test['log_likelihood']:.2f})"
    )
    return TrainResult(run_dir, test, initial_epoch)
