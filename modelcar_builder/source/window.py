"""The in-memory sink of the segment pool, for ``--stream``: one large Hub file read as
several HTTP Range requests in flight at once (``pool.SegmentPool``), handed to the reader
strictly in order (a tar stream needs its bytes in order).

Memory is bounded: a segment's bytes live in memory from the moment a worker starts
fetching it until the reader has read past it, and every segment buffer takes one token
of a window shared by all the files of the build (``BufferWindow``). So the streams of one
build together hold at most ``window_segments(opts) × stream_segment(opts)`` bytes of
read-ahead: min(--connections, 16) segments of min(segment size, 4 MiB), that is
64 MiB with the default 16 connections, whatever the number of layers pushed at once.

Connections come from the build's shared ``ConnectionBudget``: each worker holds one
while it runs. A worker fetches a segment, then the next one not yet taken while the
window has room, and ends (giving its connection back) when none is left or the window
is full; the reader starts workers again as it frees the window. Faults are per segment,
as the pool retries them."""

from __future__ import annotations

import logging
import threading

import requests

from modelcar_builder.errors import DownloadFailed
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.connections import ConnectionBudget
from modelcar_builder.source.fetch_options import CHUNK, FetchOptions
from modelcar_builder.source.http import RangeSource, Transient
from modelcar_builder.source.pool import SegmentPool, Segments, spans_segments

log = logging.getLogger("modelcar.source.window")
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
        self.taken = 0  # buffers out
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def room(self) -> int:
        with self._lock:
            return self.segments - self.taken

    def try_take(self, n: int) -> bytearray | None:
        """A buffer for ``n`` <= size bytes, or None when the window is full."""
        with self._lock:
            if self.taken >= self.segments:
                return None
            self.taken += 1
            self.held += n
            self.peak = max(self.peak, self.held)
            return self._free.pop() if self._free else bytearray(self.size)

    def give_back(self, buffer: bytearray | None, n: int) -> None:
        """Room for ``n`` bytes again; ``buffer`` is kept for reuse (None: dropped)."""
        with self._lock:
            if self.taken <= 0:
                raise ValueError("a read-ahead buffer given back more often than taken")
            self.taken -= 1
            self.held -= n
            if buffer is not None:
                self._free.append(buffer)


class ReadAhead:
    """One file's bytes, fetched ahead by a segment pool into the window, read in order
    with ``readinto``. ``close`` stops the workers and joins them. A worker's failure is
    raised by the next ``readinto``."""

    def __init__(
        self, session: requests.Session, url: str, access, entry: FileEntry,
        opts: FetchOptions, connections: ConnectionBudget, window: BufferWindow,
    ) -> None:  # fmt: skip
        self.entry, self.opts, self.window = entry, opts, window
        self.segment = stream_segment(opts)
        self.buffers: dict[int, bytearray] = {}  # taken and not yet read past
        self.segments = Segments.fresh(entry.size, self.segment)
        source = RangeSource(session, url, access, entry, opts, threading.Event())
        self.pool = SegmentPool(source, entry, self.segments, self, opts, connections,
                                self._gave_up, name="readahead")  # fmt: skip
        self.offset = 0  # the reader's position in the file
        self.pool.grow()

    # ---- the sink (called by the pool's workers)

    def room(self) -> int:
        return self.window.room()

    def admit(self, i: int, start: int, end: int) -> bool:
        buffer = self.window.try_take(end - start)
        if buffer is None:
            return False
        self.buffers[i] = buffer
        return True

    def memory(self, i: int) -> memoryview | None:
        """Segment i's buffer: the pool receives its bytes there, in place."""
        data = self.buffers.get(i)
        if data is None:
            return None  # closed under the worker: nothing keeps these bytes
        start, end = self.segments.bounds(i)
        return memoryview(data)[: end - start]

    def write(self, i: int, block: memoryview, pos: int) -> None:
        """Only for a segment closed under its worker (no memory): nothing to keep."""

    def _gave_up(self, exc: Transient) -> DownloadFailed:
        return gave_up(self.entry.path, self.opts, exc)

    # ---- the reader

    def readinto(self, buffer) -> int:
        if self.offset >= self.entry.size:
            return 0
        pool, i = self.pool, self.offset // self.segment
        start, end = self.segments.bounds(i)
        while True:
            with pool.cond:
                if pool.fault is not None:
                    raise pool.fault
                if pool.stop.is_set():
                    raise ValueError("read from a closed stream")
                data = self.buffers.get(i)
                if data is not None:
                    upto = self.segments.reached[i]
                    if upto > self.offset:
                        break
                    pool.cond.wait(0.25)
                    continue
            pool.grow()  # not taken yet: the window or the connections were full
            with pool.cond:
                if i not in self.buffers and pool.fault is None:
                    pool.cond.wait(0.25)
        n = min(len(buffer), upto - self.offset)
        lo = self.offset - start
        buffer[:n] = memoryview(data)[lo : lo + n]  # below ``reached``: no worker writes there
        self.offset += n
        if self.offset == end:  # read past segment i: its room in the window is free
            with pool.cond:
                del self.buffers[i]
            self.window.give_back(data, end - start)
            pool.grow()
        return n

    def close(self) -> None:
        """Stop the workers, close what they are reading, join them, free the window."""
        ended = self.pool.close(timeout=self.opts.connect_timeout + self.opts.read_timeout)
        with self.pool.cond:
            held = [(b, self.segments.bounds(i)) for i, b in self.buffers.items()]
            self.buffers.clear()
        for buffer, (start, end) in held:  # a worker still stuck may write: not reused
            self.window.give_back(buffer if ended else None, end - start)
