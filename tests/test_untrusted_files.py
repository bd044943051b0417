"""Damaged and hostile run folders, and the command line's own file handling:
each is refused in one line, and no code inside a file ever runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import keras
import pytest
from harness import (
    assert_clean_failure,
    invoke,
)

from tfvae import export
from tfvae.errors import RunError
from tfvae.model import VAE
from tfvae.runs import load_run

ROOT = Path(__file__).resolve().parents[1]


# --- untrusted files ----------------------------------------------------------------


def lambda_model_file(path: Path, marker: Path) -> Path:
    """A .keras file whose Lambda layer, if its code ever ran, would create `marker`."""
    code = f"lambda t: t + float(__import__('pathlib').Path({str(marker)!r}).touch() or 0)"
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Lambda(eval(code))(inputs))
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model may have run the lambda
    return path


def test_model_with_code_is_refused_and_its_code_never_runs(copy_of_tiny_run, tmp_path):
    marker = tmp_path / "code-ran"
    lambda_model_file(copy_of_tiny_run / "model.keras", marker)
    with pytest.raises(RunError, match="cannot be loaded safely.*Lambda"):
        load_run(copy_of_tiny_run)
    for args in (["evaluate"], ["sample"], ["reconstruct"], ["export", "--out", str(tmp_path)]):
        result = invoke(args[0], str(copy_of_tiny_run), *args[1:])
        assert_clean_failure(result, "model.keras", "cannot be loaded safely", "Lambda")
    assert not marker.exists()
    # Control: the file really carries code that runs when loaded unsafely.
    keras.models.load_model(copy_of_tiny_run / "model.keras", safe_mode=False)
    assert marker.exists()


def test_model_config_naming_a_foreign_function_is_refused(copy_of_tiny_run):
    """A layer whose activation names `os.system` is refused, not imported."""
    path = copy_of_tiny_run / "model.keras"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    text = members["config.json"].decode()
    hostile = json.dumps(
        {
            "module": "os",
            "class_name": "function",
            "config": "system",
            "registered_name": "function",
        }
    )
    text, count = re.subn(r'"activation": "\w+"', f'"activation": {hostile}', text, count=1)
    assert count == 1
    members["config.json"] = text.encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(RunError, match="cannot be loaded safely"):
        load_run(copy_of_tiny_run)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"not a zip file", id="not-a-zip"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:100] + bytes(200) + b[300:], id="zeroed-bytes"),
    ],
)
def test_damaged_model_file_is_one_clear_line(copy_of_tiny_run, damage):
    """Named, with the one command that repairs it (no checkpoint is kept
    once a run finishes)."""
    path = copy_of_tiny_run / "model.keras"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RunError, match="damaged"):
        load_run(copy_of_tiny_run)
    result = invoke("evaluate", str(copy_of_tiny_run))
    assert_clean_failure(result, str(path), f"'tfvae resume {copy_of_tiny_run} --restart'")


def test_model_file_with_another_model_is_refused(copy_of_tiny_run):
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten()])
    model.save(copy_of_tiny_run / "model.keras")
    result = invoke("evaluate", str(copy_of_tiny_run))
    assert_clean_failure(result, "model.keras")


def test_model_file_that_contradicts_config_is_refused(copy_of_tiny_run):
    VAE(image_shape=(8, 8, 1), latent_dim=2, hidden_units=(16,)).save(
        copy_of_tiny_run / "model.keras"
    )
    result = invoke("evaluate", str(copy_of_tiny_run))
    assert_clean_failure(result, "image_shape")


CONFIG_DAMAGE = [
    # (where, key, bad value, name the message must contain)
    ("config", "epochs", "10", "epochs"),
    ("config", "latent_dim", -1, "latent_dim"),
    ("config", "latent_dim", 2.0, "latent_dim"),
    ("config", "hidden_units", [0], "hidden_units"),
    ("config", "hidden_units", "400", "hidden_units"),
    ("config", "learning_rate", "fast", "learning_rate"),
    ("config", "learning_rate", float("nan"), "learning_rate"),
    ("config", "learning_rate", 10, "learning_rate"),
    ("config", "beta", float("inf"), "beta"),
    ("config", "k", 0, "k"),
    ("config", "resize", [0, 28], "resize"),
    ("config", "jit_compile", "yes", "jit_compile"),
    pytest.param(
        "config",
        "mixed_precision",
        1,
        "mixed_precision",
    ),
    ("config", "limit", True, "limit"),
    ("config", "seed", -5, "seed"),
    ("config", "arch", "rnn", "arch"),
    ("config", "dataset", 7, "dataset"),
    ("config", "data_dir", ["x"], "data_dir"),
    ("config", "strategy", "gpu", "strategy"),
    ("config", "unknown_knob", 1, "unknown_knob"),
    ("top", "image_shape", [28, 28], "image_shape"),
    ("top", "image_shape", [28, 28, True], "image_shape"),
    ("top", "image_shape", [28, 28, 10**9], "image_shape"),
    ("top", "status", "done", "status"),
    ("top", "config", [1, 2], "config"),
]


def _damage_id(case) -> str:
    where, key, bad, _ = case.values if hasattr(case, "values") else case
    return f"{key}={bad!r}"


@pytest.mark.parametrize(
    ("where", "key", "bad", "named"), CONFIG_DAMAGE, ids=[_damage_id(c) for c in CONFIG_DAMAGE]
)
def test_config_json_is_validated_before_use(copy_of_tiny_run, tmp_path, where, key, bad, named):
    """Wrong types, out-of-range values and unknown keys: exit 1, one line naming the key."""
    path = copy_of_tiny_run / "config.json"
    state = json.loads(path.read_text())
    (state["config"] if where == "config" else state)[key] = bad
    path.write_text(json.dumps(state))
    for args in (["evaluate"], ["export", "--out", str(tmp_path / "exports")]):
        result = invoke(args[0], str(copy_of_tiny_run), *args[1:])
        error = assert_clean_failure(result)
        assert named in error
    assert not (tmp_path / "exports").exists()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[]", id="a-list"),
        pytest.param('"config"', id="a-string"),
        pytest.param("\xff\xfe{", id="not-utf8"),
        pytest.param('{"config": {}, "image_shape": [28, 28, 1], "status": "finished"', id="cut"),
    ],
)
def test_config_json_that_is_not_an_object_is_refused(copy_of_tiny_run, text):
    (copy_of_tiny_run / "config.json").write_bytes(text.encode("latin-1"))
    assert_clean_failure(invoke("evaluate", str(copy_of_tiny_run)), "config.json")


def test_deeply_nested_config_json_is_refused(copy_of_tiny_run):
    (copy_of_tiny_run / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_clean_failure(invoke("evaluate", str(copy_of_tiny_run)), "config.json")


UNSAFE = {
    "pickle": r"\b(c?pickle|cloudpickle|dill|joblib|shelve|marshal)\b",
    "allow_pickle=True": r"allow_pickle\s*=\s*True",
    "safe_mode=False": r"safe_mode\s*=\s*False",
    "unsafe deserialization": r"enable_unsafe_deserialization",
    "yaml.load": r"yaml\.(unsafe_)?load\(",
    "torch.load": r"torch\.load\(",
}


def test_no_pickle_or_unsafe_loading_in_the_sources():
    hits = []
    sources = sorted([*(ROOT / "tfvae").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])
    assert len(sources) > 10
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for what, pattern in UNSAFE.items():
                if re.search(pattern, line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert hits == []
    assert "safe_mode=True" in (ROOT / "tfvae" / "runs.py").read_text()


RUN_FILES = re.compile(
    r"^(config\.json|metrics\.csv|model\.keras|[\w-]+\.png"
    r"|logs/(train|test|validation|pictures)/events\.out\.tfevents\.[\w.-]+)$"
)
EXPORT_FILES = re.compile(
    r"^(\d+/(saved_model\.pb|fingerprint\.pb|variables/variables\.(index|data-\d+-of-\d+)"
    r"|assets\.extra/tf_serving_warmup_requests)"
    r"|tflite/(encoder\.tflite|decoder\.tflite|manifest\.json))$"
)


def test_everything_tfvae_writes_is_a_known_non_pickle_format(
    tiny_finished_run, untrained_tiny_vae, tmp_path
):
    """Run folders hold JSON, CSV, PNG, TensorBoard events and a .keras zip of
    JSON + HDF5; exports hold protobuf (TF Serving's warm-up file: in a TFRecord),
    TF checkpoints, TFLite and JSON."""
    files = [
        p.relative_to(tiny_finished_run).as_posix()
        for p in tiny_finished_run.rglob("*")
        if p.is_file()
    ]
    assert [f for f in files if not RUN_FILES.match(f)] == []
    with zipfile.ZipFile(tiny_finished_run / "model.keras") as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
    export.export_savedmodel(untrained_tiny_vae, tmp_path, "vae")
    export.export_tflite(untrained_tiny_vae, tmp_path, "vae")
    base = tmp_path / "vae"
    files = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
    assert [f for f in files if not EXPORT_FILES.match(f)] == []


# --- the CLI's own file handling -------------------------------------------------------


@pytest.mark.parametrize("command", ["sample", "reconstruct"])
def test_output_into_a_missing_folder_is_one_line(tiny_finished_run, tmp_path, command):
    """The user's path and what to do, never tfvae's temporary file."""
    target = tmp_path / "no" / "such" / "folder" / "x.png"
    result = invoke(command, str(tiny_finished_run), "-n", "4", "-o", str(target))
    line = assert_clean_failure(result)
    assert line == f"Error: {target}: the folder {target.parent} does not exist; create it first"


@pytest.fixture
def read_only_run(tiny_finished_run, tmp_path):
    """A copy of the finished run on a real read-only file system (a tmpfs
    remounted read-only, needs root)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        shutil.copytree(tiny_finished_run, mount / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "run"
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_picture_into_a_read_only_run_folder_says_to_pass_o(read_only_run):
    result = invoke("sample", str(read_only_run), "-n", "4")
    line = assert_clean_failure(result)
    assert line == (
        f"Error: {read_only_run}/samples-seed0.png: Read-only file system: the folder "
        f"{read_only_run} is not writable; pass -o FILE to write the picture elsewhere"
    )
