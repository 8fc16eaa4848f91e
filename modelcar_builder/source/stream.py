"""A Hub file as a self-checking stream, for ``--stream`` (Hub -> tar -> registry, with
no disk for the model): resumed with Range on faults, checked on its last byte. Each file
is read over one connection: the disk path's parallel Range segments are not used here."""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING

import requests
import urllib3

from modelcar_builder.errors import DownloadFailed, IntegrityError
from modelcar_builder.progress import Progress
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.transfer import (
    FetchOptions,
    Transient,
    check_status,
    expected_id,
    hasher_for,
    wait_rate_limit,
)

if TYPE_CHECKING:  # huggingface_hub is slow to import; local builds never need it
    from modelcar_builder.source.hub import HubAccess

log = logging.getLogger("modelcar")
STREAM_HINT = (
    "rerun: layers the registry already holds are not sent again (--stream keeps nothing "
    "on disk, so an unfinished layer starts over)"
)


class HubFileStream(io.RawIOBase):
    """One Hub file as a readable stream that checks itself: the native engine's
    ``--stream`` mode tars it straight into an upload. The sha256 (or git blob id) is
    checked the moment the last byte arrives, before the tar stream moves on, so a
    corrupted file aborts its layer's upload and never reaches a manifest.

    It is as robust as the disk path: a 5xx, a cut or a stall reopens the file with
    Range at the byte reached (the upload and the hash simply continue), with the same
    retry budget (``attempts`` per file), backoff and read timeout."""

    def __init__(
        self,
        session: requests.Session,
        access: HubAccess,
        repo_id: str,
        commit: str,
        entry: FileEntry,
        opts: FetchOptions,
        progress: Progress | None = None,
    ) -> None:
        super().__init__()
        self.entry = entry
        self.progress = progress
        self.received = 0
        self._session, self._access, self._opts = session, access, opts
        self._url = access.file_url(repo_id, entry.path, commit)
        self._hash = hasher_for(entry)
        self._resp: requests.Response | None = None
        self._faults = 0
        if entry.size == 0:
            # Nothing to read: check the empty content's id now (the last byte "arrived").
            self._check(self._hash)
            return
        self._connect()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.entry.size - self.received)
        if want <= 0 or self._resp is None:
            return 0
        while True:
            try:
                data = self._resp.raw.read(want)
            except (urllib3.exceptions.HTTPError, OSError) as exc:  # cut or stalled
                data, why = b"", f"connection lost ({type(exc).__name__})"
            else:
                why = "the body ended early"
            if data:
                break
            self._resp.close()
            self._fault(f"{why} at byte {self.received}")
            self._connect()
        n = len(data)
        buffer[:n] = data
        self._hash.update(data)
        self.received += n
        if self.progress is not None:
            self.progress.advance(n)
        if self.received == self.entry.size:
            self._check(self._hash)
        return n

    def _connect(self) -> None:
        """Open the body at ``self.received``: retried like a download, never from 0."""
        while True:
            headers = self._access.headers()
            if self.received:
                headers["Range"] = f"bytes={self.received}-"
            try:
                resp = self._session.get(
                    self._url,
                    headers=headers,
                    stream=True,
                    allow_redirects=True,
                    timeout=(self._opts.connect_timeout, self._opts.read_timeout),
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._fault(f"{type(exc).__name__} contacting the Hub")
                continue
            if resp.status_code == 429:
                resp.close()
                wait_rate_limit(resp, self.entry.path, None)  # not a fault: no try spent
                continue
            try:
                check_status(resp, self.entry)
            except Transient as exc:
                resp.close()
                self._fault(str(exc))
                continue
            if self.received and resp.status_code != 206:
                resp.close()
                raise DownloadFailed(
                    f"the Hub ignored the Range request resuming {self.entry.path}",
                    hint=STREAM_HINT,
                )
            self._resp = resp
            return

    def _fault(self, why: str) -> None:
        """Spend one try of the file's budget, wait (exponential backoff), or give up."""
        self._faults += 1
        if self._faults >= self._opts.attempts:
            raise DownloadFailed(
                f"streaming {self.entry.path} failed after {self._opts.attempts} attempts: {why}",
                hint=STREAM_HINT,
            )
        wait = min(self._opts.backoff_max, 0.5 * 2 ** (self._faults - 1))
        log.warning(
            "%s: %s; resuming at byte %d in %.1f s (attempt %d of %d)",
            self.entry.path, why, self.received, wait, self._faults + 1, self._opts.attempts,
        )  # fmt: skip
        time.sleep(wait)

    def _check(self, h) -> None:
        if h.hexdigest() != expected_id(self.entry):
            kind = "sha256" if self.entry.sha256 else "git blob id"
            raise IntegrityError(f"{self.entry.path}: {kind} mismatch while streaming")

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        super().close()


class HubStreams:
    """Opens Hub files of one pinned commit as self-checking streams (``--stream``),
    over one shared HTTP session. The pipeline hands it to the engine."""

    def __init__(self, access: HubAccess, repo_id: str, commit: str, opts: FetchOptions) -> None:
        self.access, self.repo_id, self.commit, self.opts = access, repo_id, commit, opts
        self.session = requests.Session()

    def __call__(self, entry: FileEntry, progress: Progress | None) -> HubFileStream:
        return HubFileStream(
            self.session, self.access, self.repo_id, self.commit, entry, self.opts, progress
        )

    def close(self) -> None:
        self.session.close()
