"""One file's bytes as HTTP Range segments, fetched by a pool of workers, whoever keeps
them: the disk path's ``.part`` file (``partfile.py``) or ``--stream``'s in-memory window
(``window.py``), the pool's two sinks. A single-connection read is a run of one segment.

The pool owns what both sinks share:
- scheduling: the lowest segment not yet taken goes next, if the sink has room for it
  (the window admits segments in order, as the reader needs them);
- connections: workers take them from the run's ``ConnectionBudget`` while segments wait
  for one, and hand an extra one back between segments when an earlier file in plan order
  wants it;
- retry: a 5xx, a cut or a stall resumes THAT segment with Range at the byte it reached,
  ``attempts`` tries per segment, the downloads' one backoff; a 429 is waited out without
  spending a try and an expired CDN URL is resolved again (``http.RangeSource``);
- progress and resume: ``Segments.reached`` says how far each segment got; the disk
  sink saves it beside its ``.part`` so that a rerun resumes each segment.

A fault that retries do not overcome stops every worker; the pool's owner raises it."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests

from modelcar_builder.errors import Interrupted, ModelcarError
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.connections import ConnectionBudget
from modelcar_builder.source.fetch_options import FetchOptions
from modelcar_builder.source.http import RangeSource, Transient, read_body, resuming
from modelcar_builder.workspace import SHARED_FILE_MODE

log = logging.getLogger("modelcar.source.pool")


def spans_segments(size: int, segment: int, opts: FetchOptions) -> bool:
    """The one rule for a multi-connection read (disk or --stream): at least two segments
    and more than one connection."""
    return opts.connections > 1 and size >= 2 * segment


class Counter:
    """Bytes received, summed across download threads."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


@dataclass
class Segments:
    """Segment i is bytes [i * segment, min(size, (i + 1) * segment)); ``reached[i]`` is the
    file offset up to which it is received."""

    size: int
    segment: int
    reached: list[int]

    @classmethod
    def fresh(cls, size: int, segment: int, prefix: int = 0) -> Segments:
        """Segments for a file of which the first ``prefix`` bytes are already received."""
        n = max(1, -(-size // segment))
        bounds = [(i * segment, min(size, (i + 1) * segment)) for i in range(n)]
        return cls(size, segment, [min(max(start, prefix), end) for start, end in bounds])

    @classmethod
    def load(cls, path: Path, size: int) -> Segments | None:
        try:
            data = json.loads(path.read_text())
            segs = cls(int(data["size"]), int(data["segment"]), [int(r) for r in data["reached"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        n = -(-segs.size // segs.segment) if segs.segment > 0 else -1
        if segs.size != size or len(segs.reached) != max(1, n):
            return None
        for i, r in enumerate(segs.reached):
            start, end = segs.bounds(i)
            if not start <= r <= end:
                return None
        return segs

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        data = {"size": self.size, "segment": self.segment, "reached": self.reached}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SHARED_FILE_MODE)
        try:
            os.fchmod(fd, SHARED_FILE_MODE)
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def bounds(self, i: int) -> tuple[int, int]:
        start = i * self.segment
        return start, min(self.size, start + self.segment)

    def done(self) -> int:
        return sum(r - self.bounds(i)[0] for i, r in enumerate(self.reached))

    def prefix(self) -> int:
        """End of the contiguous received prefix."""
        for i, r in enumerate(self.reached):
            if r < self.bounds(i)[1]:
                return r
        return self.size

    def pending(self) -> list[int]:
        return [i for i, r in enumerate(self.reached) if r < self.bounds(i)[1]]


class Sink(Protocol):
    """Where a pool's bytes go. ``admit`` makes room for segment i before a worker
    fetches it (False: no room now); ``room`` is how many more segments it could admit
    now. Bytes land in ``memory(i)`` (segment i's own memory, received in place) or,
    where it has none (None), are handed to ``write``, bytes [pos, pos + len(block))."""

    def room(self) -> int: ...

    def admit(self, i: int, start: int, end: int) -> bool: ...

    def memory(self, i: int) -> memoryview | None: ...

    def write(self, i: int, block: memoryview, pos: int) -> None: ...


class SegmentPool:
    """One file's segments, fetched by workers into a sink. ``start`` puts a first worker
    on a connection the caller holds; ``grow`` adds workers while segments wait and the
    budget has connections free; ``close`` stops them (an in-flight body is closed under
    them) and joins them."""

    def __init__(
        self, source: RangeSource, entry: FileEntry, segments: Segments, sink: Sink,
        opts: FetchOptions, budget: ConnectionBudget, gave_up: Callable[[Transient], ModelcarError],
        *, rank: int = 0, name: str = "segments",
        progress: Callable[[int, int, int], None] | None = None,
    ) -> None:  # fmt: skip
        self.source, self.entry, self.segments, self.sink = source, entry, segments, sink
        self.opts, self.budget, self.rank, self.name = opts, budget, rank, name
        self.gave_up, self.progress = gave_up, progress  # progress(i, reached, n new bytes)
        self.stop = source.stop  # the source stops waiting (429s) when the pool stops
        self.cond = threading.Condition()
        self.fault: BaseException | None = None
        self.active = 0  # workers alive
        self.starting = 0  # workers started that have not taken a segment yet
        # Each segment is taken once (a worker retries its own; a fault stops them all),
        # lowest first: the first not taken and the number left are all a take needs.
        self.next = 0
        self.untaken = len(segments.pending())
        self.responses: set[requests.Response] = set()
        self.threads: list[threading.Thread] = []

    def going(self) -> bool:
        return not self.stop.is_set() and not self.opts.cancelled()

    # ---- workers

    def start(self) -> None:
        """The first worker, on the connection the caller holds for the file."""
        self._start(owns_slot=False)

    def grow(self) -> None:
        """Another worker while a segment waits for one, the sink has room for it and the
        budget has a connection free (none that an earlier file wants)."""
        while not self.stop.is_set():
            with self.cond:
                waiting = self.untaken - self.starting
            self.budget.want(self.rank, waiting)
            if min(waiting, self.sink.room()) <= 0 or not self.budget.try_acquire(self.rank):
                return
            self._start(owns_slot=True)

    def _start(self, owns_slot: bool) -> None:
        thread = threading.Thread(target=self._worker, args=(owns_slot,),
                                  name=f"{self.name}-{self.entry.path}", daemon=True)  # fmt: skip
        with self.cond:  # started under the lock: close() never joins one not started
            self.active += 1
            self.starting += 1
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)
            thread.start()

    def _take(self) -> int | None:
        segments = self.segments
        with self.cond:
            if self.stop.is_set():
                return None
            count = len(segments.reached)
            while (
                self.next < count and segments.reached[self.next] >= segments.bounds(self.next)[1]
            ):
                self.next += 1  # done before this run (a resumed .part)
            if self.next >= count:
                return None
            i = self.next
            start, end = segments.bounds(i)
            if not self.sink.admit(i, start, end):
                return None  # in order: no later segment before this one
            self.next += 1
            self.untaken -= 1
            return i

    def _worker(self, owns_slot: bool) -> None:
        first = True
        try:
            while not self.stop.is_set():
                if owns_slot and not first and self.budget.preempted(self.rank):
                    return  # between segments: an earlier file in plan order wants it
                i = self._take()
                if first:
                    first = False
                    with self.cond:
                        self.starting -= 1
                if i is None:
                    return
                self._segment(i)
        except BaseException as exc:  # handed to the pool's owner
            with self.cond:
                if self.fault is None:
                    self.fault = exc
            self.stop.set()
        finally:
            if owns_slot:
                self.budget.release()
            with self.cond:
                if first:
                    self.starting -= 1
                self.active -= 1
                self.cond.notify_all()

    def _segment(self, i: int) -> None:
        """Segment ``i`` into the sink, resumed at the byte reached after a fault."""

        def where() -> int:
            with self.cond:
                return self.segments.reached[i]

        policy = resuming(self.entry.path, self.opts, where, stop=self.stop)
        try:
            for attempt in policy:
                with attempt:
                    self._fetch_once(i)
        except Transient as exc:
            if not self.stop.is_set():
                raise self.gave_up(exc) from None

    def _fetch_once(self, i: int) -> None:
        if self.opts.cancelled():
            raise Interrupted("download stopped: the build ended")
        end = self.segments.bounds(i)[1]
        with self.cond:
            pos = self.segments.reached[i]
        if pos >= end or self.stop.is_set():
            return
        into = self.sink.memory(i)
        try:
            resp = self.source.open(pos, end)
            if resp is None:
                return
            with self.cond:
                self.responses.add(resp)
            try:
                with resp:
                    keep = self._keeper(i, end, into is None)
                    pos = read_body(
                        resp, pos, end, keep, self.going, into, self.segments.bounds(i)[0]
                    )
            finally:
                with self.cond:
                    self.responses.discard(resp)
        except Transient:
            if self.stop.is_set():
                return  # closed under it: not a fault
            raise
        if pos < end:
            if self.going():
                raise Transient(f"the body ended early at byte {pos}")
            if self.opts.cancelled():
                raise Interrupted("download stopped: the build ended")

    def _keeper(self, i: int, end: int, write: bool) -> Callable[[memoryview, int], int]:
        def keep(block: memoryview, pos: int) -> int:
            n = min(len(block), end - pos)  # never past the segment
            if n <= 0:
                return pos
            if write:  # else read_body received it in place, in the sink's memory
                self.sink.write(i, block[:n], pos)
            with self.cond:
                self.segments.reached[i] = pos + n
                self.cond.notify_all()
            if self.progress is not None:
                self.progress(i, pos + n, n)
            return pos + n

        return keep

    def close(self, timeout: float | None = None) -> bool:
        """Stop the workers, close what they are reading, join them (each for at most
        ``timeout`` s). True when every worker has ended."""
        self.stop.set()
        with self.cond:
            responses, threads = list(self.responses), list(self.threads)
            self.cond.notify_all()
        for resp in responses:  # a worker blocked in a read wakes up now, not at its timeout
            resp.close()
        for thread in threads:
            thread.join(timeout=timeout)
        return not any(t.is_alive() for t in threads)
