"""The errors a user can fix: each message is one line saying what to do.

The command line turns every `TfvaeError` into that line and exit code 1;
anything else is a bug and keeps its traceback.
"""


def first_line(err: Exception) -> str:
    """The first line of a library's error message (its type when it has none):
    what a one-line message quotes of an error raised outside tfvae."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class TfvaeError(Exception):
    """A problem with the user's request, files or data, not with tfvae."""


class RunError(TfvaeError):
    """A run folder or setting that cannot be used as asked."""


class ConfigError(RunError, ValueError):
    """A setting outside the values it accepts."""


class DataError(TfvaeError, ValueError):
    """A data set that cannot be found or read."""


class ExportError(TfvaeError):
    """A model that cannot be exported as asked."""


class OutOfMemoryError(TfvaeError, MemoryError):
    """A request larger than the memory this process can have."""


class NonFiniteLossError(TfvaeError, RuntimeError):
    """Training produced NaN or Inf; the last good checkpoint is untouched."""

    def __init__(self, epoch: int, step: int):
        super().__init__(
            f"loss became NaN/Inf at epoch {epoch + 1}, step {step + 1}; training stopped "
            "and the last good checkpoint was kept (check the data, lower --learning-rate)"
        )
        self.epoch, self.step = epoch, step
