"""A progress line for long loops: how far, how fast, how long is left.

``Progress("sampling", stream)`` is called as ``progress(done, total)`` (the signature the
samplers' ``progress=`` hook uses) and prints at most one line every ``every`` seconds, plus
the last one:

    sampling  120/1000 steps  12% of 0:01:40  left 0:01:28

Its first line is also the one place a job's length is judged: a job that would take more
than ``LONGEST_JOB`` (a week) at the rate measured so far is stopped there, in one line with
its estimate, instead of printing "50,289 hours left" and going on.
"""
from __future__ import annotations

import sys
import time

from minidiff.errors import MinidiffInputError

__all__ = ["Progress", "clock", "note", "LONGEST_JOB"]

#: the longest job a command starts (seconds): beyond it, ask for less and run several jobs
LONGEST_JOB = 7 * 24 * 3600


def note(message: str) -> None:
    """A message for the person watching, on stderr (so that --json output on stdout stays
    clean)."""
    print(message, file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """h:mm:ss"""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, label: str, stream=None, every: float = 5.0, unit: str = "steps"):
        self.label, self.unit, self.every = label, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.time()
        self.last = self.start
        self.judged = False

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` units finished (counted from when this object was made)."""
        now = time.time()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / max(done, 1) * (total - done)
        if not self.judged and done > 0:
            self.judged = True
            if elapsed + left > LONGEST_JOB:
                raise MinidiffInputError(
                    f"{self.label}: {total:,} {self.unit} would take about "
                    f"{(elapsed + left) / 3600:,.0f} hours at the rate of the first {done:,} "
                    f"({clock(elapsed)}), more than a week",
                    "ask for less (--n, --per-prompt, --bpd-images ...) and run several jobs")
        print(f"{self.label}  {done}/{total} {self.unit}  {100 * done / max(total, 1):3.0f}%  "
              f"elapsed {clock(elapsed)}  left {clock(left)}", file=self.stream, flush=True)
