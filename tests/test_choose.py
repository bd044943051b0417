"""`benchmarks/choose.py`: settings are chosen on validation images only;
`benchmarks/seeds.py`: the spread over seeds of one setting."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from choose import ChoiceError, choose  # noqa: E402
from seeds import seeded, spread  # noqa: E402

PUBLISHED = (
    Path(__file__).parents[1] / "benchmarks/runs/burda-elbo-k1-cosine660-eps1e-4-warmup67-val10k"
)


def _run(folder: Path, curve: list[float], test: float, **config) -> Path:
    """A finished run folder whose validation ELBO after each epoch is `curve`."""
    folder.mkdir()
    settings = {"dataset": "mnist", "validation": 10_000, "learning_rate": 1e-3, **config}
    saved = {
        "config": settings,
        "status": "finished",
        "validation": {"elbo": curve[-1]},
        "test": {"elbo": test},
    }
    (folder / "config.json").write_text(json.dumps(saved))
    rows = ["epoch,validation_elbo,seconds"]
    rows += [f"{epoch},{elbo},1.0" for epoch, elbo in enumerate(curve, 1)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_best_validation_wins_whatever_the_recorded_test_says(tmp_path):
    slow = _run(tmp_path / "slow", [-120.0, -100.0, -95.0], test=-80.0, learning_rate=1e-4)
    fast = _run(tmp_path / "fast", [-110.0, -92.0, -94.0], test=-99.0)
    chosen, candidates = choose([slow, fast])
    assert chosen["run"] == str(fast)
    assert [c["validation_neg_elbo"] for c in candidates] == [95.0, 94.0]
    assert [(c["best_epoch"], c["best_validation_neg_elbo"]) for c in candidates] == [
        (3, 95.0),
        (2, 92.0),
    ]
    assert [c["setting"] for c in candidates] == [{"learning_rate": 1e-4}, {"learning_rate": 1e-3}]
    assert {key for c in candidates for key in c} == {
        "run",
        "setting",
        "validation_neg_elbo",
        "best_epoch",
        "best_validation_neg_elbo",
        "epochs",
    }


def test_candidates_holding_out_other_images_are_refused(tmp_path):
    first = _run(tmp_path / "a", [-95.0], test=-90.0)
    other = _run(tmp_path / "b", [-94.0], test=-90.0, validation=5_000)
    with pytest.raises(ChoiceError, match=r"b: holds out other images.*--validation"):
        choose([first, other])


def test_a_run_without_final_validation_scores_is_refused(tmp_path):
    done = _run(tmp_path / "done", [-95.0], test=-90.0)
    unfinished = _run(tmp_path / "unfinished", [-94.0], test=-90.0)
    saved = json.loads((unfinished / "config.json").read_text())
    (unfinished / "config.json").write_text(json.dumps({**saved, "status": "training"}))
    with pytest.raises(ChoiceError, match="unfinished: not a finished run"):
        choose([done, unfinished])
    with pytest.raises(ChoiceError, match="missing: not a readable run folder"):
        choose([done, tmp_path / "missing"])


def test_a_published_run_reads_as_its_recorded_validation(tmp_path):
    """The real folder: its final validation -ELBO is the one config.json
    recorded (92.40), and the cosine's best epoch is near its end."""
    copy = shutil.copytree(PUBLISHED, tmp_path / "copy", ignore=shutil.ignore_patterns("*.keras"))
    chosen, [published, _] = choose([PUBLISHED, copy])
    assert published["validation_neg_elbo"] == pytest.approx(92.3983, abs=1e-4)
    assert published["epochs"] == 660
    assert published["best_epoch"] >= 600
    assert published["setting"] == {}
    assert chosen["run"] == str(PUBLISHED)


def test_seeds_of_one_setting_are_accepted_and_other_settings_refused(tmp_path):
    runs = [_run(tmp_path / f"seed{s}", [-95.0 + s], test=-90.0, seed=s) for s in range(3)]
    assert [c["setting"] for c in seeded(runs)] == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    other = _run(tmp_path / "other", [-94.0], test=-90.0, seed=3, learning_rate=1e-4)
    with pytest.raises(ChoiceError, match=r"other: differs from .*seed0 in \['learning_rate'\]"):
        seeded([*runs, other])
    with pytest.raises(ChoiceError, match="at least two runs"):
        seeded(runs[:1])
    twin = _run(tmp_path / "twin", [-93.0], test=-90.0, seed=2)
    with pytest.raises(ChoiceError, match=r"repeat a seed \(\[0, 1, 2, 2\]\)"):
        seeded([*runs, twin])


def test_the_spread_is_the_sample_deviation_and_the_range():
    """87.49, 87.26, 87.65: mean 87.4667, sample variance
    (0.0233^2 + 0.2067^2 + 0.1833^2) / 2 = 0.038433, range 0.39."""
    figures = spread([87.49, 87.26, 87.65])
    assert figures["mean"] == pytest.approx(87.466667, abs=1e-6)
    assert figures["std"] == pytest.approx(0.038433**0.5, abs=1e-5)
    assert figures["range"] == pytest.approx(0.39, abs=1e-9)
