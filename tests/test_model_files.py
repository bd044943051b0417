"""Commands and `tfvae.load_model` on a model file instead of a run folder:
a `.keras` file, a Keras model folder and an `hf://` path, with the fully
trained default model (tfvae 0.1.0's committed run)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from harness import FINISHED_RUN_0_1_0, assert_clean_failure, invoke, tfvae
from PIL import Image

import tfvae as api
from tfvae.data import TEST_BINARIZATION_SEED, fixed_binarization, load_dataset
from tfvae.evaluation import evaluate_elbo

HUB_REPO = "someone/mnist-vae"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """The trained run's model as a user is given it: one file, alone in a folder."""
    path = tmp_path_factory.mktemp("given") / "digits.keras"
    shutil.copy(FINISHED_RUN_0_1_0 / "model.keras", path)
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist, write_idx):
    """An MNIST-format folder of the first 300 MNIST training and 200 test images."""
    folder = tmp_path_factory.mktemp("digits")
    for stem, images, labels in (
        ("train", mnist.train_images[:300], mnist.train_labels[:300]),
        ("t10k", mnist.test_images[:200], mnist.test_labels[:200]),
    ):
        write_idx(folder / f"{stem}-images-idx3-ubyte", images[..., 0])
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels)
    return folder


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_a_model_file_samples_what_its_run_samples(model_file, tmp_path):
    """`tfvae sample FILE` draws the run's pictures, written beside the file."""
    from_run = tmp_path / "run.png"
    assert invoke("sample", FINISHED_RUN_0_1_0, "-n", "16", "-o", from_run).exit_code == 0
    result = invoke("sample", model_file, "-n", "16")
    assert result.exit_code == 0, result.output
    written = model_file.parent / "samples-seed0.png"
    assert f"to {written}" in result.output
    np.testing.assert_array_equal(pixels(written), pixels(from_run))


def test_a_model_file_is_scored_on_the_images_named(model_file, digits):
    """`evaluate FILE --dataset` gives the run folder's figures on the same
    images, and those of `evaluate_elbo` on their fixed binarization."""
    figures = []
    for source in (model_file, FINISHED_RUN_0_1_0):
        result = invoke("evaluate", source, "--dataset", f"idx:{digits}", "--json")
        assert result.exit_code == 0, result.output
        figures.append(json.loads(result.output.splitlines()[-1]))
    from_file, from_run = figures
    assert from_file == from_run
    data = load_dataset(f"idx:{digits}")
    images = fixed_binarization(data, data.test_images, TEST_BINARIZATION_SEED)
    expected = evaluate_elbo(api.load_model(model_file), images)
    assert from_file["n_images"] == 200
    assert from_file["elbo"] == pytest.approx(expected["elbo"], abs=1e-4)
    assert -from_file["elbo"] == pytest.approx(100, abs=25)  # a trained model's figure


@pytest.mark.parametrize("command", ["evaluate", "reconstruct", "interpolate", "score"])
def test_a_model_file_names_no_images(command, model_file):
    assert_clean_failure(invoke(command, model_file), str(model_file), "--dataset")


def test_a_model_file_reconstructs_as_its_run(model_file, digits, tmp_path):
    outputs = {}
    for name, source in (("file", model_file), ("run", FINISHED_RUN_0_1_0)):
        outputs[name] = tmp_path / f"{name}.png"
        result = invoke(
            "reconstruct", source, "--dataset", f"idx:{digits}", "-n", "8", "-o", outputs[name]
        )
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(pixels(outputs["file"]), pixels(outputs["run"]))


def test_a_model_file_sets_no_threshold(model_file, digits, tmp_path):
    """Which images a lone model never saw is unknown: `score` refuses to
    set a threshold, and scores without one as the run folder does."""
    spec = f"idx:{digits}"
    error = assert_clean_failure(invoke("score", model_file, "--dataset", spec), "--no-threshold")
    assert str(model_file) in error
    rows = {}
    for name, source in (("file", model_file), ("run", FINISHED_RUN_0_1_0)):
        rows[name] = tmp_path / f"{name}.csv"
        args = ("--split", "test", "-k", "4", "--score", "nll", "--no-threshold", "-o", rows[name])
        result = invoke("score", source, "--dataset", spec, *args)
        assert result.exit_code == 0, result.output
    assert rows["file"].read_text() == rows["run"].read_text()
    assert len(rows["file"].read_text().splitlines()) == 201


def test_a_model_file_exports_checked_on_its_own_draws(model_file, tmp_path):
    """With no data, the files are checked on draws from the model's p(x|z);
    the model is named after the file."""
    result = invoke("export", model_file, "--format", "tflite", "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert "checked against Keras on 256 images drawn from the model" in result.output
    (record,) = json.loads(result.output.splitlines()[-1])["exports"]
    assert record["path"] == str(tmp_path / "digits" / "tflite")
    manifest = json.loads((tmp_path / "digits" / "tflite" / "manifest.json").read_text())
    assert manifest["files"], manifest


def test_load_model_reads_every_form_of_a_model(model_file, tmp_path):
    """A run folder, a `.keras` file and a Keras model folder (the form the
    Hugging Face Hub keeps) give the same weights."""
    from_run = api.load_model(FINISHED_RUN_0_1_0)
    folder = tmp_path / "as-folder"
    from_run.save(folder, zipped=False)
    for source in (model_file, folder):
        model = api.load_model(source)
        assert isinstance(model, api.VAE)
        for ours, theirs in zip(model.get_weights(), from_run.get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def hub_cache(tmp_path, model) -> dict[str, str]:
    """A Hugging Face cache holding `model` as `HUB_REPO`, read offline: the
    very files and code path `hf://` takes once the repository is downloaded."""
    owner, name = HUB_REPO.split("/")
    repo, commit = tmp_path / "hub" / f"models--{owner}--{name}", "0" * 40
    model.save(repo / "snapshots" / commit, zipped=False)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow  # two real processes
def test_an_hf_path_loads_through_the_hub(tmp_path):
    """`tfvae sample hf://owner/repo` (a real process, Keras' own download
    path, offline from a filled cache) draws the run's samples; a repository
    not there is one line naming it."""
    env = hub_cache(tmp_path, api.load_model(FINISHED_RUN_0_1_0))
    out = tmp_path / "hub.png"
    tfvae("sample", f"hf://{HUB_REPO}", "-n", "9", "-o", out, env=env)
    expected = tmp_path / "run.png"
    assert invoke("sample", FINISHED_RUN_0_1_0, "-n", "9", "-o", expected).exit_code == 0
    np.testing.assert_array_equal(pixels(out), pixels(expected))
    missing = tfvae("sample", "hf://someone/absent", "-o", out, env=env, check=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("Error: hf://someone/absent: cannot be loaded")
