"""Two training programs run in lockstep: one epoch of each in turn.

On a shared VM the speed of the cores drifts by 1.5x over seconds to minutes,
so two programs timed one after the other are rarely timed on the same
machine. Kept alive side by side and let through one epoch at a time, each
epoch of one program is timed next to an epoch of the other, seconds apart.

A program in lockstep prints a line starting with a marker at the end of
each epoch and then waits for a line on its standard input before it goes
on. A program that does not (the PyTorch peer) runs under this module, which
makes its `print` wait after each marker line:

    python benchmarks/lockstep.py "epoch " PEER.py --epochs 6    # PEER.py: the peer's script
"""

from __future__ import annotations

import builtins
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULT_MARKER, ChildError


def wait_for_turn() -> None:
    """Block until the lockstep parent lets this program run its next epoch."""
    sys.stdin.readline()


class Lockstep:
    """A child program run one epoch at a time (see the module docstring)."""

    def __init__(self, command: list[str], marker: str, log: Path) -> None:
        self.command = command
        self.marker = marker
        self.lines: list[str] = []
        self._started = False
        self._log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,  # never a pipe: a full pipe would block the child
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def epoch(self) -> float:
        """Let the child run one epoch; its seconds. The first one starts with
        the child itself, so it includes the start-up: use it as a warm-up."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        start = time.perf_counter()
        if self._started:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        self._started = True
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith(self.marker):
                return time.perf_counter() - start
        raise self._failure()

    def finish(self) -> dict[str, Any]:
        """Let the child run to its end; the result it printed."""
        rest, _ = self.proc.communicate("\n")
        self.lines.append(rest)
        self._log.close()
        for line in reversed("".join(self.lines).splitlines()):
            if line.startswith(RESULT_MARKER):
                return json.loads(line[len(RESULT_MARKER) :])
        raise self._failure()

    def _failure(self) -> ChildError:
        self._log.close()
        output = "".join(self.lines) + self._log_path.read_text()
        return ChildError(self.command, self.proc.wait(), output)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _run_in_lockstep(marker: str, script: str, args: list[str]) -> None:
    """Run `script` as `__main__`, waiting for a turn after each marker line."""
    plain_print = builtins.print

    def print_then_wait(*values: Any, **options: Any) -> None:
        plain_print(*values, **options)
        if values and str(values[0]).startswith(marker):
            sys.stdout.flush()
            wait_for_turn()

    builtins.print = print_then_wait
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    _run_in_lockstep(sys.argv[1], sys.argv[2], sys.argv[3:])
