"""How `tfvae.memory`'s training estimate compares with measured peak memory.

Runs `tfvae train` (one epoch on a few thousand MNIST images) for requests
that stress each part of the estimate (wide layers: weights and Adam state;
many IWAE samples and large batches: activations) and a small baseline, each
in its own process, and reads the process's peak resident memory. What a
request adds over the baseline is set beside what the estimate adds: the
estimate should be above the measurement (refusing only what cannot fit)
without being far above it (refusing what could).

    python benchmarks/memory_estimate.py

Writes `benchmarks/results/memory_estimate.json` with the machine.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_results  # noqa: E402

from tfvae import memory  # noqa: E402
from tfvae.config import TrainConfig  # noqa: E402

LIMIT = 4000  # training and test images of each run
# name -> (tfvae train options, the same as TrainConfig settings)
REQUESTS = {
    "baseline": (["--hidden", "16", "--latent-dim", "2"], {"hidden_units": (16,), "latent_dim": 2}),
    "wide 6000,6000": (["--hidden", "6000,6000"], {"hidden_units": (6000, 6000)}),
    "iwae k=500": (["--objective", "iwae", "--k", "500"], {"objective": "iwae", "k": 500}),
    "batch 4000, hidden 4000": (
        ["--batch-size", "4000", "--hidden", "4000"],
        {"batch_size": 4000, "hidden_units": (4000,)},
    ),
    "conv k=50": (
        ["--arch", "conv", "--k", "50", "--hidden", "256"],
        {"arch": "conv", "k": 50, "hidden_units": (256,)},
    ),
}


def peak_rss(options: list[str]) -> int:
    """Peak resident bytes of `tfvae train OPTIONS` (one epoch) in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "tfvae", "train", *options, "--epochs", "1"]
        command += ["--limit", str(LIMIT), "--run-dir", str(Path(folder) / "run")]
        subprocess.run(command, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main() -> None:
    rows, base = [], None
    for name, (options, settings) in REQUESTS.items():
        # ru_maxrss of children is the largest of any child so far: run the
        # smallest first and each request alone in its own measurement.
        peak = peak_rss(options) if base is None else _alone(options)
        need = memory.training_need(TrainConfig(**settings), (28, 28, 1), LIMIT, LIMIT)
        if base is None:
            base = (peak, need.total)
        measured, estimated = peak - base[0], need.total - base[1]
        rows.append(
            {
                "request": name,
                "peak_rss_mb": round(peak / 1e6),
                "measured_extra_mb": round(measured / 1e6),
                "estimated_extra_mb": round(estimated / 1e6),
                "estimate_parts_mb": {k: round(v / 1e6) for k, v in need.parts.items()},
                "estimate_over_measured": round(estimated / measured, 2) if measured > 0 else None,
            }
        )
        print(rows[-1])
    write_results("memory_estimate", {"limit": LIMIT, "rows": rows, "machine": machine(False)})


def _alone(options: list[str]) -> int:
    """`peak_rss` in a child of its own, so earlier children's peaks don't mask it."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import memory_estimate as m; "
        "print(m.peak_rss(sys.argv[2:]))"
    )
    here = str(Path(__file__).resolve().parent)
    out = subprocess.run(
        [sys.executable, "-c", code, here, *options], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
