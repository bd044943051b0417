"""Run folders: the settings of a training run, its state and its files.

A run folder holds `config.json` (settings, versions, status), `model.keras`,
`metrics.csv`, `logs/` (TensorBoard), pictures, and while training runs a
`backup/` of per-epoch checkpoints that lets an interrupted run resume. Every
file is written atomically and durably (`tfvae.durable`), so a reader never
sees half a file. One process at a time trains a folder (`lock_folder`).
`RunFolder` is everything done to a run folder, by training and by whatever
reads a finished run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfvae
from tfvae import durable, plots
from tfvae.bodies import SIDES
from tfvae.config import PLACEMENT, TrainConfig, is_int
from tfvae.data.run_data import RunData
from tfvae.data.sources import load_dataset
from tfvae.distribute import Placement
from tfvae.durable import write_atomic
from tfvae.errors import DataError, RunError, first_line
from tfvae.evaluation import active_units_per_layer, evaluate_elbo, iw_log_likelihood
from tfvae.likelihoods import bits_per_dim
from tfvae.model import VAE
from tfvae.progress import Progress

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
# How a model outside a run folder is named: a Keras file, the weights of a
# Keras model folder, and a model on the Hugging Face Hub.
KERAS_SUFFIX = ".keras"
KERAS_WEIGHTS = "model.weights.h5"
HUB_PREFIX = "hf://"
METRICS_FILE = "metrics.csv"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
# An epoch's checkpoint in BACKUP_DIR: epoch-NNNNN/ with these two files.
CHECKPOINT_WEIGHTS = "state.weights.h5"
CHECKPOINT_META = "meta.json"
# Test images shown in the run's pictures and used for the latent plot.
RECONSTRUCTION_IMAGES = 32
LATENT_PLOT_IMAGES = 5000


@contextlib.contextmanager
def lock_folder(folder: Path) -> Iterator[None]:
    """Hold the lock of the run in `folder` while the block runs, or refuse
    at once with a `RunError` naming the process (pid, host) that holds it.

    The lock is `flock` on a sibling file `.<name>.lock` (a sibling, since a
    fresh run's folder is created only after its data has loaded). The kernel
    drops it with the process, so a SIGKILL or a power loss leaves nothing
    that blocks. Locks agree between processes of one machine; on NFS, Linux
    maps `flock` to the server's byte-range locks, which hold across clients
    only where the server runs a lock manager (not under `nolock`).
    """
    folder = Path(folder)
    path = folder.with_name(f".{folder.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _take_lock(path, folder)
    try:
        yield
    finally:
        # Unlinked while held: a process that opened the old file gets its
        # lock only after this close, sees the file gone and starts over.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _take_lock(path: Path, folder: Path) -> int:
    """The open, locked descriptor of `path`, whose holder it now names."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(
                f"{folder}: {holder} is training this run folder; wait for it to finish "
                "or stop it, or choose another --run-dir"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            return fd
        os.close(fd)  # the holder released and removed it meanwhile: try again


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def code_version() -> dict[str, object]:
    """The code that is running: tfvae's version and, when it runs from a git
    checkout, the commit and whether tracked files differ from it."""
    info: dict[str, object] = {"tfvae": tfvae.__version__}
    root = Path(tfvae.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return info
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changes = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return info
    return {**info, "git_commit": commit, "git_dirty": bool(changes)}


def versions() -> dict[str, str]:
    return {
        "tfvae": tfvae.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_probability": tfp.__version__,
        "python": platform.python_version(),
    }


class OwnLayersError(RunError):
    """A model whose own layers' module is not imported: the file is whole."""


@dataclasses.dataclass
class RunState:
    """What `config.json` says about a run: settings, data shape and status."""

    config: TrainConfig
    image_shape: tuple[int, int, int]
    status: str = "running"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "config": self.config.to_dict(),
                "image_shape": list(self.image_shape),
                "status": self.status,
                **self.extra,
            },
            indent=2,
        )


def write_state(run_dir: Path, state: RunState) -> None:
    write_atomic(run_dir / CONFIG_FILE, state.to_json() + "\n")


def read_state(run_dir: str | Path) -> RunState:
    """Read and validate `config.json`; any defect is a `RunError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder; train one with 'tfvae train'")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise RunError(f"{path}: unreadable ({err}); the run folder is damaged") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise RunError(f"{path}: no 'config' object; the run folder is damaged")
    shape = raw.get("image_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(is_int(d) and 1 <= d <= 4096 for d in shape)
    ):
        raise RunError(f"{path}: image_shape {shape!r} is invalid")
    status = raw.get("status")
    if status not in ("running", "finished"):
        raise RunError(f"{path}: status {status!r} is invalid")
    extra = {k: v for k, v in raw.items() if k not in ("config", "image_shape", "status")}
    return RunState(TrainConfig.from_dict(raw["config"]), tuple(shape), status, extra)


class Checkpoints:
    """A run's per-epoch checkpoints (weights, optimizer state, the epoch) in
    `backup/`, one folder each, of which the newest `keep` are kept.

    Unlike `keras.callbacks.BackupAndRestore`, no file is ever overwritten in
    place: each epoch's folder is written under a temporary name, flushed and
    renamed when complete, and the previous one is kept until the next is, so
    a kill or a power loss at any moment leaves a whole checkpoint behind.
    """

    def __init__(self, backup_dir: str | Path, keep: int = 2):
        self.backup_dir = Path(backup_dir)
        self.keep = keep

    def _folders(self) -> list[Path]:
        if not self.backup_dir.is_dir():
            return []
        found = self.backup_dir.glob("epoch-*")
        return sorted(p for p in found if (p / CHECKPOINT_META).is_file())

    def _readable(self) -> list[tuple[int, Path]]:
        """`(epoch, folder)` of every checkpoint whose metadata reads, oldest first."""
        found = []
        for folder in self._folders():
            try:
                meta = json.loads((folder / CHECKPOINT_META).read_text())
                found.append((int(meta["epoch"]), folder))
            except (OSError, ValueError, KeyError):
                continue
        return found

    def epochs(self) -> list[int]:
        """The epochs held complete, oldest first."""
        return [epoch for epoch, _ in self._readable()]

    def restore(self, model: keras.Model, epoch: int | None = None) -> int:
        """Load the newest readable checkpoint into `model`; return its epoch
        (0 if none). With `epoch`, load exactly that one (0: load nothing)."""
        if epoch == 0:
            return 0
        for found, folder in reversed(self._readable()):
            if epoch is not None and found != epoch:
                continue
            try:
                # Under a distribution strategy the optimizer's slots must be
                # created in its scope, or a resumed mirrored run fails.
                with model.distribute_strategy.scope():
                    if model.optimizer is not None and not model.optimizer.built:
                        model.optimizer.build(model.trainable_variables)
                    model.load_weights(folder / CHECKPOINT_WEIGHTS)
                return found
            except (OSError, ValueError, KeyError):
                continue  # a damaged checkpoint: fall back to the one before
        if epoch is not None:
            raise RunError(
                f"{self.backup_dir}: no readable checkpoint of epoch {epoch}; "
                "delete the folder to restart this worker from scratch"
            )
        return 0

    def save(self, model: keras.Model, epoch: int) -> None:
        """Write `model`'s state as the checkpoint of `epoch` (1-based)."""
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        _check_space(self.backup_dir, model)
        final = self.backup_dir / f"epoch-{epoch:05d}"
        tmp = self.backup_dir / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with durable.hdf5_errors(tmp / CHECKPOINT_WEIGHTS):
            model.save_weights(tmp / CHECKPOINT_WEIGHTS)
        (tmp / CHECKPOINT_META).write_text(json.dumps({"epoch": epoch}))
        durable.replace_folder(tmp, final, self.backup_dir / f".old-{final.name}")
        for old in self._folders()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def _check_space(folder: Path, model: keras.Model) -> None:
    """Refuse a checkpoint the disk cannot hold before HDF5 starts on it: a
    write that fails half-way leaves HDF5 in a state that crashes the process
    when it exits (SIGSEGV), after the error was reported."""
    variables = [*model.weights, *(model.optimizer.variables if model.optimizer else [])]
    # The numbers, a few KiB of HDF5's own per variable, and some slack.
    need = sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) + 4096 for v in variables)
    need += 2**18
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)} (a checkpoint needs about {need / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB are free)",
            str(folder),
        )


@dataclasses.dataclass
class Run:
    """A finished run: its folder, state and trained model, as `load_run`
    and `open_run` give it.

    Attributes:
        path: The run folder; for a model file, the folder it lies in
            (where pictures go).
        state: What `config.json` says: `state.config` is the run's
            `TrainConfig`, `state.extra` its versions and final scores. A
            model file's holds the model's own settings and no data set.
        model: The trained `VAE`.
        file: The model file it was read from; None for a run folder.
    """

    path: Path
    state: RunState
    model: Any
    file: str | None = None

    def data(self, dataset: str | None = None, progress: Progress | None = None) -> RunData:
        """The run's images.

        Args:
            dataset: Another set (a spec as `load_dataset` takes it), read
                and scored as the run would: in its size and under its pixel
                treatment, with no images held out. None: the run's own data
                as training built it.
            progress: Hears how far the check of an image folder's files is.

        Returns:
            The data, as `RunData.load` makes it.

        Raises:
            RunError: A model file, which holds no data set, without `dataset`.
            DataError: The images are not the size the model was trained on.
        """
        config = self.state.config
        if dataset is None:
            if self.file is not None:
                raise RunError(
                    f"{self.file}: a model file holds no data set; name the images with --dataset"
                )
            data = RunData.load(config, progress)
        else:
            loaded = load_dataset(dataset, config.data_dir, config.resize, progress)
            data = RunData(loaded, None, config.pixels)
        if data.image_shape != tuple(self.state.image_shape):
            raise DataError(
                f"{dataset or config.dataset}: images are {_size(data.image_shape)}, the model "
                f"was trained on {_size(self.state.image_shape)}; give images of its size"
            )
        return data

    def images(
        self,
        split: str = "test",
        limit: int | None = None,
        dataset: str | None = None,
        progress: Progress | None = None,
    ):
        """A split of `data(dataset)` as scored.

        Args:
            split: `test`, `train` or `validation`.
            limit: Only the first this many images; None for all.
            dataset: Another set, as `data` takes it.
            progress: Hears how far loading is.

        Returns:
            (np.ndarray | ScoredImages): float32 `[n, height, width,
                channels]`.
        """
        return self.split(split, limit, dataset, progress)[0]

    def split(
        self,
        split: str = "test",
        limit: int | None = None,
        dataset: str | None = None,
        progress: Progress | None = None,
    ):
        """`images(...)` and, for a conditional model, their labels.

        Args:
            split: `test`, `train` or `validation`.
            limit: Only the first this many images; None for all.
            dataset: Another set, as `data` takes it.
            progress: Hears how far loading is.

        Returns:
            (tuple[np.ndarray | ScoredImages, np.ndarray | None]): The images
                as `images` gives them, and the classes a conditional model
                reads, int `[n]` by its class indices (None for another).

        Raises:
            DataError: A conditional model's images have no labels, or other
                classes than the model's.
        """
        data = self.data(dataset, progress)
        images = data.scored(split, limit)
        if not self.model.conditional:
            return images, None
        labels = data.facts(split)[0]
        name = dataset or self.state.config.dataset
        if labels is None:
            raise DataError(
                f"{name}: its {split} images have no labels, and this conditional model reads "
                "each image's class; give a labelled set with --dataset"
            )
        classes = data.data.class_names()
        if tuple(classes) != tuple(self.model.classes):
            raise DataError(
                f"{name}: its classes ({', '.join(classes[:10])}) are not the model's "
                f"({', '.join(self.model.classes[:10])}); give a set of the model's classes"
            )
        return images, labels if limit is None else labels[:limit]


def _size(shape) -> str:
    return "x".join(map(str, shape))


@dataclasses.dataclass(frozen=True)
class Job:
    """A training run in the making: its settings, the folder this process
    writes (`RunFolder`), where it trains and whom it tells."""

    config: TrainConfig
    run: RunFolder
    placement: Placement
    progress: Progress


class RunFolder:
    """Everything done to a run folder: checked, locked, started,
    checkpointed, given its model, pictures and final scores, and read back.

    `path` is the folder this process writes: the run folder, or for another
    worker of a multi-worker job the sibling it keeps its own state in
    (`distribute.Placement.folder`).
    """

    def __init__(self, path: str | Path):
        """A run folder at `path`; nothing is read or written until asked.

        Args:
            path: The run folder (for a multi-worker job's other workers, the
                sibling folder they keep their own state in).
        """
        self.path = Path(path)
        self.checkpoints = Checkpoints(self.path / BACKUP_DIR)

    def state(self) -> RunState:
        """What `config.json` says: the settings, the images' shape, the
        status and the rest (versions, placement, final scores).

        Raises:
            RunError: The folder or its `config.json` is missing or damaged.
        """
        return read_state(self.path)

    @property
    def finished(self) -> bool:
        """True once training finished: `model.keras` and the scores are written."""
        return (self.path / CONFIG_FILE).is_file() and self.state().status == "finished"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """This process alone trains the folder while the block runs (`lock_folder`)."""
        with lock_folder(self.path):
            yield

    # --- a run that trains ---------------------------------------------------------

    def check(self, config: TrainConfig, overwrite: bool, extend: bool) -> bool:
        """Refuse to clobber what is not a run, or a run of other settings;
        allow resuming a run of these, and with `extend` a finished run and a
        new number of epochs too. Returns whether the folder holds an old run
        that `overwrite` replaces."""
        if not self.path.exists():
            return False
        if not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is a file; choose another --run-dir")
        if not (self.path / CONFIG_FILE).is_file():
            return self._check_foreign(overwrite)
        if overwrite:
            return True
        state = self.state()
        if state.status == "finished" and not extend:
            raise RunError(
                f"{self.path}: this run has already finished; 'tfvae resume {self.path} "
                "--epochs N' extends it, --overwrite trains it again, or choose another --run-dir"
            )
        old, new = state.config.to_dict(), config.to_dict()
        # The class names come from the data set once it loads (`training`).
        free = (*PLACEMENT, "classes", *(("epochs",) if extend else ()))
        changed = [
            f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k] and k not in free
        ]
        if changed:
            raise RunError(
                f"{self.path}: an unfinished run with other settings ({', '.join(changed)}); "
                f"'tfvae resume {self.path}' resumes it, or use --overwrite"
            )
        return False

    def _check_foreign(self, overwrite: bool) -> bool:
        """A folder without `config.json`: an interrupted --overwrite may have
        left only the old run's files; anything else is not ours."""
        if overwrite and ((self.path / MODEL_FILE).exists() or (self.path / BACKUP_DIR).is_dir()):
            return True
        if any(self.path.iterdir()):
            raise RunError(
                f"{self.path}: exists and is not a tfvae run folder; choose another --run-dir"
            )
        return False

    def start(self, config: TrainConfig, image_shape, placement: dict, replace: bool) -> RunState:
        """Replace the old run if `replace`, create the folder and write its
        `config.json`: the settings, the data's shape, the versions, where
        it trains (`placement`) and one provenance entry per start."""
        for leftover in self.path.parent.glob(f".{self.path.name}.deleting-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # of an --overwrite that was killed
        now = datetime.datetime.now().isoformat(timespec="seconds")
        resumed = not replace and (self.path / CONFIG_FILE).is_file()
        earlier = self.state().extra.get("provenance", []) if resumed else []
        if replace:
            # Rename first: a kill while deleting leaves no half-deleted run folder.
            doomed = self.path.with_name(f".{self.path.name}.deleting-{os.getpid()}")
            self.path.rename(doomed)
            shutil.rmtree(doomed)
        self.path.mkdir(parents=True, exist_ok=True)
        entry = {"started": now, "epochs": config.epochs, **code_version()}
        extra = {"versions": versions(), **placement, "started": now}
        state = RunState(config, image_shape, extra={**extra, "provenance": [*earlier, entry]})
        write_state(self.path, state)
        return state

    def keep_finished(self, model: keras.Model) -> None:
        """Make a finished run resumable before it is marked running again:
        its `model.keras` (weights and Adam's state) becomes the checkpoint of
        its last epoch, so a kill at any moment leaves a run that resumes."""
        with model.distribute_strategy.scope():
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(self.path / MODEL_FILE)
        self.checkpoints.save(model, self.state().config.epochs)

    def save_model(self, model: keras.Model) -> None:
        """`model.keras`, all or nothing, durably."""
        with durable.atomic_path(self.path / MODEL_FILE) as tmp:
            model.save(tmp)

    def save_pictures(self, model: VAE, images, labels: np.ndarray | None) -> list[Path]:
        """The run's pictures as PNGs (`plots.run_pictures`) of the first
        test `images`, and for a 2-D latent space the latent scatter plot,
        coloured by `labels`."""
        shown = np.asarray(images[:RECONSTRUCTION_IMAGES])
        shown_labels = None if labels is None else labels[:RECONSTRUCTION_IMAGES]
        paths = [
            plots.save_picture(picture, self.path / f"{name}.png")
            for name, picture in plots.run_pictures(model, shown, shown_labels).items()
        ]
        if model.code_dim == 2:
            plotted = np.asarray(images[:LATENT_PLOT_IMAGES])
            labels = None if labels is None else labels[:LATENT_PLOT_IMAGES]
            paths.append(plots.latent_scatter(model, plotted, labels, self.path / "latent.png"))
        return paths

    def begin(self, job: Job, model: VAE, replace: bool, extend: bool) -> tuple[RunState, int]:
        """Start (or go on with) the run: a finished run that `extend`s keeps
        its model as a checkpoint first; the `--init-from` weights are checked
        before anything is written; then `config.json`, and the weights to
        start from. Returns the run's state and the epoch it starts after."""
        config, placement = job.config, job.placement
        if extend and not replace and self.finished and not self.unusable_model():
            placement.check_extending(self.path)
            self.keep_finished(model)
        # A run that resumes from its own checkpoints no longer needs its source.
        resumes = not replace and bool(self.checkpoints.epochs())
        source = None if resumes or config.init_from is None else starting_weights(config, model)
        record = {
            "kl_terms": config.kl_terms(),
            **placement.describe(),
            "jit_compile": bool(model.jit_compile),
            "steps_per_execution": int(model.steps_per_execution),
        }
        state = self.start(config, model.image_shape, record, replace)
        return state, self._starting_point(job, model, source)

    def _starting_point(self, job: Job, model: VAE, source: list | None) -> int:
        """Load the newest checkpoint (the one all workers agree on), or the
        `--init-from` weights on a fresh start; return the epoch to start after."""
        config = job.config
        agreed = job.placement.common_epoch(self.checkpoints.epochs(), config.epochs)
        initial_epoch = self.checkpoints.restore(model, agreed)
        if initial_epoch:
            rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            job.progress.say(
                f"Resuming after epoch {initial_epoch} of {config.epochs} "
                f"(learning rate {rate:.3g}, {config.lr_schedule} schedule)"
            )
        elif config.init_from is not None:
            # Every worker starts from the source when they agree on epoch 0,
            # even one that holds checkpoints of its own.
            values = source or starting_weights(config, model)
            weights = [*model.encoder.weights, *model.decoder.weights]
            for variable, value in zip(weights, values, strict=True):
                variable.assign(value)
            job.progress.say(f"Starting from the weights of {config.init_from}")
        return initial_epoch

    def finish(self, job: Job, model: VAE, data: RunData, state: RunState) -> dict[str, float]:
        """On the chief: score the test images (and the validation images),
        draw the pictures, record the scores, mark the run finished and drop
        its checkpoints; return the test scores. Another worker drops its
        folder."""
        if not job.placement.is_chief:
            self.remove()
            job.progress.say("Worker finished; the chief wrote the run folder")
            return {}
        test_images, test_labels = data.scored("test"), data.facts("test")[0]
        scores = {"test": evaluate_elbo(model, test_images, labels=test_labels)}
        if data.validation is not None:
            labels = data.validation_facts[0]
            scores["validation"] = evaluate_elbo(model, data.validation, labels=labels)
        self.save_pictures(model, test_images, test_labels)
        state.status = "finished"
        state.extra.update(scores)
        state.extra["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        write_state(self.path, state)
        shutil.rmtree(self.path / BACKUP_DIR, ignore_errors=True)
        test = scores["test"]
        job.progress.say(f"Run folder: {self.path}")
        job.progress.say(
            f"Test ELBO: {test['elbo']:.2f} nats (KL {test['kl']:.2f}, "
            f"log-likelihood {test['log_likelihood']:.2f})"
        )
        return test

    def remove(self) -> None:
        """The folder of a worker that is not the chief, once the job is done."""
        shutil.rmtree(self.path, ignore_errors=True)

    # --- a finished run --------------------------------------------------------------

    def images(self, split: str = "test", limit: int | None = None, progress=None):
        """The finished run and its data's `split` as scored.

        Args:
            split: `test`, `train` or `validation`.
            limit: Only the first this many images; None for all.
            progress (Progress | None): Hears how far loading is.

        Returns:
            (tuple[Run, np.ndarray | ScoredImages]): The run (`load`) and the
                images (`Run.images`).
        """
        run = self.load()
        return run, run.images(split, limit, progress=progress)

    def score(self, split: str = "test", k: int = 1, progress: Progress | None = None) -> dict:
        """What `tfvae evaluate` reports of the finished run; see `score_run`.

        Args:
            split: `test`, `train` or `validation`.
            k: Importance samples per image of the NLL estimate.
            progress: Hears each stage.

        Returns:
            The scores, as `score_run` gives them.
        """
        return score_run(self.path, split, k, progress)

    def unusable_model(self) -> str | None:
        """Why `model.keras` cannot be what the run trained (said after its
        path): missing, or not a whole Keras file (a zip whose every member
        passes its checksum); None when it is whole."""
        path = self.path / MODEL_FILE
        if not path.is_file():
            return "missing"
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
        except (OSError, zipfile.BadZipFile, EOFError):
            return "damaged (not a whole Keras file)"
        if broken is not None:
            return f"damaged ({broken} in it fails its checksum)"
        return None

    def repair(self) -> str:
        """The one command that gives the run its model again: resuming from
        its newest checkpoint where one is kept, else training it again."""
        if self.checkpoints.epochs():
            return f"'tfvae resume {self.path}' rebuilds it from the last checkpoint"
        return f"no checkpoint is kept: 'tfvae resume {self.path} --restart' trains it again"

    def lost_model(self) -> RunError:
        """The error for a finished run whose model file is unusable."""
        return RunError(
            f"{self.path / MODEL_FILE}: {self.unusable_model()}, though the run finished; "
            f"{self.repair()}"
        )

    def load(self) -> Run:
        """The finished run, its model loaded in Keras safe mode.

        Returns:
            The run's folder, state and model.

        Raises:
            RunError: The run has not finished, or its `model.keras` is
                missing, damaged or not the run's; the message says which
                command repairs it.
        """
        state = self.state()
        model_path = self.path / MODEL_FILE
        if state.status != "finished":
            raise RunError(
                f"{self.path}: training has not finished; 'tfvae resume {self.path}' continues it"
            )
        if self.unusable_model():
            raise self.lost_model()
        try:
            model = load_model_file(model_path)
        except OwnLayersError:
            raise
        except RunError as err:
            raise RunError(f"{err}; {self.repair()}") from None
        if not isinstance(model, VAE):
            raise RunError(f"{model_path}: holds a {type(model).__name__}, not a tfvae VAE")
        shape, latent = tuple(model.image_shape), model.latent_dim
        if shape != state.image_shape or latent != state.config.latent_dim:
            raise RunError(
                f"{model_path}: the model (image_shape {shape}, latent_dim {latent}) does not "
                f"match config.json (image_shape {state.image_shape}, latent_dim "
                f"{state.config.latent_dim}); the run folder is damaged"
            )
        return Run(self.path, state, model)


def starting_weights(config: TrainConfig, model: VAE) -> list:
    """The encoder's and decoder's weights of the finished `--init-from` run,
    checked against `model`'s shapes.

    A warm start: the new run trains them further under its own schedule and
    a fresh optimizer (for example a final decay to 0 after a long run).
    """
    source = load_run(config.init_from).model
    values = []
    for part in ("encoder", "decoder"):
        theirs, ours = getattr(source, part).weights, getattr(model, part).weights
        if [tuple(w.shape) for w in theirs] != [tuple(w.shape) for w in ours]:
            raise RunError(
                f"{config.init_from}: its {part} has other shapes than this run's; "
                "--init-from needs the same --arch, --hidden, --latent-dim and image size"
            )
        values.extend(w.numpy() for w in theirs)
    return values


def load_run(run_dir: str | Path) -> Run:
    """Load a finished run folder, its model in Keras safe mode (no code from
    the file runs).

    Args:
        run_dir: The run folder `tfvae train` wrote.

    Returns:
        The run's folder, state and model.

    Raises:
        RunError: Not a finished run folder, or its model file is missing or
            damaged.
    """
    return RunFolder(run_dir).load()


def is_model_file(source: str | Path) -> bool:
    """Whether `source` names a model rather than a run folder: a `.keras`
    file, a Keras model folder (`config.json` beside `model.weights.h5`, as
    `model.save(path, zipped=False)` and the Hugging Face Hub keep them) or an
    `hf://user/repo` path."""
    text = str(source)
    if text.startswith(HUB_PREFIX) or text.endswith(KERAS_SUFFIX):
        return True
    return (Path(source) / KERAS_WEIGHTS).is_file() and not (Path(source) / MODEL_FILE).exists()


def open_run(source: str | Path) -> Run:
    """A finished run folder, or a model tfvae wrote, loaded in Keras safe
    mode: what every command that reads a trained model opens.

    Args:
        source: A run folder, a `.keras` file, a Keras model folder
            (`config.json` beside `model.weights.h5`) or an `hf://user/repo`
            path (which needs the `huggingface_hub` package).

    Returns:
        The run. A model file's has no data set (`Run.file` names the file,
            `Run.path` its folder).

    Raises:
        RunError: The source is missing, damaged or not a tfvae VAE.
    """
    if not is_model_file(source):
        return load_run(source)
    text = str(source)
    remote = text.startswith(HUB_PREFIX)
    if not remote and not Path(source).exists():
        raise RunError(f"{source}: no such model file")
    if remote and importlib.util.find_spec("huggingface_hub") is None:
        raise RunError(
            f"{source}: reading a model from the Hugging Face Hub needs the huggingface_hub "
            "package; pip install 'tfvae[hub]'"
        )
    model = load_model_file(text if remote else Path(source))
    if not isinstance(model, VAE):
        raise RunError(f"{source}: holds a {type(model).__name__}, not a tfvae VAE")
    settings = dataclasses.asdict(model.model_config) | dataclasses.asdict(model.objective_config)
    settings.pop("kl_warmup_steps")
    state = RunState(TrainConfig(**settings), tuple(model.image_shape), "finished")
    return Run(output_folder(source), state, model, file=text)


def output_folder(source: str | Path) -> Path:
    """Where commands write a run's pictures by default: the run folder, the
    folder a model file lies in, or the working folder for an `hf://` model."""
    if str(source).startswith(HUB_PREFIX):
        return Path.cwd()
    return Path(source).parent if is_model_file(source) else Path(source)


def load_model(source: str | Path) -> VAE:
    """The trained VAE of a run folder or model file, loaded in Keras safe mode.

    Args:
        source: A finished run folder, a `.keras` file tfvae wrote, a Keras
            model folder or an `hf://user/repo` path (Keras downloads it; the
            `huggingface_hub` package must be installed).

    Returns:
        The model, ready to encode, decode and sample.

    Raises:
        RunError: The source is missing, damaged or not a tfvae VAE.
    """
    return open_run(source).model


def score_run(
    source: str | Path,
    split: str = "test",
    k: int = 1,
    progress: Progress | None = None,
    dataset: str | None = None,
) -> dict:
    """What `tfvae evaluate` reports of a finished run or model file.

    Args:
        source: A run folder or model file, as `open_run` takes it.
        split: `test`, `train` or `validation` of the run's data (or `dataset`).
        k: Importance samples per image of the NLL estimate (1: the ELBO).
        progress: Hears each stage, and how far the IW estimate is.
        dataset: Another set (`Run.data`); a model file needs one.

    Returns:
        Means in nats per image of `elbo`, `kl`, `log_likelihood` and `nll`
            (the IW estimate of -ln p(x), or -ln p(x|y) when `conditional`);
            `bits_per_dim` (8-bit likelihoods, else None); `active_units`,
            `active_units_per_layer`, `split`, `n_images`, `k`, `latent_dim`.

    Raises:
        RunError: The source cannot be opened.
        DataError: The images cannot be loaded or do not fit the model.
    """
    progress = progress or Progress.quiet()
    run = open_run(source)
    images, labels = run.split(split, dataset=dataset, progress=progress)
    model = run.model
    with progress.stage(f"Scoring the {len(images):,} {split} images: ELBO, active units"):
        scores = evaluate_elbo(model, images, labels=labels)
        units = active_units_per_layer(model, images, labels=labels)
    what = f"Importance-weighted NLL, K={k:,}: {len(images) * k:,} samples of z"
    with progress.stage(what, total=len(images) * k) as advance:
        log_px = iw_log_likelihood(model, images, k=k, progress=advance, labels=labels)
        nll = float(-np.mean(log_px))
    per_level = model.decoder.likelihood.per_level
    return {
        "split": split,
        "n_images": int(len(images)),
        "k": k,
        **scores,
        "nll": nll,
        "bits_per_dim": bits_per_dim(nll, model.image_shape) if per_level else None,
        "active_units": sum(units),
        "active_units_per_layer": units,
        "latent_dim": model.latent_dim,
        "conditional": model.conditional,
    }


def run_images(
    source: str | Path,
    split: str = "test",
    limit: int | None = None,
    progress: Progress | None = None,
    dataset: str | None = None,
):
    """A finished run (or model file) and its data's `split` (or `dataset`'s)
    as scored, the first `limit` images (`Run.images`)."""
    run = open_run(source)
    return run, run.images(split, limit, dataset, progress)


def load_model_file(path: str | Path):
    """A `.keras` file's model, loaded in Keras safe mode (no code from the file runs)."""
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad file
        line = first_line(err)
        if line.startswith(SIDES):  # the user's own layers, not a damaged file
            raise OwnLayersError(f"{path}: {line}") from None
        raise RunError(f"{path}: cannot be loaded safely ({line})") from None
