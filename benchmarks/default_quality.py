"""The test NLL a new user gets: `tfvae train` with its defaults (or with the
options given after `--`), scored with `tfvae evaluate --k 5000`.

    python benchmarks/default_quality.py
    python benchmarks/default_quality.py --name cosine-2e-3 -- \
        --lr-schedule cosine --learning-rate 2e-3

Writes `benchmarks/results/default-quality-<name>.json` with the commands,
the curve (the -ELBO of the 10,000 held-out training images, `--validation`,
after every epoch against wall-clock seconds), the test figures, scored once
at the end, and the machine. The defaults are meant to give the best NLL
reachable in about ten minutes of training on a 2-core CPU; this is the
script that checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import train_and_score, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="default", help="names the results file and run")
    parser.add_argument("--eval-k", type=int, default=5000)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument(
        "--validation",
        type=int,
        default=10_000,
        help="training images held out and scored every epoch (0: the test set every epoch)",
    )
    parser.add_argument("train", nargs=argparse.REMAINDER, help="-- then `tfvae train` options")
    args = parser.parse_args()

    options = args.train[1:] if args.train[:1] == ["--"] else args.train
    run_dir = args.run_dir or Path("runs") / f"quality-{args.name}"
    train = [*options, "--validation", str(args.validation), "--overwrite"]
    result = train_and_score(train, run_dir, args.eval_k)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))
    write_results(f"default-quality-{args.name}", result)


if __name__ == "__main__":
    main()
