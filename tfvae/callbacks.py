"""Training callbacks that keep a run folder consistent through crashes.

Each epoch's state goes into its own folder, written under a temporary name,
flushed to disk and renamed when complete (`tfvae.durable`); the previous one
is kept until the next is, so a kill or a power loss at any moment leaves at
least one whole checkpoint behind.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from tfvae import durable
from tfvae.errors import NonFiniteLossError, RunError

_WEIGHTS = "state.weights.h5"
_META = "meta.json"


class EpochBackup(keras.callbacks.Callback):
    """Saves weights, optimizer state and the epoch count after every epoch.

    Unlike `keras.callbacks.BackupAndRestore`, no file is ever overwritten in
    place: a kill during the write leaves the previous epoch's folder intact.
    """

    def __init__(self, backup_dir: Path, keep: int = 2):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.keep = keep

    def _folders(self) -> list[Path]:
        if not self.backup_dir.is_dir():
            return []
        return sorted(p for p in self.backup_dir.glob("epoch-*") if (p / _META).is_file())

    def _checkpoints(self) -> list[tuple[int, Path]]:
        """`(epoch, folder)` of every checkpoint whose metadata reads, oldest first."""
        found = []
        for folder in self._folders():
            try:
                found.append((int(json.loads((folder / _META).read_text())["epoch"]), folder))
            except (OSError, ValueError, KeyError):
                continue
        return found

    def epochs(self) -> list[int]:
        """The epochs this folder holds a complete checkpoint of, oldest first."""
        return [epoch for epoch, _ in self._checkpoints()]

    def restore(self, model: keras.Model, epoch: int | None = None) -> int:
        """Load the newest readable checkpoint into `model`; return its epoch
        (0 if none). With `epoch`, load exactly that one (0: load nothing)."""
        if epoch == 0:
            return 0
        for found, folder in reversed(self._checkpoints()):
            if epoch is not None and found != epoch:
                continue
            try:
                # Under a distribution strategy the optimizer's slots must be
                # created in its scope, or a resumed mirrored run fails.
                with model.distribute_strategy.scope():
                    if model.optimizer is not None and not model.optimizer.built:
                        model.optimizer.build(model.trainable_variables)
                    model.load_weights(folder / _WEIGHTS)
                return found
            except (OSError, ValueError, KeyError):
                continue  # a damaged checkpoint: fall back to the one before
        if epoch is not None:
            raise RunError(
                f"{self.backup_dir}: no readable checkpoint of epoch {epoch}; "
                "delete the folder to restart this worker from scratch"
            )
        return 0

    def on_epoch_end(self, epoch, logs=None):
        self.save(self.model, epoch + 1)

    def save(self, model: keras.Model, epoch: int) -> None:
        """Write `model`'s state as the checkpoint of `epoch` (1-based)."""
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        _check_space(self.backup_dir, model)
        final = self.backup_dir / f"epoch-{epoch:05d}"
        tmp = self.backup_dir / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with durable.hdf5_errors(tmp / _WEIGHTS):
            model.save_weights(tmp / _WEIGHTS)
        (tmp / _META).write_text(json.dumps({"epoch": epoch}))
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


class StopOnNonFinite(keras.callbacks.Callback):
    """Raises before the epoch ends, so no NaN weights reach a checkpoint."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._step = batch
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(self._epoch, batch)

    def on_epoch_end(self, epoch, logs=None):
        """The batch losses are computed before each update: the epoch's last
        update can still ruin the weights. Check them (and the test loss)
        before the backup that runs after this callback saves them."""
        val_loss = (logs or {}).get("val_loss")
        finite = val_loss is None or math.isfinite(float(val_loss))
        if not finite or not all(
            np.isfinite(np.asarray(w)).all() for w in self.model.trainable_weights
        ):
            raise NonFiniteLossError(epoch, getattr(self, "_step", 0))


class EpochSeconds(keras.callbacks.Callback):
    """Adds the epoch's wall-clock time to the logs as `seconds`."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start


def duration(seconds: float) -> str:
    """A span of time as a person says it: 42 s, 8 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochLog(keras.callbacks.Callback):
    """One line per epoch, as a person would write it: the loss and the
    held-out -ELBO and KL in nats, the epoch's seconds and the time the
    whole run has left. Runs after `EpochSeconds`."""

    # An epoch longer than this also says how far it is, this often.
    PROGRESS_SECONDS = 60.0

    def __init__(self, echo, epochs: int, held_out: str = "test"):
        super().__init__()
        self.echo, self.epochs, self.held_out = echo, epochs, held_out
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = self._said = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        """In a long epoch, a line every `PROGRESS_SECONDS`: the steps done
        and the time the epoch has left, at the pace so far."""
        now = time.perf_counter()
        steps = (self.params or {}).get("steps")
        if now - self._said < self.PROGRESS_SECONDS or not steps:
            return
        self._said = now
        left = (now - self._start) / (batch + 1) * (steps - batch - 1)
        self.echo(
            f"  epoch {self._epoch + 1}: step {batch + 1}/{steps}, "
            f"about {duration(left)} left in this epoch"
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.seconds.append(float(logs.get("seconds", 0.0)))
        # The first epoch of a process also compiles the step: left out once
        # there are others.
        recent = self.seconds[1:][-5:] or self.seconds
        left = (self.epochs - epoch - 1) * float(np.median(recent))
        parts = [f"loss {float(logs.get('loss', math.nan)):.2f}"]
        if "val_elbo" in logs:
            parts.append(
                f"{self.held_out} -ELBO {-float(logs['val_elbo']):.2f} "
                f"(KL {float(logs['val_kl']):.2f})"
            )
        parts.append(f"{self.seconds[-1]:.1f} s")
        if left > 0:
            parts.append(f"about {duration(left)} left")
        self.echo(f"Epoch {epoch + 1}/{self.epochs}: " + ", ".join(parts))


class PictureSummaries(keras.callbacks.Callback):
    """The run's pictures as TensorBoard images every `every` epochs, beside
    Keras' scalars: reconstructions of `images`, samples (seed 0) and, for a
    2-D latent space, the manifold. The same as the PNGs a finished run
    writes, so the last epoch's equal them."""

    def __init__(self, log_dir: Path, images: np.ndarray, every: int = 1):
        super().__init__()
        self.log_dir, self.images, self.every = Path(log_dir), images, every
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        import tensorflow as tf

        from tfvae import plots

        pictures = {
            "reconstructions": plots.reconstructions(self.model, self.images),
            "samples": plots.samples(self.model, 64, seed=0),
        }
        if self.model.latent_dim == 2:
            pictures["manifold"] = plots.manifold(self.model)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default():
            for name, picture in pictures.items():
                pixels = np.asarray(picture)
                pixels = pixels[..., None] if pixels.ndim == 2 else pixels
                tf.summary.image(name, pixels[None], step=epoch + 1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class MetricsCSV(keras.callbacks.Callback):
    """`metrics.csv`, one row per epoch, rewritten atomically.

    Rows of epochs that a resumed run replays are replaced, never repeated.
    """

    TERMS = ("loss", "elbo", "kl", "log_likelihood")

    def __init__(self, path: Path, initial_epoch: int = 0, held_out: str = "test"):
        """`held_out`: what Keras' `val_*` logs score, `test` or `validation`,
        which names their columns."""
        super().__init__()
        self.path = Path(path)
        self.held_out = held_out
        self.columns = (
            "epoch",
            *(f"{split}_{name}" for split in ("train", held_out) for name in self.TERMS),
            "seconds",
        )
        self.rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, newline="") as stream:
                self.rows = [r for r in csv.DictReader(stream) if int(r["epoch"]) <= initial_epoch]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": str(epoch + 1), "seconds": f"{logs.get('seconds', float('nan')):.3f}"}
        for name in self.TERMS:
            row[f"train_{name}"] = f"{float(logs.get(name, float('nan'))):.4f}"
            row[f"{self.held_out}_{name}"] = f"{float(logs.get('val_' + name, float('nan'))):.4f}"
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch + 1] + [row]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        durable.write_atomic(self.path, out.getvalue())
