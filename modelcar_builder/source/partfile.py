"""The disk sink of the segment pool: one Hub file into its ``.part`` file on the
workspace, verified and resumable, over one connection or several.

A large file (two segments or more, and more than one connection) is fetched as parallel
Range segments from the CDN URL resolved once, written in place with os.pwrite into a
``.part`` of the file's full size; each segment's progress is kept in a small JSON beside
it (``<file>.part.segments``), saved about once a second, so a rerun resumes each segment
where it stopped. The record is written after the bytes it counts, so a killed process
never claims bytes it did not write; bytes lost in a machine crash are caught by the
sha256.

Any other file is a run of ONE segment of the same pool: asked through /resolve/ as the
Hub's own client does (its redirect followed, no Range from byte 0), written in order, so
the ``.part``'s length is its record and a rerun resumes from it with Range.

The sha256 (and the one-file layer digest) is computed in one sequential pass on the
file's own thread, which follows the contiguous written prefix and reads it back while it
is still in the page cache: no second read from disk in the common case.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

from modelcar_builder.errors import DownloadFailed, InsufficientSpace
from modelcar_builder.progress import HighWater
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.connections import ConnectionBudget
from modelcar_builder.source.digest import Hashes, check_digest
from modelcar_builder.source.fetch_options import CHUNK, MIN_SEGMENT, FetchOptions
from modelcar_builder.source.http import NoRanges, RangeSource, Transient
from modelcar_builder.source.pool import Counter, SegmentPool, Segments, spans_segments
from modelcar_builder.units import human
from modelcar_builder.workspace import SHARED_FILE_MODE, make_dir, take_over

log = logging.getLogger("modelcar.source.partfile")
HASH_BLOCK = 8 * CHUNK
SAVE_EVERY = 1.0  # seconds between saves of the segment record
ROOM = 1 << 30  # a file on disk has room for every segment at once


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


def disk_full(part: Path, entry: FileEntry, reached: int) -> InsufficientSpace:
    """ENOSPC while writing a download: the path, and how much more this file needs."""
    return InsufficientSpace(
        f"the volume holding {part.parent} is full: {entry.path} needs "
        f"{human(entry.size - reached)} more",
        hint="free or enlarge the volume (`modelcar plan` says what the model needs), then "
        "rerun: the partial file is kept and resumed",
    )


def download_part(
    session, url: str, access, entry: FileEntry, part: Path, opts: FetchOptions,
    water: HighWater, counter: Counter, frame, budget: ConnectionBudget, rank: int = 0,
) -> Hashes:  # fmt: skip
    """One attempt at one file into ``part``, on the connection the caller holds for it
    (and more, taken while segments wait): returns its hashes, checked. A server that
    ignores Range gets the file again over one connection, from byte 0."""
    several = wanted(entry, part, opts)
    try:
        return PartFile(entry, part, opts, water, counter, frame, several).run(
            session, url, access, budget, rank
        )
    except NoRanges as exc:
        if several:
            log.warning("%s: %s; downloading it over one connection", entry.path, exc)
        else:
            log.info("%s: the server ignored Range; downloading it again from byte 0",
                     entry.path)  # fmt: skip
        discard(part)
    return PartFile(entry, part, opts, water, counter, frame, False).run(
        session, url, access, budget, rank
    )


class PartFile:
    """The ``.part`` file of one download as the pool's sink: bytes written in place at
    their offset, the segment record saved beside it (several segments), and the hashing
    pass that follows the written prefix on the file's own thread."""

    def __init__(
        self, entry: FileEntry, part: Path, opts: FetchOptions, water: HighWater,
        counter: Counter, frame, several: bool,
    ) -> None:  # fmt: skip
        self.entry, self.part, self.opts = entry, part, opts
        self.water, self.counter, self.frame, self.several = water, counter, frame, several
        self.record = record_path(part)
        self.fd = -1

    # ---- the sink

    def room(self) -> int:
        return ROOM

    def admit(self, i: int, start: int, end: int) -> bool:
        return True

    def memory(self, i: int) -> memoryview | None:
        return None  # bytes go to the file through write()

    def write(self, i: int, block: memoryview, pos: int) -> None:
        view = block
        while view:
            try:
                n = os.pwrite(self.fd, view, pos)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise disk_full(self.part, self.entry, pos) from None
                raise
            view, pos = view[n:], pos + n

    def _progress(self, i: int, reached: int, n: int) -> None:
        self.counter.add(n)
        self.water.reached(reached, i + 1)

    # ---- the run

    def run(self, session, url: str, access, budget: ConnectionBudget, rank: int) -> Hashes:
        segments = self._open()
        stop = threading.Event()
        # Several segments: the CDN URL resolved once for all of them. One: through
        # /resolve/ each time, as the Hub's own client does.
        source = RangeSource(session, url, access, self.entry, self.opts, stop,
                             whole=not self.several)  # fmt: skip
        pool = SegmentPool(source, self.entry, segments, self, self.opts, budget, self._gave_up,
                           rank=rank, progress=self._progress)  # fmt: skip
        # Said before the first request: a later file must not take every free connection.
        budget.want(rank, len(segments.pending()) - 1)
        hashes = Hashes(self.entry, self.frame)
        try:
            if segments.pending():
                pool.start()  # the first worker is on the file's own connection
            hashed = self._follow(pool, hashes)
        finally:
            pool.close()
            budget.want(rank, 0)
            if self.several:
                segments.save(self.record)
            os.close(self.fd)
        if pool.fault is not None:
            raise pool.fault
        if hashed != self.entry.size:
            raise Transient(f"got {hashed} of {self.entry.size} bytes")
        check_digest(hashes, self.entry, lambda: discard(self.part))
        self.record.unlink(missing_ok=True)
        return hashes

    def _gave_up(self, exc: Transient) -> DownloadFailed:
        return DownloadFailed(
            f"downloading {self.entry.path} failed after {self.opts.attempts} attempts: {exc}"
        )

    def _open(self) -> Segments:
        """Load (or start) the record, then open the .part. Several segments: the record
        is saved before the file grows to its full size, so a full-size .part never lacks
        its record. One segment: the .part's length is how far it got."""
        make_dir(self.part.parent)
        size = self.entry.size
        loaded = None
        if self.several and self.part.exists():
            loaded = Segments.load(self.record, size)
        if loaded is None:
            prefix = 0
            if self.part.exists() and not self.record.exists():
                prefix = self.part.stat().st_size  # begun over one connection: go on from it
                if prefix > size:
                    self.part.unlink()
                    prefix = 0
            segment = segment_for(size, self.opts) if self.several else max(1, size)
            loaded = Segments.fresh(size, segment, prefix)
        if self.several:
            loaded.save(self.record)
        existed = self.part.exists()
        if existed:
            take_over(self.part)  # another UID of the group may have started it
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, SHARED_FILE_MODE)
        if not existed:
            os.fchmod(self.fd, SHARED_FILE_MODE)  # ours: 0664 whatever the umask
        if self.several and os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)
        for i, r in enumerate(loaded.reached):
            self.water.seed(i + 1, r)
        return loaded

    # ---- the hashing pass (the file's own thread)

    def _follow(self, pool: SegmentPool, hashes: Hashes) -> int:
        buf = bytearray(HASH_BLOCK)
        view = memoryview(buf)
        hashed, saved = 0, time.monotonic()
        segments = pool.segments
        while True:
            with pool.cond:
                if segments.prefix() <= hashed and pool.active and not pool.stop.is_set():
                    pool.cond.wait(0.5)
                prefix, active, stopped = segments.prefix(), pool.active, pool.stop.is_set()
            if stopped:
                return hashed
            pool.grow()
            while hashed < prefix:
                n = os.preadv(self.fd, [view[: min(HASH_BLOCK, prefix - hashed)]], hashed)
                if n <= 0:
                    raise Transient(f"{self.part} shrank while downloading")
                hashes.update_both(view[:n])
                hashed += n
            if self.several and time.monotonic() - saved >= SAVE_EVERY:
                with pool.cond:
                    segments.save(self.record)
                saved = time.monotonic()
            if not active:
                return hashed
