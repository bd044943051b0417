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
from harness import (
    FINISHED_RUN_0_1_0,
    SMALL_OPTIONS,
    TFVAE,
    UNFINISHED_RUN_0_1_0,
    USER_ENV,
    invoke,
    tfvae,
)
from PIL import Image

from tfvae.callbacks import EpochLog
from tfvae.config import TrainConfig
from tfvae.errors import RunError
from tfvae.progress import Progress, duration
from tfvae.runs import lock_folder


def _start_training(run: Path, epochs: int) -> subprocess.Popen:
    """A real `tfvae train` in the background, returned once it holds its lock
    and has written its first checkpoint."""
    args = [*TFVAE, "train", *SMALL_OPTIONS, "--epochs", str(epochs), "--run-dir", str(run)]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=USER_ENV
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


@pytest.mark.slow
def test_a_second_process_on_a_training_folder_is_refused_and_the_first_is_unaffected(tmp_path):
    """Both the repeated command and `tfvae resume` are refused with the
    holder's pid and host, before any data is loaded; the first run then
    finishes every epoch exactly once and removes its lock. The first is
    paused (SIGSTOP) meanwhile, so it cannot finish before the others start."""
    run = tmp_path / "run"
    first = _start_training(run, epochs=5)
    os.kill(first.pid, signal.SIGSTOP)
    seconds = [
        ["train", *SMALL_OPTIONS, "--epochs", "5", "--run-dir", run],
        ["resume", run],
        ["train", *SMALL_OPTIONS, "--epochs", "5", "--run-dir", run, "--overwrite"],
    ]
    refused = [
        subprocess.Popen(
            [*TFVAE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=USER_ENV
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


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_never_blocks_and_resume_needs_no_options(tmp_path):
    """SIGKILL leaves the lock file but not the lock; `tfvae resume RUN`
    continues from the last checkpoint with the settings of config.json."""
    run = tmp_path / "run"
    killed = _start_training(run, epochs=6)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (tmp_path / ".run.lock").exists()
    resumed = tfvae("resume", run, "--json")
    assert "Resuming after epoch" in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["epochs"] == 6 and summary["initial_epoch"] >= 1
    assert summary["run_dir"] == str(run) and summary["test"]["elbo"] < 0
    state = json.loads((run / "config.json").read_text())
    assert state["config"]["hidden_units"] == [32] and state["status"] == "finished"
    assert not (tmp_path / ".run.lock").exists()


def test_ctrl_c_names_the_run_folder_to_resume(tmp_path):
    """SIGINT after the first checkpoint: exit 130 and the resume command of
    this very folder (the default one here, made up of the date and time)."""
    work = tmp_path / "work"
    work.mkdir()
    # Far more epochs than a loaded machine could finish before the signal lands.
    args = [*TFVAE, "train", *SMALL_OPTIONS, "--epochs", "5000", "--pictures-every", "0"]
    process = subprocess.Popen(
        args, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=USER_ENV
    )
    deadline = time.time() + 120
    while not list(work.glob("runs/*/backup/epoch-00001")):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    (run,) = (path for path in (work / "runs").iterdir() if not path.name.startswith("."))
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == (
        f"Interrupted. 'tfvae resume {run.relative_to(work)}' continues the run."
    )


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


def test_a_finished_run_without_its_model_file_says_what_repairs_it(tmp_path):
    """model.keras deleted from a finished run: evaluate, resume and resume
    --epochs N all say so and name the one command that repairs it (no
    checkpoint is kept once a run finishes); that command trains the run
    again, after which it evaluates."""
    from tfvae.runs import score_run
    from tfvae.training import train

    run = tmp_path / "run"
    config = TrainConfig(hidden_units=(8,), limit=200, epochs=1, jit_compile=False)
    train(config, run, echo=lambda _: None, verbose=0)
    (run / "model.keras").unlink()
    said = (
        f"Error: {run}/model.keras: missing, though the run finished; no checkpoint is "
        f"kept: 'tfvae resume {run} --restart' trains it again"
    )
    for args in (["evaluate", run], ["resume", run], ["resume", run, "--epochs", "6"]):
        result = invoke(*args)
        assert result.exit_code == 1 and result.output.strip() == said, result.output
    assert invoke("resume", run, "--restart").exit_code == 0
    assert score_run(run)["n_images"] == 200


def test_a_finished_run_without_its_model_file_is_rebuilt_from_a_kept_checkpoint(tmp_path):
    """The 0.1.0 run killed after epoch 2 of 40, marked finished with no
    model file: its checkpoint is what repairs it, and `tfvae resume`
    trains from it to the run's 40 epochs."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(UNFINISHED_RUN_0_1_0, run)
    state = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**state, "status": "finished"}))
    said = f"'tfvae resume {run}' rebuilds it from the last checkpoint"
    assert said in invoke("evaluate", run).output
    resumed = invoke("resume", run, "--no-jit-compile", "--pictures-every", "0", "--json")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert (summary["initial_epoch"], summary["epochs"]) == (2, 40)
    assert json.loads((run / "config.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_train_and_export_json_and_a_log_a_person_reads(tmp_path):
    """In a pipe: one line per epoch with nats to two decimals, seconds and,
    once an epoch has run without compiling, the time left; no progress bar.
    With --json, stdout is one JSON document (its paths exist) and every
    line for people goes to stderr: `python -m json.tool` reads stdout."""
    run = tmp_path / "run"
    result = tfvae("train", *SMALL_OPTIONS, "--epochs", "3", "--run-dir", run, "--json")
    lines = result.stderr.strip().splitlines()
    epoch = r"Epoch {}/3: loss \d+\.\d\d, test -ELBO \d+\.\d\d \(KL \d+\.\d\d\), \d+\.\d s"
    assert lines[2].startswith("Objective: ELBO") and lines[3].startswith("Training on ")
    assert re.fullmatch(epoch.format(1), lines[4]), lines[4]
    assert re.fullmatch(epoch.format(2) + r"(, about \d+ s left)?", lines[5]), lines[5]
    assert re.fullmatch(epoch.format(3), lines[6]), lines[6]
    assert "e+0" not in result.stderr and "━" not in result.stderr and "\r" not in result.stderr
    summary = json.loads(result.stdout)
    state = json.loads((run / "config.json").read_text())
    assert summary["test"] == state["test"] and summary["epochs"] == 3 and summary["seconds"] > 0
    tool = subprocess.run([sys.executable, "-m", "json.tool"], input=result.stdout, text=True)
    assert tool.returncode == 0

    exported = tfvae("export", run, "--format", "all", "-o", tmp_path / "exports", "--json")
    # One line per stage and per artifact, and no native chatter (LiteRT's XNNPACK line).
    said = exported.stderr.strip().splitlines()
    assert [line[:6] for line in said] == [
        "[1/3] ",
        "[2/3] ",
        "[3/3] ",
        "SavedM",
        "TFLite",
        "ONNX: ",
    ]
    records = json.loads(exported.stdout)["exports"]
    assert [r["format"] for r in records][:2] == ["savedmodel", "tflite"]
    assert records[0]["version"] == 1 and records[0]["path"].endswith("/1")
    for record in records:
        for path in record.get("files", []):
            assert Path(path).is_file()
    assert any(path.endswith("saved_model.pb") for path in records[0]["files"])
    assert any(path.endswith("decoder.tflite") for path in records[1]["files"])


def test_the_time_left_comes_from_recent_epochs_not_the_compiling_one():
    """Epoch 1 (10 s) compiles: its line says no time left; epochs 2-3 take
    2 s: after epoch 3, 7 epochs left, 14 s."""
    said: list[str] = []
    log = EpochLog(Progress(said.append, live=False), epochs=10)
    for epoch, seconds in enumerate([10.0, 2.0, 2.0]):
        log.on_epoch_end(epoch, {"loss": 101.234, "seconds": seconds})
    assert said[0] == "Epoch 1/10: loss 101.23, 10.0 s"
    assert said[-1] == "Epoch 3/10: loss 101.23, 2.0 s, about 14 s left"


def test_a_long_epoch_says_how_far_it_is():
    """Off a terminal, past PROGRESS_SECONDS into an epoch of 100 steps run
    10 to a call: the first call (which compiles) is left out of the pace,
    so after step 25, 15 steps took 50 s and the 75 left take 250 s."""
    clock = iter([1000.0, 1030.0, 1080.0])
    said: list[str] = []
    log = EpochLog(Progress(said.append, live=False, clock=lambda: next(clock)), epochs=2)
    log.set_params({"steps": 100})
    log.on_epoch_begin(0)
    log.on_train_batch_end(9)  # 30 s in: the first call, too soon to say anything
    log.on_train_batch_end(24)
    assert said == ["  epoch 1: step 25/100, about 4 min left in this epoch"]
    assert [duration(s) for s in (42, 600, 11_520)] == ["42 s", "10 min", "3.2 h"]


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
    from tfvae.runs import load_run

    model = load_run(FINISHED_RUN_0_1_0).model
    x = mnist.fixed_binarized("test", "dynamic")[:8]
    path = plots.interpolate(model, x[0], x[7], n=6, spherical=True)
    ends = model.decode(model.posterior_means(x[[0, 7]])).mean().numpy()
    np.testing.assert_allclose(path[[0, -1]], ends, atol=1e-6)
    assert path.shape == (6, 28, 28, 1) and not np.allclose(path[1], path[0], atol=1e-3)
    picture = plots.interpolation(model, x[0], x[7], n=6)
    assert picture.size == (8 * (2 * 28 + 2) + 2, 2 * 28 + 4)


@pytest.mark.slow
def test_interpolate_command_writes_the_row_and_refuses_bad_indices(tmp_path):
    out = tmp_path / "path.png"
    result = tfvae(
        "interpolate", FINISHED_RUN_0_1_0, "--from", "0", "--to", "7", "-n", "10", "-o", out
    )
    assert str(out) in result.stdout
    assert Image.open(out).size == (12 * 58 + 2, 60)
    line = _one_error_line(tfvae("interpolate", FINISHED_RUN_0_1_0, "--to", "10000", check=False))
    assert "10000" in line and "10000 images" in line
    line = _one_error_line(
        tfvae("interpolate", FINISHED_RUN_0_1_0, "-n", "20000", "-o", out, check=False)
    )
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


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar summary under `log_dir`: tag -> step -> value."""
    import tensorflow as tf

    found: dict[str, dict[int, float]] = {}
    for events in log_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


@pytest.mark.parametrize("validation", [0, 100])
def test_tensorboard_logs_each_epoch_at_its_number_under_its_splits_name(tmp_path, validation):
    """Epochs 1 and 2 are steps 1 and 2 for the scalars as for the pictures;
    the held-out scores sit under the split they score (test/ without a
    validation split, validation/ with one) and equal metrics.csv's."""
    from tfvae.training import train

    config = TrainConfig(
        hidden_units=(16,), limit=500, batch_size=100, epochs=2, validation=validation
    )
    run = tmp_path / "run"
    train(config, run, echo=lambda _: None, verbose=0)
    held_out = "validation" if validation else "test"
    logs = run / "logs"
    assert sorted(p.name for p in logs.iterdir()) == sorted(["train", held_out, "pictures"])
    train_scalars, held_scalars = _scalars(logs / "train"), _scalars(logs / held_out)
    assert set(train_scalars) == {"loss", "elbo", "kl", "log_likelihood", "learning_rate"}
    assert set(held_scalars) == {"loss", "elbo", "kl", "log_likelihood"}
    for steps in [*train_scalars.values(), *held_scalars.values()]:
        assert set(steps) == {1, 2}
    assert {step for _, step in _summary_images(logs / "pictures")} == {1, 2}
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(","), strict=True))
        epoch = int(values["epoch"])
        for term in ("elbo", "kl"):
            assert held_scalars[term][epoch] == pytest.approx(
                float(values[f"{held_out}_{term}"]), abs=1e-3
            )
            assert train_scalars[term][epoch] == pytest.approx(
                float(values[f"train_{term}"]), abs=1e-3
            )
