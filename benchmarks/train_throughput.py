"""Training throughput of tfvae on MNIST: images/s and seconds per epoch.

Every configuration trains in its own fresh process (honest peak memory; the
logical-CPU split of `mlp-mirrored2` must precede TensorFlow's start-up), one
after the other: a warm-up epoch, then the median of `--epochs` timed epochs,
training only. Also measured: the float32 GEMM throughput and from it the
matmul bound of the MLP, and the PyTorch peer alternated with tfvae's default
configuration (`TrainConfig()`), reported as a speed ratio per round.

    python benchmarks/train_throughput.py                 # full measurement
    python benchmarks/train_throughput.py --quick         # a few minutes, noisy
    python benchmarks/train_throughput.py --only mlp,mlp-jit
    python benchmarks/train_throughput.py --mirrored2     # default vs mirrored vs jit
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    ChildError,
    emit_result,
    git_commit,
    machine,
    peak_rss_mb,
    quiet_tensorflow,
    run_child,
    warn_if_busy,
    write_results,
)
from lockstep import Lockstep, wait_for_turn

NAME = "train_throughput"
TORCH_PYTHON = REPO_ROOT / ".cache" / "venv-torch" / "bin" / "python"
TORCH_PEER = REPO_ROOT.parent / "shared" / "peers" / "torch_vae.py"

# Matmul FLOPs of the 784-400-20 MLP VAE per image (2 per multiply-add):
# encoder 784x400 and 400x(2*20), decoder 20x400 and 400x784.
FORWARD_FLOPS = 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)
TRAIN_FLOPS = 3 * FORWARD_FLOPS  # backward ~= 2x forward
# The issue note's comparison: default strategy vs mirrored vs jit, and the defaults.
MIRRORED2 = ("mlp", "mlp-mirrored2", "mlp-jit", "default", "default-mirrored2")
# Burda et al.'s model (`literature.py`) at their batch of 20: steps this short
# show the per-step costs that batch 128 hides.
BURDA_MODEL = {
    "hidden_units": [200, 200],
    "activation": "tanh",
    "latent_dim": 50,
    "batch_size": 20,
    "learning_rate": 1e-3,
}
GEMM_SHAPES = {"step": (128, 784, 400), "large": (1024, 1024, 1024)}
# What each side prints at the end of an epoch in `paired_epochs`.
EPOCH_MARKER = "EPOCH "
TORCH_EPOCH_MARKER = "epoch "


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration: `TrainConfig` overrides and how data comes in.

    `pipeline`: `default` (as `tfvae train`: uint8 images and their keys, the
    step draws pixels and noise), `cached` (batches kept in memory after the
    warm-up epoch: the input pipeline costs ~nothing).
    """

    name: str
    config: dict[str, Any]
    pipeline: str = "default"
    logical_cpus: int = 0
    note: str = ""


def cases(spe: int) -> dict[str, Case]:
    """Every configuration, by name, in the order a full run measures them.

    The `mlp*`/`conv*` grid fixes jit and steps per execution explicitly; the
    `default*` rows take everything else from `TrainConfig()`, so they follow
    the package's defaults (what `tfvae train` runs).
    """
    out: list[Case] = [default_case()]
    for arch in ("mlp", "conv"):
        for jit in (False, True):
            for steps in (1, spe):
                name = arch + ("-jit" if jit else "") + (f"-spe{steps}" if steps > 1 else "")
                config = {"arch": arch, "jit_compile": jit, "steps_per_execution": steps}
                out.append(Case(name, config, note=f"jit {jit}, {steps} step(s)/execution"))
        if arch == "mlp":
            mirrored = {"strategy": "mirrored"}
            out += [
                Case("default-static", {"binarize": "static"}, note="defaults, static binarize"),
                Case("default-cached", {}, "cached", note="defaults, batches cached: no input"),
                Case("burda", BURDA_MODEL, note="defaults, Burda's 784-200-200-50 tanh, batch 20"),
                Case(
                    "mlp-mirrored2",
                    {**mirrored, "jit_compile": False, "steps_per_execution": 1},
                    logical_cpus=2,
                    note="as mlp, MirroredStrategy over 2 logical CPUs",
                ),
                Case(
                    "default-mirrored2",
                    mirrored,
                    logical_cpus=2,
                    note="defaults, MirroredStrategy over 2 logical CPUs",
                ),
            ]
    return {case.name: case for case in out}


# --- children ------------------------------------------------------------------


def _train_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration in this (fresh) process and time its epochs."""
    quiet_tensorflow()
    import tensorflow as tf

    if spec["logical_cpus"]:  # before anything initialises the runtime
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"]
        )
    import keras

    from tfvae import data as datasets
    from tfvae.config import TrainConfig
    from tfvae.distribute import Placement
    from tfvae.fitting import compiled_vae

    started = time.perf_counter()
    config = TrainConfig.from_dict(spec["config"])
    if spec["limit"]:
        config = dataclasses.replace(config, limit=spec["limit"])
    placement = Placement.make(config.strategy, Path("unused"))
    if spec["logical_cpus"] and placement.replicas != spec["logical_cpus"]:
        raise RuntimeError(f"{placement.replicas} replicas, not {spec['logical_cpus']}")
    # As `tfvae.training.train` sets up, less validation, checkpoints and logs.
    data = datasets.RunData.load(config)
    model = compiled_vae(config, data, placement)
    train_ds, _, _ = placement.batches(data, config, config.seed)
    if spec["pipeline"] == "cached":
        train_ds = train_ds.cache().prefetch(tf.data.AUTOTUNE)

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.logs: dict[str, float] = {}
            self._start = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            self.logs = {k: float(v) for k, v in (logs or {}).items()}
            if spec.get("lockstep"):
                print(f"{EPOCH_MARKER}{epoch + 1}", flush=True)
                wait_for_turn()

    timer = EpochTimer()
    setup_s = time.perf_counter() - started
    model.fit(
        train_ds,
        epochs=spec["warmup"] + spec["epochs"],
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    timed = timer.seconds[spec["warmup"] :]
    n_images = len(data.data.train_images)
    median_s = statistics.median(timed)
    return {
        "config": config.to_dict(),
        "pipeline": spec["pipeline"],
        "jit_compile_resolved": bool(model.jit_compile),
        "steps_per_execution_resolved": int(model.steps_per_execution),
        "replicas": placement.replicas,
        "strategy_class": type(placement.strategy).__name__,
        "images_per_epoch": n_images,
        "warmup_epochs": spec["warmup"],
        "epoch_s": [round(s, 4) for s in timer.seconds],
        "median_s_per_epoch": median_s,
        "min_s_per_epoch": min(timed),
        "max_s_per_epoch": max(timed),
        "images_per_s": n_images / median_s,
        "train_loss_last": timer.logs.get("loss"),
        "setup_s": setup_s,
        "peak_rss_mb": peak_rss_mb(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _gemm_child(spec: dict[str, Any]) -> dict[str, Any]:
    """float32 GEMM GFLOP/s in TensorFlow for each shape, and the machine."""
    quiet_tensorflow()
    import tensorflow as tf

    @tf.function
    def repeat(a, b, iterations):
        # `a` travels as a loop variable, so no matmul can be hoisted out.
        def body(i, a, acc):
            return i + 1, a, acc + tf.matmul(a, b)[0, 0]

        return tf.while_loop(lambda i, a, acc: i < iterations, body, (0, a, 0.0))[2]

    results = {}
    for label, (m, k, n) in GEMM_SHAPES.items():
        a = tf.random.normal([m, k], seed=1)
        b = tf.random.normal([k, n], seed=2)
        flops = 2 * m * k * n
        repeat(a, b, tf.constant(2))  # trace
        iterations = 1
        while True:  # find a loop that lasts about `seconds / 5`
            start = time.perf_counter()
            repeat(a, b, tf.constant(iterations)).numpy()
            if time.perf_counter() - start > spec["seconds"] / 5 or iterations > 1e6:
                break
            iterations *= 2
        times = []
        for _ in range(5):
            start = time.perf_counter()
            repeat(a, b, tf.constant(iterations)).numpy()
            times.append(time.perf_counter() - start)
        gflops = flops * iterations / statistics.median(times) / 1e9
        results[label] = {"shape_mkn": [m, k, n], "iterations": iterations, "gflops": gflops}
    return {"gemm": results, "machine": machine()}


# --- parent --------------------------------------------------------------------


def _child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return run_child([sys.executable, __file__, f"--{kind}-child", json.dumps(spec)])


def measure(case: Case, epochs: int, limit: int | None, warmup: int = 1) -> dict[str, Any]:
    """Train `case` in a fresh process; its timings and peak memory."""
    spec = {
        "config": case.config,
        "pipeline": case.pipeline,
        "logical_cpus": case.logical_cpus,
        "epochs": epochs,
        "warmup": warmup,
        "limit": limit,
    }
    try:
        result = _child("train", spec)
    except ChildError as err:  # recorded, so a long run goes on
        result = {"error": err.summary, "output_tail": err.tail, "config": case.config}
    result.update(name=case.name, note=case.note, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return result


def default_case() -> Case:
    """`tfvae train` with no options: whatever `TrainConfig()`'s defaults are."""
    return Case("default", {}, note="TrainConfig() defaults")


def _peer_command(script: Path, epochs: int, threads: int, out: Path) -> list[str]:
    """The PyTorch peer's arguments for `epochs` timed epochs after its warm-up one.

    `threads` 0 keeps torch's default (one per core), as the peer's README runs it.
    """
    command = [str(script), "--epochs", str(epochs + 1), "--no-eval"]
    return [*command, "--threads", str(threads), "--json", str(out)]


def torch_peer(epochs: int, python: Path, script: Path, threads: int = 0) -> dict[str, Any]:
    """One run of the PyTorch peer (it drops its first epoch as warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        run_child([str(python), *_peer_command(script, epochs, threads, out)])
        result = json.loads(out.read_text())
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    return result


def peer_rounds(
    rounds: int, epochs: int, python: Path, script: Path, threads: int = 0
) -> dict[str, Any]:
    """tfvae default, torch, tfvae default, torch, ...: the speed ratio per round."""
    per_round = []
    for index in range(rounds):
        ours = measure(default_case(), epochs, limit=None)
        theirs = torch_peer(epochs, python, script, threads)
        ratio = ours["images_per_s"] / theirs["images_per_s"]
        per_round.append(
            {
                "tfvae_images_per_s": ours["images_per_s"],
                "torch_images_per_s": theirs["images_per_s"],
                "ratio": ratio,
                "tfvae": ours,
                "torch": theirs,
            }
        )
        print(
            f"  round {index + 1}: tfvae {ours['images_per_s']:8.0f} img/s   "
            f"torch {theirs['images_per_s']:8.0f} img/s   ratio {ratio:.3f}",
            flush=True,
        )
    return {
        "tfvae_config": ours["config"],
        "torch_threads": per_round[-1]["torch"].get("threads"),
        "torch_version": per_round[-1]["torch"].get("torch"),
        "rounds": per_round,
        "median_ratio": statistics.median(r["ratio"] for r in per_round),
        "median_tfvae_images_per_s": statistics.median(r["tfvae_images_per_s"] for r in per_round),
        "median_torch_images_per_s": statistics.median(r["torch_images_per_s"] for r in per_round),
    }


def lockstep_child(config: dict[str, Any], pairs: int, log: Path) -> Lockstep:
    """tfvae's training child of `config` (the defaults where it says
    nothing), stopping after each epoch: a warm-up epoch (tracing, XLA) and
    then `pairs` timed ones."""
    spec = {
        "config": config,
        "pipeline": "default",
        "logical_cpus": 0,
        "epochs": pairs,
        "warmup": 1,
        "limit": None,
        "lockstep": True,
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--train-child", json.dumps(spec)]
    return Lockstep(command, EPOCH_MARKER, log)


def paired_epochs(pairs: int, python: Path, script: Path, threads: int = 0) -> dict[str, Any]:
    """tfvae's defaults and the PyTorch peer in lockstep, one epoch each in turn.

    Both processes live through the whole measurement; each trains alone while
    the other waits at the end of an epoch (`lockstep.py`). After one warm-up
    epoch each, `pairs` pairs of adjacent epochs (which goes first alternates)
    give one images/s ratio per pair, measured seconds apart, so the drifts of
    a shared VM's speed that whole runs in turn cannot escape mostly cancel.
    """
    with tempfile.TemporaryDirectory() as tmp:
        ours = lockstep_child({}, pairs, Path(tmp) / "tfvae.log")
        theirs = Lockstep(
            [
                str(python),
                str(BENCH_DIR / "lockstep.py"),
                TORCH_EPOCH_MARKER,
                *_peer_command(script, pairs, threads, Path(tmp) / "torch.json"),
            ],
            TORCH_EPOCH_MARKER,
            Path(tmp) / "torch.log",
        )
        try:
            theirs.epoch(), ours.epoch()  # warm-up: start-up, tracing, compilation
            rows = []
            for index in range(pairs):
                if index % 2 == 0:
                    tfvae_s, torch_s = ours.epoch(), theirs.epoch()
                else:
                    torch_s, tfvae_s = theirs.epoch(), ours.epoch()
                rows.append({"tfvae_s": tfvae_s, "torch_s": torch_s, "ratio": torch_s / tfvae_s})
                print(
                    f"  pair {index + 1:2d}: tfvae {tfvae_s:.3f} s   torch {torch_s:.3f} s   "
                    f"ratio {torch_s / tfvae_s:.3f}",
                    flush=True,
                )
            tfvae_result, torch_result = ours.finish(), theirs.finish()
        finally:
            ours.kill()
            theirs.kill()
    images = tfvae_result["images_per_epoch"]
    return {
        "tfvae_config": tfvae_result["config"],
        "torch_threads": torch_result.get("threads"),
        "torch_version": torch_result.get("torch"),
        "images_per_epoch": images,
        "pairs": rows,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_tfvae_images_per_s": images / statistics.median(r["tfvae_s"] for r in rows),
        "median_torch_images_per_s": images / statistics.median(r["torch_s"] for r in rows),
        "tfvae_train_loss_last": tfvae_result.get("train_loss_last"),
        "torch_train_neg_elbo_last": torch_result.get("train_neg_elbo_last"),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def bound(seconds: float) -> dict[str, Any]:
    """GEMM throughput and the MLP's matmul bound in images/s."""
    result = _child("gemm", {"seconds": seconds})
    step_gflops = result["gemm"]["step"]["gflops"]
    result.update(
        forward_flops_per_image=FORWARD_FLOPS,
        train_flops_per_image=TRAIN_FLOPS,
        bound_images_per_s=step_gflops * 1e9 / TRAIN_FLOPS,
        bound_s_per_epoch_60k=60000 * TRAIN_FLOPS / (step_gflops * 1e9),
    )
    return result


def training_rate(results: dict[str, Any]) -> tuple[float, str] | None:
    """tfvae's default training images/s from a results document, and its source."""
    rounds = results.get("peer_rounds")
    if rounds:
        return rounds["median_tfvae_images_per_s"], "peer rounds (TrainConfig() defaults)"
    configs = results.get("configs", {})
    for name in ("default", "mlp"):
        if name in configs:
            return configs[name]["images_per_s"], f"configuration {name!r}"
    return None


def _print_table(configs: dict[str, Any], bound_ips: float | None, now: list[str]) -> None:
    """One row per configuration; `*` marks rows kept from an earlier run."""
    header = f"{'config':20s} {'jit':>5s} {'spe':>4s} {'rep':>3s} {'images':>6s} {'s/epoch':>8s} "
    print(header + f"{'s/60k':>7s} {'img/s':>8s} {'%bound':>7s} {'RSS MiB':>8s}  note")
    for key, row in configs.items():
        name = key if key in now else f"{key}*"
        if "error" in row:
            print(f"{name:20s} FAILED: {row['error'][:150]}")
            continue
        mlp = row["config"]["arch"] == "mlp" and row["config"]["hidden_units"] == [400]
        share = f"{100 * row['images_per_s'] / bound_ips:6.1f}%" if bound_ips and mlp else "      -"
        print(
            f"{name:20s} {str(row['jit_compile_resolved']):>5s} "
            f"{row['steps_per_execution_resolved']:4d} {row['replicas']:3d} "
            f"{row['images_per_epoch']:6d} {row['median_s_per_epoch']:8.3f} "
            f"{60000 / row['images_per_s']:7.2f} {row['images_per_s']:8.0f} {share} "
            f"{row['peak_rss_mb']:8.0f}  {row['note']}"
        )


def _load_previous(path: Path, current_machine: dict[str, Any]) -> dict[str, Any]:
    """Earlier results from the same machine, versions and commit, to merge into."""
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    keys = ("cpu", "cores", "tensorflow", "keras", "tfvae")
    same = all(previous.get("machine", {}).get(k) == current_machine.get(k) for k in keys)
    return previous if same and previous.get("git_commit") == git_commit() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="timed epochs after 1 warm-up (default 5)")
    parser.add_argument("--conv-epochs", type=int, help="timed conv epochs (default 3)")
    parser.add_argument("--rounds", type=int, help="tfvae/torch alternations (default 3)")
    parser.add_argument("--pairs", type=int, help="lockstep tfvae/torch epoch pairs (default 20)")
    parser.add_argument(
        "--quick", action="store_true", help="1 timed epoch, 1 round, 4 pairs, small conv"
    )
    parser.add_argument(
        "--only",
        help="comma-separated names: configurations, 'bound', 'torch', 'paired' (see --list)",
    )
    parser.add_argument(
        "--mirrored2", action="store_true", help=f"only bound and {', '.join(MIRRORED2)}"
    )
    parser.add_argument("--spe", type=int, default=32, help="the large steps_per_execution")
    parser.add_argument("--limit", type=int, help="train on the first N images (not in rounds)")
    parser.add_argument("--conv-limit", type=int, help="image limit for conv configurations")
    parser.add_argument("--gemm-seconds", type=float, help="timing per GEMM shape (default 2)")
    parser.add_argument("--torch-python", type=Path, default=TORCH_PYTHON)
    parser.add_argument("--torch-peer", type=Path, default=TORCH_PEER)
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads (0: its default)"
    )
    parser.add_argument("--out", type=Path, help="results file (default results/NAME.json)")
    parser.add_argument("--list", action="store_true", help="list the configurations")
    parser.add_argument("--train-child", help=argparse.SUPPRESS)
    parser.add_argument("--gemm-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.train_child:
        emit_result(_train_child(json.loads(args.train_child)))
        return
    if args.gemm_child:
        emit_result(_gemm_child(json.loads(args.gemm_child)))
        return

    table = cases(args.spe)
    if args.list:
        for case in table.values():
            print(f"{case.name:20s} {case.note}")
        print(f"{'bound':20s} GEMM throughput and the MLP's matmul bound")
        print(f"{'torch':20s} --rounds alternations of tfvae defaults and the PyTorch peer")
        print(f"{'paired':20s} --pairs epochs of tfvae defaults and the peer in lockstep")
        return
    epochs = args.epochs or (1 if args.quick else 5)
    conv_epochs = args.conv_epochs or (1 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else 3)
    pairs = args.pairs or (4 if args.quick else 20)
    gemm_seconds = args.gemm_seconds or (0.5 if args.quick else 2.0)
    conv_limit = args.conv_limit or (4096 if args.quick else None)
    if args.mirrored2:
        selected = ["bound", *MIRRORED2]
    elif args.only:
        selected = [name.strip() for name in args.only.split(",") if name.strip()]
    else:
        selected = ["bound", *table, "torch", "paired"]
    unknown = [n for n in selected if n not in table and n not in ("bound", "torch", "paired")]
    if unknown:
        parser.error(f"unknown names {unknown}; see --list")
    out = args.out or RESULTS_DIR / (f"{NAME}.quick.json" if args.quick else f"{NAME}.json")

    warn_if_busy()
    began = time.perf_counter()
    results: dict[str, Any] = {"configs": {}}
    if "bound" in selected:
        print("GEMM throughput (float32, TensorFlow):", flush=True)
        results["bound"] = bound(gemm_seconds)
        for label, gemm in results["bound"]["gemm"].items():
            m, k, n = gemm["shape_mkn"]
            print(f"  {label:5s} {m}x{k} @ {k}x{n}: {gemm['gflops']:7.1f} GFLOP/s")
        b = results["bound"]
        print(
            f"  MLP FLOPs/image: forward {FORWARD_FLOPS / 1e6:.3f} M, training (3x) "
            f"{TRAIN_FLOPS / 1e6:.3f} M -> bound {b['bound_images_per_s']:.0f} img/s "
            f"({b['bound_s_per_epoch_60k']:.2f} s per 60k epoch)",
            flush=True,
        )
    for name in selected:
        if name not in table:
            continue
        case = table[name]
        conv = case.config.get("arch") == "conv"
        limit, timed = (conv_limit, conv_epochs) if conv else (args.limit, epochs)
        print(f"training {name} ({timed} timed epochs, limit {limit})...", flush=True)
        row = measure(case, timed, limit)
        results["configs"][name] = row
        if "error" in row:
            print(f"  FAILED: {row['error']}", flush=True)
            continue
        print(
            f"  {row['median_s_per_epoch']:.3f} s/epoch, {row['images_per_s']:.0f} img/s, "
            f"peak RSS {row['peak_rss_mb']:.0f} MiB",
            flush=True,
        )
    peer = (args.torch_python, args.torch_peer, args.torch_threads)
    if {"torch", "paired"} & set(selected) and not (peer[0].exists() and peer[1].exists()):
        print(f"skipping the peer: {peer[0]} or {peer[1]} missing")
    else:
        if "torch" in selected:
            print(f"PyTorch peer, {rounds} alternating round(s):", flush=True)
            results["peer_rounds"] = peer_rounds(rounds, epochs, *peer)
        if "paired" in selected:
            print(f"PyTorch peer, {pairs} lockstep epoch pairs:", flush=True)
            results["paired_epochs"] = paired_epochs(pairs, *peer)

    current_machine = (results.get("bound") or {}).pop("machine", None)
    if current_machine is None:
        current_machine = machine(with_gpus=False)
    previous = _load_previous(out, current_machine)
    merged = {
        "machine": current_machine,
        "settings": {
            "epochs": epochs,
            "conv_epochs": conv_epochs,
            "rounds": rounds,
            "pairs": pairs,
            "limit": args.limit,
            "conv_limit": conv_limit,
            "quick": args.quick,
            "spe": args.spe,
        },
        "bound": results.get("bound", previous.get("bound")),
        "configs": {
            name: row
            for name, row in {**previous.get("configs", {}), **results["configs"]}.items()
            if name in table
        },
        "peer_rounds": results.get("peer_rounds", previous.get("peer_rounds")),
        "paired_epochs": results.get("paired_epochs", previous.get("paired_epochs")),
        "measured_now": selected,
        "wall_s": time.perf_counter() - began,
    }
    rate = training_rate(merged)
    merged["default_images_per_s"] = rate[0] if rate else None
    bound_ips = merged["bound"]["bound_images_per_s"] if merged["bound"] else None

    print()
    _print_table(merged["configs"], bound_ips, selected)
    if merged["bound"]:
        print(f"matmul bound of the MLP: {bound_ips:.0f} img/s")
    if merged["peer_rounds"]:
        peer = merged["peer_rounds"]
        ratios = ", ".join(f"{r['ratio']:.3f}" for r in peer["rounds"])
        print(
            f"tfvae/torch images/s per round: {ratios}; median {peer['median_ratio']:.3f} "
            f"(tfvae {peer['median_tfvae_images_per_s']:.0f}, "
            f"torch {peer['median_torch_images_per_s']:.0f} img/s, "
            f"torch threads {peer['torch_threads']})"
        )
    if merged["paired_epochs"]:
        paired = merged["paired_epochs"]
        quartiles = statistics.quantiles([r["ratio"] for r in paired["pairs"]], n=4)
        print(
            f"tfvae/torch images/s over {len(paired['pairs'])} lockstep epoch pairs: median "
            f"{paired['median_ratio']:.3f} (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; "
            f"tfvae {paired['median_tfvae_images_per_s']:.0f}, "
            f"torch {paired['median_torch_images_per_s']:.0f} img/s)"
        )
    if args.mirrored2:
        print("issue note, images/s (jit off, 1 step/execution unless said):")
        labels = {
            "mlp": "default strategy",
            "mlp-mirrored2": "MirroredStrategy over 2 logical CPUs",
            "mlp-jit": "default strategy + jit_compile",
            "default": "package defaults (TrainConfig())",
            "default-mirrored2": "package defaults + --strategy mirrored, 2 logical CPUs",
        }
        for name, label in labels.items():
            row = merged["configs"].get(name, {})
            value = f"{row['images_per_s']:.0f}" if "images_per_s" in row else row.get("error")
            value = (value or "not measured")[:200]
            print(f"  {label}: {value}")
    print(f"wrote {write_results(NAME, merged, out)} ({merged['wall_s']:.0f} s)")
    warn_if_busy()


if __name__ == "__main__":
    main()
