"""The one road of an HTTP GET to the Hub, whoever keeps the bytes (the disk path, or
``--stream``): the session, the one retry policy (tenacity), the status rules with the
one 429/``RateLimit`` rule (wait as asked, spend no attempt), the /resolve/ URL resolved
once to the CDN's signed URL and again when it expires, a 206 checked to start where it
was asked to, and the body handed on in blocks up to the byte a cut reached."""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import requests
import tenacity
import urllib3

from modelcar_builder.errors import AccessDenied, DownloadFailed, Interrupted, SourceNotFound
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.fetch_options import CHUNK, FetchOptions

log = logging.getLogger("modelcar.source.http")
RATE_LIMIT_DEFAULT_WAIT = 5.0  # a 429 that does not say how long
RATE_LIMIT_MAX_WAIT = 600.0
# Bytes handed on at once. Each worker thread holds its block and what read1 returned in
# its own malloc arena: 1 MiB blocks cost about 6 MB of RSS per connection.
READ_BLOCK = CHUNK // 4
MAX_RESOLVES = 4  # per attempt: an expired CDN URL is resolved again, a few times at most


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
    never reaches it (``get_answer`` waits one out without spending a try).
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


def resuming(
    path: str, opts: FetchOptions, where: Callable[[], int], spent: int = 0,
    stop: threading.Event | None = None,
) -> tenacity.Retrying:  # fmt: skip
    """The retry policy for a read that resumes where it stopped (a segment, a stream),
    saying at which byte (``where()``); ``stop`` cuts a wait short (a closed stream)."""

    def say(exc: BaseException | None, wait: float, tries: int) -> None:
        log.warning("%s: %s; resuming at byte %d, retrying in %.1f s (attempt %d of %d)",
                    path, exc, where(), wait, tries + 1, opts.attempts)  # fmt: skip

    def pause(seconds: float) -> None:
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)

    return retrying(opts, say, spent=spent, sleep=pause)


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


class NoRanges(Exception):
    """The server ignored a Range request: the file goes over one connection instead."""


def get_answer(session, url: str, headers, opts: FetchOptions, what: str, stop, follow: bool,
               method: str = "GET"):  # fmt: skip
    """One GET of a file's bytes, its body not read yet. The one place of the rule for a
    429: wait as it asks, saying so, and spend no attempt (a rate limit is not a fault).
    Returns None once ``stop`` is set during such a wait."""
    while stop is None or not stop.is_set():
        try:
            resp = session.request(
                method,
                url,
                headers=headers,
                stream=True,
                allow_redirects=follow,
                timeout=(opts.connect_timeout, opts.read_timeout),
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Transient(f"{type(exc).__name__} contacting the Hub") from None
        if resp.status_code != 429:
            return resp
        resp.close()
        wait_rate_limit(resp, what, stop)
    return None


def resolve_target(session, url: str, access, entry: FileEntry, opts: FetchOptions, stop):
    """Where the bytes are, asked once: HEAD /resolve/ and keep the redirect to another
    origin (the CDN's signed URL) without following it. The real Hub counts every
    /resolve/ against a rate budget, so segments never go through it. Returns the URL
    and the headers it takes (no Hub token for another origin)."""
    current, hops = url, 0
    while True:
        same = _origin(current) == _origin(url)
        headers = access.headers() if same else {}
        resp = get_answer(session, current, headers, opts, entry.path, stop, False, "HEAD")
        if resp is None:
            raise Interrupted("download stopped: the build ended")
        with resp:
            if resp.is_redirect and hops < 10:
                hops += 1
                current = urljoin(current, resp.headers["Location"])
                if _origin(current) != _origin(url):
                    return current, {}
                continue
            check_status(resp, entry)
            return current, headers


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _content_start(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


class RangeSource:
    """Where one file's Range requests go, shared by its workers: the target that
    /resolve/ gave once (the CDN's signed URL), resolved again, once for all workers, when
    it expires (403/410). A 429 is waited out as it asks, spending no try."""

    def __init__(self, session, url: str, access, entry: FileEntry, opts: FetchOptions,
                 stop: threading.Event, whole: bool = False) -> None:  # fmt: skip
        self.session, self.url, self.access, self.entry = session, url, access, entry
        self.opts, self.stop, self.whole = opts, stop, whole
        self.lock = threading.Lock()
        self.target: tuple[str, dict[str, str]] | None = None
        self.resolves = 0
        self.generation = 0

    def open(self, pos: int, end: int) -> requests.Response | None:
        """A 206 answer for bytes [pos, end), its body not read yet; None once stopped.
        A whole-file source (one connection) asks /resolve/ itself each time, following
        its redirect, with no Range from byte 0 (a 200 is then the answer asked for).
        Raises Transient (worth a retry), NoRanges (the server ignored Range) or a
        ModelcarError."""
        while not self.stop.is_set():
            if self.whole:
                url, headers, generation = self.url, self.access.headers(), self.generation
            else:
                with self.lock:
                    target = self.target if self.target is not None else self._resolve()
                    (url, headers), generation = target, self.generation
            ranged = pos > 0 or end < self.entry.size or not self.whole
            if ranged:
                headers = {**headers, "Range": f"bytes={pos}-{end - 1}"}
            resp = get_answer(self.session, url, headers, self.opts, self.entry.path, self.stop,
                              follow=self.whole)  # fmt: skip
            if resp is None:
                return None
            if resp.status_code in (403, 410) and url != self.url:
                resp.close()
                self._resolve_again(generation, resp.status_code)
                continue
            try:
                check_status(resp, self.entry)
                if ranged and (resp.status_code != 206 or _content_start(resp) != pos):
                    raise NoRanges(f"the server ignored a Range request (HTTP {resp.status_code})")
            except BaseException:
                resp.close()
                raise
            return resp
        return None

    def resolve(self) -> None:
        with self.lock:
            self._resolve()

    def _resolve(self) -> tuple[str, dict[str, str]]:
        self.target = target = resolve_target(
            self.session, self.url, self.access, self.entry, self.opts, self.stop
        )
        self.resolves += 1
        self.generation += 1
        return target

    def _resolve_again(self, generation: int, status: int) -> None:
        """The signed CDN URL expired (403/410): ask /resolve/ again, once for all workers."""
        with self.lock:
            if generation != self.generation:
                return  # another worker already did
            if self.resolves >= MAX_RESOLVES:
                raise AccessDenied(
                    f"the Hub's download URL for {self.entry.path} keeps failing (HTTP {status})"
                )
            log.info("%s: download URL refused (HTTP %d); resolving it again", self.entry.path,
                     status)  # fmt: skip
            self._resolve()


def read_body(resp: requests.Response, pos: int, end: int, keep, going,
              into: memoryview | None = None, base: int = 0) -> int:  # fmt: skip
    """Hand the body on to ``keep(block, pos) -> new pos`` (a memoryview it consumes in
    full) in blocks of READ_BLOCK while ``going()``. The blocks are received into ``into``
    (the memory of bytes [base, end), where the caller keeps them: no second copy) or into
    one buffer that serves the whole body: growing and freeing a fresh one per block cost
    the kernel page faults and unmaps that were a fifth of the download's CPU. What arrived
    before a cut is handed on too (read1 never holds bytes back), so the range resumes
    right there. Returns the byte reached."""
    if into is None:
        view, at = memoryview(bytearray(max(1, min(READ_BLOCK, end - pos)))), 0
    else:
        view, at = into, pos - base  # view[at:] is where byte pos goes
    # No decoding layer for an identity body (its queue copies every block once more).
    plain = resp.headers.get("Content-Encoding", "identity") == "identity"
    filled = 0  # bytes received since the last hand-on, at view[at:at + filled]
    try:
        while pos + filled < end and going():
            room = len(view) - at if into is None else READ_BLOCK
            want = min(room - filled, end - pos - filled)
            block = resp.raw.read1(want, decode_content=False) if plain else resp.raw.read1(want)
            if not block:
                break
            view[at + filled : at + filled + len(block)] = block
            filled += len(block)
            if filled == room:
                pos = keep(view[at : at + filled], pos)
                at, filled = (0 if into is None else at + filled), 0
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        pos = keep(view[at : at + filled], pos)
        raise Transient(f"connection lost at byte {pos} ({type(exc).__name__})") from None
    return keep(view[at : at + filled], pos)
