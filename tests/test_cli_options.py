"""Every option of every command, fed invalid values: a usage error (exit code 2)
whose one `Error:` line names the option and what it accepts, and no traceback.

The table is checked against the commands themselves (`tfvae.cli.main.main`), so an
option added without a row here fails `test_table_covers_every_option`.

No TensorFlow work: usage errors are raised by click before a command's body
runs. Each call runs with the body replaced by a tripwire, so a value the
parser wrongly accepts fails at once (exit code 1, `BodyReached`) instead of
starting a training run.
"""

from __future__ import annotations

import dataclasses
import re

import click
import pytest
from harness import invoke

import tfvae.cli.main
from tfvae.cli.main import main
from tfvae.config import (
    ACTIVATIONS,
    ARCHS,
    BINARIZATIONS,
    GRADIENT_ESTIMATORS,
    LIKELIHOODS,
    LR_SCHEDULES,
    OBJECTIVES,
    STRATEGIES,
)

MISSING = "{tmp}/no/such/folder"
A_FILE = "{tmp}/a-file"
A_FOLDER = "{tmp}"


@dataclasses.dataclass(frozen=True)
class Bad:
    """One invalid value: the arguments after the command, and a regex the
    `Error:` line must match (beyond naming the option), saying what is allowed."""

    args: tuple[str, ...]
    allowed: str = ""
    xfail: str | None = None


def choices(values) -> str:
    """A regex requiring every allowed choice in the message."""
    return "".join(f"(?=.*'{re.escape(v)}')" for v in values)


POSITIVE = r"range x>=1"
NON_NEGATIVE = r"range (0<=)?x(>=0|<=\d+)"
NOT_INT = r"not a valid integer"


def positive_int(option: str) -> list[Bad]:
    return [
        Bad((option, "0"), POSITIVE),
        Bad((option, "-3"), POSITIVE),
        Bad((option, "ten"), NOT_INT),
        Bad((option, "2.5"), NOT_INT),
        Bad((option, ""), NOT_INT),
    ]


def non_negative_int(option: str) -> list[Bad]:
    return [
        Bad((option, "-1"), NON_NEGATIVE),
        Bad((option, "x"), NOT_INT),
        Bad((option, "1e3"), NOT_INT),
    ]


def positive_list(option: str, good: str) -> list[Bad]:
    """What every comma-separated list of positive integers refuses."""
    not_a_list = "comma-separated list of integers"
    return [
        Bad((option, "0"), "positive integer"),
        Bad((option, f"{good},-1"), "positive integer"),
        *(Bad((option, value), not_a_list) for value in (f"{good},x", ",", "2.5", "ten", "")),
    ]


def choice(option: str, allowed, bad=("bogus", "", "MLP ")) -> list[Bad]:
    return [Bad((option, value), choices(allowed)) for value in bad]


def flag(option: str) -> list[Bad]:
    return [Bad((f"{option}=yes",), "does not take a value")]


RUN_DIR_ARG = [
    Bad((MISSING,), "does not exist"),
    Bad((A_FILE,), r"is a file; give a run folder or a \.keras model file"),
]
DATASET_OPTION = [
    Bad(("--dataset", "cifar10"), r"mnist.*idx:.*tfds:"),
    Bad(("--dataset", A_FOLDER), r"is a folder: give it as images:/"),
]


# command -> parameter name (click's `param.name`) -> invalid values.
TABLE: dict[str, dict[str, list[Bad]]] = {
    "train": {
        "dataset": [
            Bad(("--dataset", "cifar10"), r"mnist.*idx:.*tfds:"),
            Bad(("--dataset", ""), r"mnist.*idx:.*tfds:"),
            Bad(("--dataset", "idx:"), r"folder"),
            Bad(("--dataset", "images:"), r"folder"),
            Bad(("--dataset", A_FOLDER), r"is a folder: give it as images:/"),
            Bad(("--dataset", "images:gs://bucket/faces"), r"remote paths are not read"),
            Bad(("--dataset", "gs://bucket/faces"), r"remote paths are not read"),
            Bad(("--dataset", "fashion_mnist"), r"for example tfds:fashion_mnist"),
        ],
        "data_dir": [
            Bad(("--data-dir", A_FILE), "is a file"),
            Bad(("--data-dir", MISSING), "does not exist"),
        ],
        "resize": [
            Bad(("--resize", "0", "28"), POSITIVE),
            Bad(("--resize", "28", "-1"), POSITIVE),
            Bad(("--resize", "28", "wide"), NOT_INT),
            Bad(("--resize", "28"), "requires 2 arguments"),
        ],
        "arch": choice("--arch", ARCHS, bad=("resnets", "", "MLP")),
        "channels": positive_list("--channels", "32,64"),
        "blocks": [
            Bad(("--blocks", "-1"), r"0<=x<=64"),
            Bad(("--blocks", "65"), r"0<=x<=64"),
            Bad(("--blocks", "two"), NOT_INT),
        ],
        "latent_dim": positive_list("--latent-dim", "32"),
        "conditional": flag("--conditional"),
        "prior": [
            Bad(("--prior", "gaussian"), r"normal, or vamp:K"),
            Bad(("--prior", "vamp:0"), r"normal, or vamp:K"),
            Bad(("--prior", "vamp:"), r"normal, or vamp:K"),
            Bad(("--prior", "vamp:20000"), r"K pseudo-inputs in 1\.\.10000"),
        ],
        "hidden": positive_list("--hidden", "400"),
        "activation": choice("--activation", ACTIVATIONS, bad=("sigmoid", "")),
        "epochs": positive_int("--epochs"),
        "batch_size": positive_int("--batch-size"),
        "learning_rate": [
            Bad(("--learning-rate", "0"), r"0<x<10"),
            Bad(("--learning-rate", "-1e-3"), r"0<x<10"),
            Bad(("--learning-rate", "10"), r"0<x<10"),
            Bad(("--learning-rate", "inf"), r"0<x<10"),
            Bad(("--learning-rate", "fast"), "not a valid float"),
            Bad(("--learning-rate", "nan"), r"0<x<10"),
        ],
        "adam_epsilon": [
            Bad(("--adam-epsilon", "0"), r"0<x<=1"),
            Bad(("--adam-epsilon", "2"), r"0<x<=1"),
            Bad(("--adam-epsilon", "nan"), r"0<x<=1"),
        ],
        "lr_schedule": choice("--lr-schedule", LR_SCHEDULES, bad=("linear", "")),
        "binarize": choice("--binarize", BINARIZATIONS, bad=("soft", "")),
        "likelihood": choice("--likelihood", LIKELIHOODS, bad=("normal", "Logistic", "")),
        "objective": choice("--objective", OBJECTIVES, bad=("vlb", "")),
        "gradient_estimator": choice("--gradient-estimator", GRADIENT_ESTIMATORS, bad=("rws", "")),
        "k": [*positive_int("--k"), *positive_int("-k")],
        "beta": [
            Bad(("--beta", "-0.5"), r"0<=x<=1000"),
            Bad(("--beta", "1001"), r"0<=x<=1000"),
            Bad(("--beta", "big"), "not a valid float"),
            Bad(("--beta", "nan"), r"0<=x<=1000"),
        ],
        "kl_warmup": non_negative_int("--kl-warmup"),
        "free_bits": [
            Bad(("--free-bits", "-1"), r"0<=x<=1000"),
            Bad(("--free-bits", "nan"), r"0<=x<=1000"),
            Bad(("--free-bits", "many"), "not a valid float"),
        ],
        "clip_norm": [
            Bad(("--clip-norm", "0"), r"0<x<=1000000"),
            Bad(("--clip-norm", "inf"), r"0<x<=1000000"),
            Bad(("--clip-norm", "big"), "not a valid float"),
        ],
        "seed": [
            *non_negative_int("--seed"),
            Bad(("--seed", str(2**32)), r"x<="),
        ],
        "strategy": choice("--strategy", STRATEGIES, bad=("gpu", "")),
        "jit_compile": [*flag("--jit-compile"), *flag("--no-jit-compile")],
        "mixed_precision": flag("--mixed-precision"),
        "steps_per_execution": positive_int("--steps-per-execution"),
        "limit": positive_int("--limit"),
        "validation": non_negative_int("--validation"),
        "init_from": [Bad(("--init-from", A_FILE), "is a file")],
        "pictures_every": non_negative_int("--pictures-every"),
        "run_dir": [Bad(("--run-dir", A_FILE), "is a file")],
        "overwrite": flag("--overwrite"),
        "as_json": flag("--json"),
    },
    "resume": {
        "run_dir": [Bad((MISSING,), "does not exist"), Bad((A_FILE,), "is a file")],
        "epochs": positive_int("--epochs"),
        "restart": flag("--restart"),
        "strategy": choice("--strategy", STRATEGIES, bad=("gpu", "")),
        "jit_compile": [*flag("--jit-compile"), *flag("--no-jit-compile")],
        "steps_per_execution": positive_int("--steps-per-execution"),
        "pictures_every": non_negative_int("--pictures-every"),
        "as_json": flag("--json"),
    },
    "interpolate": {
        "run_dir": RUN_DIR_ARG,
        "first": non_negative_int("--from"),
        "last": non_negative_int("--to"),
        "count": [
            Bad(("-n", "1"), r"range x>=2"),
            Bad(("-n", "0"), r"range x>=2"),
            Bad(("--num", "ten"), NOT_INT),
        ],
        "split": choice("--split", ("test", "train"), bad=("val", "")),
        "dataset": DATASET_OPTION,
        "spherical": flag("--spherical"),
        "output": [Bad(("-o", A_FOLDER), "is a directory"), Bad(("--output", A_FOLDER), "")],
        "as_json": flag("--json"),
    },
    "evaluate": {
        "run_dir": RUN_DIR_ARG,
        "split": choice("--split", ("test", "train"), bad=("val", "")),
        "dataset": DATASET_OPTION,
        "k": [*positive_int("--k"), *positive_int("-k")],
        "as_json": flag("--json"),
    },
    "score": {
        "run_dir": RUN_DIR_ARG,
        "dataset": DATASET_OPTION,
        "split": choice("--split", ("test", "train", "validation", "all"), bad=("val", "")),
        "k": [*positive_int("--k"), *positive_int("-k")],
        "score_name": choice("--score", ("complexity", "nll", "regret"), bad=("regrets", "")),
        "fpr": [
            Bad(("--fpr", "0"), r"0<x<1"),
            Bad(("--fpr", "1"), r"0<x<1"),
            Bad(("--fpr", "nan"), r"0<x<1"),
            Bad(("--fpr", "often"), "not a valid float"),
        ],
        "no_threshold": flag("--no-threshold"),
        "output": [Bad(("-o", A_FOLDER), "is a directory"), Bad(("--output", A_FOLDER), "")],
        "outliers": [Bad(("--outliers", A_FOLDER), "is a directory")],
        "as_json": flag("--json"),
    },
    "sample": {
        "run_dir": RUN_DIR_ARG,
        "count": [*positive_int("-n"), *positive_int("--num")],
        "seed": [
            *non_negative_int("--seed"),
            Bad(("--seed", str(2**32)), r"x<="),
        ],
        "binary": flag("--binary"),
        # A name or an index of the model's classes, checked once the model loads.
        "classes": [Bad(("--class",), "requires an argument")],
        "temperature": [
            Bad(("--temperature", "-0.5"), r"0<=x<=10"),
            Bad(("--temperature", "11"), r"0<=x<=10"),
            Bad(("--temperature", "nan"), r"0<=x<=10"),
            Bad(("--temperature", "warm"), "not a valid float"),
        ],
        "output": [Bad(("-o", A_FOLDER), "is a directory"), Bad(("--output", A_FOLDER), "")],
        "as_json": flag("--json"),
    },
    "reconstruct": {
        "run_dir": RUN_DIR_ARG,
        "count": [*positive_int("-n"), *positive_int("--num")],
        "split": choice("--split", ("test", "train"), bad=("val", "")),
        "dataset": DATASET_OPTION,
        "output": [Bad(("-o", A_FOLDER), "is a directory"), Bad(("--output", A_FOLDER), "")],
        "as_json": flag("--json"),
    },
    "export": {
        "run_dir": RUN_DIR_ARG,
        "formats": choice(
            "--format", ("savedmodel", "tflite", "onnx", "all", "web"), bad=("pb", "")
        ),
        "out": [
            Bad(("--out", A_FILE), "is a file"),
            Bad(("-o", A_FILE), "is a file"),
            Bad(("--output", A_FILE), "is a file"),
        ],
        "name": [
            Bad(("--name", "../up"), "letters, digits"),
            Bad(("--name", ""), "letters, digits"),
            Bad(("--name", "a/b"), "letters, digits"),
        ],
        "version": [*positive_int("--version"), *positive_int("--model-version")],
        "as_json": flag("--json"),
        "quantize": choice("--quantize", ("none", "float16", "dynamic", "int8"), bad=("int4", "")),
        "batch": [*positive_int("--batch"), *positive_int("--batch-size")],
        "litert_js": [Bad(("--litert-js",), "requires an argument")],
    },
}

# Options of the group itself (`tfvae --version`, which is a flag).
GROUP_TABLE = {
    "version": [Bad(("--version=2",), "does not take a value")],
    "imports": [
        Bad(("--import", "no_such_module_here"), r"no module named 'no_such_module_here'"),
        Bad(("--import", ""), r"no module named ''"),
    ],
}


def _cases():
    for command, options in TABLE.items():
        for param, rows in options.items():
            for row in rows:
                marks = [pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else []
                label = f"{command}-{param}-{'_'.join(row.args)}"
                yield pytest.param(command, param, row, id=label, marks=marks)


class BodyReached(Exception):
    """The parser accepted the value and the command body started."""


@pytest.fixture(autouse=True)
def tripwire(monkeypatch):
    """Every command body starts with `_import_tensorflow_quietly()`: make it raise."""

    def refuse():
        raise BodyReached("the command body ran: the parser accepted an invalid value")

    monkeypatch.setattr(tfvae.cli.main, "_import_tensorflow_quietly", refuse)


@pytest.fixture
def places(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    return {"tmp": str(tmp_path)}


def _param_label(param: click.Parameter) -> str:
    """How click names the parameter in an error: '--opt', '-o' / '--output' or 'RUN_DIR'."""
    if isinstance(param, click.Argument):
        return param.human_readable_name
    return param.opts[-1]


def test_table_covers_every_option():
    """A new option (or command) without rows here fails this test."""
    assert set(TABLE) == set(main.commands), "add the new command to TABLE"
    for name, command in main.commands.items():
        params = {p.name for p in command.params}
        assert params == set(TABLE[name]), (
            f"{name}: options without rows: {sorted(params - set(TABLE[name]))}; "
            f"rows for removed options: {sorted(set(TABLE[name]) - params)}"
        )
        for param in command.params:
            assert TABLE[name][param.name], f"{name} {param.name}: no invalid values listed"
    assert {p.name for p in main.params} == set(GROUP_TABLE)


def _check_usage_error(result, option_labels: list[str], allowed: str):
    assert not isinstance(result.exception, BodyReached), (
        f"the value reached the command body (exit {result.exit_code}): {result.output}"
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    (error,) = errors
    assert any(label in error for label in option_labels), (option_labels, error)
    assert re.search(allowed, error), (allowed, error)


@pytest.mark.parametrize(("command", "param_name", "bad"), list(_cases()))
def test_invalid_value_is_a_usage_error(command, param_name, bad, places):
    """Exit code 2, one `Error:` line naming the option and what it accepts."""
    params = {p.name: p for p in main.commands[command].params}
    param = params[param_name]
    args = [a.format(**places) for a in bad.args]
    if isinstance(param, click.Argument):
        invocation = [command, *args]
        labels = [param.human_readable_name]
    else:
        # Commands that take RUN_DIR get a real folder, so only the option is wrong.
        needs_run = any(isinstance(p, click.Argument) for p in params.values())
        invocation = [command, *([places["tmp"]] if needs_run else []), *args]
        labels = [*param.opts, *param.secondary_opts]
    result = invoke(*invocation)
    _check_usage_error(result, labels, bad.allowed)


GROUP_CASES = [(name, bad) for name, rows in GROUP_TABLE.items() for bad in rows]


@pytest.mark.parametrize(("name", "bad"), GROUP_CASES, ids=lambda case: str(case))
def test_group_options(name, bad):
    (param,) = [p for p in main.params if p.name == name]
    result = invoke(*bad.args, "sample", ".")
    _check_usage_error(result, param.opts, bad.allowed)


@pytest.mark.parametrize("command", sorted(main.commands))
def test_unknown_option_is_a_usage_error(command, places):
    """A misspelt option is refused by name (and click suggests the real one)."""
    result = invoke(command, "--epoch", "3")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "No such option '--epoch'" in result.output


def test_unknown_command_is_a_usage_error():
    result = invoke("trian")
    assert result.exit_code == 2 and "No such command 'trian'" in result.output


def test_tripwire_catches_an_accepted_value(places):
    """The tripwire itself works: a valid invocation reaches the body."""
    result = invoke("evaluate", places["tmp"])
    assert isinstance(result.exception, BodyReached)
