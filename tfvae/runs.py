"""Run folders: the settings of a training run, its state and its files.

A run folder holds `config.json` (settings, versions, status), `model.keras`,
`metrics.csv`, `logs/` (TensorBoard), pictures, and while training runs a
`backup/` that lets an interrupted run resume. Every file is written
atomically and durably (`tfvae.durable`), so a reader never sees half a file.
One process at a time trains a folder (`lock_folder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import platform
import socket
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tfvae.config import TrainConfig, is_int
from tfvae.durable import write_atomic
from tfvae.errors import RunError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.csv"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
# An epoch's checkpoint in BACKUP_DIR: epoch-NNNNN/ with these two files.
CHECKPOINT_WEIGHTS = "state.weights.h5"
CHECKPOINT_META = "meta.json"


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


def checkpoint_folders(backup_dir: Path) -> list[Path]:
    """The epochs' checkpoint folders in `backup_dir`, oldest first."""
    if not backup_dir.is_dir():
        return []
    return sorted(p for p in backup_dir.glob("epoch-*") if (p / CHECKPOINT_META).is_file())


def checkpoints(backup_dir: Path) -> list[tuple[int, Path]]:
    """`(epoch, folder)` of every checkpoint whose metadata reads, oldest first."""
    found = []
    for folder in checkpoint_folders(backup_dir):
        try:
            found.append((int(json.loads((folder / CHECKPOINT_META).read_text())["epoch"]), folder))
        except (OSError, ValueError, KeyError):
            continue
    return found


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def code_version() -> dict[str, object]:
    """The code that is running: tfvae's version and, when it runs from a git
    checkout, the commit and whether tracked files differ from it."""
    import tfvae

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
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import tfvae

    return {
        "tfvae": tfvae.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_probability": tfp.__version__,
        "python": platform.python_version(),
    }


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


@dataclasses.dataclass
class Run:
    """A finished run: its folder, state and trained model."""

    path: Path
    state: RunState
    model: Any


def load_run(run_dir: str | Path) -> Run:
    """Load a finished run's model in Keras safe mode (no code from the file runs)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    model_path = run_dir / MODEL_FILE
    if state.status != "finished":
        raise RunError(
            f"{run_dir}: training has not finished; 'tfvae resume {run_dir}' continues it"
        )
    if problem := unusable_model(run_dir):
        raise RunError(f"{model_path}: {problem}, though the run finished; {repair(run_dir)}")
    try:
        model = load_model_file(model_path)
    except RunError as err:
        raise RunError(f"{err}; {repair(run_dir)}") from None
    from tfvae.model import VAE

    if not isinstance(model, VAE):
        raise RunError(f"{model_path}: holds a {type(model).__name__}, not a tfvae VAE")
    if tuple(model.image_shape) != state.image_shape or model.latent_dim != state.config.latent_dim:
        raise RunError(
            f"{model_path}: the model (image_shape {tuple(model.image_shape)}, latent_dim "
            f"{model.latent_dim}) does not match config.json (image_shape "
            f"{state.image_shape}, latent_dim {state.config.latent_dim}); the run folder is damaged"
        )
    return Run(run_dir, state, model)


def unusable_model(run_dir: Path) -> str | None:
    """Why a run's `model.keras` cannot be what it trained (said after its
    path): missing, or not a whole Keras file (a zip whose every member passes its checksum); None
    when it is whole."""
    path = run_dir / MODEL_FILE
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


def repair(run_dir: Path) -> str:
    """The one command that gives a run its model again: resuming from its
    newest checkpoint where one is kept, else training it again."""
    if checkpoints(run_dir / BACKUP_DIR):
        return f"'tfvae resume {run_dir}' rebuilds it from the last checkpoint"
    return f"no checkpoint is kept: 'tfvae resume {run_dir} --restart' trains it again"


def load_model_file(path: Path):
    import keras

    import tfvae.model  # noqa: F401  (registers the serializable classes)

    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"{path}: cannot be loaded safely ({first_line})") from None
