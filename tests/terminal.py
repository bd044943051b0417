"""Running `tfvae` as a person does, in a real terminal: a pseudo-terminal of
a given size, whose output is replayed through a VT100 emulator (pyte) to
get the screen the person sees at the end."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pyte
from harness import TFVAE, USER_ENV


@dataclasses.dataclass
class Session:
    """What a command wrote to the terminal (`raw`, every byte in order),
    its exit code, and the screen at the end (`lines`, without trailing
    blanks)."""

    raw: str
    returncode: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def run_in_terminal(
    *args,
    columns: int = 120,
    rows: int = 60,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> Session:
    """`tfvae *args` with stdin, stdout and stderr on one pseudo-terminal of
    `columns` x `rows`, as in an interactive shell (`env` added to ours)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    size = {"TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
    env = {**USER_ENV, **size, **(env or {})}
    process = subprocess.Popen(
        [*TFVAE, *map(str, args)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the follower side closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    else:
        process.kill()
        raise TimeoutError(f"tfvae {' '.join(map(str, args))} ran past {timeout} s")
    os.close(leader)
    raw = b"".join(chunks).decode(errors="replace")
    return Session(raw, process.wait(timeout=60), screen_lines(raw, columns, rows))


def screen_lines(raw: str, columns: int, rows: int) -> list[str]:
    """The screen a terminal shows after `raw`, with history kept so nothing
    that scrolled off is lost: its lines, trailing spaces and blank lines cut."""
    screen = pyte.HistoryScreen(columns, rows, history=10_000)
    pyte.Stream(screen).feed(raw.replace("\n", "\r\n").replace("\r\r\n", "\r\n"))
    history = ["".join(line[x].data for x in range(columns)) for line in screen.history.top]
    lines = [line.rstrip() for line in [*history, *screen.display]]
    while lines and not lines[-1]:
        lines.pop()
    return lines
