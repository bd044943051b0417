"""Publishing exports where servers watch: names, versions, temporary
folders, and the rename that makes a finished export appear at once.

Every export is written into a dot-named temporary folder beside its target
and renamed into place only when complete and flushed to disk, so a server
watching `out_dir/<name>` (TF Serving ignores non-numeric names) never sees
half an export, even if the exporting process is killed. The temporary
folders of killed exports are cleaned up by the next export on the host.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import tensorflow as tf

from tfvae import durable
from tfvae.errors import ExportError

if TYPE_CHECKING:  # the model module imports TFP; this module needs it only for types
    from tfvae.model import VAE

_TEMP = re.compile(
    r"^\.(?:tmp|old)-(?P<what>\d+|tflite|onnx|savedmodel)-(?P<host>.+)-(?P<pid>\d+)$"
)


def check_model(model: VAE) -> None:
    coders = (getattr(model, "encoder", None), getattr(model, "decoder", None))
    if any(c is None for c in coders) or not hasattr(model, "image_shape"):
        raise ExportError(f"expected a tfvae VAE, got {type(model).__name__}")
    if not (model.built and all(c.body.built and c.body.weights for c in coders)):
        raise ExportError("model is not built: call model.build() (or load a run) before export")


def check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ExportError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.' (not first)"
        )


def model_dir(out_dir: str | os.PathLike, name: str) -> Path:
    """`out_dir/<name>`, created if missing; refuses paths that are files or unwritable."""
    check_name(name)
    base = Path(out_dir) / name
    for folder in (Path(out_dir), base):
        if folder.exists() and not folder.is_dir():
            raise ExportError(f"{folder} exists and is not a folder; choose another --out/--name")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create {base}: {err.strerror or err}") from None
    if not os.access(base, os.W_OK | os.X_OK):
        raise ExportError(f"{base} is not writable; choose another --out")
    return base


def _versions(base: Path) -> list[int]:
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir())


def next_version(out_dir: str | os.PathLike, name: str) -> int:
    """The version a new export gets: one above the highest, so TF Serving serves it."""
    base = Path(out_dir) / name
    existing = _versions(base) if base.is_dir() else []
    return existing[-1] + 1 if existing else 1


def _temp_name(what: str | int, kind: str = "tmp") -> str:
    return f".{kind}-{what}-{socket.gethostname()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(base: Path) -> None:
    """Clean up after killed exports of this host (their pid is gone): delete
    their temporary folders, but put back a folder that was moved aside for
    replacement when the kill came before its successor was renamed in."""
    host = socket.gethostname()
    for path in sorted(base.iterdir()):
        match = _TEMP.match(path.name)
        if not match or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        original = base / match["what"]
        if path.name.startswith(".old-") and not original.exists():
            os.rename(path, original)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def temp_folder(base: Path, what: str | int) -> Iterator[Path]:
    """A fresh dot-named folder in `base`, removed unless it was renamed away."""
    temp = base / _temp_name(what)
    shutil.rmtree(temp, ignore_errors=True)
    try:
        temp.mkdir()
    except OSError as err:
        raise ExportError(f"cannot write in {base}: {err.strerror or err}") from None
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def write_errors(target: Path) -> Iterator[None]:
    """Turn file-system failures while writing into one-line `ExportError`s."""
    try:
        yield
    except OSError as err:
        raise ExportError(f"cannot write {target}: {err.strerror or err}") from None
    except (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError) as err:
        raise ExportError(f"cannot write {target}: {err.message}") from None


def publish_folder(temp: Path, target: Path) -> None:
    """Swap the finished `temp` in for `target` (see `durable.replace_folder`)."""
    durable.replace_folder(temp, target, target.with_name(_temp_name(target.name, kind="old")))
