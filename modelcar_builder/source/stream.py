"""A Hub file as a self-checking stream, for ``--stream`` (Hub -> tar -> registry, with
no disk for the model): resumed with Range on faults, checked on its last byte. A large
file is read ahead as parallel Range segments by the segment pool into its in-memory
sink (``window.py``: at most min(--connections, 16) segments of 4 MiB held in memory for
the whole build, 64 MiB with the default 16 connections); a small one, or one whose server
ignores Range, is read over one connection on the reader's own thread."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import requests
import urllib3

from modelcar_builder.errors import DownloadFailed
from modelcar_builder.progress import Progress
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.connections import ConnectionBudget
from modelcar_builder.source.digest import Hashes, check_digest
from modelcar_builder.source.fetch_options import FetchOptions
from modelcar_builder.source.http import NoRanges, RangeSource, Transient, hub_session, resuming
from modelcar_builder.source.window import (
    STREAM_HINT,
    BufferWindow,
    ReadAhead,
    gave_up,
    stream_segment,
    wanted,
    window_segments,
)

if TYPE_CHECKING:  # huggingface_hub is slow to import; local builds never need it
    from modelcar_builder.source.hub import HubAccess

log = logging.getLogger("modelcar.source.stream")


class HubFileStream(io.RawIOBase):
    """One Hub file as a readable stream that checks itself: the native engine's
    ``--stream`` mode tars it straight into an upload. The sha256 (or git blob id) is
    checked the moment the last byte arrives, before the tar stream moves on, so a
    corrupted file aborts its layer's upload and never reaches a manifest.

    It is as robust as the disk path: a 5xx, a cut or a stall reopens the file with
    Range at the byte reached (the upload and the hash simply continue), with the same
    retry budget (``attempts`` per file, per segment when read ahead), backoff and read
    timeout. ``connections`` and ``window`` (shared by the build's streams) turn on the
    read-ahead for large files."""

    def __init__(
        self,
        session: requests.Session,
        access: HubAccess,
        repo_id: str,
        commit: str,
        entry: FileEntry,
        opts: FetchOptions,
        progress: Progress | None = None,
        connections: ConnectionBudget | None = None,
        window: BufferWindow | None = None,
        on_verified: Callable[[FileEntry, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.entry = entry
        self.progress = progress
        self.received = 0
        self._session, self._access, self._opts = session, access, opts
        self._url = access.file_url(repo_id, entry.path, commit)
        # One connection: a whole-file source, through /resolve/ each time as the Hub's
        # own client does (no stop: a --stream read is stopped by closing it).
        self._source = RangeSource(session, self._url, access, entry, opts, threading.Event(),
                                   whole=True)  # fmt: skip
        self._hash = Hashes(entry, None)  # with the sha256 of a git-stored file, for --report
        self.on_verified = on_verified
        self._resp: requests.Response | None = None
        self._faults = 0
        self._ahead: ReadAhead | None = None
        if entry.size == 0:
            # Nothing to read: check the empty content's id now (the last byte "arrived").
            self._check(self._hash)
            return
        if connections is not None and window is not None and wanted(entry, opts):
            self._ahead = ReadAhead(session, self._url, access, entry, opts, connections, window)
        else:
            self._connect_first()

    def _connect_first(self) -> None:
        """The first connection, retried like any other read."""
        policy = resuming(self.entry.path, self._opts, lambda: 0)
        try:
            for attempt in policy:
                with attempt:
                    self._connect()
        except Transient as exc:
            raise gave_up(self.entry.path, self._opts, exc) from None
        finally:
            self._faults += policy.statistics.get("attempt_number", 1) - 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.entry.size - self.received)
        if want <= 0:
            return 0
        target = memoryview(buffer).cast("B")[:want]
        n = self._read_ahead(target) if self._ahead is not None else self._read_one(target)
        self._hash.update(target[:n])
        self.received += n
        if self.progress is not None:
            self.progress.advance(n)
        if self.received == self.entry.size:
            self._check(self._hash)
        return n

    def _read_one(self, target: memoryview) -> int:
        """Bytes from the one connection, reopened with Range at the byte reached after
        a fault: ``attempts`` tries for the whole file (faults so far are spent)."""
        policy = resuming(self.entry.path, self._opts, lambda: self.received, self._faults)
        try:
            for attempt in policy:
                with attempt:
                    data = self._read_block(len(target))
        except Transient as exc:
            raise gave_up(self.entry.path, self._opts, exc) from None
        finally:
            self._faults += policy.statistics.get("attempt_number", 1) - 1
        target[: len(data)] = data
        return len(data)

    def _read_block(self, n: int) -> bytes:
        if self._resp is None:
            self._connect()
        resp = cast("requests.Response", self._resp)
        try:
            data = resp.raw.read(n)
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # cut or stalled
            data, why = b"", f"connection lost ({type(exc).__name__})"
        else:
            why = "the body ended early"
        if not data:
            resp.close()
            self._resp = None
            raise Transient(f"{why} at byte {self.received}")
        return data

    def _read_ahead(self, target: memoryview) -> int:
        ahead = cast(ReadAhead, self._ahead)  # only called while there is one
        try:
            return ahead.readinto(target)
        except NoRanges as exc:
            ahead.close()
            self._ahead = None
            if self.received:
                raise DownloadFailed(
                    f"the Hub ignored a Range request reading {self.entry.path}", hint=STREAM_HINT
                ) from None
            log.warning("%s: %s; streaming it over one connection", self.entry.path, exc)
            return self._read_one(target)

    def _connect(self) -> None:
        """Open the body at ``self.received`` (never from 0 again once begun)."""
        try:
            self._resp = self._source.open(self.received, self.entry.size)
        except NoRanges:
            raise DownloadFailed(
                f"the Hub ignored the Range request resuming {self.entry.path}",
                hint=STREAM_HINT,
            ) from None

    def _check(self, h: Hashes) -> None:
        check_digest(h, self.entry, how="while streaming")
        if self.on_verified is not None:
            self.on_verified(self.entry, h.file_sha256())

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        if self._resp is not None:
            self._resp.close()
        super().close()


class HubStreams:
    """Opens Hub files of one pinned commit as self-checking streams (``--stream``),
    over one shared HTTP session, one connection budget and one read-ahead window for
    all of them. The pipeline hands it to the engine."""

    def __init__(self, access: HubAccess, repo_id: str, commit: str, opts: FetchOptions) -> None:
        self.access, self.repo_id, self.commit, self.opts = access, repo_id, commit, opts
        self.session = hub_session(opts)
        self.connections = ConnectionBudget(opts.connections)
        self.window = BufferWindow(window_segments(opts), stream_segment(opts))
        self.sha256: dict[str, str] = {}  # git blob id -> sha256, of files streamed whole
        self._lock = threading.Lock()

    def __call__(self, entry: FileEntry, progress: Progress | None) -> HubFileStream:
        return HubFileStream(
            self.session, self.access, self.repo_id, self.commit, entry, self.opts, progress,
            self.connections, self.window, self._verified,
        )  # fmt: skip

    def _verified(self, entry: FileEntry, sha256: str) -> None:
        if entry.blob_id is not None:
            with self._lock:
                self.sha256[entry.blob_id] = sha256

    def close(self) -> None:
        self.session.close()
