"""The `tfvae` command line: parses arguments and calls the library.

TensorFlow is imported inside the commands, never at module level, so
`tfvae --help` answers at once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from tfvae.config import (
    ACTIVATIONS,
    ARCHS,
    BINARIZATIONS,
    GRADIENT_ESTIMATORS,
    LIKELIHOODS,
    LR_SCHEDULES,
    MAX_PSEUDO_INPUTS,
    MAX_SEED,
    OBJECTIVES,
    PRIOR,
    STRATEGIES,
    TrainConfig,
    dataset_problem,
)
from tfvae.errors import OutOfMemoryError, TfvaeError

# Users who set TF_CPP_MIN_LOG_LEVEL themselves see all of TensorFlow's and
# LiteRT's native output.
_USER_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ


@contextlib.contextmanager
def _native_output_quiet() -> Iterator[None]:
    """Send what native code writes to stderr inside the block (absl INFO
    lines, which ignore TF_CPP_MIN_LOG_LEVEL; LiteRT's "Created TensorFlow
    Lite XNNPACK delegate") to /dev/null. Python's exceptions still say what
    went wrong; they are reported after the block."""
    if _USER_LOG_LEVEL:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow without its C++ start-up chatter."""
    if "tensorflow" in sys.modules:
        return
    if not _USER_LOG_LEVEL:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _native_output_quiet():
        import tensorflow  # noqa: F401


class IntList(click.ParamType):
    """Comma-separated positive integers, e.g. `400` or `200,200`."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if min(sizes) < 1:
            self.fail(f"{value!r}: every size must be a positive integer", param, ctx)
        return sizes


class PriorSpec(click.ParamType):
    """`normal` or `vamp:K`."""

    name = "normal|vamp:K"

    def convert(self, value, param, ctx):
        if PRIOR.fullmatch(value) and int(value.partition(":")[2] or 1) <= MAX_PSEUDO_INPUTS:
            return value
        self.fail(
            f"{value!r}: give normal, or vamp:K with K pseudo-inputs in 1..{MAX_PSEUDO_INPUTS}",
            param,
            ctx,
        )


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses NaN (which every comparison lets through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(
                f"{value!r} is not a number in the range {self._describe_range()}", param, ctx
            )
        return number


class RunOrModel(click.ParamType):
    """A finished run folder, a `.keras` file tfvae wrote, a Keras model
    folder or an `hf://user/repo` path (which Keras downloads)."""

    name = "RUN"

    def convert(self, value, param, ctx):
        if isinstance(value, Path) or str(value).startswith("hf://"):
            return value
        path = Path(value)
        if not path.exists():
            self.fail(f"Path {value!r} does not exist.", param, ctx)
        if path.is_file() and path.suffix != ".keras":
            self.fail(f"{value!r} is a file; give a run folder or a .keras model file", param, ctx)
        return path


class DatasetSpec(click.ParamType):
    """`mnist`, `idx:DIR`, `images:DIR` or `tfds:NAME[/CONFIG]`; whether it
    exists is checked on load."""

    name = "mnist|idx:DIR|images:DIR|tfds:NAME[/CONFIG]"

    def convert(self, value, param, ctx):
        if problem := dataset_problem(value):
            self.fail(problem, param, ctx)
        return value


def _model_name(ctx, param, value):
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value):
        raise click.BadParameter(
            f"{value!r}: use letters, digits, '_', '-' and '.' (not first)", ctx, param
        )
    return value


POSITIVE = click.IntRange(min=1)
SEED = click.IntRange(min=0, max=MAX_SEED)
RUN_DIR = click.Path(file_okay=False, path_type=Path)
EXISTING_RUN = click.Path(exists=True, file_okay=False, path_type=Path)
RUN_OR_MODEL = RunOrModel()
# `tfvae train`'s defaults are the library's, so the two cannot drift apart.
DEFAULTS = TrainConfig()
JSON_HELP = "End stdout with one JSON object: run folder, epochs, test scores, seconds."


# What to ask for less of when a command runs out of memory in a place the
# library's own estimates and guards do not cover.
LOWER = {
    "train": "--batch-size, --k or --hidden",
    "resume": "--batch-size, --k or --hidden (a new run with --overwrite)",
    "evaluate": "--k, or evaluate on a machine with more memory",
    "sample": "-n",
    "reconstruct": "-n",
    "interpolate": "-n",
    "export": "the model's size, or export on a machine with more memory",
}


def _exit_out_of_memory(message: str) -> None:
    """Say `message` and exit 1 at once: after a failed allocation under an
    address-space limit, TensorFlow's clean-up at exit can abort the process
    ("double free or corruption") and turn exit 1 into a crash."""
    click.echo(f"Error: {message}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def user_errors(command):
    """Turn the library's user-facing errors, and running out of memory, into
    one line and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _import_tensorflow_quietly()
        import tensorflow as tf

        try:
            return command(*args, **kwargs)
        except OutOfMemoryError as err:
            _exit_out_of_memory(str(err))
        except TfvaeError as err:
            raise click.ClickException(str(err)) from None
        except (MemoryError, tf.errors.ResourceExhaustedError):
            lower = LOWER[command.__name__]
            _exit_out_of_memory(f"tfvae {command.__name__} ran out of memory; lower {lower}")
        except OSError as err:  # a full disk, a missing or read-only folder
            where = f"{err.filename}: " if err.filename else ""
            # One line even for libraries whose messages run over several.
            raise click.ClickException(
                f"{where}{err.strerror or ' '.join(str(err).split())}"
            ) from None

    return wrapper


def _import_modules(ctx, param, modules):
    """Import each module named: the ones that register the user's own Keras
    layers, so that runs and model files built with them load."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise click.BadParameter(
                f"no module named {module!r}; put its folder on PYTHONPATH or install its package",
                ctx,
                param,
            )
    if modules:
        _import_tensorflow_quietly()  # the module imports Keras: keep TensorFlow's start quiet
    for module in modules:
        importlib.import_module(module)
    return modules


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfvae")
@click.option(
    "--import",
    "imports",
    metavar="MODULE",
    multiple=True,
    expose_value=False,
    callback=_import_modules,
    help="Import MODULE before the command (repeatable): the module of your own Keras "
    "layers, for runs and model files built with them.",
)
def main():
    """tfvae: a variational auto-encoder (Kingma & Welling) in Keras 3 and TFP.

    \b
    A typical first run:
      tfvae train --epochs 10 --run-dir runs/mnist
      tfvae resume runs/mnist --epochs 20
      tfvae evaluate runs/mnist --k 5000
      tfvae sample runs/mnist -n 64 -o samples.png
      tfvae reconstruct runs/mnist -n 16 -o reconstructions.png
      tfvae interpolate runs/mnist --from 0 --to 7 -o path.png
    """


@main.command()
@click.option(
    "--dataset",
    type=DatasetSpec(),
    default=DEFAULTS.dataset,
    show_default=True,
    help="mnist (bundled), idx:DIR (MNIST-format IDX files), images:DIR (PNG/JPEG/BMP/GIF "
    "files; class subfolders give labels, train/ and test/ subfolders the splits) "
    "or tfds:NAME[/CONFIG].",
)
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="TensorFlow Datasets data folder (for tfds: sets).",
)
@click.option(
    "--resize",
    type=(POSITIVE, POSITIVE),
    default=None,
    metavar="H W",
    help="Resize every image to H x W (for sets whose images differ in size).",
)
@click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=DEFAULTS.arch,
    show_default=True,
    help="Encoder/decoder body: dense layers (mlp); two strided convolutions (conv); or "
    "stages of pre-activation residual blocks (resnet, shaped by --channels and --blocks).",
)
@click.option(
    "--channels",
    type=IntList(),
    default=",".join(map(str, DEFAULTS.channels)),
    show_default=True,
    help="resnet: the channels of each stage; each stage halves the grid.",
)
@click.option(
    "--blocks",
    type=click.IntRange(0, 64),
    default=DEFAULTS.blocks,
    show_default=True,
    help="resnet: residual blocks in each stage.",
)
@click.option(
    "--latent-dim",
    type=IntList(),
    default=str(DEFAULTS.latent_dim),
    show_default=True,
    help="Size of z; a list (32,16) gives one stochastic layer each, bottom first, "
    "inferred top down (a Ladder VAE). A top layer of 2 also draws manifold.png and "
    "latent.png.",
)
@click.option(
    "--prior",
    type=PriorSpec(),
    default=DEFAULTS.prior,
    show_default=True,
    help="p(z) of the top layer: normal, N(0, I); or vamp:K, the VampPrior, a mixture of "
    "the posteriors at K learned pseudo-inputs (its KL is estimated by sampling).",
)
@click.option(
    "--conditional",
    is_flag=True,
    help="A conditional VAE of p(x|y): the encoder and decoder also read each image's "
    "class y (the set's labels; the class names go into config.json). 'tfvae sample "
    "--class' then draws a class.",
)
@click.option(
    "--hidden",
    type=IntList(),
    default=",".join(map(str, DEFAULTS.hidden_units)),
    show_default=True,
    help="Hidden layer sizes, e.g. 400 or 200,200.",
)
@click.option(
    "--activation",
    type=click.Choice(ACTIVATIONS),
    default=DEFAULTS.activation,
    show_default=True,
)
@click.option(
    "--epochs",
    type=POSITIVE,
    default=DEFAULTS.epochs,
    show_default=True,
    help="Passes over the training set.",
)
@click.option(
    "--batch-size",
    type=POSITIVE,
    default=DEFAULTS.batch_size,
    show_default=True,
    help="Global batch size (split across replicas).",
)
@click.option(
    "--learning-rate",
    type=FiniteFloatRange(min=0, min_open=True, max=10, max_open=True),
    default=DEFAULTS.learning_rate,
    show_default=True,
    help="Adam learning rate (the peak rate under --lr-schedule cosine).",
)
@click.option(
    "--adam-epsilon",
    type=FiniteFloatRange(min=0, min_open=True, max=1),
    default=DEFAULTS.adam_epsilon,
    show_default=True,
    help="Adam's epsilon, added to the root of the squared-gradient average: larger "
    "values damp the steps of weights whose gradients are tiny.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    default=DEFAULTS.lr_schedule,
    show_default=True,
    help="cosine: from the rate down to 0 along half a cosine over the run; constant; "
    "burda: Burda et al.'s 8 stages, 3^i epochs at the rate times 10^(-i/7), "
    "scaled to --epochs (theirs for --epochs 3280).",
)
@click.option(
    "--binarize",
    type=click.Choice(BINARIZATIONS),
    default=DEFAULTS.binarize,
    show_default=True,
    help="For --likelihood bernoulli: a fresh Bernoulli draw each pass, one fixed draw, or "
    "none (grey levels as targets). The other likelihoods see the pixels as they are.",
)
@click.option(
    "--likelihood",
    type=click.Choice(LIKELIHOODS),
    default=None,
    help="p(x|z) per pixel: bernoulli (binary or binarized pixels; the default, but "
    "logistic for images:DIR), continuous-bernoulli (intensities in [0, 1]), logistic "
    "(the 256 levels of 8-bit pixels), gaussian (dequantized levels). logistic and "
    "gaussian give bits/dim.",
)
@click.option(
    "--objective",
    type=click.Choice(OBJECTIVES),
    default=DEFAULTS.objective,
    show_default=True,
    help="elbo (Kingma & Welling) or iwae (importance-weighted bound, Burda et al.).",
)
@click.option(
    "--gradient-estimator",
    type=click.Choice(GRADIENT_ESTIMATORS),
    default=DEFAULTS.gradient_estimator,
    show_default=True,
    help="With --objective iwae, the encoder's gradient: the bound's own, or dreg "
    "(Tucker et al.'s doubly reparameterized estimator, less noisy as --k grows).",
)
@click.option(
    "-k",
    "--k",
    type=POSITIVE,
    default=DEFAULTS.k,
    show_default=True,
    help="Samples of z per image (the IWAE's K; the ELBO averages over them).",
)
@click.option(
    "--beta",
    type=FiniteFloatRange(min=0, max=1000),
    default=DEFAULTS.beta,
    show_default=True,
    help="Weight of the KL term (beta-VAE); 1 is the ELBO.",
)
@click.option(
    "--kl-warmup",
    type=click.IntRange(min=0),
    default=DEFAULTS.kl_warmup,
    show_default=True,
    help="Epochs over which the KL weight ramps linearly from 0 to --beta.",
)
@click.option(
    "--free-bits",
    type=FiniteFloatRange(min=0, max=1000),
    default=DEFAULTS.free_bits,
    show_default=True,
    metavar="NATS",
    help="Count each stochastic layer's KL as at least NATS over the batch, with no "
    "gradient below (free bits, against posterior collapse); 0: none.",
)
@click.option(
    "--clip-norm",
    type=FiniteFloatRange(min=0, min_open=True, max=1e6),
    default=None,
    metavar="NORM",
    help="Clip the gradient's global norm to NORM before each update (against the "
    "exploding gradients of deep VAEs) [default: none].",
)
@click.option("--seed", type=SEED, default=DEFAULTS.seed, show_default=True)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=DEFAULTS.strategy,
    show_default=True,
    help="tf.distribute strategy.",
)
@click.option(
    "--jit-compile/--no-jit-compile",
    default=None,
    help="XLA-compile the training step [default: on; off for conv on the CPU "
    "and under mirrored/multi-worker].",
)
@click.option(
    "--mixed-precision",
    is_flag=True,
    help="float16 compute, float32 variables and losses (for GPUs with tensor cores).",
)
@click.option(
    "--steps-per-execution",
    type=POSITIVE,
    default=None,
    help="Training steps per call into TensorFlow, fewer Python round trips "
    "[default: 32; 1 under mirrored/multi-worker].",
)
@click.option(
    "--limit",
    type=POSITIVE,
    default=None,
    help="Use only the first N train and test images (quick runs).",
)
@click.option(
    "--validation",
    type=click.IntRange(min=0),
    default=DEFAULTS.validation,
    show_default=True,
    metavar="N",
    help="Hold the last N training images out of training and score them after every "
    "epoch (metrics.csv's validation_* columns); the test set is then scored only once, "
    "at the end. 0: score the test set every epoch.",
)
@click.option(
    "--init-from",
    type=click.Path(file_okay=False),
    default=None,
    metavar="RUN",
    help="Start from the weights of this finished run (same model shape) instead of "
    "random ones; the optimizer and schedule start afresh.",
)
@click.option(
    "--pictures-every",
    type=click.IntRange(min=0),
    default=DEFAULTS.pictures_every,
    show_default=True,
    metavar="N",
    help="Reconstructions, samples (and the 2-D manifold) as TensorBoard images "
    "(logs/pictures) every N epochs; 0: none.",
)
@click.option(
    "--run-dir",
    type=RUN_DIR,
    default=None,
    help="Run folder [default: runs/<date-time>]. An unfinished one is resumed.",
)
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --run-dir.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def train(run_dir, overwrite, hidden, as_json, **settings):
    """Train a VAE and write a run folder.

    The run folder gets config.json, model.keras, metrics.csv, TensorBoard
    logs/, reconstructions.png and samples.png. Rerunning the same command
    after an interruption resumes where it stopped.

    \b
    Examples:
      tfvae train
      tfvae train --arch conv --latent-dim 2 --epochs 20 --run-dir runs/conv2d
    """
    from tfvae.runs import default_run_dir
    from tfvae.training import train as train_run

    latent_dim = settings.pop("latent_dim")
    latent_dim = latent_dim[0] if len(latent_dim) == 1 else latent_dim
    config = TrainConfig(hidden_units=hidden, latent_dim=latent_dim, **settings)
    run_dir = run_dir or default_run_dir()
    progress = _progress(as_json)
    _training(
        lambda: train_run(config, run_dir, overwrite=overwrite, echo=progress), run_dir, as_json
    )


@main.command()
@click.argument("run_dir", type=EXISTING_RUN)
@click.option(
    "--epochs",
    type=POSITIVE,
    default=None,
    help="A new total of epochs: more than a finished run's extends it, with the "
    "learning-rate schedule stretched to the new total [default: the run's].",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Train the run again from scratch with its settings, replacing its files (what "
    "repairs a finished run whose model.keras was lost and no checkpoint is kept).",
)
@click.option(
    "--strategy", type=click.Choice(STRATEGIES), default=None, help="[default: the run's]"
)
@click.option("--jit-compile/--no-jit-compile", default=None, help="[default: the run's]")
@click.option("--steps-per-execution", type=POSITIVE, default=None, help="[default: the run's]")
@click.option(
    "--pictures-every", type=click.IntRange(min=0), default=None, help="[default: the run's]"
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@user_errors
def resume(run_dir, epochs, restart, as_json, **placement):
    """Continue a run with the settings in its config.json.

    An unfinished run resumes after its last checkpoint. A finished run is
    extended with --epochs: its learning-rate schedule is stretched to the
    new total and continues from the step it had reached (a cosine that had
    decayed to 0 restarts at the stretched curve's rate; the first line says
    which).

    \b
    Examples:
      tfvae resume runs/mnist
      tfvae resume runs/mnist --epochs 300
    """
    from tfvae.training import resume as resume_run

    progress = _progress(as_json)
    _training(
        lambda: resume_run(run_dir, epochs, echo=progress, restart=restart, **placement),
        run_dir,
        as_json,
    )


def _progress(as_json: bool):
    """Where a command's lines for people go: stdout, or stderr when stdout
    holds the JSON document (`--json`). stderr is written through a copy of
    its descriptor, which `_native_output_quiet` leaves open."""
    from tfvae.progress import Progress

    if not as_json:
        return Progress()
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):  # a captured stream (click's test runner)
        return Progress(stream=sys.stderr)
    return Progress(stream=os.fdopen(fd, "w", buffering=1, errors="replace"))


def _training(run, run_dir: Path, as_json: bool) -> None:
    """Run a training call as the commands do: rejoin a lost multi-worker
    job, exit 130 on Ctrl-C with how to resume, print JSON when asked."""
    from tfvae.distribute import PeerLostError

    try:
        result = run()
    except PeerLostError as err:
        _rejoin(err)
    except KeyboardInterrupt:
        if (Path(run_dir) / "config.json").is_file():
            hint = f"'tfvae resume {run_dir}' continues the run."
        else:
            hint = "Nothing was written; the same command starts the run."
        click.echo(f"\nInterrupted. {hint}", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(result.to_json()))


# How often one `tfvae train` on a worker restarts itself after losing a peer.
MAX_REJOINS = 10


def _rejoin(err: Exception) -> None:
    """Start this training process again, with the same command line.

    A lost peer leaves TensorFlow's collectives aborted for good in this
    process; a fresh one waits for the restarted worker and then every
    worker resumes from their last common checkpoint.
    """
    done = int(os.environ.get("TFVAE_REJOINS", "0"))
    if done >= MAX_REJOINS:
        raise click.ClickException(f"{err} (gave up after {done} restarts)")
    click.echo(f"{err}\nRestarting to rejoin the job ({done + 1}/{MAX_REJOINS}).", err=True)
    os.environ["TFVAE_REJOINS"] = str(done + 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


SPLIT = click.option(
    "--split",
    type=click.Choice(["test", "train", "validation"]),
    default="test",
    show_default=True,
    help="train: the images the run trained on; validation: those it held out (--validation).",
)
DATASET = click.option(
    "--dataset",
    type=DatasetSpec(),
    default=None,
    help="Other images, in the model's size [default: the run's own data set; needed for a "
    "model file].",
)


@main.command()
@click.argument("run_dir", type=RUN_OR_MODEL)
@SPLIT
@DATASET
@click.option(
    "-k",
    "--k",
    type=POSITIVE,
    default=1,
    show_default=True,
    help="Importance samples per image for the NLL estimate (literature: 5000).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON object.")
@user_errors
def evaluate(run_dir, split, dataset, k, as_json):
    """Score a trained run: ELBO, KL, log-likelihood and importance-weighted NLL.

    All figures are nats per image on the split as the run scores it (one
    fixed binarization, or dequantization); logistic and gaussian runs also
    give the NLL in bits per dimension.

    \b
    Examples:
      tfvae evaluate runs/mnist
      tfvae evaluate runs/mnist -k 5000 --json
    """
    from tfvae.runs import score_run

    progress = _progress(as_json)
    scores = score_run(run_dir, split=split, k=k, progress=progress, dataset=dataset)
    if as_json:
        click.echo(json.dumps(scores))
        return
    rows = [
        ("ELBO", f"{scores['elbo']:10.3f}", ""),
        ("KL", f"{scores['kl']:10.3f}", ""),
        ("log-likelihood", f"{scores['log_likelihood']:10.3f}", "(E_q ln p(x|z))"),
        (f"NLL (IW, K={k})", f"{scores['nll']:10.3f}", "(-ln p(x), upper bound)"),
    ]
    if scores["conditional"]:
        rows[-1] = (rows[-1][0], rows[-1][1], "(-ln p(x|y), the class given; upper bound)")
    if scores["bits_per_dim"] is not None:
        rows.append(("bits/dim", f"{scores['bits_per_dim']:10.4f}", "(NLL / (D ln 2))"))
    rows.append(("active units", f"{scores['active_units']:10d}", _units(scores)))
    width = max(len(label) for label, _, _ in rows)
    progress.say(f"{split} split, {scores['n_images']} images, nats per image:")
    for label, value, note in rows:
        progress.say(f"  {label:<{width}} {value}   {note}".rstrip())


@main.command()
@click.argument("run_dir", type=RUN_OR_MODEL)
@click.option(
    "--dataset",
    type=DatasetSpec(),
    default=None,
    help="The images to score, in the run's shape [default: the run's own data set].",
)
@click.option(
    "--split",
    type=click.Choice(["test", "train", "validation", "all"]),
    default=None,
    help="validation: the images the run held out (--validation); all: every split in turn "
    "[default: test, or all with --dataset].",
)
@click.option(
    "-k", "--k", type=POSITIVE, default=100, show_default=True, help="Importance samples per image."
)
@click.option(
    "--score",
    "score_name",
    type=click.Choice(["regret", "complexity", "nll"]),
    default=None,
    help="regret: the ELBO an image gains when q(z|x) is refitted to it alone (one-layer "
    "models); complexity: NLL in bits minus the image's PNG code length; nll: -ln p(x) in "
    "nats [default: regret, complexity for several stochastic layers].",
)
@click.option(
    "--fpr",
    type=FiniteFloatRange(min=0, max=1, min_open=True, max_open=True),
    default=0.01,
    show_default=True,
    help="False-positive rate on normal images the run never trained on, which sets the "
    "threshold: its validation split, else training images after its --limit.",
)
@click.option("--no-threshold", is_flag=True, help="Score without flagging (no outlier column).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Rows file: .csv or .jsonl (with <stem>.summary.json beside it) [default: a table].",
)
@click.option(
    "--outliers",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Picture of the most anomalous images with their scores "
    "[default: outliers.png beside -o, or in RUN_DIR].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@user_errors
def score(run_dir, dataset, split, k, score_name, fpr, no_threshold, output, outliers, as_json):
    """Score every image: ELBO, NLL, bits/dim, code length and an anomaly score.

    One row per image, in the split's order. Images whose score exceeds the
    threshold set at --fpr on normal images are flagged as outliers.

    \b
    Examples:
      tfvae score runs/mnist-val -o scores.csv
      tfvae score runs/parts --dataset images:new_parts -k 1000 -o scores.jsonl
    """
    from tfvae import plots
    from tfvae.scoring import check_rows_path, score_report

    if output is not None:
        check_rows_path(output)
    folder = output.parent if output is not None else run_dir
    picture_path, _ = _output(folder, outliers, "outliers.png")
    progress = _progress(as_json)
    fpr = None if no_threshold else fpr
    report = score_report(run_dir, dataset, split, k, score_name, fpr, progress)
    files = report.write(output) if output is not None else []
    files.append(plots.save_picture(report.picture(), picture_path))
    top = report.most_anomalous(10)
    if as_json:
        rows = [report.row(i) for i in top]
        facts = {"files": [str(path) for path in files], "most_anomalous": rows}
        click.echo(json.dumps(report.summary | facts))
        return
    _say_scores(progress, report, top, files)


def _say_scores(progress, report, top, files) -> None:
    """The most anomalous rows as a table, then what the flag rests on."""
    summary = report.summary
    flag = ["outlier"] if "outlier" in report.rows else []
    label = ["label"] if "label" in report.rows else []
    path = ["path"] if "path" in report.rows else []  # last: paths are long
    header = ["split", "index", *label, "nll", "score", *flag, *path]
    progress.say("Most anomalous first:")
    progress.say("  " + "  ".join(f"{name:>10}" for name in header))
    for i in top:
        row = report.row(i)
        cells = [_cell(row[name]) for name in header]
        progress.say("  " + "  ".join(cells))
    scored = f"Scored {summary['n_images']:,} {summary['split']} images of {summary['dataset']}"
    progress.say(f"{scored} (K={summary['k']:,}, score: {summary['score']})")
    if "threshold" in summary:
        progress.say(
            f"Threshold {summary['threshold']:.2f}: {summary['fpr']:.2%} false positives on "
            f"{summary['threshold_images']:,} {summary['threshold_split']} images; "
            f"{summary['outliers']:,} of {summary['n_images']:,} flagged"
        )
    for path in files:
        progress.say(f"Wrote {path}")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:10.2f}"
    text = str(value)
    return f"{text:>10}" if len(text) <= 10 else text


def _units(scores: dict) -> str:
    """`of 20`, or per layer: `of 48 (z_1: 20 of 32, z_2: 10 of 16)`."""
    dims = scores["latent_dim"]
    dims = list(dims) if isinstance(dims, list | tuple) else [dims]
    if len(dims) == 1:
        return f"of {dims[0]}"
    layers = zip(scores["active_units_per_layer"], dims, strict=True)
    each = ", ".join(f"z_{i}: {n} of {d}" for i, (n, d) in enumerate(layers, 1))
    return f"of {sum(dims)} ({each})"


def _output(run_dir: Path, output: Path | None, default: str) -> tuple[Path, bool]:
    """The picture's path, and whether it was chosen for the user (in the run
    folder, or beside a model file)."""
    from tfvae import plots
    from tfvae.runs import output_folder

    path = output if output is not None else output_folder(run_dir) / default
    plots.picture_format(path)  # refused before anything is computed
    return path, output is None


def _write_picture(picture, path: Path, chosen: bool, as_json: bool, **facts) -> None:
    """Write `picture` at `path`; under `--json` print what was written.

    A run folder that cannot be written is named with what to do (`-o`)."""
    from tfvae import plots

    try:
        plots.save_picture(picture, path)
    except OSError as err:
        if not chosen:
            raise
        raise click.ClickException(
            f"{path}: {err.strerror}; pass -o FILE to write the picture elsewhere"
        ) from None
    if as_json:
        size = {"width": picture.width, "height": picture.height}
        click.echo(json.dumps({"files": [{"path": str(path), **size}], **facts}))


def _count_option(default: int, help: str, minimum: int = 1):
    return click.option(
        "-n",
        "--num",
        "count",
        type=click.IntRange(min=minimum),
        default=default,
        show_default=True,
        help=help,
    )


OUTPUT_HELP = "Picture file: .png, .jpg or .webp [default: RUN_DIR/{}]."
PICTURE_JSON = "Print what was written as one JSON object (files, sizes, images)."


@main.command()
@click.argument("run_dir", type=RUN_OR_MODEL)
@_count_option(64, "Images in the grid: at most 10000 (fewer for images larger than 49x49).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--binary",
    is_flag=True,
    help="Draws from p(x|z) (Bernoulli pixels for a Bernoulli model) instead of pixel means.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=OUTPUT_HELP.format("samples-seed<S>.png"),
)
@click.option(
    "--class",
    "classes",
    multiple=True,
    metavar="CLASS",
    help="A conditional model's class to draw, by name or index; repeat it for several, "
    "one row each [default: one row per class, -n shared among them].",
)
@click.option(
    "--temperature",
    type=FiniteFloatRange(min=0, max=10),
    default=1.0,
    show_default=True,
    help="Scale of the prior's standard deviations: 1 draws from the model; lower gives "
    "more typical, less varied images; 0 decodes the prior's means.",
)
@click.option("--json", "as_json", is_flag=True, help=PICTURE_JSON)
@user_errors
def sample(run_dir, count, seed, binary, classes, temperature, output, as_json):
    """Decode images from the prior z ~ N(0, I) into a grid picture.

    \b
    Examples:
      tfvae sample runs/mnist -n 100 --seed 3 -o samples.png
      tfvae sample runs/mnist-conditional --class 7 -n 64
      tfvae sample runs/mnist --temperature 0.7
    """
    from tfvae import plots
    from tfvae.runs import load_model

    path, chosen = _output(run_dir, output, f"samples-seed{seed}.png")
    model = load_model(run_dir)
    labels = [model.class_index(name) for name in classes]
    facts = {"image_shape": list(model.image_shape), "seed": seed, "temperature": temperature}
    if model.conditional:
        picture, labels, count = plots.samples_of_classes(
            model, count, seed, binary, labels, temperature
        )
        facts["classes"] = [model.classes[i] for i in labels]
    else:
        picture = plots.samples(model, count, seed=seed, binary=binary, temperature=temperature)
    facts = {"images": count, **facts}
    _write_picture(picture, path, chosen, as_json, **facts, binary=binary)
    drawn = f" of {', '.join(facts['classes'])}" if model.conditional else ""
    _progress(as_json).say(f"Wrote {count} samples{drawn} to {path}")


@main.command()
@click.argument("run_dir", type=RUN_OR_MODEL)
@_count_option(
    16, "Images shown with their reconstructions: at most 5000 (fewer for large images)."
)
@SPLIT
@DATASET
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=OUTPUT_HELP.format("reconstruct-<split>.png"),
)
@click.option("--json", "as_json", is_flag=True, help=PICTURE_JSON)
@user_errors
def reconstruct(run_dir, count, split, dataset, output, as_json):
    """Show the first N images of a split, each above its reconstruction.

    \b
    Example:
      tfvae reconstruct runs/mnist -n 16 -o reconstructions.png
    """
    from tfvae import plots
    from tfvae.runs import open_run

    path, chosen = _output(run_dir, output, f"reconstruct-{split}.png")
    run = open_run(run_dir)
    images, labels = run.split(split, limit=count, dataset=dataset)
    picture = plots.reconstructions(run.model, images, labels=labels)
    facts = {"images": len(images), "image_shape": list(images.shape[1:]), "split": split}
    _write_picture(picture, path, chosen, as_json, **facts)
    _progress(as_json).say(f"Wrote {len(images)} originals and reconstructions to {path}")


@main.command()
@click.argument("run_dir", type=RUN_OR_MODEL)
@click.option(
    "--from",
    "first",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Index of the image the path starts at.",
)
@click.option(
    "--to",
    "last",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Index of the image it ends at.",
)
@_count_option(10, "Decoded steps, both ends included.", minimum=2)
@SPLIT
@DATASET
@click.option(
    "--spherical",
    is_flag=True,
    help="Along the great circle between the codes (slerp) instead of the line.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=OUTPUT_HELP.format("interpolate-<split>-<I>-<J>.png"),
)
@click.option("--json", "as_json", is_flag=True, help=PICTURE_JSON)
@user_errors
def interpolate(run_dir, first, last, count, split, dataset, spherical, output, as_json):
    """Decode the path between two images' posterior means into one row.

    The row shows image I, the N decoded steps from its code to image J's,
    and image J.

    \b
    Examples:
      tfvae interpolate runs/mnist --from 0 --to 7 -o path.png
      tfvae interpolate runs/mnist --from 3 --to 5 -n 16 --spherical
    """
    from tfvae import plots
    from tfvae.runs import open_run

    path, chosen = _output(run_dir, output, f"interpolate-{split}-{first}-{last}.png")
    run = open_run(run_dir)
    images, labels = run.split(split, limit=max(first, last) + 1, dataset=dataset)
    if max(first, last) >= len(images):
        raise click.ClickException(
            f"--from/--to {max(first, last)}: the {split} split has {len(images)} images"
        )
    ends = None if labels is None else labels[[first, last]]
    row = plots.interpolation(run.model, images[first], images[last], count, spherical, ends)
    facts = {"steps": count, "image_shape": list(images.shape[1:]), "split": split}
    _write_picture(row, path, chosen, as_json, **facts, indices=[first, last])
    _progress(as_json).say(
        f"Wrote the {count}-step path from {split} image {first} to {last} to {path}"
    )


@main.command()
@click.argument("run_dir", type=RUN_OR_MODEL)
@click.option(
    "--format",
    "formats",
    type=click.Choice(["savedmodel", "tflite", "onnx", "all", "web"]),
    default="savedmodel",
    show_default=True,
    help="all = savedmodel + tflite (+ onnx when its extra is installed); web = a page "
    "that runs the model in the browser (LiteRT.js).",
)
@click.option(
    "-o",
    "--output",
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("exports"),
    show_default=True,
    help="Export folder; models go to OUTPUT/NAME/.",
)
@click.option(
    "--name",
    default=None,
    callback=_model_name,
    help="Model name [default: the run folder's name].",
)
@click.option(
    "--model-version",
    "--version",
    "version",
    type=POSITIVE,
    default=None,
    help="SavedModel version [default: the next free integer].",
)
@click.option(
    "--quantize",
    type=click.Choice(["none", "float16", "dynamic", "int8"]),
    default="none",
    show_default=True,
    help="TFLite quantization: float16 or dynamic (int8 weights) for smaller files, int8 "
    "for integer-only files with int8 inputs and outputs (Edge TPU, NPUs); the manifest "
    "reports the error.",
)
@click.option(
    "--batch-size",
    "--batch",
    "batch",
    type=POSITIVE,
    default=None,
    help="Fix the TFLite files' batch dimension to N (static shapes, for LiteRT.js, "
    "TFLite Micro and the Edge TPU compiler) [default: dynamic].",
)
@click.option(
    "--litert-js",
    metavar="BASE",
    default=None,
    help="Where the web page loads LiteRT.js from: a URL or path holding the npm "
    "packages as node_modules/@litertjs/ does (BASE/core/..., BASE/wasm-utils/...) "
    "[default: the jsDelivr CDN, the tested version].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print every path written as one JSON object."
)
@user_errors
def export(run_dir, formats, out, name, version, quantize, batch, litert_js, as_json):
    """Export a run for TF Serving (SavedModel), phones (TFLite) or ONNX.

    \b
    Examples:
      tfvae export runs/mnist --name vae                  # exports/vae/1/
      tfvae export runs/mnist --name vae --format all --quantize float16
      tfvae export runs/mnist-2d --format web && python -m http.server -d exports/mnist-2d/web
      docker run -p 8501:8501 -v $PWD/exports/vae:/models/vae -e MODEL_NAME=vae tensorflow/serving
    """
    from tfvae.export import describe_artifact, export_run

    progress = _progress(as_json)
    with _native_output_quiet():
        written = export_run(
            run_dir, formats, out, name, version, quantize, batch, litert_js, progress
        )
    for record in written:
        progress.say(describe_artifact(record))
    if as_json:
        click.echo(json.dumps({"exports": written}))
