"""Run folders: the settings of a training run, its state and its files.

A run folder holds `config.json` (settings, versions, status), `model.keras`,
`metrics.csv`, `logs/` (TensorBoard), pictures, and while training runs a
`backup/` that lets an interrupted run resume. Files are written atomically
(temporary name, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

from tfvae.choices import (
    ACTIVATIONS,
    ARCHS,
    BINARIZATIONS,
    LR_SCHEDULES,
    OBJECTIVES,
    STRATEGIES,
)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.csv"
BACKUP_DIR = "backup"
# Seeds become int32 stateless-random seeds: larger values would wrap.
MAX_SEED = 2**31 - 1
LOGS_DIR = "logs"


class RunError(Exception):
    """A run folder that cannot be used as asked; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; stored in `config.json`.

    Defaults are the seed's model (784-400-20 MLP, Adam, batch 128), trained
    for 250 epochs with the learning rate falling from 2e-3 to 0 along a
    cosine: the best test likelihood this model reached in about ten minutes
    on a 2-core CPU (benchmarks/RESULTS.md compares the schedules).
    """

    dataset: str = "mnist"
    data_dir: str | None = None
    resize: tuple[int, int] | None = None
    arch: str = "mlp"
    latent_dim: int = 20
    hidden_units: tuple[int, ...] = (400,)
    activation: str = "relu"
    epochs: int = 250
    batch_size: int = 128
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"
    adam_epsilon: float = 1e-7
    binarize: str = "dynamic"
    objective: str = "elbo"
    k: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    seed: int = 0
    strategy: str = "auto"
    jit_compile: bool | None = None
    mixed_precision: bool = False
    steps_per_execution: int | None = None
    limit: int | None = None
    init_from: str | None = None

    def __post_init__(self):
        def need(ok: bool, field: str, allowed: str):
            if not ok:
                raise RunError(f"config: {field}={getattr(self, field)!r} is invalid; {allowed}")

        need(isinstance(self.dataset, str) and bool(self.dataset), "dataset", "a data set name")
        need(self.data_dir is None or isinstance(self.data_dir, str), "data_dir", "a folder")
        need(
            self.resize is None
            or (
                isinstance(self.resize, tuple)
                and len(self.resize) == 2
                and all(_is_int(d) and 1 <= d <= 4096 for d in self.resize)
            ),
            "resize",
            "two sizes in 1..4096 (height, width)",
        )
        need(self.arch in ARCHS, "arch", f"one of {', '.join(ARCHS)}")
        for field in ("latent_dim", "epochs", "batch_size", "k"):
            value = getattr(self, field)
            need(_is_int(value) and value >= 1, field, "a positive integer")
        need(
            isinstance(self.hidden_units, tuple)
            and len(self.hidden_units) > 0
            and all(_is_int(u) and u >= 1 for u in self.hidden_units),
            "hidden_units",
            "positive layer sizes",
        )
        need(self.activation in ACTIVATIONS, "activation", f"one of {', '.join(ACTIVATIONS)}")
        need(
            isinstance(self.learning_rate, float) and 0 < self.learning_rate < 10,
            "learning_rate",
            "a number in (0, 10)",
        )
        need(
            isinstance(self.adam_epsilon, float) and 0 < self.adam_epsilon <= 1,
            "adam_epsilon",
            "a number in (0, 1]",
        )
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
        need(self.binarize in BINARIZATIONS, "binarize", f"one of {', '.join(BINARIZATIONS)}")
        need(
            _is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
            "seed",
            f"an integer in 0..{MAX_SEED}",
        )
        need(self.strategy in STRATEGIES, "strategy", f"one of {', '.join(STRATEGIES)}")
        need(self.objective in OBJECTIVES, "objective", f"one of {', '.join(OBJECTIVES)}")
        need(
            isinstance(self.beta, float) and 0 <= self.beta <= 1000, "beta", "a number in [0, 1000]"
        )
        need(_is_int(self.kl_warmup) and self.kl_warmup >= 0, "kl_warmup", "epochs >= 0")
        need(
            self.jit_compile is None or isinstance(self.jit_compile, bool),
            "jit_compile",
            "true, false or null (auto)",
        )
        need(
            self.steps_per_execution is None
            or (_is_int(self.steps_per_execution) and self.steps_per_execution >= 1),
            "steps_per_execution",
            "a positive integer or null (auto)",
        )
        need(isinstance(self.mixed_precision, bool), "mixed_precision", "true or false")
        need(self.limit is None or (_is_int(self.limit) and self.limit >= 1), "limit", "> 0")
        need(
            self.init_from is None or (isinstance(self.init_from, str) and bool(self.init_from)),
            "init_from",
            "a finished run folder or null",
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Validate untrusted JSON: unknown keys and wrong types are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise RunError(f"config: unknown settings {sorted(unknown)}")
        values = dict(values)
        # Runs from before the setting existed trained at a constant rate;
        # resuming one under today's default would switch schedules mid-run.
        values.setdefault("lr_schedule", "constant")
        for field in ("hidden_units", "resize"):
            if isinstance(values.get(field), list):
                values[field] = tuple(values[field])
        for field in ("learning_rate", "adam_epsilon", "beta"):
            if _is_int(values.get(field)):
                values[field] = float(values[field])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        values["resize"] = None if self.resize is None else list(self.resize)
        return values


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` via a temporary sibling and `os.replace` (all or nothing)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import tfvae

    return {
        "tfvae": tfvae.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_probability": tfp.__version__,
        "python": platform.python_version(),
    }


@dataclasses.dataclass
class RunState:
    """What `config.json` says about a run: settings, data shape and status."""

    config: TrainConfig
    image_shape: tuple[int, int, int]
    status: str = "running"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "config": self.config.to_dict(),
                "image_shape": list(self.image_shape),
                "status": self.status,
                **self.extra,
            },
            indent=2,
        )


def write_state(run_dir: Path, state: RunState) -> None:
    write_atomic(run_dir / CONFIG_FILE, state.to_json() + "\n")


def read_state(run_dir: str | Path) -> RunState:
    """Read and validate `config.json`; any defect is a `RunError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder; train one with 'tfvae train'")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise RunError(f"{path}: unreadable ({err}); the run folder is damaged") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise RunError(f"{path}: no 'config' object; the run folder is damaged")
    shape = raw.get("image_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(_is_int(d) and 1 <= d <= 4096 for d in shape)
    ):
        raise RunError(f"{path}: image_shape {shape!r} is invalid")
    status = raw.get("status")
    if status not in ("running", "finished"):
        raise RunError(f"{path}: status {status!r} is invalid")
    extra = {k: v for k, v in raw.items() if k not in ("config", "image_shape", "status")}
    return RunState(TrainConfig.from_dict(raw["config"]), tuple(shape), status, extra)


@dataclasses.dataclass
class Run:
    """A finished run: its folder, state and trained model."""

    path: Path
    state: RunState
    model: Any


def load_run(run_dir: str | Path) -> Run:
    """Load a finished run's model in Keras safe mode (no code from the file runs)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    model_path = run_dir / MODEL_FILE
    if state.status != "finished" or not model_path.is_file():
        raise RunError(
            f"{run_dir}: training has not finished; rerun the same 'tfvae train "
            f"--run-dir {run_dir}' command to resume it"
        )
    model = load_model_file(model_path)
    from tfvae.model import VAE

    if not isinstance(model, VAE):
        raise RunError(f"{model_path}: holds a {type(model).__name__}, not a tfvae VAE")
    if tuple(model.image_shape) != state.image_shape or model.latent_dim != state.config.latent_dim:
        raise RunError(
            f"{model_path}: the model (image_shape {tuple(model.image_shape)}, latent_dim "
            f"{model.latent_dim}) does not match config.json (image_shape "
            f"{state.image_shape}, latent_dim {state.config.latent_dim}); the run folder is damaged"
        )
    return Run(run_dir, state, model)


def load_model_file(path: Path):
    import keras

    import tfvae.model  # noqa: F401  (registers the serializable classes)

    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"{path}: cannot be loaded safely ({first_line})") from None
