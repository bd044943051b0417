"""The seed-to-seed spread of one setting: finished runs that differ only in
`--seed`, each scored on the test set once.

    python benchmarks/literature.py --epochs 660 --lr-schedule cosine \
        --tag val10k-seed1 --eval-k 0 -- --seed 1
    python benchmarks/seeds.py --name burda-elbo-cosine660 runs/burda-elbo-k1-cosine660-val10k \
        runs/burda-elbo-k1-cosine660-val10k-seed1 runs/burda-elbo-k1-cosine660-val10k-seed2

The runs must hold out the same images (`--validation N`, as `choose.py`
requires) and agree on every other setting. Writes
`results/seeds-<name>.json`: per seed, the final validation -ELBO and the test
-ELBO, NLL (`tfvae evaluate --k 5000`) and active units; for each figure its
mean, sample standard deviation and range (largest minus smallest). Two
settings whose figures differ by less than the range are not told apart by
one seed each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from choose import ChoiceError, comparable  # noqa: E402
from common import machine, score_test, trained_by, write_results  # noqa: E402

FIGURES = ("validation_neg_elbo", "test_neg_elbo", "test_nll", "active_units")


def seeded(runs: list[Path]) -> list[dict[str, Any]]:
    """The runs as `comparable` candidates, checked to differ in their seed only."""
    if len(runs) < 2:
        raise ChoiceError("a spread needs at least two runs")
    candidates = comparable(runs)
    first = candidates[0]
    for candidate in candidates[1:]:
        setting = candidate["setting"]
        differ = sorted(k for k in setting if k != "seed" and setting[k] != first["setting"][k])
        if differ:
            raise ChoiceError(
                f"{candidate['run']}: differs from {first['run']} in {differ}, not only in its seed"
            )
    seeds = [c["setting"].get("seed") for c in candidates]
    if len(set(seeds)) != len(seeds):
        raise ChoiceError(f"the runs repeat a seed ({seeds}); give each its own --seed")
    return candidates


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and range of one figure over the seeds."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values),
        "range": max(values) - min(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders, one per seed")
    parser.add_argument("--name", required=True, help="names the results file")
    parser.add_argument("--eval-k", type=int, default=5000)
    args = parser.parse_args()
    try:
        candidates = seeded(args.runs)
    except ChoiceError as error:
        sys.exit(f"Error: {error}")
    per_seed = []
    for candidate in candidates:
        run = Path(candidate["run"])
        scores = score_test(run, args.eval_k)
        per_seed.append(
            {
                "run": str(run),
                "seed": candidate["setting"]["seed"],
                "validation_neg_elbo": candidate["validation_neg_elbo"],
                **scores,
                "trained_by": trained_by(run),
            }
        )
        print(json.dumps({k: v for k, v in per_seed[-1].items() if k != "trained_by"}))
    result = {
        "seeds": per_seed,
        "spread": {name: spread([s[name] for s in per_seed]) for name in FIGURES},
        "machine": machine(with_gpus=False),
    }
    print(json.dumps(result["spread"], indent=1))
    write_results(f"seeds-{args.name}", result)


if __name__ == "__main__":
    main()
