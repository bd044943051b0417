"""The `tfvae` command line, driven the way users drive it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from harness import FINISHED_RUN_0_1_0, SMALL_2D_OPTIONS, TFVAE, invoke, tfvae
from PIL import Image

from tfvae.cli.main import main


@pytest.fixture(scope="module")
def run_2d_2_epochs(tmp_path_factory) -> Path:
    """A real 2-epoch run on 1000 images with a 2-D latent space."""
    run = tmp_path_factory.mktemp("runs") / "small"
    result = tfvae("train", *SMALL_2D_OPTIONS, "--epochs", "2", "--run-dir", run)
    assert f"Run folder: {run}" in result.stdout
    (run.parent / "small.log").write_text(result.stdout)  # beside the run, not in it
    return run


def test_train_writes_a_complete_run_folder(run_2d_2_epochs):
    """Every file the CLI contract names is there and readable."""
    for name in (
        "config.json",
        "model.keras",
        "metrics.csv",
        "reconstructions.png",
        "samples.png",
        "manifold.png",
        "latent.png",
    ):
        assert (run_2d_2_epochs / name).is_file(), name
    assert any((run_2d_2_epochs / "logs").rglob("events.out.tfevents.*"))
    assert not (run_2d_2_epochs / "backup").exists()
    state = json.loads((run_2d_2_epochs / "config.json").read_text())
    assert state["status"] == "finished"
    assert state["config"]["latent_dim"] == 2 and state["config"]["hidden_units"] == [64]
    assert state["versions"]["tensorflow"].startswith("2.")
    rows = (run_2d_2_epochs / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["epoch", "train_loss"] and len(rows) == 3
    last = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    assert float(last["test_loss"]) == pytest.approx(-float(last["test_elbo"]))
    assert 0 < float(last["seconds"]) < 120


def test_the_log_first_says_what_it_found(run_2d_2_epochs):
    """Before training, `tfvae train` says what it found, as Keras' "Found N
    files belonging to C classes" does: the data set with its image count
    per split, shape and classes, the likelihood (chosen for the user here),
    the objective with its KL terms and prior, and where it trains in the
    words config.json records (`placement`: one CPU is what `--strategy auto`
    gives on this machine)."""
    lines = (run_2d_2_epochs.parent / "small.log").read_text().splitlines()
    state = json.loads((run_2d_2_epochs / "config.json").read_text())
    assert state["placement"] == "one CPU" and state["replicas"] == 1
    assert lines[:4] == [
        "Data: mnist: 1,000 training and 1,000 test images, 28x28 grey, 10 classes",
        "Likelihood: Bernoulli pixels, binarized afresh every pass (the default here; "
        "--likelihood changes it)",
        "Objective: ELBO, KL analytic; z of 2, prior N(0, I)",
        f"Training on one CPU, in {run_2d_2_epochs}",
    ]


def test_evaluate_json_matches_training_and_bounds(run_2d_2_epochs):
    """The JSON line has the contract's keys; the IW NLL is at most -ELBO (plus noise)
    and the ELBO equals the one training reported on the same fixed binarization."""
    out = tfvae("evaluate", run_2d_2_epochs, "--k", "50", "--json").stdout.strip().splitlines()[-1]
    scores = json.loads(out)
    assert {"split", "n_images", "k", "elbo", "kl", "log_likelihood", "nll"} <= set(scores)
    assert scores["split"] == "test" and scores["n_images"] == 1000 and scores["k"] == 50
    assert scores["elbo"] == pytest.approx(scores["log_likelihood"] - scores["kl"], abs=1e-6)
    assert scores["nll"] <= -scores["elbo"] + 0.5
    trained_test = json.loads((run_2d_2_epochs / "config.json").read_text())["test"]
    assert scores["elbo"] == pytest.approx(trained_test["elbo"], abs=1e-4)


@pytest.mark.slow
def test_sample_png_is_a_seeded_grid(run_2d_2_epochs, tmp_path):
    """-n 9 gives a 3x3 grid of 56-pixel cells (2x scale, 2-pixel gaps); the
    same seed gives the same picture, another seed another one."""
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    tfvae("sample", run_2d_2_epochs, "-n", "9", "--seed", "4", "-o", a)
    tfvae("sample", run_2d_2_epochs, "-n", "9", "--seed", "4", "-o", b)
    tfvae("sample", run_2d_2_epochs, "-n", "9", "--seed", "5", "-o", c)
    pictures = [np.asarray(Image.open(p)) for p in (a, b, c)]
    assert pictures[0].shape == (3 * 58 + 2, 3 * 58 + 2)
    np.testing.assert_array_equal(pictures[0], pictures[1])
    assert np.abs(pictures[0].astype(int) - pictures[2]).max() > 0


@pytest.mark.slow
def test_sample_at_temperature_zero_draws_one_image(run_2d_2_epochs, tmp_path):
    """Every cell is the decoder's image of z = 0, and the JSON says the
    temperature."""
    out = tfvae(
        "sample",
        run_2d_2_epochs,
        "-n",
        "4",
        "--temperature",
        "0",
        "--json",
        "-o",
        tmp_path / "t0.png",
    )
    assert json.loads(out.stdout.strip().splitlines()[-1])["temperature"] == 0.0
    cell = grid_cells(np.asarray(Image.open(tmp_path / "t0.png")), (28, 28))
    for row, column in [(0, 1), (1, 0), (1, 1)]:
        np.testing.assert_array_equal(cell(row, column), cell(0, 0))


def grid_cells(picture: np.ndarray, size: tuple[int, int], scale: int = 2, gap: int = 2):
    """`cell(row, column)`: the pixels of one cell of a picture grid."""
    height, width = size[0] * scale, size[1] * scale

    def cell(row: int, column: int) -> np.ndarray:
        top, left = gap + row * (height + gap), gap + column * (width + gap)
        return picture[top : top + height, left : left + width]

    return cell


def as_drawn(image: np.ndarray, scale: int = 2) -> np.ndarray:
    """A grey image in [0, 1] as a grid draws it: dark on white, scaled."""
    pixels = np.clip(image[..., 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return (255 - pixels).repeat(scale, 0).repeat(scale, 1)


def assert_pairs_stacked(picture: np.ndarray, originals, reconstructions, columns=16):
    """Each original directly above its reconstruction, `columns` pairs to a
    row of the grid; every other cell blank."""
    n, size = len(originals), originals.shape[1:3]
    cell = grid_cells(picture, size)
    rows = 2 * -(-n // columns)
    assert picture.shape == (rows * (2 * size[0] + 2) + 2, min(n, columns) * (2 * size[1] + 2) + 2)
    for i in range(n):
        row, column = divmod(i, columns)
        np.testing.assert_array_equal(cell(2 * row, column), as_drawn(originals[i]))
        np.testing.assert_array_equal(cell(2 * row + 1, column), as_drawn(reconstructions[i]))
    for i in range(n, rows // 2 * columns):
        row, column = divmod(i, columns)
        assert (cell(2 * row, column) == 255).all() and (cell(2 * row + 1, column) == 255).all()


@pytest.mark.parametrize("n", [5, pytest.param(20, marks=pytest.mark.slow)])
def test_reconstruct_keeps_each_original_above_its_reconstruction(n, tmp_path):
    """The fully trained run: 5 images in one pair of rows; 20 in two pairs,
    the last holding 4 originals above their 4 reconstructions."""
    from tfvae.runs import run_images

    path = tmp_path / "r.png"
    tfvae("reconstruct", FINISHED_RUN_0_1_0, "-n", n, "-o", path)
    run, images = run_images(FINISHED_RUN_0_1_0, "test", limit=n)
    reconstructions = np.asarray(run.model.reconstruct(images))
    assert_pairs_stacked(np.asarray(Image.open(path)), images, reconstructions)


@pytest.mark.slow
def test_a_runs_reconstructions_of_a_small_test_split_stay_paired(tmp_path, write_idx):
    """Training draws 32 test images, or all of a 30-image split: 16 pairs,
    then 14 in the second pair of rows."""
    from tfvae.data import load_dataset
    from tfvae.runs import load_run

    rng = np.random.default_rng(3)
    folder = tmp_path / "set"
    folder.mkdir()
    for stem, n in (("train", 200), ("t10k", 30)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8), np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, n, np.uint8))
    run = tmp_path / "run"
    tfvae("train", "--dataset", f"idx:{folder}", "--hidden", "8", "--epochs", "1",
          "--no-jit-compile", "--pictures-every", "0", "--run-dir", run)  # fmt: skip
    images = load_dataset(f"idx:{folder}").fixed_binarized("test")
    reconstructions = np.asarray(load_run(run).model.reconstruct(images))
    picture = np.asarray(Image.open(run / "reconstructions.png"))
    assert_pairs_stacked(picture, images, reconstructions)


def test_finished_run_is_not_overwritten_without_flag(run_2d_2_epochs):
    result = tfvae(
        "train", *SMALL_2D_OPTIONS, "--epochs", "2", "--run-dir", run_2d_2_epochs, check=False
    )
    assert result.returncode == 1
    assert "already finished" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "-3"], "--batch-size"),
        (["train", "--latent-dim", "two"], "--latent-dim"),
        (["train", "--arch", "densenet"], "--arch"),
        (["train", "--hidden", "4,x"], "--hidden"),
        (["train", "--hidden", "0"], "--hidden"),
        (["train", "--learning-rate", "0"], "--learning-rate"),
        (["train", "--binarize", "soft"], "--binarize"),
        (["train", "--strategy", "gpu"], "--strategy"),
        (["train", "--seed", "-1"], "--seed"),
        (["evaluate", "no/such/run"], "RUN_DIR"),
        (["evaluate", ".", "--k", "0"], "--k"),
        (["evaluate", ".", "--split", "val"], "--split"),
        (["sample", ".", "-n", "0"], "-n"),
        (["reconstruct", "no/such/run"], "RUN_DIR"),
        (["export", ".", "--format", "pb"], "--format"),
        (["export", ".", "--quantize", "int4"], "--quantize"),
        (["export", ".", "--version", "0"], "--version"),
    ],
)
def test_bad_option_values_are_usage_errors(args, option):
    """One message naming the option, exit code 2, no traceback."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert "Traceback" not in result.output


def test_run_folder_errors_name_the_folder_and_fix(tmp_path):
    result = invoke("evaluate", str(tmp_path))
    assert result.exit_code == 1 and "not a run folder" in result.output

    (tmp_path / "config.json").write_text("{not json")
    result = invoke("sample", str(tmp_path))
    assert result.exit_code == 1 and "unreadable" in result.output

    (tmp_path / "config.json").write_text(
        json.dumps({"config": {}, "image_shape": [28, 28, 1], "status": "running"})
    )
    result = invoke("evaluate", str(tmp_path))
    assert result.exit_code == 1
    assert "has not finished" in result.output and "resume" in result.output


def test_bad_dataset_leaves_no_run_folder(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--dataset", f"idx:{tmp_path / 'nowhere'}", "--run-dir", str(run))
    assert result.exit_code == 1 and "no such folder" in result.output
    assert not run.exists()


def test_foreign_folder_is_never_used_as_run_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = invoke("train", "--run-dir", str(tmp_path), "--overwrite")
    assert result.exit_code == 1 and "not a tfvae run folder" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_help_has_examples_and_does_not_import_tensorflow():
    """--help answers at once because it never imports TensorFlow or Keras
    (the registration of tfvae's Keras classes waits for Keras; the start-up
    time itself is measured in benchmarks/, not here)."""
    result = subprocess.run([*TFVAE, "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "Examples:" in result.stdout
    probe = (
        "import sys, tfvae.cli.main; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        == "False"
    )


def test_every_commands_help_has_examples_of_that_command():
    """README: every command has --help with examples. Each command's help has
    an "Example" heading followed by a line that runs that very command."""
    assert set(main.commands) >= {"train", "resume", "evaluate", "sample", "export"}
    for name in main.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        lines = [line.strip() for line in result.output.splitlines()]
        heading = next((i for i, line in enumerate(lines) if line.startswith("Example")), None)
        assert heading is not None, f"tfvae {name} --help has no examples"
        assert lines[heading + 1].startswith(f"tfvae {name}"), (name, lines[heading + 1])


def test_a_lost_peer_restarts_the_command_at_most_ten_times(monkeypatch, capsys):
    """A PeerLostError makes `tfvae train` exec itself again with the same
    command line, counting in TFVAE_REJOINS; the tenth restart is the last,
    and the next loss ends the command with one error line (exit 1) instead."""
    from tfvae.cli.main import _training
    from tfvae.distribute import PeerLostError

    execs = []
    monkeypatch.setattr(os, "execv", lambda *args: execs.append(args))  # never replace pytest

    def lost_peer():
        raise PeerLostError("another worker stopped")

    monkeypatch.setenv("TFVAE_REJOINS", "9")
    _training(lost_peer, "runs/x", as_json=False)
    assert execs == [(sys.executable, sys.orig_argv)]
    assert os.environ["TFVAE_REJOINS"] == "10"
    assert "Restarting to rejoin the job (10/10)" in capsys.readouterr().err
    with pytest.raises(click.ClickException) as refused:
        _training(lost_peer, "runs/x", as_json=False)
    assert refused.value.exit_code == 1
    assert refused.value.message == "another worker stopped (gave up after 10 restarts)"
    assert len(execs) == 1


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_requested_epochs(tmp_path):
    """SIGKILL mid-run, rerun the same command: it resumes from its last epoch
    checkpoint, and the run ends with every epoch counted exactly once."""
    run = tmp_path / "run"
    args = [
        *TFVAE,
        "train",
        "--limit",
        "2000",
        "--hidden",
        "32",
        "--epochs",
        "15",
        "--no-jit-compile",  # resuming is tested, not XLA, whose compile adds seconds
        "--run-dir",
        str(run),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "backup" / "epoch-00002").is_dir():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((run / "config.json").read_text())["status"] == "running"
    assert not (run / "model.keras").exists()
    refused = tfvae("evaluate", run, check=False)
    assert refused.returncode == 1 and "has not finished" in refused.stderr

    changed = tfvae(*args[3:-2], "--run-dir", run, "--epochs", "16", check=False)
    assert changed.returncode == 1 and "epochs: 15 -> 16" in changed.stderr

    resumed = tfvae(*args[3:])
    assert "Resuming after epoch" in resumed.stdout
    epochs = [
        int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert epochs == list(range(1, 16))
    assert json.loads((run / "config.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_export_versions_and_formats(run_2d_2_epochs, tmp_path):
    """SavedModel versions count up; TFLite files carry a manifest measured on
    real test images; an existing version is refused with exit code 1."""
    out = tmp_path / "exports"
    first = tfvae("export", run_2d_2_epochs, "--out", out, "--name", "vae")
    assert f"{out / 'vae' / '1'}" in first.stdout
    tfvae(
        "export",
        run_2d_2_epochs,
        "--out",
        out,
        "--name",
        "vae",
        "--format",
        "tflite",
        "--quantize",
        "dynamic",
    )
    tfvae("export", run_2d_2_epochs, "--out", out, "--name", "vae")
    assert sorted(p.name for p in (out / "vae").iterdir()) == ["1", "2", "tflite"]
    assert (out / "vae" / "2" / "saved_model.pb").is_file()
    manifest = json.loads((out / "vae" / "tflite" / "manifest.json").read_text())
    assert manifest["quantization"] == "dynamic"
    assert manifest["checked_on"].startswith("256 given images")
    again = tfvae(
        "export", run_2d_2_epochs, "--out", out, "--name", "vae", "--version", "1", check=False
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    replaced = tfvae("export", run_2d_2_epochs, "-o", out, "--name", "vae", "--format", "tflite")
    assert (
        f"Replacing {out}/vae/tflite (quantization dynamic, batch dynamic) with "
        "quantization none, batch dynamic"
    ) in replaced.stdout


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--quantize", "int8"], "--quantize shapes TFLite files and --format savedmodel writes"),
        (["--batch-size", "4"], "--batch-size shapes TFLite files and --format savedmodel"),
        (["--format", "tflite", "--model-version", "3"], "--model-version numbers SavedModels"),
        (["--litert-js", "vendor"], "--litert-js is for --format web"),
    ],
)
def test_export_refuses_options_that_shape_nothing_it_writes(options, said, tmp_path):
    """Before anything is loaded or written: one line, exit 1."""
    out = tmp_path / "exports"
    result = invoke("export", str(FINISHED_RUN_0_1_0), "-o", str(out), *options)
    assert result.exit_code == 1 and said in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    ("suffix", "kind"), [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG"), (".webp", "WEBP")]
)
def test_pictures_are_written_as_their_suffix_says_and_json_lists_them(
    run_2d_2_epochs, tmp_path, suffix, kind
):
    """`-o` picks the format; --json prints one object naming the file, its
    size and what it shows, and the line for people goes to stderr."""
    out = tmp_path / f"samples{suffix}"
    result = invoke(
        "sample", str(run_2d_2_epochs), "-n", "4", "--seed", "2", "-o", str(out), "--json"
    )
    assert result.exit_code == 0, result.output
    picture = Image.open(out)
    assert picture.format == kind
    assert json.loads(result.stdout) == {
        "files": [{"path": str(out), "width": picture.width, "height": picture.height}],
        "images": 4,
        "image_shape": [28, 28, 1],
        "seed": 2,
        "temperature": 1.0,
        "binary": False,
    }
    assert result.stderr == f"Wrote 4 samples to {out}\n"


@pytest.mark.parametrize("command", ["sample", "reconstruct", "interpolate"])
def test_a_picture_suffix_nothing_writes_is_refused_first(run_2d_2_epochs, tmp_path, command):
    out = tmp_path / "p.gif"
    result = invoke(command, str(run_2d_2_epochs), "-o", str(out))
    assert result.exit_code == 1 and not out.exists()
    assert result.output == (
        f"Error: {out}: tfvae writes pictures as .png, .jpg (.jpeg) or .webp files; "
        "give one of those suffixes\n"
    )


def test_reconstruct_and_interpolate_json_say_what_they_drew(run_2d_2_epochs, tmp_path):
    out = tmp_path / "r.png"
    shown = invoke("reconstruct", str(run_2d_2_epochs), "-n", "3", "-o", str(out), "--json")
    assert json.loads(shown.stdout)["images"] == 3 and Image.open(out).size == (
        3 * 58 + 2,
        2 * 58 + 2,
    )
    out = tmp_path / "i.png"
    path = invoke(
        "interpolate", str(run_2d_2_epochs), "--to", "5", "-n", "4", "-o", str(out), "--json"
    )
    drawn = json.loads(path.stdout)
    assert (drawn["steps"], drawn["indices"], drawn["split"]) == (4, [0, 5], "test")
    assert drawn["files"] == [{"path": str(out), "width": 6 * 58 + 2, "height": 60}]


def test_export_into_a_file_is_refused(run_2d_2_epochs, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = tfvae("export", run_2d_2_epochs, "--out", target / "sub", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
