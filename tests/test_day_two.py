"""After the first run: one process per run folder, `tfvae resume` (and
extending a finished run), machine-readable and human-readable output."""

import dataclasses
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfvae.callbacks import EpochLog, duration
from tfvae.config import TrainConfig
from tfvae.errors import RunError
from tfvae.runs import lock_folder

TFVAE = [sys.executable, "-m", "tfvae"]
# No XLA: its compile adds seconds to every process and is not what these tests check.
TINY = ["--limit", "1000", "--hidden", "32", "--batch-size", "100", "--no-jit-compile"]
# As users run it: the command line then silences TensorFlow's start-up lines.
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def tfvae(*args, check=True) -> subprocess.CompletedProcess:
    command = [*TFVAE, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _start_training(run: Path, epochs: int) -> subprocess.Popen:
    """A real `tfvae train` in the background, returned once it holds its lock
    and has written its first checkpoint."""
    args = [*TFVAE, "train", *TINY, "--epochs", str(epochs), "--run-dir", str(run)]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.time() + 120
    while not (run / "backup" / "epoch-00001").is_dir():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    return process


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_a_second_process_on_a_training_folder_is_refused_and_the_first_is_unaffected(tmp_path):
    """Both the repeated command and `tfvae resume` are refused with the
    holder's pid and host, before any data is loaded; the first run then
    finishes every epoch exactly once and removes its lock. The first is
    paused (SIGSTOP) meanwhile, so it cannot finish before the others start."""
    run = tmp_path / "run"
    first = _start_training(run, epochs=5)
    os.kill(first.pid, signal.SIGSTOP)
    seconds = [
        ["train", *TINY, "--epochs", "5", "--run-dir", run],
        ["resume", run],
        ["train", *TINY, "--epochs", "5", "--run-dir", run, "--overwrite"],
    ]
    refused = [
        subprocess.Popen(
            [*TFVAE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
        )
        for args in seconds
    ]
    for process in refused:
        out, err = process.communicate(timeout=300)
        result = subprocess.CompletedProcess(
            process.args, process.returncode, out.decode(), err.decode()
        )
        line = _one_error_line(result)
        assert f"pid {first.pid} on {socket.gethostname()}" in line and str(run) in line
    os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.communicate()
    epochs = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, 6))
    assert json.loads((run / "config.json").read_text())["status"] == "finished"
    assert not (tmp_path / ".run.lock").exists()


def test_a_lock_left_by_a_killed_process_never_blocks_and_resume_needs_no_options(tmp_path):
    """SIGKILL leaves the lock file but not the lock; `tfvae resume RUN`
    continues from the last checkpoint with the settings of config.json."""
    run = tmp_path / "run"
    killed = _start_training(run, epochs=6)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (tmp_path / ".run.lock").exists()
    resumed = tfvae("resume", run, "--json")
    assert "Resuming after epoch" in resumed.stdout
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 6 and summary["initial_epoch"] >= 1
    assert summary["run_dir"] == str(run) and summary["test"]["elbo"] < 0
    state = json.loads((run / "config.json").read_text())
    assert state["config"]["hidden_units"] == [32] and state["status"] == "finished"
    assert not (tmp_path / ".run.lock").exists()


def test_the_lock_is_per_open_file_and_names_its_holder(tmp_path):
    """flock conflicts between two opens even in one process: the second is
    refused with this process's pid; once released the folder locks again."""
    folder = tmp_path / "run"
    with lock_folder(folder):
        with pytest.raises(RunError, match=f"pid {os.getpid()} on "), lock_folder(folder):
            pass
    with lock_folder(folder):
        pass
    assert not (tmp_path / ".run.lock").exists()


def test_extending_a_finished_run_keeps_adams_state_and_stretches_the_schedule(tmp_path):
    """2 epochs of a cosine from 1e-3, extended to 4: the schedule stretched
    to 4 epochs has 1e-3 * (1 + cos(pi / 2)) / 2 = 5e-4 at the step reached,
    and Adam's step count runs on from the finished run's."""
    from tfvae.runs import load_run
    from tfvae.training import resume, train

    config = TrainConfig(
        hidden_units=(32,), limit=1000, batch_size=100, epochs=2, learning_rate=1e-3
    )
    run = tmp_path / "run"
    train(config, run, echo=lambda _: None, verbose=0)
    before = (run / "metrics.csv").read_text().splitlines()
    lines: list[str] = []
    resume(run, epochs=4, echo=lines.append, verbose=0)
    said = next(line for line in lines if line.startswith("Resuming after epoch 2 of 4"))
    rate = float(re.search(r"learning rate ([0-9.e-]+)", said).group(1))
    assert rate == pytest.approx(1e-3 * (1 + math.cos(math.pi / 2)) / 2, rel=1e-3)
    model = load_run(run).model
    assert int(model.optimizer.iterations.numpy()) == 4 * 10
    after = (run / "metrics.csv").read_text().splitlines()
    assert after[:3] == before[:3] and len(after) == 5
    state = json.loads((run / "config.json").read_text())
    assert [start["epochs"] for start in state["provenance"]] == [2, 4]
    assert state["config"]["epochs"] == 4 and state["status"] == "finished"
    assert not (run / "backup").exists()


def test_resume_refuses_what_it_cannot_do(tmp_path):
    """A finished run without --epochs, too few epochs, and settings that
    change what the run computes."""
    from tfvae.training import resume, train

    run = tmp_path / "run"
    train(TrainConfig(hidden_units=(8,), limit=200, epochs=1), run, echo=lambda _: None, verbose=0)
    with pytest.raises(RunError, match="finished its 1 epochs; give --epochs N"):
        resume(run)
    with pytest.raises(RunError, match="--epochs 1 must be more than the 1 epochs"):
        resume(run, epochs=1)
    with pytest.raises(RunError, match="resume can change only"):
        resume(run, epochs=2, batch_size=5)
    with pytest.raises(RunError, match="no such run folder"):
        resume(tmp_path / "missing")


def test_train_and_export_json_and_a_log_a_person_reads(tmp_path):
    """On a pipe: one line per epoch with nats to two decimals, seconds and
    the time left, no progress bar; --json ends stdout with one object whose
    paths exist."""
    run = tmp_path / "run"
    result = tfvae("train", *TINY, "--epochs", "3", "--run-dir", run, "--json")
    lines = result.stdout.strip().splitlines()
    epoch = r"Epoch {}/3: loss \d+\.\d\d, test -ELBO \d+\.\d\d \(KL \d+\.\d\d\), \d+\.\d s"
    assert re.fullmatch(epoch.format(1) + r", about \d+ s left", lines[1]), lines[1]
    assert re.fullmatch(epoch.format(3), lines[3]), lines[3]
    assert "e+0" not in result.stdout and "━" not in result.stdout
    summary = json.loads(lines[-1])
    state = json.loads((run / "config.json").read_text())
    assert summary["test"] == state["test"] and summary["epochs"] == 3 and summary["seconds"] > 0

    exported = tfvae("export", run, "--format", "all", "--out", tmp_path / "exports", "--json")
    assert exported.stderr == ""  # no native chatter (LiteRT's XNNPACK line) either
    records = json.loads(exported.stdout.strip().splitlines()[-1])["exports"]
    assert [r["format"] for r in records][:2] == ["savedmodel", "tflite"]
    assert records[0]["version"] == 1 and records[0]["path"].endswith("/1")
    for record in records:
        for path in record.get("files", []):
            assert Path(path).is_file()
    assert any(path.endswith("saved_model.pb") for path in records[0]["files"])
    assert any(path.endswith("decoder.tflite") for path in records[1]["files"])


def test_the_time_left_comes_from_recent_epochs_not_the_compiling_one():
    """Epoch 1 (10 s) compiles; epochs 2-3 take 2 s: 7 epochs left, 14 s."""
    said: list[str] = []
    log = EpochLog(said.append, epochs=10)
    for epoch, seconds in enumerate([10.0, 2.0, 2.0]):
        log.on_epoch_end(epoch, {"loss": 101.234, "seconds": seconds})
    assert said[-1] == "Epoch 3/10: loss 101.23, 2.0 s, about 14 s left"


def test_a_long_epoch_says_how_far_it_is(monkeypatch):
    """Past PROGRESS_SECONDS into an epoch of 100 steps, after step 25 of it:
    75 steps left at the pace so far (80 s for 25 steps) is 240 s."""
    import tfvae.callbacks as callbacks

    clock = iter([1000.0, 1030.0, 1080.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    said: list[str] = []
    log = EpochLog(said.append, epochs=2)
    log.set_params({"steps": 100})
    log.on_epoch_begin(0)
    log.on_train_batch_end(9)  # 30 s in: too soon to say anything
    log.on_train_batch_end(24)
    assert said == ["  epoch 1: step 25/100, about 4 min left in this epoch"]
    assert [duration(s) for s in (42, 600, 11_520)] == ["42 s", "10 min", "3.2 h"]


TRAINED = Path(__file__).parent / "fixtures" / "runs" / "mnist-default-0.1.0"


def test_latent_paths_are_the_line_and_the_great_circle():
    """Linear: evenly spaced on the segment. Spherical, between orthogonal
    codes of norm 3: every code has norm 3 and consecutive codes are
    (pi / 2) / 4 apart in angle. Antiparallel codes fall back to the line."""
    from tfvae.plots import latent_path

    a, b = np.array([3.0, 0.0, 0.0]), np.array([0.0, 3.0, 0.0])
    line = latent_path(a, b, 5)
    np.testing.assert_allclose(line[[0, 2, 4]], [a, (a + b) / 2, b], atol=1e-6)
    arc = latent_path(a, b, 5, spherical=True)
    np.testing.assert_allclose(arc[[0, -1]], [a, b], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(arc, axis=1), 3.0, rtol=1e-6)
    steps = [np.arccos(np.dot(p, q) / 9.0) for p, q in zip(arc[:-1], arc[1:], strict=True)]
    np.testing.assert_allclose(steps, np.pi / 8, rtol=1e-5)
    np.testing.assert_allclose(latent_path(a, -a, 3, spherical=True)[1], 0.0, atol=1e-6)


def test_interpolation_of_a_trained_model_starts_and_ends_at_the_images_codes(mnist):
    """The path's ends decode exactly as the two posterior means do, and the
    picture is one row: image, N steps, image."""
    from tfvae import plots
    from tfvae.evaluation import posterior_means
    from tfvae.runs import load_run

    model = load_run(TRAINED).model
    x = mnist.fixed_binarized("test", "dynamic")[:8]
    path = plots.interpolate(model, x[0], x[7], n=6, spherical=True)
    ends = model.decode(posterior_means(model, x[[0, 7]])).mean().numpy()
    np.testing.assert_allclose(path[[0, -1]], ends, atol=1e-6)
    assert path.shape == (6, 28, 28, 1) and not np.allclose(path[1], path[0], atol=1e-3)
    picture = plots.interpolation(model, x[0], x[7], n=6)
    assert picture.size == (8 * (2 * 28 + 2) + 2, 2 * 28 + 4)


def test_interpolate_command_writes_the_row_and_refuses_bad_indices(tmp_path):
    out = tmp_path / "path.png"
    result = tfvae("interpolate", TRAINED, "--from", "0", "--to", "7", "-n", "10", "-o", out)
    assert str(out) in result.stdout
    assert Image.open(out).size == (12 * 58 + 2, 60)
    line = _one_error_line(tfvae("interpolate", TRAINED, "--to", "10000", check=False))
    assert "10000" in line and "10000 images" in line
    line = _one_error_line(tfvae("interpolate", TRAINED, "-n", "20000", "-o", out, check=False))
    assert "lower -n" in line


def _summary_images(log_dir: Path) -> dict[tuple[str, int], np.ndarray]:
    """Every image summary under `log_dir`, decoded: (tag, step) -> pixels."""
    import tensorflow as tf

    found = {}
    for events in log_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                png = tf.make_ndarray(value.tensor)[2]  # width, height, then the PNG
                found[value.tag, event.step] = tf.io.decode_png(png).numpy()
    return found


def test_tensorboard_shows_the_runs_pictures_without_changing_its_training(tmp_path):
    """Every epoch's reconstructions, samples and 2-D manifold are image
    summaries; the last epoch's equal the PNGs of the finished run, and a run
    without them trains to the same metrics."""
    from tfvae.training import train

    config = TrainConfig(hidden_units=(32,), latent_dim=2, limit=500, batch_size=100, epochs=2)
    train(config, tmp_path / "shown", echo=lambda _: None, verbose=0)
    found = _summary_images(tmp_path / "shown" / "logs" / "pictures")
    assert set(found) == {
        (tag, step) for tag in ("reconstructions", "samples", "manifold") for step in (1, 2)
    }
    for tag in ("reconstructions", "samples", "manifold"):
        written = np.asarray(Image.open(tmp_path / "shown" / f"{tag}.png"))
        np.testing.assert_array_equal(found[tag, 2][..., 0], written)
        assert not np.array_equal(found[tag, 1], found[tag, 2])

    train(
        dataclasses.replace(config, pictures_every=0),
        tmp_path / "plain",
        echo=lambda _: None,
        verbose=0,
    )
    assert not (tmp_path / "plain" / "logs" / "pictures").exists()
    rows = [
        [row.rsplit(",", 1)[0] for row in (tmp_path / run / "metrics.csv").read_text().splitlines()]
        for run in ("shown", "plain")
    ]
    assert rows[0] == rows[1]
