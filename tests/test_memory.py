"""Requests bigger than the machine: estimated and refused in one line before
anything is allocated, and what still runs out turned into the same kind of
line. The command-line cases run in real processes under an address-space
limit (`RLIMIT_AS`), as on a machine with `ulimit -v`."""

import dataclasses
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from harness import FINISHED_RUN_0_1_0, TFVAE

from tfvae import memory, plots
from tfvae import model as vae_model
from tfvae.config import TrainConfig
from tfvae.errors import OutOfMemoryError, TfvaeError
from tfvae.model import VAE

# The limit of the report: half of this 24 GiB machine.
ADDRESS_SPACE = 12 * 2**30


@pytest.mark.parametrize(
    ("arch", "image_shape", "hidden", "latent", "classes"),
    [
        ("mlp", (28, 28, 1), (400,), 20, None),
        ("mlp", (28, 28, 1), (200, 100), 50, None),
        ("mlp", (28, 28, 1), (200, 100), 50, tuple("0123456789")),
        ("mlp", (28, 28, 1), (64,), (8, 4), ("a", "b", "c")),
        ("conv", (28, 28, 1), (64,), 2, None),
        ("conv", (30, 22, 3), (32, 16), 5, None),
        ("conv", (30, 22, 3), (32, 16), (5, 3), ("a", "b", "c")),
        ("resnet", (28, 28, 1), (64,), 2, None),
        ("resnet", (30, 22, 3), (32, 16), 5, None),
        ("resnet", (30, 22, 3), (32, 16), 5, ("a", "b")),
    ],
)
def test_weight_count_is_the_models(arch, image_shape, hidden, latent, classes):
    """The estimate's weight count, from the layer sizes alone, equals the
    count of the model `tfvae.layers` builds (a conditional one's too)."""
    stages = {"channels": (16, 24, 32)} if arch == "resnet" else {}
    config = TrainConfig(arch=arch, hidden_units=hidden, latent_dim=latent, **stages)
    config = dataclasses.replace(config, classes=classes)
    model = VAE(image_shape, config.model)
    assert memory._parameters(config.model, image_shape) == model.count_params()


def test_training_need_grows_with_what_the_options_ask():
    base = memory.training_need(TrainConfig(), (28, 28, 1), 60_000, 10_000)
    # 784-400-20: 652,824 weights, 8 copies of 4 bytes.
    assert base.parts["weights and Adam state"] == 32 * 652_824
    assert base.parts["data"] == 2 * 60_000 * 784 + 8 * 10_000 * 784
    iwae = memory.training_need(TrainConfig(k=100), (28, 28, 1), 60_000, 10_000)
    ratio = iwae.parts["activations of a step"] / base.parts["activations of a step"]
    assert 50 < ratio < 100  # the decoder runs k times, the encoder once
    small = memory.training_need(TrainConfig(batch_size=4096), (28, 28, 1), 100, 10)
    assert small.parts["activations of a step"] == pytest.approx(
        base.parts["activations of a step"] * 100 / 128
    )  # a batch larger than the data set is the data set


def test_check_refuses_in_one_line_naming_what_to_lower():
    need = memory.training_need(TrainConfig(hidden_units=(200_000,)), (28, 28, 1), 1000, 100)
    with pytest.raises(OutOfMemoryError) as refused:
        memory.check(need, "training", memory.Budget(10**9, "memory"))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("training needs about 11.1 GB (weights and Adam state 10.4 GB")
    assert "more than the 1.0 GB this process can still use under memory" in message
    assert message.endswith("lower --hidden or --latent-dim")
    memory.check(need, "training", memory.Budget(need.total, "memory"))  # exactly fits


def test_budget_sees_the_address_space_limit(tmp_path):
    script = "import json, tfvae.memory as m; b = m.budget(); print(json.dumps([b.free, b.limit]))"

    def run(limit):
        def preexec():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=preexec
        )
        return json.loads(out.stdout)

    free, limit = run(2 * 2**30)
    assert limit == "the address-space limit (ulimit -v)"
    assert 1.5 * 2**30 < free < 2 * 2**30  # less the interpreter's own address space
    assert run(resource.RLIM_INFINITY)[1] in ("memory", "the container's memory limit")


def test_running_out_becomes_one_line():
    """numpy's MemoryError here; TensorFlow's ResourceExhaustedError (which
    its allocator raises only after retrying for 10 s) in the CLI test below."""
    with pytest.raises(OutOfMemoryError, match="^ran out of memory while decoding; lower -n$"):
        with memory.out_of_memory("decoding", "-n"):
            np.empty(2**50)  # 8 PiB


def test_decoding_in_batches_gives_the_same_images(monkeypatch):
    model = VAE(hidden_units=(16,), latent_dim=3, seed=0)
    images = (np.random.default_rng(0).random((23, 28, 28, 1)) < 0.3).astype(np.float32)
    whole = model.sample(23, seed=4).numpy(), model.reconstruct(images).numpy()
    monkeypatch.setattr(vae_model, "DECODE_BATCH", 5)
    batched = model.sample(23, seed=4).numpy(), model.reconstruct(images).numpy()
    for a, b in zip(whole, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_grid_is_refused_before_decoding():
    model = VAE(hidden_units=(16,), latent_dim=3)
    assert plots.grid_capacity((28, 28, 1)) == plots.MAX_GRID_IMAGES
    assert plots.grid_capacity((64, 64, 3)) == 10**8 // 130**2  # pixels bind first
    with pytest.raises(TfvaeError, match="at most 10000 of these 28x28 images; lower -n"):
        plots.samples(model, 10_001)
    with pytest.raises(TfvaeError, match="at most 5000 of these"):
        plots.reconstructions(model, np.zeros((5001, 28, 28, 1), np.float32))


# --- real processes under an address-space limit -------------------------------

# (command after `tfvae`, what the one line must say): the requests,
# each of which ended in a traceback or an abort before.
CASES = {
    "hidden": (["train", "--hidden", "200000,200000"], "lower --hidden or --latent-dim"),
    "latent": (["train", "--latent-dim", "1000000"], "lower --hidden or --latent-dim"),
    "resize": (["train", "--resize", "4000", "4000"], "resizing mnist to 4000x4000 needs"),
    "iwae-k": (["train", "--objective", "iwae", "--k", "100000"], "lower --batch-size or --k"),
    "batch": (["train", "--batch-size", "1000000", "--hidden", "20000"], "lower --batch-size"),
    "sample": (["sample", str(FINISHED_RUN_0_1_0), "-n", "1000000"], "at most 10000 of these"),
    "sample-page": (["sample", str(FINISHED_RUN_0_1_0), "-n", "100000"], "at most 10000 of these"),
    "reconstruct": (
        ["reconstruct", str(FINISHED_RUN_0_1_0), "-n", "9000"],
        "at most 5000 of these",
    ),
    "interpolate": (
        ["interpolate", str(FINISHED_RUN_0_1_0), "-n", "20000"],
        "at most 10000 of these",
    ),
}

# Commands without a case, and why no request of theirs can outgrow the machine.
BOUNDED = {
    "evaluate": "scores in chunks of at most IW_NUMBERS numbers, whatever --k",
    "export": "converts one model and checks it on CHECK_IMAGES images",
    "score": "scores as evaluate does; holds a few numbers per image, writes rows one by one",
    "resume": "runs train's estimate on the settings in config.json",
}


def test_cases_cover_every_command():
    """A new command needs a case here or a reason in BOUNDED."""
    from tfvae.cli.main import main

    covered = {command[0] for command, _ in CASES.values()}
    assert covered | set(BOUNDED) == set(main.commands)
    assert not covered & set(BOUNDED)


def _limited(command: list[str], cwd: Path, limit: int = ADDRESS_SPACE, script=None):
    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    argv = [sys.executable, "-c", script, *command] if script else TFVAE
    # TensorFlow's own thread count, not the suite's one: with one intra-op
    # thread, an IWAE step that slips past the estimate made TensorFlow abort
    # (std::bad_alloc, or a thread it could not start) before its
    # ResourceExhaustedError reached tfvae (docs/guide/limits.md, "Known limits").
    unset = {"TF_CPP_MIN_LOG_LEVEL", "TF_NUM_INTRAOP_THREADS"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        argv + ([] if script else command),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        preexec_fn=preexec,
        timeout=600,
    )


@pytest.mark.slow
def test_requests_bigger_than_the_machine_end_in_one_line(tmp_path):
    """Each case: exit 1, one line on stderr that says what to lower, no
    traceback, no abort, and no run folder or picture left behind."""

    def run(item):
        name, (command, expected) = item
        cwd = tmp_path / name
        cwd.mkdir()
        extra = ["--run-dir", "run"] if command[0] == "train" else ["-o", "picture.png"]
        return name, expected, cwd, _limited([*command, *extra], cwd)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, CASES.items()))
    for name, expected, cwd, out in results:
        lines = out.stderr.splitlines()
        assert out.returncode == 1, (name, out.returncode, out.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, out.stderr[-2000:])
        assert expected in lines[0], (name, lines[0])
        assert list(cwd.iterdir()) == [], name


SLIP = textwrap.dedent(
    """
    import sys
    import tfvae.memory
    tfvae.memory.check = lambda *args, **kwargs: None  # an estimate that missed
    from tfvae.cli.main import main
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_what_slips_past_the_estimate_ends_in_one_line_and_keeps_the_run(tmp_path):
    """With the estimate switched off, an IWAE step of 20,000 samples asks
    TensorFlow for 31 GB under the 12 GB limit: its ResourceExhaustedError
    becomes one line, exit 1 (not the abort TensorFlow's clean-up gave after
    it), and the run folder stays, unfinished, for the same command to resume."""
    command = ["train", "--objective", "iwae", "--k", "20000", "--limit", "2000"]
    out = _limited([*command, "--run-dir", "run"], tmp_path, script=SLIP)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        "Error: ran out of memory while training; lower --batch-size, --k or --hidden "
        "(with --overwrite); the last checkpoint is kept"
    ]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["status"] == "running"


@pytest.mark.slow
def test_running_out_after_a_checkpoint_keeps_it_for_resume(tmp_path):
    """A run that holds epoch 1's checkpoint (trained without a limit, then
    SIGKILLed) resumes under a 5 GiB limit with the estimate off: its IWAE
    step (K = 5,000, batch 20: about 4 GB) runs out in one line, the
    checkpoint stays byte for byte, and `tfvae resume` without the limit
    then finishes the run from it."""
    run = tmp_path / "run"
    command = ["train", "--objective", "iwae", "--k", "5000", "--limit", "40"]
    command += ["--batch-size", "20", "--hidden", "64", "--epochs", "2", "--run-dir", "run"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    first = subprocess.Popen(
        [*TFVAE, *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (run / "backup" / "epoch-00001").is_dir():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    first.kill()
    first.wait()

    def checkpoint() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted((run / "backup").rglob("*")) if p.is_file()}

    kept = checkpoint()
    out = _limited(command, tmp_path, limit=5 * 2**30, script=SLIP)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        "Error: ran out of memory while training; lower --batch-size, --k or --hidden "
        "(with --overwrite); the last checkpoint is kept"
    ]
    assert "Resuming after epoch 1 of 2" in out.stdout
    assert checkpoint() == kept
    resumed = subprocess.run(
        [*TFVAE, "resume", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch 1 of 2" in resumed.stdout
    assert json.loads((run / "config.json").read_text())["status"] == "finished"
