"""Reproduce the one-stochastic-layer VAE / IWAE of Burda, Grosse & Salakhutdinov
(2015, table 1) with `tfvae train`, and score it with `tfvae evaluate --k 5000`.

Their model: MLP 784-200-200-50 (tanh) with the mirror decoder, dynamic
binarization, Adam, batch 20. Their schedule is 3^i passes at learning rate
1e-3 * 10^(-i/7) for i = 0..7 (3280 passes); this script runs it shrunk to a
given number of passes (`--lr-schedule burda`, the default), that many
passes at a constant 1e-3 (`--lr-schedule constant`) or along a cosine from
1e-3 to 0 (`--lr-schedule cosine`); `--init-from RUN` continues a finished
run under a new schedule (e.g. a cosine from their final 1e-4 to 0 after
their 3280 passes). The last 10,000 training images are held out
(`--validation`): the curve records their -ELBO after every epoch, against
wall-clock seconds (from the run's metrics.csv), so schedules and stopping are
chosen on them; the test set is scored once, at the end, with the
importance-weighted NLL at K = 5000.

    python benchmarks/literature.py --objective elbo --k 1 --epochs 330
    python benchmarks/literature.py --objective iwae --k 50 --epochs 3280
    python benchmarks/literature.py --epochs 500 --lr-schedule cosine \
        --learning-rate 1e-4 --init-from runs/burda-elbo-k1-burda3280
    python benchmarks/literature.py --epochs 660 --lr-schedule cosine \
        --tag eps1e-4-warmup67 -- --adam-epsilon 1e-4 --kl-warmup 67

Writes `benchmarks/results/literature-<objective>-k<K>-<schedule><epochs>[-...].json`
with the curve, the final figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import train_and_score, write_results  # noqa: E402

from tfvae.config import LR_SCHEDULES  # noqa: E402

# Their model, without the learning rate (1e-3 theirs, `--learning-rate`).
BURDA = [
    "--hidden",
    "200,200",
    "--activation",
    "tanh",
    "--latent-dim",
    "50",
    "--batch-size",
    "20",
    "--binarize",
    "dynamic",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    parser.add_argument("--k", type=int, default=1, help="training samples per image")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="burda")
    parser.add_argument("--learning-rate", default="1e-3")
    parser.add_argument("--init-from", type=Path, default=None, help="a finished run to continue")
    parser.add_argument(
        "--eval-k", type=int, default=5000, help="0: no test score (a candidate for choose.py)"
    )
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--tag", default=None, help="names a run with the extra options")
    parser.add_argument(
        "--validation",
        type=int,
        default=10_000,
        help="training images held out and scored every epoch (0: the test set every epoch)",
    )
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then `tfvae train` options")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    if extra and not args.tag:
        parser.error("extra tfvae train options need a --tag to name their results")

    name = f"{args.objective}-k{args.k}-{args.lr_schedule}{args.epochs}"
    if args.learning_rate != "1e-3":
        name += f"-lr{args.learning_rate}"
    if args.tag:
        name += f"-{args.tag}"
    if args.init_from is not None:
        name += f"-from-{args.init_from.name}"
    run_dir = args.run_dir or Path("runs") / f"burda-{name}"
    train = [
        *BURDA,
        "--learning-rate",
        args.learning_rate,
        "--objective",
        args.objective,
        "--k",
        str(args.k),
        "--epochs",
        str(args.epochs),
        "--lr-schedule",
        args.lr_schedule,
    ]
    train += ["--validation", str(args.validation), *extra]
    if args.init_from is not None:
        train += ["--init-from", str(args.init_from)]
    result = train_and_score(train, run_dir, args.eval_k)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))
    write_results(f"literature-{name}", result)


if __name__ == "__main__":
    main()
