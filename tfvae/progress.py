"""What long work tells people while it runs: lines that stay, and on a
terminal one live line that says how far the current stage is.

In a pipe or a log file only the lines that stay are written (one per stage
and per epoch), so logs read as a person would write them; on a terminal the
live line is redrawn in place and wiped before the next line that stays.
Kept free of TensorFlow imports: the command line makes one before any.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

# The live line is redrawn at most this often (seconds), and a stage that
# counts nothing shows its time this often.
REDRAW = 0.1
TICK = 1.0


def duration(seconds: float) -> str:
    """A span of time as a person says it: 42 s, 8 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def bar(done: int, total: int, width: int = 24) -> str:
    """`[=========>          ]`: how much of `total` is `done`."""
    filled = width * min(done, total) // max(total, 1)
    head = ">" if filled < width else ""
    return "[" + "=" * filled + head + " " * (width - filled - len(head)) + "]"


class Progress:
    """Lines for people (`say`) and a live line on a terminal (`show`).

    `echo` receives the lines that stay (default: written to `stream`);
    `stream` is where both go (default: stdout, as it is at each call, so a
    redirected stdout is honoured); `live` says whether to draw the live
    line (default: when `stream` is a terminal). `Progress.quiet()` says
    nothing at all.
    """

    def __init__(
        self,
        echo: Callable[[str], None] | None = None,
        stream: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._echo, self._stream, self.clock = echo, stream, clock
        self.live = live if live is not None else _is_terminal(self.stream)
        self._shown = False
        self._drawn_at = -REDRAW
        self._lock = threading.Lock()  # a stage's ticking thread draws too

    @classmethod
    def quiet(cls) -> Progress:
        return cls(echo=lambda _: None, live=False)

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def say(self, text: str) -> None:
        """A line that stays, written after wiping the live line."""
        self._wipe()
        if self._echo is not None:
            self._echo(text)
        else:
            print(text, file=self.stream, flush=True)

    def show(self, text: str, force: bool = False) -> None:
        """Redraw the live line as `text` (cut to the terminal's width); at
        most every `REDRAW` seconds unless `force`. Nothing off a terminal."""
        if not self.live:
            return
        now = self.clock()
        if not force and now - self._drawn_at < REDRAW:
            return
        self._drawn_at = now
        width = self._width() - 1
        with self._lock:
            self.stream.write("\r" + text[:width] + "\x1b[K")
            self.stream.flush()
            self._shown = True

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return shutil.get_terminal_size((80, 24)).columns

    def _wipe(self) -> None:
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    @contextlib.contextmanager
    def stage(self, what: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """One stage of long work: its line (`what`) stays; on a terminal a
        live line below it counts the units done of `total` and the time
        the stage has left, or, without a `total`, the seconds it has taken.
        Yields `advance(n)`, to call as `n` more units are done."""
        self.say(what)
        start, done = self.clock(), 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            if total:
                left = (self.clock() - start) / done * (total - done) if done else 0.0
                self.show(
                    f"  {bar(done, total)} {min(done, total):,}/{total:,}, "
                    f"about {duration(left)} left",
                    force=done >= total,  # the end is always shown
                )

        stop = threading.Event()
        if self.live and not total:

            def tick() -> None:  # a call that says nothing while it runs (a conversion)
                while not stop.wait(TICK):
                    self.show(f"  {self.clock() - start:.0f} s", force=True)

            threading.Thread(target=tick, daemon=True).start()
        try:
            yield advance
        finally:
            stop.set()
            self._wipe()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
