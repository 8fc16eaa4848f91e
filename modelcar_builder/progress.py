"""Progress for long work: a redrawn line on a TTY, a plain line every few seconds
otherwise (Tekton and Job logs are not terminals, and carriage returns garble them)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from modelcar_builder.units import human

Chunk = TypeVar("Chunk", bound=bytes | memoryview)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self._lock = threading.Lock()

    def advance(self, n: int) -> None:
        # Layers push in parallel threads: one lock so no count is lost and no two
        # lines interleave.
        with self._lock:
            self.done += n
            now = self.clock()
            if now - self.last >= self.interval:
                self.last = now
                self._emit(final=False)

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-6)
        rate = self.done / elapsed
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if rate > 0 and self.total > self.done:
            eta = f", ETA {_duration((self.total - self.done) / rate)}"
        return f"{self.label}: {human(self.done)} / {human(self.total)}{pct}, {human(rate)}/s{eta}"

    def _emit(self, final: bool) -> None:
        # Best effort: a line that cannot be written (stderr closed under a download the
        # build has already given up on) is not worth an error of its own.
        with contextlib.suppress(ValueError, OSError):
            if self.tty:
                end = "\n" if final else ""
                self.stream.write(f"\r\x1b[K{self.line()}{end}")
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.done:
            self._emit(final=True)


class HighWater:
    """Progress for one file or one blob that never counts a byte twice: bytes fetched
    again after a failed check or an ignored Range, or sent again after a registry
    restart, were already shown once, so a bar cannot pass 100 %. One mark per segment
    (key); a single stream uses key 0."""

    def __init__(self, progress: Progress, start: int = 0) -> None:
        self.progress = progress
        self.marks: dict[int, int] = {0: start}
        self._lock = threading.Lock()

    def seed(self, key: int, offset: int) -> None:
        """Where segment ``key`` already was when the run started (not to be shown)."""
        with self._lock:
            self.marks.setdefault(key, offset)

    def reached(self, offset: int, key: int = 0) -> None:
        with self._lock:
            mark = self.marks.setdefault(key, offset)
            if offset > mark:
                self.progress.advance(offset - mark)
                self.marks[key] = offset


def counted(chunks: Iterable[Chunk], water: HighWater, start: int = 0) -> Iterator[Chunk]:
    """``chunks`` (a stream that begins at byte ``start``) passed through, the offset
    reached told to ``water``: an upload sent again, or resumed, shows no byte twice."""
    pos = start
    for chunk in chunks:
        pos += len(chunk)
        water.reached(pos)
        yield chunk
