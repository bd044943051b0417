"""A full disk: real where this test may mount a 1 MiB tmpfs (root); the
portable variant raises ENOSPC inside the real export code path.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf
from harness import (
    TINY_OPTIONS,
    assert_clean_failure,
    invoke,
    metrics_epochs,
    status,
)

from tfvae import export
from tfvae.export import ExportError

# --- disk full --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (needs root); `fill(free_bytes)` leaves that much free."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    class Disk:
        path = mount
        filler = mount / ".filler"

        def fill(self, free_bytes: int):
            self.filler.unlink(missing_ok=True)
            stat = os.statvfs(mount)
            fd = os.open(self.filler, os.O_CREAT | os.O_WRONLY)
            try:
                os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize - free_bytes)
            finally:
                os.close(fd)

        def resize(self, size: str):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield Disk()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".filler")


# Free space left on the 1 MiB disk: the tiny model's SavedModel is ~535 kB
# (variables ~210 kB, saved_model.pb ~323 kB), so 32 kB fails in the
# variables (TF's SaveV2 op) and 240 kB in saved_model.pb.
@pytest.mark.parametrize("free_kb", [32, 240])
@pytest.mark.parametrize("kind", ["savedmodel", "tflite"])
def test_export_on_a_full_disk_says_so_and_leaves_nothing(
    small_disk, untrained_tiny_vae, kind, free_kb
):
    small_disk.fill(free_kb * 1024)
    writer = {"savedmodel": export.export_savedmodel, "tflite": export.export_tflite}[kind]
    with pytest.raises(ExportError, match="No space left on device") as info:
        writer(untrained_tiny_vae, small_disk.path, "vae")
    assert "\n" not in str(info.value)
    assert leftovers(small_disk.path / "vae") == []
    small_disk.filler.unlink()
    assert writer(untrained_tiny_vae, small_disk.path, "vae").is_dir()  # with room, it works


def test_full_disk_keeps_the_previous_tflite_export(small_disk, untrained_tiny_vae):
    first = export.export_tflite(untrained_tiny_vae, small_disk.path, "vae", quantize="none")
    manifest = (first / "manifest.json").read_text()
    small_disk.fill(16 * 1024)
    with pytest.raises(ExportError, match="No space left on device"):
        export.export_tflite(untrained_tiny_vae, small_disk.path, "vae", quantize="float16")
    assert leftovers(small_disk.path / "vae") == ["tflite"]
    assert (first / "manifest.json").read_text() == manifest


def test_cli_export_on_a_full_disk_is_one_line(small_disk, tiny_finished_run):
    small_disk.fill(32 * 1024)
    out = small_disk.path / "exports"
    result = invoke("export", str(tiny_finished_run), "--out", str(out))
    assert_clean_failure(result, "No space left on device")
    assert leftovers(out / "run") == []


def test_export_enospc_in_the_write_path_is_cleaned_up(untrained_tiny_vae, tmp_path, monkeypatch):
    """Portable variant (no mount): the SavedModel writer fails with ENOSPC
    after writing its files, inside `export_savedmodel`'s real code path."""
    save = tf.saved_model.save

    def full_disk(*args, **kwargs):
        save(*args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    with pytest.raises(ExportError, match="No space left on device"):
        export.export_savedmodel(untrained_tiny_vae, tmp_path, "vae")
    with pytest.raises(ExportError, match="No space left on device"):
        export.export_tflite(untrained_tiny_vae, tmp_path, "vae")
    assert leftovers(tmp_path / "vae") == []


def test_training_on_a_full_disk_is_one_line_and_leaves_no_partial_file(small_disk):
    run = small_disk.path / "run"
    result = invoke("train", *TINY_OPTIONS, "--epochs", "2", "--run-dir", str(run))
    partial = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert_clean_failure(result, "No space left on device")
    assert partial == []


def test_training_after_a_full_disk_resumes_when_space_is_back(small_disk):
    run = small_disk.path / "run"
    args = ["train", *TINY_OPTIONS, "--epochs", "2", "--run-dir", str(run)]
    failed = invoke(*args)
    assert failed.exit_code == 1
    assert status(run) == "running"
    small_disk.resize("16m")
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert status(run) == "finished" and metrics_epochs(run) == [1, 2]


def test_hdf5_write_failures_read_as_the_os_error_they_are(tmp_path):
    """h5py reports a failed write as several lines of HDF5's own with the C
    errno inside: it becomes OSError(ENOSPC, 'No space left on device', path);
    other errors pass unchanged."""
    import errno

    from tfvae import durable

    report = (
        "Can't close file (file write failed: time = Sat Nov 28 21:24:22 2026\n"
        ", filename = 'x.h5', file descriptor = 19, errno = 28, error message = "
        "'No space left on device', buf = 0x1, total write size = 3136)"
    )
    with pytest.raises(OSError) as raised, durable.hdf5_errors(tmp_path / "x.h5"):
        raise OSError(report)
    assert (raised.value.errno, raised.value.strerror) == (errno.ENOSPC, "No space left on device")
    assert raised.value.filename == str(tmp_path / "x.h5")
    with pytest.raises(RuntimeError, match="^unrelated$"), durable.hdf5_errors(tmp_path / "x.h5"):
        raise RuntimeError("unrelated")
