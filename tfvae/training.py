"""Training a VAE into a run folder, resumable after any interruption.

`train` is one flow: the settings (`TrainConfig`) and where they run
(`distribute.Placement`) → the run folder, checked and locked
(`runs.RunFolder`) → the data (`RunData`) → the model → its epochs
(`fitting.fit`), each checkpointed into the folder → the finished run (its
model, final scores and pictures).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from tfvae import memory
from tfvae.config import PLACEMENT, TrainConfig
from tfvae.data import RunData
from tfvae.distribute import Placement
from tfvae.errors import DataError, RunError
from tfvae.fitting import compiled_vae, fit
from tfvae.model import VAE
from tfvae.progress import Progress
from tfvae.runs import Job, RunFolder, default_run_dir

# Lowering a setting needs --overwrite: a resume must keep its settings.
LOWER = "--batch-size, --k or --hidden (with --overwrite); the last checkpoint is kept"


@dataclasses.dataclass
class TrainResult:
    """What `train` and `resume` return.

    Attributes:
        run_dir: The run folder.
        test: The test scores (`elbo`, `kl`, `log_likelihood`, nats per
            image); empty on a worker that is not the chief.
        initial_epoch: The epoch training started after (0 for a fresh run).
        model: The trained VAE.
        epochs: The run's epochs in all.
        seconds: The call's wall-clock time.
    """

    run_dir: Path
    test: dict[str, float]
    initial_epoch: int
    model: VAE
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


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] | Progress = print,
    verbose: int | None = None,
    extend: bool = False,
) -> TrainResult:
    """Train `config` into `run_dir`, resuming it if it holds an unfinished run.

    The folder is locked first, so a second process on it is refused at once.
    Nothing is written before the data and the starting weights have loaded,
    so a bad request leaves no folder behind; every epoch is checkpointed, so
    the same call after an interruption resumes where it stopped.

    Args:
        config: Every setting of the run.
        run_dir: The run folder; None for `runs/<date-time>`.
        overwrite: Replace a run already in the folder.
        echo: Takes the log's lines (or is a `Progress`, which also draws the
            live line).
        verbose: 0 turns the live line off, 1 on; None: on when stdout is a
            terminal.
        extend: Let the run change its number of epochs and go on with a
            finished run (what `resume` passes).

    Returns:
        The run folder, its test scores and the trained model.

    Raises:
        RunError: The folder is locked by another process, is not a run
            folder, or holds a finished run or one of other settings.
        DataError: The data set cannot be loaded.
        OutOfMemoryError: The run needs more memory than the process can
            have; the message says what to lower.
        NonFiniteLossError: The loss became NaN or Inf; the last good
            checkpoint is kept.
    """
    start = time.perf_counter()
    progress = echo if isinstance(echo, Progress) else Progress(echo, live=_live(verbose))
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
    placement = Placement.make(config.strategy, run_dir)
    job = Job(config, RunFolder(placement.folder), placement, progress)
    with job.run.lock():
        replace = job.run.check(config, overwrite, extend)
        result = _train(job, replace, extend)
    result.run_dir, result.seconds = run_dir, time.perf_counter() - start
    return result


def _live(verbose: int | None) -> bool | None:
    return None if verbose is None else bool(verbose)


def _train(job: Job, replace: bool, extend: bool) -> TrainResult:
    """Data → model → the run begun → its epochs → the finished run. Nothing
    is written before the data set and the starting weights have loaded, so
    a bad request leaves no folder behind."""
    data = RunData.load(job.config, progress=job.progress)
    job = dataclasses.replace(job, config=_with_classes(job.config, data))
    config, run, placement, progress = job.config, job.run, job.placement, job.progress
    progress.say(f"Data: {data.describe()}")
    progress.say(f"Likelihood: {config.describe_likelihood()}")
    progress.say(f"Objective: {config.describe_objective()}")
    if bodies := config.describe_bodies():
        progress.say(f"Networks: {bodies}")
    memory.check(memory.training_need(config, data.image_shape, *data.in_memory()), "training")
    model = compiled_vae(config, data, placement)
    state, epoch = run.begin(job, model, replace, extend)
    progress.say(f"Training on {placement.name}, in {run.path}")
    with placement.failures(), memory.out_of_memory("training", LOWER):
        fit(job, model, data, epoch)
        # Every worker saves (saving can read synchronised variables, a
        # collective step all workers must join); only the chief's copy is kept.
        run.save_model(model)
    test = run.finish(job, model, data, state)
    return TrainResult(run.path, test, epoch, model, config.epochs)


def _with_classes(config: TrainConfig, data: RunData) -> TrainConfig:
    """A conditional run's settings with the class names of its data set
    (refused for a set without labels, or one whose classes are not those
    the run began with)."""
    if not config.conditional:
        return config
    names = data.data.class_names()
    if config.classes is not None and tuple(config.classes) != names:
        raise DataError(
            f"{config.dataset}: its classes ({', '.join(names)}) are not those the run began "
            f"with ({', '.join(config.classes)}); train a new run on it"
        )
    return dataclasses.replace(config, classes=names)


def resume(
    run_dir: str | Path,
    epochs: int | None = None,
    echo: Callable[[str], None] | Progress = print,
    verbose: int | None = None,
    restart: bool = False,
    **placement,
) -> TrainResult:
    """Continue the run in `run_dir` with the settings of its `config.json`.

    The learning rate schedule is stretched to the new total and continues
    from the step the run reached: a cosine that had reached 0 rises to the
    stretched curve's rate there (half the peak rate when the epochs double),
    a constant rate stays. A finished run whose `model.keras` is lost is
    rebuilt from its last checkpoint if one is kept.

    Args:
        run_dir: The run folder.
        epochs: A new total of epochs, more than the run has trained: a
            finished run is extended. None: an unfinished run's own.
        echo: Takes the log's lines, as in `train`.
        verbose: The live line, as in `train`.
        restart: Train the run again from scratch with its settings,
            replacing its files.
        **placement (Any): Where it runs, changed: `strategy`, `jit_compile`,
            `steps_per_execution`, `pictures_every`; None keeps the run's.

    Returns:
        As `train`.

    Raises:
        RunError: Not a run folder; a finished run without `epochs`, or
            `epochs` not above what it trained; a setting other than the
            placement's; or a lost model with no checkpoint to rebuild it.
    """
    run = RunFolder(run_dir)
    state = run.state()
    config = dataclasses.replace(state.config, **_changes(epochs, placement))
    if restart:
        return train(config, run_dir, overwrite=True, echo=echo, verbose=verbose)
    finished = state.status == "finished"
    if finished and run.unusable_model():
        if not run.checkpoints.epochs():
            raise run.lost_model()
        finished = False  # rebuilt from its last checkpoint
    done = state.config.epochs if finished else max(run.checkpoints.epochs(), default=0)
    _check_extension(run.path, finished, done, epochs)
    return train(config, run_dir, echo=echo, verbose=verbose, extend=True)


def _check_extension(path: Path, finished: bool, done: int, epochs: int | None) -> None:
    """A finished run is extended only to more epochs than it has trained."""
    if finished and epochs is None:
        raise RunError(
            f"{path}: this run has finished its {done} epochs; give --epochs N "
            f"(more than {done}) to extend it"
        )
    if epochs is not None and epochs <= done:
        raise RunError(
            f"{path}: --epochs {epochs} must be more than the {done} epochs it has trained"
        )


def _changes(epochs: int | None, placement: dict) -> dict:
    """What a resume changes in the run's settings: where it runs, and its epochs."""
    changes = {key: value for key, value in placement.items() if value is not None}
    if unknown := set(changes) - set(PLACEMENT):
        raise RunError(f"resume can change only {', '.join(PLACEMENT)}, not {sorted(unknown)}")
    return changes if epochs is None else {**changes, "epochs": epochs}
