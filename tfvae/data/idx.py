"""Reader for the IDX format of MNIST and its relatives (gzipped or raw).

Header: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, then one big-endian uint32 per dimension. Every size field is
checked against the bytes really present before anything is allocated, so a
corrupt or hostile file gives an `IdxError`, never a crash or silent garbage.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

_UBYTE = 0x08
# A sane ceiling for one IDX payload (4 GiB); real sets are far below it.
_MAX_PAYLOAD = 1 << 32


class IdxError(ValueError):
    """A file that is not a well-formed IDX file of the expected kind."""


def _open(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_exact(stream, n: int, path: Path, what: str) -> bytes:
    """Read exactly `n` bytes; the stream only ever allocates what it holds."""
    chunks, left = [], n
    while left:
        chunk = stream.read(min(left, 1 << 24))
        if not chunk:
            raise IdxError(
                f"{path}: truncated {what} ({n - left} of {n} bytes); "
                "download or copy the file again"
            )
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Return the uint8 array stored in an IDX file, shape from its header.

    `ndim` (3 for images, 1 for labels) is checked when given.
    """
    path = Path(path)
    if not path.is_file():
        raise IdxError(f"{path}: no such file")
    try:
        with _open(path) as stream:
            head = _read_exact(stream, 4, path, "header")
            if head[0] != 0 or head[1] != 0:
                raise IdxError(
                    f"{path}: wrong IDX magic number 0x{head.hex()}; "
                    "this is not an MNIST-format (IDX) file"
                )
            if head[2] != _UBYTE:
                raise IdxError(
                    f"{path}: IDX type code 0x{head[2]:02x} is not supported "
                    "(only unsigned bytes, 0x08)"
                )
            if head[3] == 0 or (ndim is not None and head[3] != ndim):
                want = f"{ndim}" if ndim is not None else "at least 1"
                raise IdxError(
                    f"{path}: header says {head[3]} dimensions, expected {want} "
                    "(are the image and label files swapped?)"
                )
            dims = np.frombuffer(
                _read_exact(stream, 4 * head[3], path, "header"), dtype=">u4"
            ).astype(np.int64)
            size = int(np.prod(dims, dtype=np.float64))
            if size > _MAX_PAYLOAD or size != int(np.prod(dims)):
                raise IdxError(f"{path}: header sizes {dims.tolist()} are implausible")
            if not _payload_fits(path, stream, size):
                raise IdxError(
                    f"{path}: header promises {size} bytes of data but the file "
                    "is shorter; download or copy it again"
                )
            payload = _read_exact(stream, size, path, "data")
            if stream.read(1):
                raise IdxError(
                    f"{path}: extra bytes after the {size} the header promises; the file is corrupt"
                )
    except (OSError, EOFError, zlib.error) as err:
        raise IdxError(f"{path}: cannot be read ({err}); download or copy it again") from None
    return np.frombuffer(payload, dtype=np.uint8).reshape(tuple(dims))


def _payload_fits(path: Path, stream, size: int) -> bool:
    """For a raw file, check the payload size against the file size up front.

    A gzipped stream cannot be sized without decompressing it; `_read_exact`
    then bounds memory by the data actually present.
    """
    if isinstance(stream, gzip.GzipFile):
        return True
    return path.stat().st_size - stream.tell() >= size
