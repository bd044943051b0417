"""Training and export interrupted at chosen points, and weights a step ruins.

Kill points are deterministic: the killed process is the real `tfvae train`
(or export) run through a small wrapper that, at the chosen point, sends
itself SIGKILL (no clean-up code runs, exactly as with `kill -9`). The rerun
is the plain `tfvae train ...` command.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import (
    TINY_OPTIONS,
    assert_clean_failure,
    evaluate_json,
    invoke,
    metrics_epochs,
    status,
)
from harness import tfvae as run_tfvae

from tfvae import export
from tfvae.data import image_pipeline
from tfvae.export.publish import remove_stale_temps
from tfvae.model import VAE

ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

# The run the kill tests interrupt: 8 steps per epoch, 2 calls into TF per
# epoch (so a kill "during an epoch" really has steps left), no XLA (the
# compile adds ~5 s per process here and is irrelevant to resuming), no
# per-epoch TensorBoard pictures (the finished run still draws its PNGs).
KILL_EPOCHS = 6
KILL_ARGS = [
    "train",
    "--limit",
    "1000",
    "--hidden",
    "32",
    "--epochs",
    str(KILL_EPOCHS),
    "--steps-per-execution",
    "4",
    "--no-jit-compile",
    "--pictures-every",
    "0",
]


# --- SIGKILL during training ------------------------------------------------------

KILL_WRAPPER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    point, epoch = os.environ["KILL_AT"], int(os.environ.get("KILL_EPOCH", "0"))

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    import shutil
    import tfvae.callbacks as callbacks
    import tfvae.runs as runs
    from tfvae.model import VAE

    if point == "epoch":  # after the first 4 of 8 steps of `epoch`
        batch_end = callbacks.StopOnNonFinite.on_train_batch_end

        def hook(self, batch, logs=None):
            batch_end(self, batch, logs)
            if self._epoch + 1 == epoch:
                die()

        callbacks.StopOnNonFinite.on_train_batch_end = hook
    elif point == "checkpoint-weights":  # half of the weights file written
        save_weights = VAE.save_weights

        def hook(self, filepath, *args, **kwargs):
            save_weights(self, filepath, *args, **kwargs)
            path = Path(filepath)
            if path.parent.name == f".tmp-epoch-{epoch:05d}":
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                die()

        VAE.save_weights = hook
    elif point == "final-save":  # half of model.keras written under its temp name
        save = VAE.save

        def hook(self, filepath, *args, **kwargs):
            save(self, filepath, *args, **kwargs)
            path = Path(filepath)
            if ".tmp-" in path.name:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                die()

        VAE.save = hook
    elif point == "final-state":  # half of the 'finished' config.json in its temp file
        write = runs.write_atomic

        def hook(path, data):
            if path.name == "config.json" and '"finished"' in data:
                tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
                tmp.write_text(data[: len(data) // 2])
                die()
            write(path, data)

        runs.write_atomic = hook
    elif point == "overwrite":  # --overwrite's rmtree of the renamed old run, half done
        rmtree = shutil.rmtree
        target = Path(os.environ["KILL_RUN"]).resolve()

        def hook(path, *args, **kwargs):
            doomed = Path(path).resolve()
            if doomed.parent == target.parent and doomed.name.startswith(f".{target.name}."):
                (doomed / "config.json").unlink()
                (doomed / "metrics.csv").unlink()
                die()
            rmtree(path, *args, **kwargs)

        shutil.rmtree = hook
    else:
        raise SystemExit(f"unknown kill point {point}")

    from tfvae.cli.main import main

    main(sys.argv[1:], prog_name="tfvae")
    """
)


def killed_run(tmp_path, args, point, epoch=0, run=None) -> subprocess.CompletedProcess:
    wrapper = tmp_path / "kill_wrapper.py"
    wrapper.write_text(KILL_WRAPPER)
    env = {**QUIET_ENV, "KILL_AT": point, "KILL_EPOCH": str(epoch), "KILL_RUN": str(run)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, wrapper, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, (
        f"not killed at {point} (exit {result.returncode}): {result.stderr[-2000:]}"
    )
    return result


def train_again(*args) -> subprocess.CompletedProcess:
    """The same `tfvae` command again, as a real process; every call names
    its --run-dir, and none writes in the repository."""
    return run_tfvae(*args, check=False, cwd=tempfile.gettempdir())


# point, epoch of the kill, epoch the rerun resumes after, files that must exist after the kill
KILL_POINTS = [
    pytest.param("epoch", 3, 2, [], id="during-epoch-3"),
    pytest.param("checkpoint-weights", 4, 3, ["backup/.tmp-epoch-00004"], id="checkpoint-write"),
    pytest.param("final-save", 0, 6, [], id="final-model-save"),
    pytest.param("final-state", 0, 6, ["model.keras"], id="final-config-write"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "epoch", "resume_after", "present"), KILL_POINTS)
def test_sigkill_then_same_command_finishes(tmp_path, point, epoch, resume_after, present):
    """Killed at `point`, the run folder is readable (evaluate refuses it as
    unfinished, exit 1); the same command then resumes after the last whole
    checkpoint, every epoch appears once in metrics.csv, and the model loads."""
    run = tmp_path / "run"
    args = [*KILL_ARGS, "--run-dir", run]
    killed_run(tmp_path, args, point, epoch)

    assert status(run) == "running"
    for name in present:
        assert (run / name).exists(), name
    checkpoints = sorted(p.name for p in (run / "backup").iterdir() if not p.name.startswith("."))
    assert checkpoints[-1] == f"epoch-{resume_after:05d}", checkpoints
    for folder in (run / "backup").iterdir():  # only HDF5 weights and JSON: no pickle
        assert {p.name for p in folder.iterdir()} <= {"state.weights.h5", "meta.json"}
    refused = invoke("evaluate", str(run))
    assert_clean_failure(refused, "has not finished")

    rerun = train_again(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming after epoch {resume_after} of {KILL_EPOCHS}" in rerun.stdout
    assert f"Run folder: {run}" in rerun.stdout
    assert metrics_epochs(run) == list(range(1, KILL_EPOCHS + 1))
    assert status(run) == "finished"
    assert not (run / "backup").exists()
    scores = evaluate_json(run)
    assert scores["n_images"] == 1000 and math.isfinite(scores["elbo"])


@pytest.mark.slow
def test_sigkill_during_overwrite_then_same_command_finishes(copy_of_tiny_run, tmp_path):
    """--overwrite renames the old run aside, then deletes it; killed half-way
    through the deletion (config.json already gone, other files left), the run
    folder is simply absent, and rerunning the same command finishes the new
    run and removes the half-deleted leftover."""
    args = [*KILL_ARGS, "--run-dir", copy_of_tiny_run, "--overwrite"]
    killed_run(tmp_path, args, "overwrite", run=copy_of_tiny_run)
    leftovers = list(copy_of_tiny_run.parent.glob(f".{copy_of_tiny_run.name}.*"))
    assert not copy_of_tiny_run.exists() and leftovers
    rerun = train_again(*args)
    assert "Traceback" not in rerun.stderr
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert metrics_epochs(copy_of_tiny_run) == list(range(1, KILL_EPOCHS + 1))
    assert not list(copy_of_tiny_run.parent.glob(f".{copy_of_tiny_run.name}.*"))


def test_half_written_config_is_refused_and_overwrite_recovers(copy_of_tiny_run):
    """config.json cut in half (a non-atomic writer killed mid-write): evaluate
    and train refuse the folder with one line naming the file (exit 1);
    `train --overwrite` replaces it with a finished run."""
    config = copy_of_tiny_run / "config.json"
    config.write_bytes(config.read_bytes()[: config.stat().st_size // 2])
    for args in (["evaluate", str(copy_of_tiny_run)], ["sample", str(copy_of_tiny_run)]):
        assert_clean_failure(invoke(*args), str(config), "damaged")
    train_args = ["train", *TINY_OPTIONS, "--run-dir", str(copy_of_tiny_run)]
    assert_clean_failure(invoke(*train_args), str(config), "damaged")
    assert config.stat().st_size > 0  # refused, not touched

    result = invoke(*train_args, "--overwrite")
    assert result.exit_code == 0, (result.output, result.exception)
    assert status(copy_of_tiny_run) == "finished" and metrics_epochs(copy_of_tiny_run) == [1]
    assert math.isfinite(evaluate_json(copy_of_tiny_run)["elbo"])


# --- NaN and divergence ---------------------------------------------------------


def test_weights_ruined_by_an_epochs_last_step_are_not_checkpointed(tmp_path):
    """Epoch 1 is normal. Epoch 2's last batch holds absurd but finite pixels
    (1e12): its loss is finite, but the update it makes leaves weights that
    give NaN on ordinary images. Training must stop naming an epoch and step,
    and the newest checkpoint must still give finite ELBOs."""
    from tfvae.callbacks import EpochBackup, StopOnNonFinite
    from tfvae.errors import NonFiniteLossError
    from tfvae.runs import Checkpoints

    rng = np.random.default_rng(0)
    normal = (rng.random((32, 8, 8, 1)) < 0.4).astype(np.float32)
    poisoned = normal.copy()
    poisoned[24:] *= 1e12

    def model(seed):
        vae = VAE(image_shape=(8, 8, 1), latent_dim=2, hidden_units=(16,), seed=seed)
        vae.compile(optimizer=keras.optimizers.SGD(0.01))
        return vae

    vae, backup = model(0), Checkpoints(tmp_path)
    fit = dict(verbose=0, shuffle=False, validation_data=image_pipeline(normal, 8))
    vae.fit(
        image_pipeline(normal, 8),
        epochs=1,
        callbacks=[StopOnNonFinite(), EpochBackup(backup)],
        **fit,
    )
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, step \d+"):
        vae.fit(
            image_pipeline(poisoned, 8),
            initial_epoch=1,
            epochs=4,
            callbacks=[StopOnNonFinite(), EpochBackup(backup)],
            **fit,
        )
    fresh = model(1)
    assert backup.restore(fresh) >= 1
    elbo = fresh.elbo_terms(tf.constant(normal), seed=(0, 0))["elbo"].numpy()
    assert np.isfinite(elbo).all(), "the kept checkpoint gives NaN on ordinary images"


# --- export killed at chosen points ---------------------------------------------------

EXPORT_KILL = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    import tensorflow as tf
    from tfvae import durable, export
    from tfvae.model import VAE

    point, out = sys.argv[1], sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    model = VAE(latent_dim=2, hidden_units=(16,), seed=0)
    model.build()
    # One complete export first: version 1 (or tflite/) exists before the kill.
    # (It also makes TensorFlow resolve its lazy modules, which would otherwise
    # undo the patch of tf.saved_model.save below.)
    if point == "tflite-swap":
        export.export_tflite(model, out, "vae")
    else:
        export.export_savedmodel(model, out, "vae")
    if point == "before-pb":  # variables written, saved_model.pb not yet
        save = tf.saved_model.save

        def hook(obj, export_dir, *args, **kwargs):
            save(obj, export_dir, *args, **kwargs)
            Path(export_dir, "saved_model.pb").unlink()
            die()

        tf.saved_model.save = hook
    elif point == "before-rename":  # complete in its temp folder
        durable.fsync_tree = lambda root: die()
    elif point in ("after-rename", "tflite-swap"):
        rename = os.rename

        def hook(src, dst):
            rename(src, dst)
            if point == "after-rename" and Path(dst).name.isdigit():
                die()
            if point == "tflite-swap" and Path(src).name == "tflite":
                die()  # old folder moved aside, new one not yet in place

        os.rename = hook
    if point == "tflite-swap":
        export.export_tflite(model, out, "vae")
    else:
        export.export_savedmodel(model, out, "vae")
    raise SystemExit("the kill point was never reached")
    """
)


def kill_export(tmp_path, point, out):
    script = tmp_path / "export_kill.py"
    script.write_text(EXPORT_KILL)
    env = {**QUIET_ENV, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, script, point, out],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def assert_every_version_serves(base: Path) -> list[int]:
    """Every numeric folder (what TF Serving loads) is a complete, loadable SavedModel."""
    versions = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())
    for version in versions:
        loaded = tf.saved_model.load(str(base / str(version)))
        assert set(export.SIGNATURES) <= set(loaded.signatures)
    return versions


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before-pb", "before-rename", "after-rename"])
def test_killed_savedmodel_export_never_publishes_a_partial_version(
    untrained_tiny_vae, tmp_path, point
):
    out = tmp_path / "exports"
    kill_export(tmp_path, point, out)  # after exporting version 1 completely
    base = out / "vae"
    versions = assert_every_version_serves(base)
    assert versions == ([1, 2] if point == "after-rename" else [1])
    after = export.export_savedmodel(untrained_tiny_vae, out, "vae")
    assert after.name == str(versions[-1] + 1)
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []
    assert assert_every_version_serves(base) == [*versions, versions[-1] + 1]


@pytest.mark.slow
def test_killed_tflite_replacement_keeps_a_tflite_folder(untrained_tiny_vae, tmp_path):
    out = tmp_path / "exports"
    kill_export(tmp_path, "tflite-swap", out)  # after a first complete tflite export
    # POSIX has no atomic swap of two folders: until the next export, the old
    # folder waits under its '.old-tflite-...' name; that export puts it back.
    remove_stale_temps(out / "vae")
    assert (out / "vae" / "tflite" / "manifest.json").is_file()
