"""Progress of long data stages: a tqdm bar on a terminal, log lines in a log.

The workflow runs the stages with ``--no-progress`` and their output goes to
``results/logs/<rule>.log``; a multi-GB conversion must not be minutes of silence
there. :class:`Progress` then writes one line every ``interval`` seconds (and one
at the end), e.g.::

    convert data.npz: 1,200,000/2,350,000 molecules (51 %), 95,000 molecules/s, 12 s left
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Self

from tqdm import tqdm

#: seconds between two log lines
LOG_INTERVAL = 10.0


class Progress:
    """Count work done out of ``total`` units, reported as a bar or as log lines.

    Args:
        total: units of work (e.g. molecules).
        desc: what is being done, first word of every line.
        unit: name of the units, plural.
        bar: a tqdm bar (interactive use) instead of log lines.
        interval: seconds between log lines (default :data:`LOG_INTERVAL`).
        stream: where lines go (stderr).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "molecules",
        *,
        bar: bool = False,
        interval: float | None = None,
        stream: IO[str] | None = None,
    ):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.interval = LOG_INTERVAL if interval is None else interval
        self.stream = stream or sys.stderr
        self.done = 0
        self._bar = (
            tqdm(total=total, unit="mol", desc=desc, file=self.stream) if bar else None
        )
        self._start = time.monotonic()
        self._last = self._start

    def update(self, n: int) -> None:
        """``n`` more units done; a log line when ``interval`` has passed."""
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (
            f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f} %), "
            f"{rate:,.0f} {self.unit}/s"
        )
        if final:
            text += f", done in {elapsed:.1f} s"
        elif rate > 0:
            text += f", {(self.total - self.done) / rate:.0f} s left"
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """The final line (log mode) or the bar's end."""
        if self._bar is not None:
            self._bar.close()
        else:
            self._line(time.monotonic(), final=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()
