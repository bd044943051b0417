"""Helpers shared by the benchmark scripts: the machine, memory, results files
and child processes that report one JSON result.

Importing this module does not import TensorFlow; `machine()` does, unless
asked not to, so a parent process that only orchestrates children stays light.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tfvae import __version__ as TFVAE_VERSION

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# A child prints its result on one line that starts with this marker.
RESULT_MARKER = "RESULT "


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpu_names() -> list[str]:
    """Names of the visible GPUs (imports TensorFlow)."""
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(str(details.get("device_name", gpu.name)))
    return names


def machine(with_gpus: bool = True) -> dict[str, Any]:
    """CPU, cores, load, OS and library versions; GPUs if `with_gpus` (imports TF)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "tensorflow_probability": _version("tensorflow-probability"),
        # The code that ran, not an editable install's metadata of when it was made.
        "tfvae": TFVAE_VERSION,
    }
    if with_gpus:
        info["gpus"] = gpu_names()
    return info


def warn_if_busy() -> None:
    """Say so when other work loads the machine: timings are then unreliable."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.3 * cores:
        print(
            f"WARNING: load average {load:.1f} on {cores} cores; other processes compete "
            "and the timings are unreliable (measure on an idle machine)",
            flush=True,
        )


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the repository (read-only), or None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write `payload` with date and commit to `results/<name>.json` (or `out`)."""
    path = out or RESULTS_DIR / f"{name}.json"
    document = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def emit_result(result: dict[str, Any]) -> None:
    """Print a child's result for `run_child` to pick up."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


_CAUSES = r"INVALID_ARGUMENT|NOT_FOUND|UNIMPLEMENTED|INTERNAL:|Trying to access"


class ChildError(RuntimeError):
    """A child process that ended without a result; `summary` is its error line."""

    def __init__(self, command: list[str], returncode: int, output: str):
        lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
        self.tail = "\n".join(lines[-20:])
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        causes = [line for line in lines if re.search(_CAUSES, line) and "cuInit" not in line]
        parts = [*(raised[-1:] or lines[-1:]), *causes[:1]]
        self.summary = " | ".join(parts) or f"exit status {returncode}, no output"
        super().__init__(f"child {command[:3]}... exited {returncode}: {self.summary}")


def run_child(command: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run `command` in a fresh process and return the dict it printed last
    after `RESULT ` (the PyTorch peer prints the same marker).

    The child's output (TensorFlow's chatter) is kept only for the error message.
    """
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise ChildError(command, proc.returncode, proc.stdout + proc.stderr)


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ info logs (set before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


TFVAE = [sys.executable, "-m", "tfvae"]


def tfvae(args: list[str]) -> str:
    """Run `tfvae ARGS` in a child process; exit with its error if it fails."""
    result = subprocess.run([*TFVAE, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"tfvae {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def train_and_score(train: list[str], run_dir: Path, eval_k: int) -> dict[str, Any]:
    """`tfvae train TRAIN --run-dir RUN_DIR`, then (EVAL_K > 0) `tfvae evaluate
    --k EVAL_K`: the commands, their wall-clock seconds, the final test scores
    and the curve of held-out -ELBO after every epoch against cumulative
    training seconds (from the run's metrics.csv, so a resumed run keeps its
    earlier epochs)."""
    train = [*train, "--run-dir", str(run_dir)]
    start = time.perf_counter()
    tfvae(["train", *train])
    train_seconds = time.perf_counter() - start
    return {
        "command": " ".join(["tfvae", "train", *train]),
        "train_seconds": round(train_seconds, 1),
        # A candidate of `choose.py` (eval_k 0) is not scored on the test set:
        # only the run chosen on validation is, once.
        **(score_test(run_dir, eval_k) if eval_k else {}),
        "curve": held_out_curve(run_dir),
        "trained_by": trained_by(run_dir),
        "machine": machine(with_gpus=False),
    }


def trained_by(run_dir: Path) -> list[dict[str, Any]] | None:
    """The code that trained the run (each start and resume), from the run
    itself: the checkout may have moved on since."""
    return json.loads((run_dir / "config.json").read_text()).get("provenance")


def held_out_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The run's held-out -ELBO after every epoch against cumulative training
    seconds, from its metrics.csv: `validation_neg_elbo` for a run trained
    with --validation (the test set is scored once, at the end), otherwise
    `test_neg_elbo`."""
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    held_out = "validation" if "validation_elbo" in header else "test"
    curve, clock = [], 0.0
    for row in rows[1:]:
        values = dict(zip(header, row.split(","), strict=True))
        clock += float(values["seconds"])
        curve.append(
            {
                "epoch": int(values["epoch"]),
                "seconds": round(clock, 1),
                f"{held_out}_neg_elbo": -float(values[f"{held_out}_elbo"]),
            }
        )
    return curve


def score_test(run_dir: Path, eval_k: int) -> dict[str, Any]:
    """`tfvae evaluate RUN_DIR --k EVAL_K` on the test set: its figures and seconds."""
    start = time.perf_counter()
    evaluate = ["evaluate", str(run_dir), "--k", str(eval_k), "--json"]
    scores = json.loads(tfvae(evaluate).strip().splitlines()[-1])
    return {
        "eval_command": " ".join(["tfvae", *evaluate[:-1]]),
        "eval_seconds": round(time.perf_counter() - start, 1),
        "test_nll": scores["nll"],
        "test_neg_elbo": -scores["elbo"],
        "active_units": scores["active_units"],
    }
