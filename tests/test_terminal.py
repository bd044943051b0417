"""What a person sees in a real terminal (a pseudo-terminal replayed through a
VT100 emulator, `tests/terminal.py`), and what a pipe and `--json` get
instead: live lines that never count past their totals, then one line that
stays per epoch or stage."""

import json
import re
import subprocess

import numpy as np
import pytest
from harness import FINISHED_RUN_0_1_0, TFVAE, USER_ENV
from PIL import Image
from terminal import run_in_terminal

# 2,000 images in batches of 128 are 16 steps an epoch, fewer than the 32
# steps per call: Keras' bar counted 32/16 there.
SIXTEEN_STEPS = ["--limit", "2000", "--hidden", "32", "--no-jit-compile", "--pictures-every", "0"]
EPOCH = r"Epoch {}/2: loss \d+\.\d\d, test -ELBO \d+\.\d\d \(KL \d+\.\d\d\), \d+\.\d s"


def counts(raw: str) -> list[tuple[int, int]]:
    """Every `done/total` a live line showed."""
    return [(int(a), int(b)) for a, b in re.findall(r"(\d[\d,]*)/(\d[\d,]*)", raw.replace(",", ""))]


def test_training_shows_a_live_line_per_epoch_then_one_line_that_stays(tmp_path):
    """120 columns: the screen ends with what was found, one line per epoch
    (no Keras bar glued to it, no second copy with `val_*` numbers), the run
    folder and its test ELBO; the live line was drawn and never counted past
    its total; the first epoch, which compiles, gives no time left."""
    run = tmp_path / "run"
    session = run_in_terminal("train", *SIXTEEN_STEPS, "--epochs", "2", "--run-dir", run)
    assert session.returncode == 0, session.raw
    lines = session.lines
    assert lines[0].startswith("Data: mnist: 2,000 training and 2,000 test images")
    assert lines[2] == "Objective: ELBO, KL analytic; z of 20, prior N(0, I)"
    assert lines[3] == f"Training on one CPU, in {run}"
    assert re.fullmatch(EPOCH.format(1), lines[4]), lines
    assert re.fullmatch(EPOCH.format(2), lines[5]), lines
    assert lines[6:8] == [f"Run folder: {run}", lines[7]] and lines[7].startswith("Test ELBO: ")
    assert len(lines) == 8, lines
    assert "Epoch 1/2 [" in session.raw and "16/16" in session.raw  # the live line
    assert all(done <= total for done, total in counts(session.raw)), counts(session.raw)
    assert "val_" not in session.raw and "━" not in session.raw


def test_evaluation_says_each_stage_and_how_far_the_estimate_is():
    """The fully trained fixture, K = 20: a line per stage stays; the live
    line under the estimate counts its 200,000 samples, never past them."""
    session = run_in_terminal("evaluate", FINISHED_RUN_0_1_0, "-k", "20")
    assert session.returncode == 0, session.raw
    assert session.lines[:2] == [
        "Scoring the 10,000 test images: ELBO, active units",
        "Importance-weighted NLL, K=20: 200,000 samples of z",
    ]
    assert session.lines[2] == "test split, 10000 images, nats per image:"
    assert "200000/200000" in session.raw.replace(",", "") and "left" in session.raw
    assert all(done <= total for done, total in counts(session.raw))


@pytest.mark.slow
def test_evaluation_in_a_pipe_and_under_json_says_only_its_stages():
    """No live line off a terminal; under --json stdout is the JSON alone and
    the stage lines go to stderr."""
    command = [*TFVAE, "evaluate", str(FINISHED_RUN_0_1_0), "-k", "2"]
    piped = subprocess.run(command, capture_output=True, text=True, env=USER_ENV, check=True)
    assert "\r" not in piped.stdout + piped.stderr and piped.stderr == ""
    assert piped.stdout.splitlines()[:2] == [
        "Scoring the 10,000 test images: ELBO, active units",
        "Importance-weighted NLL, K=2: 20,000 samples of z",
    ]
    rows = piped.stdout.splitlines()[3:]
    assert [row.split("  ")[1] for row in rows] == [
        "ELBO",
        "KL",
        "log-likelihood",
        "NLL (IW, K=2)",
        "active units",
    ]
    ends = {re.match(r"  .+? +-?[\d.]+", row).end() for row in rows}
    assert len(ends) == 1, rows  # the values' columns line up
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, env=USER_ENV)
    assert json.loads(as_json.stdout)["k"] == 2
    assert as_json.stderr.splitlines()[:2] == piped.stdout.splitlines()[:2]


def test_export_says_what_it_converts_while_it_converts(tmp_path):
    """A TFLite export of the fully trained fixture: its stage line stays
    while it runs, then one line names what was written."""
    out = tmp_path / "exports"
    args = ["--format", "tflite", "-o", out, "--name", "vae"]
    session = run_in_terminal(
        "export", FINISHED_RUN_0_1_0, *args, columns=240
    )  # long paths on one line
    assert session.returncode == 0, session.raw
    assert session.lines == [
        "TFLite (none): converting, checked against Keras on 256 test images",
        f"TFLite (none): {out}/vae/tflite (see manifest.json)",
    ]


@pytest.mark.slow
def test_the_check_of_a_streamed_folder_counts_its_files(tmp_path):
    """A folder that streams from disk is decoded once to check it: on a
    terminal a live line counts the files."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8)).save(folder / f"{i:03d}.png")
    session = run_in_terminal(
        "train",
        *["--dataset", f"images:{folder}", "--epochs", "1", "--hidden", "8"],
        *["--no-jit-compile", "--pictures-every", "0", "--run-dir", tmp_path / "run"],
        env={"TFVAE_STREAM_ABOVE_MB": "0"},
        columns=240,  # the folder's long temporary path on one line
    )
    assert session.returncode == 0, session.raw
    assert session.lines[0] == f"Checking the 300 image files of {folder}"
    assert "300/300" in session.raw
    assert session.lines[1].endswith("8x8 grey, no labels, streamed from disk")
