"""What the Hub downloads share, whatever the number of connections: options, the
retryable failure, status and rate-limit handling, the file hashes, progress that never
counts a byte twice, and the connection budget."""

from __future__ import annotations

import email.utils
import hashlib
import heapq
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO, cast

import requests
import tenacity

from modelcar_builder.errors import (
    AccessDenied,
    DownloadFailed,
    InsufficientSpace,
    IntegrityError,
    SourceNotFound,
)
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.units import human

log = logging.getLogger("modelcar.source.transfer")
CHUNK = 1024 * 1024
SEGMENT_SIZE = 64 * CHUNK  # a file of at least two segments is fetched over several connections
MIN_SEGMENT = 8 * CHUNK  # smaller segments for mid-size files, so each gets every connection
DEFAULT_CONNECTIONS = 16
READ_TIMEOUT = 60.0  # seconds without a byte before a request is given up
RATE_LIMIT_DEFAULT_WAIT = 5.0  # a 429 that does not say how long
RATE_LIMIT_MAX_WAIT = 600.0


@dataclass(frozen=True)
class FetchOptions:
    attempts: int = 5
    jobs: int = 4  # files downloaded in parallel
    connect_timeout: float = 10.0
    read_timeout: float = READ_TIMEOUT
    backoff_max: float = 30.0
    progress_stream: TextIO | None = None
    progress_interval: float | None = None
    connections: int = DEFAULT_CONNECTIONS  # HTTP connections to the Hub, all files together
    segment_size: int = SEGMENT_SIZE  # Range segment of a multi-connection download
    # Set by whoever runs the download in the background and no longer needs it (the
    # engine failed): workers stop at the next chunk; what is on disk stays for a rerun.
    cancel: threading.Event | None = None

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class Transient(Exception):
    """A failure worth retrying: 5xx, a cut connection, a stall."""


def retrying(
    opts: FetchOptions,
    on_retry: Callable[[BaseException | None, float, int], None],
    *,
    retry_on: tuple[type[BaseException], ...] = (Transient,),
    spent: int = 0,
    give_up: Callable[[BaseException | None, int], bool] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> tenacity.Retrying:
    """The downloads' one retry policy: ``opts.attempts`` tries in all (``spent`` of them
    used before), waiting 0.5 s, 1 s, 2 s ... up to ``backoff_max`` between them. A 429
    never reaches it (``ranges.get_answer`` waits one out without spending a try).
    ``on_retry(fault, wait, tries so far)`` says so before each wait; ``give_up(fault,
    tries)`` may stop early; ``sleep`` is the wait (a stop event's ``wait`` cuts it short)."""

    def stop(state: tenacity.RetryCallState) -> bool:
        tries = spent + state.attempt_number
        exc = state.outcome.exception() if state.outcome else None
        return tries >= opts.attempts or (give_up is not None and give_up(exc, tries))

    def wait(state: tenacity.RetryCallState) -> float:
        return min(opts.backoff_max, 0.5 * 2 ** (spent + state.attempt_number - 1))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        on_retry(exc, pause, spent + state.attempt_number)

    return tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        sleep=sleep or time.sleep,
        reraise=True,
    )


def hasher_for(entry: FileEntry):
    """sha256 for LFS files; for git-stored files the blob id, sha1('blob N\\0' + bytes)."""
    if entry.sha256:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\x00" % entry.size)
    return h


def expected_id(entry: FileEntry) -> str | None:
    return entry.sha256 or entry.blob_id


def check_digest(
    h: Hashes, entry: FileEntry, drop: Callable[[], None] | None = None, how: str = ""
) -> None:
    """The one check of a file's bytes against the Hub's id; ``drop`` removes what holds
    them first (a file that fails is never used). ``how`` replaces the digests in the
    message (--stream says where it was caught)."""
    got = h.hexdigest()
    if got == expected_id(entry):
        return
    if drop is not None:
        drop()
    kind = "sha256" if entry.sha256 else "git blob id"
    detail = how or f"(expected {expected_id(entry)}, got {got})"
    raise IntegrityError(f"{entry.path}: {kind} mismatch {detail}")


def spans_segments(size: int, segment: int, opts: FetchOptions) -> bool:
    """The one rule for a multi-connection read (disk or --stream): at least two segments
    and more than one connection."""
    return opts.connections > 1 and size >= 2 * segment


class Hashes:
    """The file's own hash (to verify it) and, for a file that is a layer of its own, the
    uncompressed layer digest (prefix + bytes + suffix), both from one pass over the
    bytes: the native engine then never reads the model again just to hash it."""

    def __init__(self, entry: FileEntry, frame: tuple[bytes, bytes] | None) -> None:
        self.file = hasher_for(entry)
        self.frame = frame
        self.layer = hashlib.sha256(frame[0]) if frame else None
        # A git-stored file is checked by its blob id (sha1), yet --report gives every
        # file's sha256: hashed in the same pass (such files are small, the Hub keeps
        # everything large in LFS, whose id is the sha256 itself).
        self._known_sha256 = entry.sha256
        self.sha256 = None if entry.sha256 else hashlib.sha256()

    def update(self, block) -> None:
        self.update_file(block)
        if self.layer is not None:
            self.layer.update(block)

    def update_file(self, block) -> None:
        """The file's own hashes, not the layer's."""
        self.file.update(block)
        if self.sha256 is not None:
            self.sha256.update(block)

    def hexdigest(self) -> str:
        return self.file.hexdigest()

    def file_sha256(self) -> str:
        if self._known_sha256:
            return self._known_sha256
        # A git-stored file: its sha256 was hashed alongside (set in __init__).
        return cast("hashlib._Hash", self.sha256).hexdigest()

    def layer_digest(self) -> str | None:
        if self.layer is None or self.frame is None:
            return None
        self.layer.update(self.frame[1])
        return "sha256:" + self.layer.hexdigest()


class Counter:
    """Bytes received, summed across download threads."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


class ConnectionBudget:
    """The connections to the Hub all downloads share (``--connections``): every file in
    flight holds one, a multi-connection download takes more while any are free.

    A free connection goes to the earliest file in plan order (its ``rank``) that wants
    one, whether it waits to start or has segments waiting (``want``): layer 0's files
    finish first instead of every shard finishing together at the end, so an engine that
    pushes while the download runs can start on layer 0 early."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self._free = self.total
        self._waiting: list[int] = []  # ranks blocked in acquire(), a heap
        self._wants: set[int] = set()  # ranks with segments waiting for a connection
        self._cond = threading.Condition()

    def _first_in_line(self, rank: int) -> bool:
        if self._waiting and self._waiting[0] < rank:
            return False
        return not any(r < rank for r in self._wants)

    def acquire(self, rank: int = 0) -> None:
        with self._cond:
            heapq.heappush(self._waiting, rank)
            while not (self._free and self._waiting[0] == rank and self._first_in_line(rank)):
                self._cond.wait(0.5)  # a wanting file takes its share by try_acquire
            heapq.heappop(self._waiting)
            self._free -= 1
            self._cond.notify_all()  # the next rank may take the next free one

    def try_acquire(self, rank: int = 0) -> bool:
        """One more connection, unless none is free or an earlier file wants one."""
        with self._cond:
            if not self._free or not self._first_in_line(rank):
                return False
            self._free -= 1
            return True

    def preempted(self, rank: int) -> bool:
        """Should file ``rank`` hand back an extra connection (at a segment's end)?"""
        with self._cond:
            return not self._first_in_line(rank)

    def want(self, rank: int, segments: int) -> None:
        """File ``rank`` has this many segments waiting for a connection (0: none, or
        it is done): later files leave free connections to it."""
        with self._cond:
            if (segments > 0) == (rank in self._wants):
                return  # no change (this runs at every block a file writes)
            if segments > 0:
                self._wants.add(rank)
            else:
                self._wants.discard(rank)
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            if self._free >= self.total:
                raise ValueError("connection released more often than taken")
            self._free += 1
            self._cond.notify_all()


def hub_session(opts: FetchOptions) -> requests.Session:
    """One HTTP session for the run, its pool as large as the connection budget (the
    default 10 per host would drop and reopen connections to the CDN)."""
    session = requests.Session()
    size = max(opts.connections, opts.jobs) + 2
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def check_status(resp: requests.Response, entry: FileEntry) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code in (401, 403):
        raise AccessDenied(f"the Hub refused the download of {entry.path} (HTTP {code})")
    if code == 404:
        raise SourceNotFound(f"{entry.path} vanished from the Hub (HTTP 404)")
    if code == 416:
        raise Transient("range not satisfiable")
    if code >= 500 or code == 429:
        raise Transient(f"HTTP {code} from {resp.url.split('?')[0]}")
    raise DownloadFailed(f"unexpected HTTP {code} downloading {entry.path}")


_RATELIMIT_T = re.compile(r"(?:^|[;,\s])t=(\d+(?:\.\d+)?)")


class _Answer(Protocol):
    """What the rate-limit parser reads: a requests or an httpx (huggingface_hub) response."""

    @property
    def headers(self) -> Mapping[str, str]: ...


def rate_limit_wait(resp: _Answer, now: float | None = None) -> float:
    """Seconds a 429 asks to wait: Retry-After (seconds or an HTTP date), else the
    RateLimit header's t= (the Hub sends ``RateLimit: "resolvers";r=0;t=42``) or
    RateLimit-Reset; a default when none says."""
    headers = resp.headers
    wait: float | None = None
    value = headers.get("Retry-After", "").strip()
    if value:
        try:
            wait = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value).timestamp()
                wait = when - (time.time() if now is None else now)
            except (TypeError, ValueError):
                wait = None
    if wait is None and (m := _RATELIMIT_T.search(headers.get("RateLimit", ""))):
        wait = float(m.group(1))
    if wait is None and headers.get("RateLimit-Reset", "").strip().isdigit():
        wait = float(headers["RateLimit-Reset"])
    if wait is None:
        wait = RATE_LIMIT_DEFAULT_WAIT
    return min(max(wait, 0.0), RATE_LIMIT_MAX_WAIT)


def wait_rate_limit(resp: requests.Response, what: str, stop: threading.Event | None) -> None:
    """Wait as a 429 says, saying so: a rate limit is not a fault, it spends no attempt."""
    wait = rate_limit_wait(resp)
    log.warning("%s: the Hub is rate limiting (HTTP 429); waiting %.0f s as it asks", what, wait)
    if stop is not None:
        stop.wait(wait)
    else:
        time.sleep(wait)


def disk_full(part: Path, entry: FileEntry, reached: int) -> InsufficientSpace:
    """ENOSPC while writing a download: the path, and how much more this file needs."""
    return InsufficientSpace(
        f"the volume holding {part.parent} is full: {entry.path} needs "
        f"{human(entry.size - reached)} more",
        hint="free or enlarge the volume (`modelcar plan` says what the model needs), then "
        "rerun: the partial file is kept and resumed",
    )
