"""The callbacks of a training run: its checkpoints, what a person sees of
it (the log, TensorBoard, `metrics.csv`), and the stop before a non-finite
loss reaches a checkpoint."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfvae import durable, plots
from tfvae.errors import NonFiniteLossError
from tfvae.metrics import METRICS
from tfvae.progress import Progress, bar, duration
from tfvae.runs import Checkpoints


class EpochBackup(keras.callbacks.Callback):
    """Saves every epoch's checkpoint (`runs.Checkpoints`) once it ends."""

    def __init__(self, checkpoints: Checkpoints):
        super().__init__()
        self.checkpoints = checkpoints

    def on_epoch_end(self, epoch, logs=None):
        self.checkpoints.save(self.model, epoch + 1)


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


class EpochLog(keras.callbacks.Callback):
    """What a person sees of training (`tfvae.progress.Progress`): on a
    terminal, a live line for the epoch running (its steps, never past their
    total, the loss so far and the time the epoch has left); then one line
    that stays per epoch: the loss, the -ELBO and KL of the held-out split
    (named for the split they score), the epoch's seconds and the time the
    run has left. Off a terminal, an epoch longer than `PROGRESS_SECONDS`
    also says that often how far it is. Runs after `EpochSeconds`.

    Times left are measured on work that compiles nothing: the first call of
    each epoch is left out of the epoch's pace, and a process's first epoch
    (which compiles the steps) out of the run's."""

    PROGRESS_SECONDS = 60.0

    def __init__(self, progress: Progress, epochs: int, held_out: str = "test"):
        super().__init__()
        self.progress, self.epochs, self.held_out = progress, epochs, held_out
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._said = self.progress.clock()
        self._first: tuple[float, int] | None = None  # (time, steps done) after the first call
        if not self.seconds:
            self.progress.show(
                f"Epoch {epoch + 1}/{self.epochs}: compiling the training step", force=True
            )

    def on_train_batch_end(self, batch, logs=None):
        """`batch` is the last step of the call that ended: under several
        steps per call Keras counts past the epoch's end, so it is capped."""
        now, steps = self.progress.clock(), (self.params or {}).get("steps")
        done = batch + 1 if not steps else min(batch + 1, steps)
        if self._first is None:
            self._first = (now, done)
        first_time, first_done = self._first
        left = None
        if steps and done > first_done:
            left = (now - first_time) / (done - first_done) * (steps - done)
        head = f"Epoch {self._epoch + 1}/{self.epochs}"
        count = f"{bar(done, steps)} {done}/{steps}" if steps else f"step {done}"
        pace = f", about {duration(left)} left" if left is not None else ""
        loss = (logs or {}).get("loss")
        loss = f", loss {float(np.ravel(loss)[0]):.2f}" if loss is not None else ""
        self.progress.show(f"{head} {count}{pace}{loss}", force=bool(steps) and done == steps)
        if not self.progress.live and left is not None:
            if now - self._said >= self.PROGRESS_SECONDS:
                self._said = now
                self.progress.say(
                    f"  epoch {self._epoch + 1}: step {done}/{steps}, "
                    f"about {duration(left)} left in this epoch"
                )

    def on_test_begin(self, logs=None):
        if hasattr(self, "_epoch"):  # the held-out scoring inside `fit`
            self.progress.show(
                f"Epoch {self._epoch + 1}/{self.epochs}: scoring the {self.held_out} images",
                force=True,
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.seconds.append(float(logs.get("seconds", 0.0)))
        parts = [f"loss {float(logs.get('loss', math.nan)):.2f}"]
        if "val_elbo" in logs:
            parts.append(
                f"{self.held_out} -ELBO {-float(logs['val_elbo']):.2f} "
                f"(KL {float(logs['val_kl']):.2f})"
            )
        parts.append(f"{self.seconds[-1]:.1f} s")
        compiled = self.seconds[1:][-5:]  # the first compiled the steps
        left = (self.epochs - epoch - 1) * float(np.median(compiled)) if compiled else 0.0
        if left >= 1:
            parts.append(f"about {duration(left)} left")
        self.progress.say(f"Epoch {epoch + 1}/{self.epochs}: " + ", ".join(parts))


class Summaries(keras.callbacks.Callback):
    """The run's TensorBoard logs (`logs/`), every epoch at its own number
    as the step (1 for the first): the terms in `train/` and in a folder
    named for the held-out split they score (`test/` or `validation/`), the
    learning rate, and every `pictures_every` epochs the run's pictures in
    `pictures/` (`plots.run_pictures`, the same as the finished run's PNGs,
    so the last epoch's equal them)."""

    def __init__(
        self, log_dir: Path, held_out: str, images: np.ndarray, pictures_every: int, labels=None
    ):
        super().__init__()
        self.log_dir, self.held_out = Path(log_dir), held_out
        self.images, self.labels, self.pictures_every = images, labels, pictures_every
        self._writers: dict[str, object] = {}

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        logs, step = logs or {}, epoch + 1
        with self._writer("train").as_default(step=step):
            for name in METRICS:
                if name in logs:
                    tf.summary.scalar(name, float(np.ravel(logs[name])[0]))
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            tf.summary.scalar("learning_rate", float(rate))
        with self._writer(self.held_out).as_default(step=step):
            for name in METRICS:
                if f"val_{name}" in logs:
                    tf.summary.scalar(name, float(np.ravel(logs[f"val_{name}"])[0]))
        if self.pictures_every and step % self.pictures_every == 0:
            self._pictures(step)
        for writer in self._writers.values():
            writer.flush()

    def _pictures(self, step: int) -> None:
        with self._writer("pictures").as_default(step=step):
            for name, picture in plots.run_pictures(self.model, self.images, self.labels).items():
                pixels = np.asarray(picture)
                pixels = pixels[..., None] if pixels.ndim == 2 else pixels
                tf.summary.image(name, pixels[None])

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class MetricsCSV(keras.callbacks.Callback):
    """`metrics.csv`, one row per epoch, rewritten atomically.

    Rows of epochs that a resumed run replays are replaced, never repeated.
    """

    def __init__(self, path: Path, initial_epoch: int = 0, held_out: str = "test"):
        """`held_out`: what Keras' `val_*` logs score, `test` or `validation`,
        which names their columns."""
        super().__init__()
        self.path = Path(path)
        self.held_out = held_out
        self.columns = (
            "epoch",
            *(f"{split}_{name}" for split in ("train", held_out) for name in METRICS),
            "seconds",
        )
        self.rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, newline="") as stream:
                self.rows = [r for r in csv.DictReader(stream) if int(r["epoch"]) <= initial_epoch]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": str(epoch + 1), "seconds": f"{logs.get('seconds', float('nan')):.3f}"}
        for name in METRICS:
            row[f"train_{name}"] = f"{float(logs.get(name, float('nan'))):.4f}"
            row[f"{self.held_out}_{name}"] = f"{float(logs.get('val_' + name, float('nan'))):.4f}"
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch + 1] + [row]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        durable.write_atomic(self.path, out.getvalue())
