"""Job output streams: ``run.out``/``run.err`` lines, terminal echo, progress with ETA.

On a terminal, progress is one line redrawn in place (``\\r``); in ``run.out`` it is a
plain line at every tenth of the way, so the file stays readable with ``tail -f``.

Example::

    out = JobStreams(Path("Class2D/job013"), echo=True)
    out.log("Iteration 1")
    for i in range(1, 101):
        out.progress(i, 100, "E-step")
    out.close()
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from emclass2d.nodes.graph import labels as L
def format_duration(seconds: float) -> str:
    """``83`` -> ``'1:23'``, ``3723`` -> ``'1:02:03'``."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class JobStreams:
    """Append-mode ``run.out``/``run.err`` of one job, optionally echoed to the terminal."""

    BAR_WIDTH = 30

    def __init__(self, job_path: Path, *, echo: bool, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.out = open(job_path / L.RUN_OUT, "a", buffering=1)
        self.err = open(job_path / L.RUN_ERR, "a", buffering=1)
        self.echo = echo
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.tty = echo and self.stdout.isatty()
        self._what: str | None = None
        self._start = 0.0
        self._last_done = -1
        self._last_decile = -1
        self._line_open = False

    def _end_line(self) -> None:
        if self._line_open:
            self.stdout.write("\n")
            self._line_open = False

    def log(self, message: str) -> None:
        """A line to ``run.out`` (and stdout in the foreground)."""
        self.out.write(message + "\n")
        if self.echo:
            self._end_line()
            self.stdout.write(message + "\n")
            self.stdout.flush()

    def warn(self, message: str) -> None:
        """A line to ``run.err`` (and stderr in the foreground)."""
        self.err.write(message + "\n")
        if self.echo:
            self._end_line()
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def progress(self, done: int, total: int, what: str = "") -> None:
        """Report ``done`` of ``total`` steps of ``what``; a new ``what`` or a smaller
        ``done`` starts a new bar (and a new ETA clock)."""
        now = time.monotonic()
        if what != self._what or done < self._last_done:
            self._end_line()
            self._what, self._start, self._last_decile = what, now, -1
        self._last_done = done
        frac = min(1.0, done / total) if total > 0 else 1.0
        elapsed = now - self._start
        eta = elapsed / done * (total - done) if done > 0 else float("nan")
        eta_s = format_duration(eta) if eta == eta else "?"
        text = f"{what} {done}/{total} ({100 * frac:.0f}%) elapsed {format_duration(elapsed)} ETA {eta_s}"
        decile = int(frac * 10)
        if decile > self._last_decile:
            self._last_decile = decile
            self.out.write(text + "\n")
            if self.echo and not self.tty:
                self.stdout.write(text + "\n")
        if self.tty:
            filled = int(round(frac * self.BAR_WIDTH))
            bar = "#" * filled + "." * (self.BAR_WIDTH - filled)
            self.stdout.write(f"\r{what} [{bar}] {done}/{total} ETA {eta_s}   ")
            self._line_open = True
            if done >= total:
                self._end_line()
            self.stdout.flush()

    def close(self) -> None:
        if self.echo:
            self._end_line()
        self.out.close()
        self.err.close()
