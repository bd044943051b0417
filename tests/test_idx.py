"""The IDX reader: exact round trips and an `IdxError` naming the file for every defect."""

import gzip
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfvae.data.idx import IdxError, read_idx


def _oracle(content: bytes, ndim=None):
    """A second, plain-Python IDX parser: the array, or None when the bytes are invalid."""
    if len(content) < 4 or content[0] or content[1] or content[2] != 0x08 or not content[3]:
        return None
    n = content[3]
    if ndim is not None and n != ndim:
        return None
    start = 4 + 4 * n
    if len(content) < start:
        return None
    dims = struct.unpack(f">{n}I", content[4:start])
    size = int(np.prod(dims, dtype=object))
    if size > 1 << 32 or len(content) != start + size:
        return None
    return np.frombuffer(content[start:], dtype=np.uint8).reshape(dims)


def _file_content(blob: bytes):
    """What the reader should see inside `blob`: gunzipped if gzipped, None if undecodable."""
    if blob[:2] != b"\x1f\x8b":
        return blob
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error):
        return None


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 3, 4, 5), (0, 28, 28)])
def test_round_trip(tmp_path, write_idx, gz, shape):
    """Arrays of any rank (and empty ones) come back bit-exact with their shape, as uint8."""
    array = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / "a-idx", array, gz=gz)
    out = read_idx(path, ndim=len(shape))
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, array)
    np.testing.assert_array_equal(read_idx(str(path)), array)  # str path, no ndim check


def _header(ndim_byte: int, dims, type_code=0x08, magic=b"\x00\x00") -> bytes:
    return magic + bytes([type_code, ndim_byte]) + struct.pack(f">{len(dims)}I", *dims)


LABELS = _header(1, [5]) + bytes(range(5))

BAD_CONTENT = {
    "wrong magic": (b"\x08\x03" + LABELS[2:], "magic"),
    "wrong magic 2nd byte": (b"\x00\x01" + LABELS[2:], "magic"),
    "float type code": (_header(1, [5], type_code=0x0D) + bytes(20), "type code 0x0d"),
    "zero dimensions": (_header(0, []) + bytes(3), "0 dimensions"),
    "empty file": (b"", "truncated header"),
    "truncated magic": (b"\x00\x00", "truncated header"),
    "truncated dims": (_header(3, [2, 2]), "truncated header"),
    "extra trailing bytes": (LABELS + b"\x00", "extra bytes"),
    "huge dims 2^31 x 2^31": (_header(2, [1 << 31, 1 << 31]) + bytes(8), "implausible"),
    "huge dims 3 x 2^32-1": (_header(3, [2**32 - 1] * 3) + bytes(8), "implausible"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(BAD_CONTENT))
def test_bad_content_raises_with_path(tmp_path, gz, case):
    """Each malformed header/payload gives an IdxError whose message names the file and defect."""
    content, fragment = BAD_CONTENT[case]
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated_payload(tmp_path, gz):
    """A payload shorter than the header promises is an IdxError (raw: size check, gz: EOF)."""
    path = tmp_path / "short-idx"
    content = LABELS[:-2]
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(IdxError, match="shorter" if not gz else "truncated data") as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_wrong_ndim(tmp_path, write_idx, gz):
    """A label file (1 dim) read as images (ndim=3) is refused, hinting at swapped files."""
    path = write_idx(tmp_path / "labels-idx1", np.arange(6, dtype=np.uint8), gz=gz)
    with pytest.raises(IdxError, match="1 dimensions, expected 3") as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value) and "swapped" in str(err.value)
    assert read_idx(path, ndim=1).tolist() == list(range(6))


GOOD_GZ = gzip.compress(LABELS)

BAD_GZ = {
    "garbage after gzip magic": b"\x1f\x8b" + b"\xde\xad\xbe\xef" * 8,
    "gzip magic only": b"\x1f\x8b",
    "cut in half": GOOD_GZ[: len(GOOD_GZ) // 2],
    "bad crc": GOOD_GZ[:-8] + bytes([GOOD_GZ[-8] ^ 0xFF]) + GOOD_GZ[-7:],
    "garbage after member": GOOD_GZ + b"junk",
}


@pytest.mark.parametrize("case", list(BAD_GZ))
def test_corrupt_gzip(tmp_path, case):
    """Corrupt gzip streams (bad deflate data, truncation, CRC, trailing junk) are IdxErrors."""
    path = tmp_path / "corrupt-idx1-ubyte.gz"
    path.write_bytes(BAD_GZ[case])
    with pytest.raises(IdxError, match="cannot be read") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_missing_file_and_directory(tmp_path):
    """A path that is not a regular file is an IdxError naming it (not FileNotFoundError)."""
    for path in (tmp_path / "absent-idx3-ubyte.gz", tmp_path):
        with pytest.raises(IdxError, match="no such file") as err:
            read_idx(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "dims,gz,max_peak",
    [
        ([1 << 31, 1 << 31], False, 1 << 20),
        ([1 << 31, 1 << 31], True, 1 << 20),
        ([1 << 16, 1 << 16], False, 1 << 20),
        ([1 << 16, 1 << 16], True, 32 << 20),
    ],
    ids=["2^62 raw", "2^62 gz", "4GiB-promise raw", "4GiB-promise gz"],
)
def test_huge_header_fails_without_allocating(tmp_path, dims, gz, max_peak):
    """Headers promising 2^62 or 2^32 bytes over a 10-byte payload fail with small
    peak memory: 2^62 is refused from the header alone (< 1 MiB); the 4 GiB promise passes the
    ceiling, so raw files are refused by the file-size check (< 1 MiB) and gz files by reading
    in bounded chunks (< 32 MiB, one 16 MiB chunk buffer; never the promised 4 GiB).
    """
    content = _header(len(dims), dims) + bytes(10)
    path = tmp_path / "huge-idx"
    path.write_bytes(gzip.compress(content) if gz else content)
    tracemalloc.start()
    try:
        with pytest.raises(IdxError) as err:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < max_peak
    assert str(path) in str(err.value)


def _check_against_oracle(path, blob, ndim):
    path.write_bytes(blob)
    content = _file_content(blob)
    expected = None if content is None else _oracle(content, ndim)
    try:
        out = read_idx(path, ndim=ndim)
    except IdxError as err:
        assert str(path) in str(err)
        assert expected is None, "valid file rejected"
        return
    assert expected is not None, "invalid file accepted"
    assert out.dtype == np.uint8 and out.shape == expected.shape
    assert out.size == int(np.prod(expected.shape))
    np.testing.assert_array_equal(out, expected)


FUZZ = settings(max_examples=200, deadline=None, database=None)  # no .hypothesis/ dir


@FUZZ
@given(
    prefix=st.sampled_from([b"", b"\x00\x00\x08", b"\x00\x00\x08\x01", b"\x1f\x8b\x08\x00"]),
    tail=st.binary(max_size=64),
    gz=st.booleans(),
    ndim=st.sampled_from([None, 1, 2, 3]),
)
def test_fuzz_random_bytes(tmp_path_factory, prefix, tail, gz, ndim):
    """Random bytes (raw, or validly gzipped) either parse exactly as a 2nd parser says or
    raise IdxError: never another exception."""
    blob = prefix + tail
    path = tmp_path_factory.getbasetemp() / "fuzz-random-idx"
    _check_against_oracle(path, gzip.compress(blob) if gz else blob, ndim)


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("dims"), st.integers(0, 10_000), st.integers(0, 2**32 - 1)),
)


def _mutate(blob: bytes, kind: str, pos: int, value: int) -> bytes:
    if kind == "dims":  # overwrite one header dimension with an arbitrary uint32
        field = 4 + 4 * (pos % max(1, blob[3] if len(blob) > 3 else 1))
        return blob[:field] + struct.pack(">I", value) + blob[field + 4 :]
    pos = pos % (len(blob) + 1)
    if kind == "flip":
        return (
            blob if pos == len(blob) else blob[:pos] + bytes([blob[pos] ^ value]) + blob[pos + 1 :]
        )
    if kind == "cut":
        return blob[:pos]
    return blob[:pos] + bytes([value]) + blob[pos:]


@FUZZ
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    mutations=st.lists(_mutation, max_size=3),
    gz=st.booleans(),
    after_gzip=st.booleans(),
    ndim=st.sampled_from([None, 1, 2, 3]),
)
def test_fuzz_mutated_files(tmp_path_factory, idx_bytes, shape, mutations, gz, after_gzip, ndim):
    """Valid IDX files with random header/payload (or gzip-stream) mutations: the reader
    agrees with the 2nd parser or raises IdxError; successes are uint8 of the header's size."""
    blob = idx_bytes(np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape))
    gz_mutated = gz and after_gzip
    if gz and not after_gzip:
        for mutation in mutations:
            blob = _mutate(blob, *mutation)
        blob = gzip.compress(blob)
    elif gz_mutated:
        blob = gzip.compress(blob)
        for kind, pos, value in mutations:
            blob = _mutate(blob, "flip" if kind == "dims" else kind, pos, value % 256 or 1)
    else:
        for mutation in mutations:
            blob = _mutate(blob, *mutation)
    path = tmp_path_factory.getbasetemp() / "fuzz-mutated-idx"
    _check_against_oracle(path, blob, ndim)
