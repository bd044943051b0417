"""A PyTorch twin of tfvae's two-layer MNIST VAE, and both trained in lockstep.

Issue #37 asks how fast tfvae's hierarchical model trains against the
one-layer model of the same width and against a plain PyTorch version of
the same model. `HierarchicalVAE` is tfvae's `--latent-dim 64,32 --hidden 512
--activation relu` model (`tfvae.layers.TopDownEncoder`, the MLP decoder)
layer for layer: the same widths and parameter count, a bottom-up pass, one
top-down network for q and the prior, q below the top as a residual of its
prior, the same ELBO (Bernoulli pixels from logits, each layer's analytic
KL), Keras' initialisation and Adam, batch 128, MNIST dynamically binarized
each epoch as the PyTorch peer reads it. Written plainly, as the peer is.

torch is a benchmark-only dependency, in no requirements file: install the
CPU build into the project's environment with `pip install torch==2.13.0`.

    python benchmarks/torch_hierarchical.py train --epochs 3 --eval  # the PyTorch program
    python benchmarks/torch_hierarchical.py check   # tfvae's weights and noise: same terms
    python benchmarks/torch_hierarchical.py compare --pairs 16 [--parts a,b,elbo]

`train` prints `epoch N: ...` after every epoch, the marker `lockstep.py`
waits on. `compare` keeps two training programs alive and lets each through
one epoch in turn (`lockstep.py`): (a) tfvae's two-layer model against this
one, (b) tfvae's two-layer against its one-layer model of the same width
(`--latent-dim 64`); then each side's test -ELBO after `--elbo-epochs`. It
writes `results/torch_hierarchical.json`. Other work on a shared machine
slows the two programs unequally (torch's threads stall when a core is
taken), so each comparison is summarised over its quiet pairs too
(`summarise`), and parts measured apart (`--parts`) merge into one file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    BENCH_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    emit_result,
    held_out_curve,
    machine,
    run_child,
    tfvae,
    warn_if_busy,
    write_results,
)
from lockstep import Lockstep
from torch import nn
from torch.nn import functional as F
from train_throughput import TORCH_EPOCH_MARKER, lockstep_child

NAME = "torch_hierarchical"
# tfvae's bundled copy: the same four files (same SHA-256) the peer reads.
MNIST_DIR = REPO_ROOT / "tfvae" / "resources" / "mnist"
LATENT_DIMS = (64, 32)  # bottom (next to x) first, as `--latent-dim 64,32`
WIDTH = 512
PIXELS = 784
BATCH = 128
LEARNING_RATE = 2e-3  # tfvae's default, the first stage of the published recipe
ADAM_EPSILON = 1e-7  # Keras' (torch's is 1e-8)
SCALE_FLOOR = 1e-4  # tfvae.likelihoods.SCALE_FLOOR
SOFTPLUS_OF_ONE = math.log(math.e - 1)  # a fresh q below the top is its prior
# The published two-layer run's settings (its config.json), trained by the ELBO.
TFVAE_MODEL = {
    "hidden_units": [WIDTH],
    "activation": "relu",
    "batch_size": BATCH,
    "objective": "elbo",
    "k": 1,
    "likelihood": "bernoulli",
    "binarize": "dynamic",
    "dataset": "mnist",
    "learning_rate": LEARNING_RATE,
    "lr_schedule": "constant",
}


# --- data: as the PyTorch peer reads MNIST -----------------------------------


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 `[n, 784]` from a gzipped IDX file: no framework's loader, so
    both sides train on the very same pixels."""
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise ValueError(f"{path}: not an IDX image file (magic {magic})")
        return np.frombuffer(f.read(n * rows * cols), np.uint8).reshape(n, rows * cols)


def load_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Training and test intensities in [0, 1], float32 `[n, 784]`."""
    train = read_idx_images(folder / "train-images-idx3-ubyte.gz")
    test = read_idx_images(folder / "t10k-images-idx3-ubyte.gz")
    return train.astype(np.float32) / 255.0, test.astype(np.float32) / 255.0


def fixed_binarized_test(test: np.ndarray, seed: int = 0) -> np.ndarray:
    """One binarization of the test set (numpy seed 0, the peer's), so every
    test -ELBO of this script scores the same binary images."""
    u = np.random.default_rng(seed).random(test.shape, dtype=np.float32)
    return (u < test).astype(np.float32)


# --- the model -----------------------------------------------------------------


def gaussian(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean, stddev)` from 2n numbers, as `tfvae.layers.gaussian_params`:
    softplus plus a floor keeps the scale positive without an exp."""
    mean, raw_scale = raw.chunk(2, dim=-1)
    return mean, F.softplus(raw_scale) + SCALE_FLOOR


def kl_normal(
    q: tuple[torch.Tensor, torch.Tensor], p: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """KL(q || p) `[batch]` between diagonal Gaussians (p None: N(0, I)), in
    closed form as TFP's `kl_divergence` gives it: no sampling noise."""
    (mq, sq), (mp, sp) = q, p or (torch.zeros_like(q[0]), torch.ones_like(q[1]))
    ratio = sq / sp
    return 0.5 * (((mq - mp) / sp) ** 2 + ratio**2 - 1 - 2 * torch.log(ratio)).sum(-1)


class HierarchicalVAE(nn.Module):
    """tfvae's two-layer MLP VAE; each attribute is named after the Keras
    layer it stands for (`copy_from_tfvae` maps them), x -> z_1 (64) -> z_2 (32).

    Bottom-up: d_1 = relu(body(x)), d_2 = relu(up_2(d_1)); q(z_2|x) =
    N(q_2(d_2)). Top-down: h_1 = relu(down_1(z_2)), p(z_1|z_2) = N(p_1(h_1)),
    and q(z_1|z_2, x) = N(mu_p + dmu, sigma_p * r) with (dmu, r) = q_1([d_1, h_1]).
    Decoder: logits = out(relu(dec(z_1))).
    """

    def __init__(self) -> None:
        super().__init__()
        bottom, top = LATENT_DIMS
        self.body = nn.Linear(PIXELS, WIDTH)
        self.up_2 = nn.Linear(WIDTH, WIDTH)
        self.down_1 = nn.Linear(top, WIDTH)
        self.q_1 = nn.Linear(2 * WIDTH, 2 * bottom)
        self.q_2 = nn.Linear(WIDTH, 2 * top)
        self.p_1 = nn.Linear(WIDTH, 2 * bottom)
        self.dec = nn.Linear(bottom, WIDTH)
        self.out = nn.Linear(WIDTH, PIXELS)
        for layer in self.children():  # Keras' Dense: Glorot-uniform kernel, zero bias
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def elbo_terms(self, x: torch.Tensor, noise: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image log p(x|z_1), each layer's KL and the ELBO `[batch]`, for
        standard normal `noise` per layer (bottom first, as tfvae splits it)."""
        d_1 = F.relu(self.body(x))
        q_2 = gaussian(self.q_2(F.relu(self.up_2(d_1))))
        z_2 = q_2[0] + q_2[1] * noise[1]
        h_1 = F.relu(self.down_1(z_2))
        p_1 = gaussian(self.p_1(h_1))
        shift, raw_ratio = self.q_1(torch.cat([d_1, h_1], dim=-1)).chunk(2, dim=-1)
        q_1 = (p_1[0] + shift, p_1[1] * (F.softplus(raw_ratio + SOFTPLUS_OF_ONE) + SCALE_FLOOR))
        z_1 = q_1[0] + q_1[1] * noise[0]
        logits = self.out(F.relu(self.dec(z_1)))
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl_1, kl_2 = kl_normal(q_1, p_1), kl_normal(q_2, None)
        return {"log_likelihood": log_px, "kl_1": kl_1, "kl_2": kl_2, "elbo": log_px - kl_1 - kl_2}

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The batch's mean -ELBO, one z per image: tfvae divides by the batch
        too, which keeps Adam's epsilon on the same scale of gradients."""
        noise = [torch.randn(x.shape[0], n) for n in LATENT_DIMS]
        return -self.elbo_terms(x, noise)["elbo"].mean()


def parameter_count(model: nn.Module) -> int:
    """Every weight and bias: printed beside tfvae's, the first sign the two
    models are one model."""
    return sum(p.numel() for p in model.parameters())


# --- training ------------------------------------------------------------------


def train_epoch(model: HierarchicalVAE, opt: torch.optim.Optimizer, train: torch.Tensor) -> float:
    """One pass over freshly binarized, shuffled images (as the peer trains);
    its mean training -ELBO. The last batch is partial, as in tfvae."""
    binary = torch.bernoulli(train)
    order = torch.randperm(train.shape[0])
    total = 0.0
    for start in range(0, train.shape[0], BATCH):
        batch = binary[order[start : start + BATCH]]
        opt.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        opt.step()
        total += loss.item() * batch.shape[0]
    return total / train.shape[0]


@torch.no_grad()
def test_neg_elbo(model: HierarchicalVAE, test: np.ndarray, seed: int = 0) -> float:
    """Mean -ELBO on the fixed binarization, one z per image as tfvae's test
    pass draws; a seeded generator makes it a function of the weights."""
    generator = torch.Generator().manual_seed(seed)
    images, total = torch.from_numpy(fixed_binarized_test(test)), 0.0
    for start in range(0, images.shape[0], 1000):
        x = images[start : start + 1000]
        noise = [torch.randn(x.shape[0], n, generator=generator) for n in LATENT_DIMS]
        total += -model.elbo_terms(x, noise)["elbo"].sum().item()
    return total / images.shape[0]


def train_program(args: argparse.Namespace) -> None:
    """The PyTorch program: `--epochs` epochs, a marker line after each (for
    `lockstep.py`), then one result line; the first epoch is the warm-up."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_np, test_np = load_mnist(args.mnist_dir)
    train = torch.from_numpy(train_np)
    model = HierarchicalVAE()
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate, eps=ADAM_EPSILON)
    seconds, losses = [], []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        losses.append(train_epoch(model, opt, train))
        seconds.append(time.perf_counter() - start)
        print(f"epoch {epoch + 1}: {seconds[-1]:.3f}s  train -ELBO {losses[-1]:.3f}", flush=True)
    steady = seconds[1:] or seconds
    result = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seed": args.seed,
        "epochs": args.epochs,
        "epoch_s": [round(s, 4) for s in seconds],
        "images_per_s": train.shape[0] / statistics.median(steady),
        "train_neg_elbo": losses,
        "parameters": parameter_count(model),
    }
    if args.eval:
        result["test_neg_elbo"] = test_neg_elbo(model, test_np)
    emit_result(result)


# --- the same model: tfvae's weights and noise in both -------------------------


def tfvae_two_layer() -> Any:
    """tfvae's two-layer VAE, freshly initialised (imports TensorFlow)."""
    from tfvae.config import ModelConfig
    from tfvae.model import VAE

    shape = {"latent_dim": LATENT_DIMS, "hidden_units": (WIDTH,), "activation": "relu"}
    return VAE((28, 28, 1), ModelConfig(**shape), seed=0)


def copy_from_tfvae(vae: Any, model: HierarchicalVAE) -> None:
    """Each Keras Dense's kernel (transposed) and bias into the layer that
    stands for it, so the two compute on the same weights."""
    enc, dec = vae.encoder, vae.decoder
    dense = [layer for layer in dec.body.layers if hasattr(layer, "kernel")]
    pairs = {
        "body": [layer for layer in enc.body.layers if hasattr(layer, "kernel")][0],
        "up_2": enc.up[0],
        "down_1": enc.down[0],
        "q_1": enc.q_heads[0],
        "q_2": enc.q_heads[1],
        "p_1": enc.p_heads[0],
        "dec": dense[0],
        "out": dense[1],
    }
    with torch.no_grad():
        for name, keras_layer in pairs.items():
            layer = getattr(model, name)
            layer.weight.copy_(torch.from_numpy(np.asarray(keras_layer.kernel).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.asarray(keras_layer.bias)))


def check(images: int = 256) -> dict[str, Any]:
    """Both models' parameter counts, and the largest difference between
    their per-image ELBO terms on the same weights, images and noise: a
    wrong wire anywhere shows as nats, float32 rounding as 1e-4."""
    vae, model = tfvae_two_layer(), HierarchicalVAE()
    copy_from_tfvae(vae, model)
    x = fixed_binarized_test(load_mnist(MNIST_DIR)[1][:images])
    noise = np.random.default_rng(1).standard_normal((images, sum(LATENT_DIMS)), np.float32)
    theirs = vae.elbo_terms(x.reshape(-1, 28, 28, 1), noise=noise)
    split = [torch.from_numpy(n) for n in np.split(noise, [LATENT_DIMS[0]], axis=1)]
    ours = model.elbo_terms(torch.from_numpy(x), split)
    ours["kl"] = ours["kl_1"] + ours["kl_2"]
    diff = {
        term: float(np.max(np.abs(np.asarray(theirs[term]) - ours[term].detach().numpy())))
        for term in ("log_likelihood", "kl", "elbo")
    }
    return {
        "tfvae_parameters": int(sum(np.prod(w.shape) for w in vae.trainable_weights)),
        "torch_parameters": parameter_count(model),
        "images": images,
        "max_abs_difference_nats": diff,
        "mean_elbo": float(np.mean(np.asarray(theirs["elbo"]))),
    }


# --- in lockstep ---------------------------------------------------------------


def tfvae_program(latent_dim: list[int], pairs: int, log: Path) -> Lockstep:
    """tfvae's model of `latent_dim` as `train_throughput.py`'s training child."""
    return lockstep_child({**TFVAE_MODEL, "latent_dim": latent_dim}, pairs, log)


def torch_program(pairs: int, log: Path) -> Lockstep:
    """This file's `train` under `lockstep.py`, which holds it after each marker line."""
    script = [str(BENCH_DIR / "lockstep.py"), TORCH_EPOCH_MARKER, __file__, "train"]
    return Lockstep([sys.executable, *script, "--epochs", str(pairs + 1)], TORCH_EPOCH_MARKER, log)


TICK = os.sysconf("SC_CLK_TCK")
# A pair counts as quiet when other work took less than this share of the
# cores during each of its two epochs.
QUIET = 0.1


def machine_busy_s() -> float:
    """CPU seconds every process has used since boot, and those the
    hypervisor took (/proc/stat): less a program's own, what other work took
    from the cores while it ran."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split(maxsplit=11)[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICK


def process_cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has used, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def timed_epoch(program: Lockstep) -> tuple[float, float]:
    """One epoch's seconds, and the share of the cores other work took
    meanwhile: on a shared machine the load average cannot tell which of two
    alternating programs the others slowed, this can."""
    busy, own = machine_busy_s(), process_cpu_s(program.proc.pid)
    seconds = program.epoch()
    others = machine_busy_s() - busy - (process_cpu_s(program.proc.pid) - own)
    return seconds, max(0.0, others) / (seconds * (os.cpu_count() or 1))


Pair = tuple[tuple[float, float], tuple[float, float]]  # each: seconds, others' share


def in_lockstep(first: Lockstep, second: Lockstep, pairs: int) -> list[Pair]:
    """`pairs` adjacent epochs of each, after a warm-up epoch each; which one
    goes first alternates, so neither always runs on a warmer cache. Only
    these epochs are used: both programs are stopped after the last pair
    rather than let through to their own results."""
    try:
        first.epoch(), second.epoch()
        rows = []
        for index in range(pairs):
            if index % 2 == 0:
                a, b = timed_epoch(first), timed_epoch(second)
            else:
                b, a = timed_epoch(second), timed_epoch(first)
            rows.append((a, b))
            line = f"  pair {index + 1:2d}: {a[0]:.3f} s  {b[0]:.3f} s  ratio {b[0] / a[0]:.3f}"
            print(f"{line}  others took {a[1]:.0%} / {b[1]:.0%} of the cores", flush=True)
    finally:
        first.kill(), second.kill()
    return rows


def ratio_stats(rows: list[Pair], names: tuple[str, str]) -> dict[str, Any]:
    """The ratio first/second images/s over `rows`: median, quartiles, range,
    and each side's images/s from its median epoch (60,000 images)."""
    ratios = [b[0] / a[0] for a, b in rows]
    one = len(ratios) == 1  # quantiles needs two
    quartiles = ratios * 3 if one else statistics.quantiles(ratios, n=4, method="inclusive")
    return {
        "pairs": len(rows),
        "median_ratio": round(statistics.median(ratios), 4),
        "quartiles": [round(quartiles[0], 4), round(quartiles[-1], 4)],
        "range": [round(min(ratios), 4), round(max(ratios), 4)],
        f"{names[0]}_images_per_s": round(60000 / statistics.median(a[0] for a, _ in rows)),
        f"{names[1]}_images_per_s": round(60000 / statistics.median(b[0] for _, b in rows)),
    }


def summarise(rows: list[Pair], names: tuple[str, str]) -> dict[str, Any]:
    """The ratio over every pair, and over the quiet ones alone: other work
    on the cores slows the two programs unequally, so the quiet pairs are the
    comparison and the rest says how much the others move it."""
    quiet = [(a, b) for a, b in rows if a[1] < QUIET and b[1] < QUIET]
    return {
        "ratio": f"{names[0]} / {names[1]} images/s",
        "all": ratio_stats(rows, names),
        "quiet": ratio_stats(quiet, names) if quiet else None,
        "quiet_means": f"other work took < {QUIET:.0%} of the cores in both epochs",
        "epochs": [
            {
                f"{names[0]}_s": round(a[0], 4),
                f"{names[1]}_s": round(b[0], 4),
                f"{names[0]}_others_share": round(a[1], 3),
                f"{names[1]}_others_share": round(b[1], 3),
            }
            for a, b in rows
        ],
    }


def measure_pairs(against: str, pairs: int) -> dict[str, Any]:
    """(a) `torch` or (b) `one-layer` against tfvae's two-layer model, in lockstep."""
    with tempfile.TemporaryDirectory() as tmp:
        two = tfvae_program(list(LATENT_DIMS), pairs, Path(tmp) / "two.log")
        if against == "torch":
            other, names = torch_program(pairs, Path(tmp) / "other.log"), ("tfvae_2", "torch_2")
        else:
            other = tfvae_program([LATENT_DIMS[0]], pairs, Path(tmp) / "other.log")
            names = ("tfvae_2", "tfvae_1")
        print(f"{names[0]} against {names[1]}, {pairs} epoch pairs:", flush=True)
        return summarise(in_lockstep(two, other, pairs), names)


# --- the same model: test -ELBO after the same training ------------------------


def tfvae_neg_elbo(epochs: int, seed: int) -> float:
    """tfvae's two-layer model trained `epochs` epochs: its test -ELBO, from
    the test pass `tfvae train` runs after every epoch (metrics.csv)."""
    shape = ["--latent-dim", ",".join(map(str, LATENT_DIMS)), "--hidden", str(WIDTH)]
    rest = ["--activation", "relu", "--batch-size", str(BATCH), "--objective", "elbo", "--k", "1"]
    rate = ["--learning-rate", str(LEARNING_RATE), "--lr-schedule", "constant"]
    with tempfile.TemporaryDirectory() as tmp:
        run = [*shape, *rest, *rate, "--epochs", str(epochs), "--seed", str(seed)]
        tfvae(["train", *run, "--pictures-every", "0", "--run-dir", f"{tmp}/run"])
        return held_out_curve(Path(tmp) / "run")[-1]["test_neg_elbo"]


def torch_neg_elbo(epochs: int, seed: int) -> float:
    """The PyTorch model trained `epochs` epochs (its own process): its test
    -ELBO. On one thread: the figure does not depend on it, and torch's two
    threads stall for minutes an epoch when other work shares the cores."""
    command = [sys.executable, __file__, "train", "--epochs", str(epochs), "--seed", str(seed)]
    return run_child([*command, "--threads", "1", "--eval"])["test_neg_elbo"]


def elbo_after(epochs: int, seeds: int) -> dict[str, Any]:
    """Each side's test -ELBO after the same epochs, for several seeds: one
    seed's difference alone would not separate a wrong model from chance."""
    tf_runs = [tfvae_neg_elbo(epochs, seed) for seed in range(seeds)]
    torch_runs = [torch_neg_elbo(epochs, seed) for seed in range(seeds)]
    print(f"test -ELBO after {epochs} epochs: tfvae {tf_runs}, torch {torch_runs}", flush=True)
    return {
        "epochs": epochs,
        "tfvae_test_neg_elbo": tf_runs,
        "torch_test_neg_elbo": torch_runs,
        "tfvae_mean": statistics.mean(tf_runs),
        "torch_mean": statistics.mean(torch_runs),
        "note": "tfvae's test set binarized by its keys, the PyTorch one by numpy seed 0",
    }


def versions() -> dict[str, Any]:
    """What the results depend on beyond `common.machine`: the architecture
    (`uname -m`), torch, the short commit the report quotes, and where the
    `tfvae` measured was imported from (a checkout's edits count too)."""
    import tfvae  # its API loads lazily: no TensorFlow here

    short = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "arch": platform.machine(),
        "torch": metadata.version("torch"),
        "commit": short,
        "tfvae_package": str(Path(tfvae.__file__).parent),
        "tfvae_version": tfvae.__version__,
    }


PARTS = ("a", "b", "elbo")


def earlier(path: Path, now: dict[str, Any]) -> dict[str, Any]:
    """The parts an earlier `compare` wrote to `path` on the same machine,
    versions and commit, so parts measured apart (a busy machine) make one file."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    keys = ("cpu", "cores", "tensorflow", "keras", "torch", "commit", "tfvae_package")
    same = all(previous.get("machine", {}).get(key) == now.get(key) for key in keys)
    return {part: previous[part] for part in PARTS if part in previous} if same else {}


def compare(args: argparse.Namespace) -> None:
    """The `--parts` asked for (a, b, elbo), with the check that both are one
    model, into one results file beside the parts measured earlier."""
    warn_if_busy()
    started, out = time.perf_counter(), args.out or RESULTS_DIR / f"{NAME}.json"
    parts = [part.strip() for part in args.parts.split(",")]
    same = run_child([sys.executable, __file__, "check"])
    print(f"same model: {same}", flush=True)
    now = {**machine(with_gpus=False), **versions()}
    measured: dict[str, Any] = {}
    if "a" in parts:
        measured["a"] = measure_pairs("torch", args.pairs)
    if "b" in parts:
        measured["b"] = measure_pairs("one-layer", args.pairs)
    if "elbo" in parts:
        measured["elbo"] = elbo_after(args.elbo_epochs, args.seeds)
    payload = {
        "machine": now,
        "settings": {**TFVAE_MODEL, "latent_dims": list(LATENT_DIMS)},
        "same_model": same,
        "parts": {"a": "tfvae 2-layer vs torch 2-layer", "b": "tfvae 2-layer vs 1-layer (64)"},
        **earlier(out, now),
        **measured,
        "measured_now": parts,
        "wall_s": round(time.perf_counter() - started),
    }
    print(f"wrote {write_results(NAME, payload, out)}")
    warn_if_busy()


def main() -> None:
    """`train`, `check` or `compare`, as the module docstring shows them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="the PyTorch program alone")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--threads", type=int, default=0, help="0: torch's default")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    train.add_argument("--eval", action="store_true", help="test -ELBO at the end")
    train.add_argument("--mnist-dir", type=Path, default=MNIST_DIR)
    commands.add_parser("check", help="same weights and noise in both: the ELBO terms")
    run = commands.add_parser("compare", help="(a) and (b) in lockstep, and the ELBOs")
    run.add_argument("--pairs", type=int, default=12, help="timed epoch pairs per comparison")
    run.add_argument("--parts", default=",".join(PARTS), help="a, b and/or elbo")
    run.add_argument("--elbo-epochs", type=int, default=3, help="epochs before the test -ELBO")
    run.add_argument("--seeds", type=int, default=3, help="training seeds per side")
    run.add_argument("--out", type=Path, help="results file (default results/NAME.json)")
    args = parser.parse_args()
    if args.command == "train":
        train_program(args)
    elif args.command == "check":
        emit_result(check())
    else:
        compare(args)


if __name__ == "__main__":
    main()
