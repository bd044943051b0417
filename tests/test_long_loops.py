"""Many trainings and exports in one process: descriptors and memory stay bounded."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest
from harness import (
    quiet,
)

import tfvae
from tfvae import export
from tfvae.config import TrainConfig

# --- loops with bounds ----------------------------------------------------------------


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


STRESS_ROUNDS, STRESS_WARMUP = 20, 3
# Measured with tfvae 0.1.0 (2-core CPU shared with other jobs, TF 2.21, Keras
# 3.15, TFP 0.25), over the 17 rounds after the warm-up: open descriptors
# 8 -> 8; RSS +16 to +18 MB per round, most of it graphs kept by TFP's bijector
# cache, which the posterior no longer goes through (test_model.py checks that
# its graphs are freed), and Keras' one train-step graph. The bounds leave
# about 2x margin over that.
MAX_FD_GROWTH = 3
MAX_RSS_GROWTH_PER_ROUND_MB = 35


@pytest.mark.slow
def test_many_trainings_and_exports_in_one_process(tmp_path, write_idx):
    """20 short trainings, each followed by an export, in one process: open file
    descriptors do not grow (at most +3), RSS grows less than 35 MB per round
    after 3 warm-up rounds (measured: ~16 MB per round, a known leak, see
    `test_repeated_exports_retain_no_graphs`). XLA is off: with it on, TF's
    compilation cache adds another ~20 MB per round that no tfvae code holds."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 256), ("t10k", 64)):
        write_idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(data / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    # latent_dim 4, not 2: a 2-D run also draws manifold.png and a matplotlib
    # scatter plot, which doubles each round's time without touching new code.
    config = TrainConfig(
        dataset=f"idx:{data}",
        epochs=1,
        hidden_units=(16,),
        latent_dim=4,
        batch_size=64,
        jit_compile=False,
    )
    samples = []
    for round_ in range(STRESS_ROUNDS):
        result = tfvae.train(config, tmp_path / f"run{round_}", verbose=0, echo=quiet)
        version = export.export_savedmodel(result.model, tmp_path / "exports", "vae")
        assert version.name == str(round_ + 1)
        del result
        gc.collect()
        samples.append((rss_mb(), open_fds()))
    (rss0, fds0), (rss1, fds1) = samples[STRESS_WARMUP - 1], samples[-1]
    per_round = (rss1 - rss0) / (STRESS_ROUNDS - STRESS_WARMUP)
    print(f"\nstress: RSS {rss0:.0f} -> {rss1:.0f} MB ({per_round:+.1f} MB/round)")
    print(f"stress: open descriptors {fds0} -> {fds1}")
    assert fds1 - fds0 <= MAX_FD_GROWTH, samples
    assert per_round <= MAX_RSS_GROWTH_PER_ROUND_MB, samples
    assert len(list((tmp_path / "exports" / "vae").iterdir())) == STRESS_ROUNDS


def live_graphs() -> int:
    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    return sum(isinstance(o, FuncGraph) for o in gc.get_objects())


@pytest.mark.slow
def test_repeated_exports_retain_no_graphs(untrained_tiny_vae, tmp_path):
    for _ in range(2):
        export.export_savedmodel(untrained_tiny_vae, tmp_path, "vae")
    before, rss_before = live_graphs(), rss_mb()
    for _ in range(3):
        export.export_savedmodel(untrained_tiny_vae, tmp_path, "vae")
    grown, rss_grown = live_graphs() - before, rss_mb() - rss_before
    assert grown == 0, f"{grown} graphs and {rss_grown:.0f} MB kept by 3 exports"
