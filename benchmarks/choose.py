"""Choose one of several finished runs on their validation images, then score
only the chosen run on the test set, once.

    python benchmarks/literature.py --epochs 660 --lr-schedule cosine --tag val10k --eval-k 0
    python benchmarks/literature.py --epochs 660 --tag val10k --eval-k 0
    python benchmarks/choose.py --name burda-elbo-660 \
        runs/burda-elbo-k1-cosine660-val10k runs/burda-elbo-k1-burda660-val10k

The rule, fixed before any figure is seen: the highest validation ELBO of the
weights each run finished with (`config.json`'s `validation`: the held-out
training images under their fixed binarization). Every candidate must be
finished and hold out the same images (the same data and `--validation N`).
The test figures a run recorded when it finished are never read here.

Writes `results/choice-<name>.json`: each candidate's settings (where they
differ), validation figures and best epoch on its curve (a best epoch well
before the last says the schedule overfits, so fewer epochs is a candidate
worth adding), then the chosen run's test figures (`tfvae evaluate --k 5000`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import held_out_curve, machine, score_test, trained_by, write_results  # noqa: E402

# What decides which images are held out: candidates must agree on these.
SPLIT = ("dataset", "data_dir", "resize", "limit", "validation")


class ChoiceError(ValueError):
    """A candidate that cannot be compared; the message names it."""


def _candidate(run: Path) -> dict[str, Any]:
    """A run's settings, final validation ELBO and best epoch on its curve."""
    try:
        saved = json.loads((run / "config.json").read_text())
        curve = held_out_curve(run)
    except (OSError, ValueError) as error:
        raise ChoiceError(f"{run}: not a readable run folder ({error})") from None
    if saved.get("status") != "finished" or "validation" not in saved:
        raise ChoiceError(f"{run}: not a finished run trained with --validation N")
    best = min(curve, key=lambda point: point["validation_neg_elbo"])
    return {
        "run": str(run),
        "config": saved["config"],
        "validation_neg_elbo": -saved["validation"]["elbo"],
        "best_epoch": best["epoch"],
        "best_validation_neg_elbo": best["validation_neg_elbo"],
        "epochs": len(curve),
    }


def comparable(runs: list[Path]) -> list[dict[str, Any]]:
    """Each run as a candidate, after checking that all hold out the same
    images; their `config` is reduced to the settings in which they differ."""
    candidates = [_candidate(run) for run in runs]
    split = {key: candidates[0]["config"].get(key) for key in SPLIT}
    for candidate in candidates[1:]:
        theirs = {key: candidate["config"].get(key) for key in SPLIT}
        if theirs != split:
            raise ChoiceError(
                f"{candidate['run']}: holds out other images ({theirs}) than "
                f"{candidates[0]['run']} ({split}); train both with the same data and --validation"
            )
    keys = sorted({key for c in candidates for key in c["config"]})
    varying = [k for k in keys if len({json.dumps(c["config"].get(k)) for c in candidates}) > 1]
    for candidate in candidates:
        config = candidate.pop("config")
        candidate["setting"] = {key: config.get(key) for key in varying}
    return candidates


def choose(runs: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The candidate with the lowest final validation -ELBO, and all of them."""
    candidates = comparable(runs)
    return min(candidates, key=lambda c: c["validation_neg_elbo"]), candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders")
    parser.add_argument("--name", required=True, help="names the results file")
    parser.add_argument("--eval-k", type=int, default=5000)
    args = parser.parse_args()
    try:
        chosen, candidates = choose(args.runs)
    except ChoiceError as error:
        sys.exit(f"Error: {error}")
    for c in candidates:
        print(
            f"{c['validation_neg_elbo']:9.4f}  best {c['best_validation_neg_elbo']:.4f}"
            f" at epoch {c['best_epoch']}/{c['epochs']}  {c['run']}"
        )
    run = Path(chosen["run"])
    print(f"chosen: {run}; scoring its test set at K = {args.eval_k}")
    result = {
        "rule": "lowest validation -ELBO of the final weights",
        "candidates": candidates,
        "chosen": str(run),
        **score_test(run, args.eval_k),
        "trained_by": trained_by(run),
        "machine": machine(with_gpus=False),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "candidates"}, indent=1))
    write_results(f"choice-{args.name}", result)


if __name__ == "__main__":
    main()
