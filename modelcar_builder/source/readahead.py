"""Segmented read-ahead for ``--stream``: one large Hub file read as several HTTP Range
requests in flight at once, handed to the reader strictly in order (a tar stream needs
its bytes in order).

Memory is bounded: a segment's bytes live in memory from the moment a worker starts
fetching it until the reader has read past it, and every segment buffer takes one token
of a window shared by all the files of the build (``BufferWindow``). So the streams of one
build together hold at most ``window_segments(opts) × stream_segment(opts)`` bytes of
read-ahead: min(--connections, 16) segments of min(segment size, 4 MiB), that is
64 MiB with the default 16 connections, whatever the number of layers pushed at once.

Connections come from the build's shared ``ConnectionBudget``: each worker holds one
while it runs. A worker fetches a segment, then the next one not yet taken while the
window has room, and ends (giving its connection back) when none is left or the window
is full; the reader starts workers again as it frees the window.

Faults are per segment, as in the single-connection stream: a 5xx, a cut or a stall
resumes THAT segment with Range at the byte it reached, ``attempts`` tries per segment
with exponential backoff; a 429 is waited out without spending a try and an expired CDN
URL (403/410) is resolved again (see ``ranges.RangeSource``)."""

from __future__ import annotations

import logging
import threading
import time

import requests

from modelcar_builder.errors import DownloadFailed, Interrupted
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.ranges import RangeSource, read_body
from modelcar_builder.source.transfer import (
    CHUNK,
    ConnectionBudget,
    FetchOptions,
    Transient,
    retrying,
    spans_segments,
)

log = logging.getLogger("modelcar.source.readahead")
STREAM_SEGMENT = 4 * CHUNK  # 16 of them in flight: 64 MiB, well under the 200 MB RSS target
STREAM_WINDOW = 16  # segments held at once, all streams of a build together
STREAM_HINT = (
    "rerun: layers the registry already holds are not sent again (--stream keeps nothing "
    "on disk, so an unfinished layer starts over)"
)


def stream_segment(opts: FetchOptions) -> int:
    return max(1, min(opts.segment_size, STREAM_SEGMENT))


def window_segments(opts: FetchOptions) -> int:
    return max(1, min(opts.connections, STREAM_WINDOW))


def wanted(entry: FileEntry, opts: FetchOptions) -> bool:
    return spans_segments(entry.size, stream_segment(opts), opts)


def stream_retrying(
    path: str, opts: FetchOptions, where, spent: int = 0, stop: threading.Event | None = None
):
    """The downloads' retry policy for a stream read, saying where it resumes
    (``where()``); after the last try the caller raises ``gave_up``."""

    def say(exc: BaseException | None, wait: float, tries: int) -> None:
        log.warning("%s: %s; resuming at byte %d in %.1f s (attempt %d of %d)",
                    path, exc, where(), wait, tries + 1, opts.attempts)  # fmt: skip

    def pause(seconds: float) -> None:
        if stop is not None:
            stop.wait(seconds)  # a closed stream stops waiting at once
        else:
            time.sleep(seconds)

    return retrying(opts, say, spent=spent, sleep=pause)


def gave_up(path: str, opts: FetchOptions, exc: BaseException) -> DownloadFailed:
    return DownloadFailed(
        f"streaming {path} failed after {opts.attempts} attempts: {exc}", hint=STREAM_HINT
    )


class BufferWindow:
    """The read-ahead memory of a build: at most ``segments`` buffers of ``size`` bytes
    at once, across all files. Buffers are kept and handed out again: a fresh 4 MiB per
    segment, taken in a worker's thread and freed in the reader's, left every worker's
    malloc arena holding freed segments (about 10 MB of RSS per connection). ``held`` and
    ``peak`` count the bytes in use (``peak`` for tests and benchmarks)."""

    def __init__(self, segments: int, size: int) -> None:
        self.segments, self.size = segments, size
        self.held = 0
        self.peak = 0
        self._free: list[bytearray] = []
        self._sem = threading.BoundedSemaphore(segments)
        self._lock = threading.Lock()

    def try_take(self, n: int) -> bytearray | None:
        """A buffer for ``n`` <= size bytes, or None when the window is full."""
        if not self._sem.acquire(blocking=False):
            return None
        with self._lock:
            self.held += n
            self.peak = max(self.peak, self.held)
            return self._free.pop() if self._free else bytearray(self.size)

    def give_back(self, buffer: bytearray | None, n: int) -> None:
        """Room for ``n`` bytes again; ``buffer`` is kept for reuse (None: dropped)."""
        with self._lock:
            self.held -= n
            if buffer is not None:
                self._free.append(buffer)
        self._sem.release()


class ReadAhead:
    """One file's bytes, fetched ahead in parallel segments, read in order with
    ``readinto``. ``close`` stops the workers (an in-flight body is closed under them)
    and joins them. A worker's failure is raised by the next ``readinto``."""

    def __init__(
        self, session: requests.Session, url: str, access, entry: FileEntry,
        opts: FetchOptions, connections: ConnectionBudget, window: BufferWindow,
    ) -> None:  # fmt: skip
        self.entry, self.opts, self.connections, self.window = entry, opts, connections, window
        self.segment = stream_segment(opts)
        self.count = -(-entry.size // self.segment)
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.source = RangeSource(session, url, access, entry, opts, self.stop)
        self.fault: BaseException | None = None
        self.offset = 0  # the reader's position in the file
        self.next = 0  # the first segment no worker has taken yet
        self.buffers: dict[int, bytearray] = {}  # taken and not yet read past
        self.reached: dict[int, int] = {}  # bytes of each of those received so far
        self.responses: set[requests.Response] = set()
        self.threads: list[threading.Thread] = []
        self._grow()

    def bounds(self, i: int) -> tuple[int, int]:
        start = i * self.segment
        return start, min(self.entry.size, start + self.segment)

    # ---- the reader

    def readinto(self, buffer) -> int:
        if self.offset >= self.entry.size:
            return 0
        i = self.offset // self.segment
        start, end = self.bounds(i)
        while True:
            with self.cond:
                if self.fault is not None:
                    raise self.fault
                if self.stop.is_set():
                    raise ValueError("read from a closed stream")
                if i in self.buffers:
                    data, upto = self.buffers[i], start + self.reached[i]
                    if upto > self.offset:
                        break
                    self.cond.wait(0.25)
                    continue
            self._grow()  # not taken yet: the window or the connections were full
            with self.cond:
                if i not in self.buffers and self.fault is None:
                    self.cond.wait(0.25)
        n = min(len(buffer), upto - self.offset)
        lo = self.offset - start
        buffer[:n] = memoryview(data)[lo : lo + n]  # below ``reached``: no worker writes there
        self.offset += n
        if self.offset == end:  # read past segment i: its room in the window is free
            with self.cond:
                del self.buffers[i], self.reached[i]
            self.window.give_back(data, end - start)
            self._grow()
        return n

    # ---- workers

    def _take(self) -> int | None:
        """The next segment, with its buffer, if the window has room for it."""
        with self.cond:
            if self.stop.is_set() or self.next >= self.count:
                return None
            start, end = self.bounds(self.next)
            buffer = self.window.try_take(end - start)
            if buffer is None:
                return None
            i, self.next = self.next, self.next + 1
            self.buffers[i], self.reached[i] = buffer, 0
            return i

    def _grow(self) -> None:
        """Start a worker while a segment can be taken and a connection is free."""
        while not self.stop.is_set():
            if not self.connections.try_acquire():
                return
            i = self._take()
            if i is None:
                self.connections.release()
                return
            name = f"readahead-{self.entry.path}"
            thread = threading.Thread(target=self._worker, args=(i,), name=name, daemon=True)
            with self.cond:
                self.threads = [t for t in self.threads if t.is_alive()]
                self.threads.append(thread)
            thread.start()

    def _worker(self, i: int | None) -> None:
        try:
            while i is not None and not self.stop.is_set():
                self._fetch(i)
                i = self._take()
        except BaseException as exc:  # handed to the reader
            with self.cond:
                if self.fault is None:
                    self.fault = exc
        finally:
            self.connections.release()
            with self.cond:
                self.cond.notify_all()

    def _fetch(self, i: int) -> None:
        """Segment ``i`` into its buffer, resumed at the byte reached after a fault."""
        start, end = self.bounds(i)
        reached = [start]

        def where() -> int:
            with self.cond:
                return start + self.reached.get(i, reached[0] - start)

        try:
            for attempt in stream_retrying(self.entry.path, self.opts, where, stop=self.stop):
                with attempt:
                    self._fetch_once(i, start, end, reached)
        except Transient as exc:
            if not self.stop.is_set():
                raise gave_up(self.entry.path, self.opts, exc) from None

    def _fetch_once(self, i: int, start: int, end: int, reached: list[int]) -> None:
        if self.opts.cancelled():
            raise Interrupted("streaming stopped: the build ended")
        with self.cond:
            # Gone: the reader has read it out and freed it (it may do so the moment
            # the last block lands, before this thread looks again), or the stream
            # was closed. Either way nothing is left to fetch.
            data = self.buffers.get(i)
            if data is None or self.stop.is_set():
                return
            pos = reached[0] = start + self.reached[i]
        if pos >= end:
            return
        try:
            resp = self.source.open(pos, end)
            if resp is None:
                return
            with self.cond:
                self.responses.add(resp)
            try:
                with resp:
                    keep = self._keeper(i, start, end, data)
                    pos = reached[0] = read_body(resp, pos, end, keep, self._going)
            finally:
                with self.cond:
                    self.responses.discard(resp)
        except Transient:
            if self.stop.is_set():
                return  # closed under it: not a fault
            raise
        if pos < end:
            if self._going():
                raise Transient(f"the body ended early at byte {pos}")
            if self.opts.cancelled():
                raise Interrupted("streaming stopped: the build ended")

    def _keeper(self, i: int, start: int, end: int, data: bytearray):
        def keep(block: memoryview, pos: int) -> int:
            n = min(len(block), end - pos)  # never past the segment
            data[pos - start : pos - start + n] = block[:n]
            with self.cond:
                self.reached[i] = pos + n - start
                self.cond.notify_all()
            return pos + n

        return keep

    def _going(self) -> bool:
        return not self.stop.is_set() and not self.opts.cancelled()

    def close(self) -> None:
        """Stop the workers, close what they are reading, join them, free the window."""
        self.stop.set()
        with self.cond:
            responses, threads = list(self.responses), list(self.threads)
            self.cond.notify_all()
        for resp in responses:  # a worker blocked in a read wakes up now, not at its timeout
            resp.close()
        for thread in threads:
            thread.join(timeout=self.opts.connect_timeout + self.opts.read_timeout)
        stuck = any(t.is_alive() for t in threads)  # may still write: not handed out again
        with self.cond:
            held = [(b, self.bounds(i)) for i, b in self.buffers.items()]
            self.buffers.clear()
            self.reached.clear()
        for buffer, (start, end) in held:
            self.window.give_back(None if stuck else buffer, end - start)
