"""Shared fixtures; sets TensorFlow's environment before anything imports it."""

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
# The suite keeps both cores busy (two xdist workers, the processes they
# start): one intra-op thread per process stops TensorFlow's pools from
# spinning against each other. Inherited by every subprocess; inter-op
# threads stay as they are, since collective ops block on them.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import gzip  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX (independent of `tfvae.data.idx`)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.tobytes()


def _write_idx(path, array: np.ndarray, gz: bool = False):
    blob = _idx_bytes(array)
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


@pytest.fixture(scope="session")
def idx_bytes():
    """Serialise a uint8 array as IDX bytes (a writer independent of `tfvae.data.idx`)."""
    return _idx_bytes


@pytest.fixture(scope="session")
def write_idx():
    """`write_idx(path, array, gz=False)` writes an IDX file (gzipped if `gz`), returns path."""
    return _write_idx


@pytest.fixture(scope="session")
def mnist():
    """The bundled MNIST `ImageDataset` (loaded and checksummed once per session)."""
    from tfvae.data import load_dataset

    return load_dataset("mnist")


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory):
    """A finished run of the tiny settings (256 images, one epoch), trained in this process."""
    from harness import TINY_SETTINGS, quiet

    import tfvae
    from tfvae.config import TrainConfig

    run = tmp_path_factory.mktemp("finished") / "run"
    tfvae.train(TrainConfig(**TINY_SETTINGS), run, verbose=0, echo=quiet)
    return run


@pytest.fixture
def copy_of_tiny_run(tiny_finished_run, tmp_path):
    """The tiny finished run copied into this test's folder, to damage at will."""
    import shutil

    return shutil.copytree(tiny_finished_run, tmp_path / "run")


@pytest.fixture(scope="session")
def untrained_tiny_vae():
    """A built, untrained VAE (784-16-2): what export and serving tests need."""
    from tfvae.model import VAE

    vae = VAE(latent_dim=2, hidden_units=(16,), seed=0)
    vae.build()
    return vae
