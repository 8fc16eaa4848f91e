"""One large Hub file over several connections at once.

The file's URL is resolved once (HEAD /resolve/, the 302 to the CDN is not followed but
kept), then Range segments are requested from the redirect target in parallel and written
in place with os.pwrite into the same ``.part`` file. Each segment's progress is kept in
a small JSON beside it (``<file>.part.segments``), saved about once a second, so a rerun
resumes each segment where it stopped. The record is written after the bytes it counts,
so a killed process never claims bytes it did not write; bytes lost in a machine crash
are caught by the sha256.

The sha256 (and the one-file layer digest) is computed in one sequential pass on the
file's own thread, which follows the contiguous written prefix and reads it back while it
is still in the page cache: no second read from disk in the common case.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from modelcar_builder.errors import Interrupted
from modelcar_builder.progress import HighWater
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.ranges import RangeSource, read_body
from modelcar_builder.source.transfer import (
    CHUNK,
    MIN_SEGMENT,
    ConnectionBudget,
    Counter,
    FetchOptions,
    Hashes,
    Transient,
    check_digest,
    disk_full,
    spans_segments,
)
from modelcar_builder.workspace import SHARED_FILE_MODE, make_dir, take_over

log = logging.getLogger("modelcar.source.segments")
HASH_BLOCK = 8 * CHUNK
# The layer digest's second core: a few long-lived threads for the whole process, not one
# thread per block (a 10 GB file would start ~1,250). One per file fetched at once is
# enough (--jobs defaults to 4); a busy pool only delays, it never deadlocks: the file's
# thread waits on its own block only.
_SIDE_HASHERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="layer-hash")
SAVE_EVERY = 1.0  # seconds between saves of the segment record


def record_path(part: Path) -> Path:
    return part.with_name(part.name + ".segments")


def segment_for(size: int, opts: FetchOptions) -> int:
    """The Range segment of a new download: ``segment_size``, but small enough that the
    file has a segment for every connection (down to MIN_SEGMENT). A 256 MiB shard in
    four 64 MiB segments could use only four of 16 connections, so every shard would be
    downloaded at once and all would finish together, at the end."""
    floor = min(MIN_SEGMENT, opts.segment_size)
    return max(floor, min(opts.segment_size, -(-size // max(1, opts.connections))))


def wanted(entry: FileEntry, part: Path, opts: FetchOptions) -> bool:
    """Large files go over several connections; a file already begun that way goes on so."""
    if record_path(part).exists():
        return True
    return spans_segments(entry.size, segment_for(entry.size, opts), opts)


def discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    record_path(part).unlink(missing_ok=True)


def partial_bytes(part: Path, size: int) -> int:
    """Bytes of ``part`` already downloaded: its segment record's count, else its length."""
    segs = Segments.load(record_path(part), size)
    if segs is not None:
        return segs.done()
    try:
        return min(part.stat().st_size, size)
    except FileNotFoundError:
        return 0


@dataclass
class Segments:
    """Segment i is bytes [i * segment, min(size, (i + 1) * segment)); ``reached[i]`` is the
    file offset up to which it is written."""

    size: int
    segment: int
    reached: list[int]

    @classmethod
    def fresh(cls, size: int, segment: int, prefix: int = 0) -> Segments:
        """Segments for a file of which the first ``prefix`` bytes are already written."""
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
        """End of the contiguous written prefix."""
        for i, r in enumerate(self.reached):
            if r < self.bounds(i)[1]:
                return r
        return self.size

    def pending(self) -> list[int]:
        return [i for i, r in enumerate(self.reached) if r < self.bounds(i)[1]]


class SegmentedDownload:
    """One attempt at one file: workers fetch segments (one connection each, taken from
    the shared budget while segments wait), the calling thread hashes the written prefix.
    Any fault stops every worker; the record keeps what they wrote for the next attempt."""

    def __init__(
        self, session, url: str, access, entry: FileEntry, part: Path, opts: FetchOptions,
        water: HighWater, counter: Counter, frame, budget: ConnectionBudget, rank: int = 0,
    ) -> None:  # fmt: skip
        self.entry, self.part, self.opts = entry, part, opts
        self.water, self.counter = water, counter
        self.frame, self.budget, self.rank = frame, budget, rank  # rank: place in plan order
        self.record = record_path(part)
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.fault: BaseException | None = None
        self.active = 0
        self.busy: set[int] = set()
        self.starting = 0  # workers started that have not taken a segment yet
        self.source = RangeSource(session, url, access, entry, opts, self.stop)
        self.state = Segments.fresh(entry.size, segment_for(entry.size, opts))
        self.fd = -1

    def run(self) -> Hashes:
        self._open()
        # Said before resolving: a later file must not take every free connection now.
        self.budget.want(self.rank, len(self.state.pending()) - 1)
        try:
            self.source.resolve()
            self._start(owns_slot=False)  # the first connection is the file's own slot
            hashes = Hashes(self.entry, self.frame)
            hashed = self._follow(hashes)
        finally:
            self.stop.set()
            self.budget.want(self.rank, 0)
            with self.cond:
                while self.active:
                    self.cond.wait(1.0)
                self.state.save(self.record)
            os.close(self.fd)
        if self.fault is not None:
            raise self.fault
        if hashed != self.entry.size:
            raise Transient(f"got {hashed} of {self.entry.size} bytes")
        check_digest(hashes, self.entry, lambda: discard(self.part))
        self.record.unlink(missing_ok=True)
        return hashes

    def _open(self) -> None:
        """Load (or start) the record, then open the .part at its full size. The record
        is saved before the file grows: a full-size .part never lacks its record."""
        make_dir(self.part.parent)
        size = self.entry.size
        loaded = Segments.load(self.record, size) if self.part.exists() else None
        if loaded is None:
            prefix = 0
            if self.part.exists() and not self.record.exists():
                prefix = self.part.stat().st_size  # begun over one connection: go on from it
                if prefix > size:
                    self.part.unlink()
                    prefix = 0
            loaded = Segments.fresh(size, segment_for(size, self.opts), prefix)
        self.state = loaded
        self.state.save(self.record)
        existed = self.part.exists()
        if existed:
            take_over(self.part)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, SHARED_FILE_MODE)
        if not existed:
            os.fchmod(self.fd, SHARED_FILE_MODE)
        if os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)
        for i, r in enumerate(self.state.reached):
            self.water.seed(i + 1, r)

    # ---- the hashing pass (the file's own thread)

    def _follow(self, hashes: Hashes) -> int:
        buf = bytearray(HASH_BLOCK)
        view = memoryview(buf)
        hashed, saved = 0, time.monotonic()
        while True:
            with self.cond:
                if self.state.prefix() <= hashed and self.active and not self.stop.is_set():
                    self.cond.wait(0.5)
                prefix, active, stopped = self.state.prefix(), self.active, self.stop.is_set()
            if stopped:
                return hashed
            self._grow()
            while hashed < prefix:
                n = os.preadv(self.fd, [view[: min(HASH_BLOCK, prefix - hashed)]], hashed)
                if n <= 0:
                    raise Transient(f"{self.part} shrank while downloading")
                self._hash(hashes, view[:n])
                hashed += n
            if time.monotonic() - saved >= SAVE_EVERY:
                with self.cond:
                    self.state.save(self.record)
                saved = time.monotonic()
            if not active:
                return hashed

    def _hash(self, hashes: Hashes, block: memoryview) -> None:
        """Both digests of a one-file layer at once, on two cores (hashlib lets go of the
        GIL; the second is a long-lived pool thread): the file's sha256 and the layer
        digest are each one core's sha256 rate."""
        if hashes.layer is None or len(block) < CHUNK:
            hashes.update(block)
            return
        side = _SIDE_HASHERS.submit(hashes.layer.update, block)
        hashes.update_file(block)
        side.result()

    # ---- workers

    def _grow(self) -> None:
        """Another connection while a segment waits for one and the budget has one free."""
        while not self.stop.is_set():
            with self.cond:
                waiting = len(self.state.pending()) - len(self.busy) - self.starting
            self.budget.want(self.rank, waiting)
            if waiting <= 0 or not self.budget.try_acquire(self.rank):
                return
            self._start(owns_slot=True)

    def _start(self, owns_slot: bool) -> None:
        with self.cond:
            self.active += 1
            self.starting += 1
        name = f"segments-{self.entry.path}"
        threading.Thread(target=self._worker, args=(owns_slot,), name=name, daemon=True).start()

    def _take(self) -> int | None:
        with self.cond:
            for i in self.state.pending():
                if i not in self.busy:
                    self.busy.add(i)
                    return i
        return None

    def _worker(self, owns_slot: bool) -> None:
        first = True
        try:
            while not self.stop.is_set():
                if owns_slot and not first and self.budget.preempted(self.rank):
                    return  # between segments: an earlier file in plan order wants it
                i = self._take()
                if first:
                    with self.cond:
                        self.starting -= 1
                    first = False
                if i is None:
                    return
                try:
                    self._segment(i)
                finally:
                    with self.cond:
                        self.busy.discard(i)
        except BaseException as exc:  # handed to the file's thread
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
        end = self.state.bounds(i)[1]
        while not self.stop.is_set():
            if self.opts.cancelled():
                raise Interrupted("download stopped: the build ended")
            with self.cond:
                pos = self.state.reached[i]
            if pos >= end:
                return
            resp = self.source.open(pos, end)
            if resp is None:
                return
            with resp:
                pos = read_body(resp, pos, end, lambda buf, at: self._write(i, buf, at, end),
                                self._going)  # fmt: skip
            if pos < end and not self.stop.is_set():
                raise Transient(f"the body ended early at byte {pos}")

    def _going(self) -> bool:
        return not self.stop.is_set() and not self.opts.cancelled()

    def _write(self, i: int, block: memoryview, pos: int, end: int) -> int:
        view = block[: end - pos]  # never past the segment
        while view:
            try:
                n = os.pwrite(self.fd, view, pos)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise disk_full(self.part, self.entry, pos) from None
                raise
            view, pos = view[n:], pos + n
            self.counter.add(n)
        with self.cond:
            self.state.reached[i] = pos
            self.cond.notify_all()
        self.water.reached(pos, i + 1)
        return pos
