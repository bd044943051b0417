"""Atomic, durable writes: a reader sees the old file or the new one, never
half of one, and a file that was renamed into place survives a power loss.

Every writer in tfvae goes through here (config.json, metrics.csv, epoch
checkpoints, model.keras, pictures, exports). The recipe is POSIX's: write a
temporary sibling, fsync it, rename it over the target, fsync the folder so
the rename itself is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (the renames into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync(Path(folder) / name)
        fsync(Path(folder))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling file of `path` to write (by any library); on
    success it is flushed and renamed over `path`, on failure removed.

    A failure to write names `path`, never the temporary file, and says
    what to do about a missing or read-only folder."""
    path = Path(path)
    # The suffix stays last: some writers (Keras) insist on it.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    except OSError as err:
        if err.filename not in (str(tmp), tmp, None):
            raise
        raise writing_error(err, path) from None
    finally:
        # On a read-only file system even a missing file's unlink fails (EROFS).
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def writing_error(err: OSError, path: Path) -> OSError:
    """`err`, met while writing `path`, as the user's own error: naming
    `path` and, for a folder that is missing or not writable, the folder."""
    folder = Path(path).parent
    reason = err.strerror or str(err)
    if err.errno == errno.ENOENT and not folder.is_dir():
        reason = f"the folder {folder} does not exist; create it first"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"{reason}: the folder {folder} is not writable"
    return OSError(err.errno, reason, str(path))


@contextlib.contextmanager
def hdf5_errors(path: Path) -> Iterator[None]:
    """Turn HDF5's report of a failed write (h5py's error: several lines of
    HDF5's own, the C errno inside the text) into the OSError a failed write
    of any other file gives: the errno, its message and `path`."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        found = re.search(r"errno = (\d+)", str(err))
        if not found:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` all or nothing."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())


def replace_folder(temp: Path, target: Path, aside: Path) -> None:
    """Put the finished folder `temp` at `target` for good.

    POSIX cannot swap two folders in one step: an existing `target` is moved
    to `aside` first and put back if the second rename fails; `aside` is
    removed once the new folder is in place.
    """
    fsync_tree(temp)
    if not target.exists():
        os.rename(temp, target)
    else:
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        try:
            os.rename(temp, target)
        except BaseException:
            os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    fsync(target.parent)
