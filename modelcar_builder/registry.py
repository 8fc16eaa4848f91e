"""OCI distribution client over ``requests``: ping, auth, blobs, manifests.

Facts this code is shaped by (DESIGN.md §5, §7):
- a streamed body cannot be replayed after a 401, so every upload authenticates with a
  small request (POST) first and sends the big PUT with a fresh credential;
- Bearer tokens may live only 60 s: they are cached per scope with their expiry and
  refetched shortly before it, or after the registry rejects one;
- ``REQUESTS_CA_BUNDLE`` overrides ``Session.verify``, so ``verify=`` goes on each request;
- the upload ``Location`` may be relative and carries signed state: urljoin, never rebuild;
- distribution 2.8 checks neither Content-Range nor descriptor sizes: we must be right.

No secret (password, identity token, bearer token) appears in any exception or log line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import requests
import tenacity
from urllib3.exceptions import InsecureRequestWarning

from modelcar_builder import __version__
from modelcar_builder.auth import Credentials
from modelcar_builder.errors import (
    BuildFailed,
    ModelcarError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from modelcar_builder.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MANIFEST_ACCEPT: tuple[str, ...] = (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
)
OCTET = "application/octet-stream"

DEFAULT_CHUNK = 64 * 1024 * 1024  # PATCH size for upload_blob_chunked
_READ_SIZE = 1024 * 1024  # download piece size
_DEFAULT_TOKEN_TTL = 60  # distribution token spec: expires_in defaults to 60 s
_TOKEN_MARGIN = 15.0  # refresh a token this long before it expires (bounded by ttl/4)
_ERROR_BODY_MAX = 200


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for connection errors and 5xx answers; each retry re-opens the stream."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 10.0


@dataclass
class TransferStats:
    """What this client did; the engine reports it, tests assert on it."""

    requests: int = 0  # HTTP requests to the registry (token server excluded)
    token_requests: int = 0
    bytes_uploaded: int = 0  # blob body bytes handed to the socket, retries included
    bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    retries: int = 0


class Manifest(NamedTuple):
    body: bytes
    media_type: str
    digest: str


class ManifestInfo(NamedTuple):
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # "basic" | "bearer"
    params: dict[str, str]


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float  # time.monotonic() deadline
    margin: float


class _Transient(Exception):
    """A retryable registry answer (5xx, 429, or a 401 on a body we could not replay)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _SourceError(Exception):
    """The caller's byte stream failed (not the registry connection)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


class RegistryClient:
    """One registry host. Thread-safe enough for parallel blob uploads."""

    def __init__(
        self,
        host: str,
        creds: Credentials | None = None,
        *,
        tls_verify: bool = True,
        ca_file: str | None = None,
        plain_http: bool | None = None,
        timeout: tuple[float, float] = (10.0, 300.0),
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """``plain_http=None`` means HTTPS, falling back to HTTP only when
        ``tls_verify=False`` (podman's meaning of ``--tls-verify=false``)."""
        self.host = host
        self.creds = creds
        self.stats = TransferStats()
        self._verify: bool | str = (ca_file or True) if tls_verify else False
        self._plain_http = plain_http
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = f"modelcar-builder/{__version__}"
        self._base: str | None = None
        self._challenge: _Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        # Scopes a challenge asked for beyond ours (e.g. a mount source), per our scope key.
        self._extra_scopes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._lock = threading.RLock()  # auth state (held across a token fetch)
        self._stats_lock = threading.Lock()  # counters (never held across I/O)
        self._secrets: set[str] = set(creds.secrets()) if creds else set()

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_uploaded(self) -> int:
        return self.stats.bytes_uploaded

    @property
    def requests_made(self) -> int:
        return self.stats.requests

    # -- public API ------------------------------------------------------------------------

    def ping(self) -> None:
        """Reach ``/v2/`` and prove the credentials work, before any big transfer."""
        with self._errors():
            self._send_checked("GET", "/v2/", (), ok=(200,))

    def blob_size(self, repo: str, digest: str) -> int | None:
        """Size of the blob if the repository has it, else None (HEAD)."""
        with self._errors():
            resp = self._send_checked(
                "HEAD", f"/v2/{repo}/blobs/{digest}", _pull(repo), ok=(200,), allow=(404,)
            )
            if resp.status_code == 404:
                return None
            return int(resp.headers.get("Content-Length", "0"))

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; False when the registry would rather take an upload."""
        if from_repo == repo:
            return self.blob_size(repo, digest) is not None
        path = f"/v2/{repo}/blobs/uploads/?mount={quote(digest, safe=':')}&from={from_repo}"
        scopes = (*_push(repo), *_pull(from_repo))
        try:
            with self._errors():
                resp = self._send_checked("POST", path, scopes, ok=(201, 202))
        except RegistryAuthError:
            # No pull right on the source repository: not an error, just no shortcut.
            log.debug("mount of %s from %s refused; will upload", digest, from_repo)
            return False
        if resp.status_code == 201:
            with self._stats_lock:
                self.stats.blobs_mounted += 1
            return True
        self._cancel_upload(resp, scopes)
        return False

    def upload_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        open_chunks: Callable[[], Iterable[bytes]],
    ) -> None:
        """POST, then one streaming monolithic ``PUT <location>&digest=``.

        ``open_chunks`` is called once per attempt and must yield exactly ``size`` bytes;
        nothing is held in memory beyond the chunk being sent."""
        scopes = _push(repo)

        def attempt() -> None:
            location = self._start_upload(repo)
            url = _add_query(location, digest=digest)
            body = _Body(open_chunks(), size, self._count_upload, digest) if size else b""
            resp = self._send(
                "PUT",
                url,
                scopes,
                data=body,
                headers={"Content-Type": OCTET, "Content-Length": str(size)},
                replayable=False,
            )
            self._check(resp, "PUT", url, ok=(201,))

        with self._errors(what=f"blob {digest}"):
            self._retrying(attempt)
        with self._stats_lock:
            self.stats.blobs_uploaded += 1

    def upload_blob_stream(self, repo: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Upload bytes whose digest is not known yet: POST, one streaming PATCH
        (chunked transfer) hashed on the fly, then ``PUT ?digest=`` with an empty body.

        The PATCH cannot be retried (the iterable is consumed); POST and PUT are."""
        scopes = _push(repo)
        hasher = hashlib.sha256()
        counter = _Counter()

        def pieces() -> Iterator[bytes]:
            for chunk in chunks:
                if chunk:
                    hasher.update(chunk)
                    counter.n += len(chunk)
                    self._count_upload(len(chunk))
                    yield chunk

        with self._errors(what="streamed blob"):
            location = self._start_upload(repo)
            resp = self._send(
                "PATCH",
                location,
                scopes,
                data=pieces(),
                headers={"Content-Type": OCTET},
                replayable=False,
            )
            self._check(resp, "PATCH", location, ok=(202,))
            location = urljoin(location, resp.headers.get("Location", location))
            digest = f"sha256:{hasher.hexdigest()}"
            url = _add_query(location, digest=digest)
            self._retrying(
                lambda: self._send_checked(
                    "PUT", url, scopes, ok=(201,), headers={"Content-Length": "0"}, data=b""
                )
            )
        with self._stats_lock:
            self.stats.blobs_uploaded += 1
        return digest, counter.n

    def upload_blob_chunked(
        self,
        repo: str,
        digest: str,
        size: int,
        open_at: Callable[[int], Iterable[bytes]],
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        """PATCH chunks of ``chunk_size``; after a failure ask the upload where it stands
        (GET → ``Range``) and resume there with ``open_at(offset)``, or start over when the
        registry lost the upload. Some registries reject PATCH (GAR) or big PATCH bodies
        (ghcr): ``upload_blob`` is the default, this is for flaky links to friendly ones."""
        scopes = _push(repo)
        state = _UploadState()

        def attempt() -> None:
            location, offset = self._resume_point(repo, state.location)
            state.location = location
            reader = _Reader(open_at(offset)) if offset < size else None
            while offset < size and reader is not None:
                n = min(chunk_size, size - offset)
                resp = self._send(
                    "PATCH",
                    location,
                    scopes,
                    data=_Body(reader.take(n), n, self._count_upload, digest),
                    headers={
                        "Content-Type": OCTET,
                        "Content-Range": f"{offset}-{offset + n - 1}",
                    },
                    replayable=False,
                )
                self._check(resp, "PATCH", location, ok=(202,))
                location = urljoin(location, resp.headers.get("Location", location))
                offset += n
                state.location = location
            url = _add_query(location, digest=digest)
            self._send_checked(
                "PUT", url, scopes, ok=(201,), headers={"Content-Length": "0"}, data=b""
            )

        with self._errors(what=f"blob {digest}"):
            self._retrying(attempt)
        with self._stats_lock:
            self.stats.blobs_uploaded += 1

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT the manifest; returns its digest, checked against sha256 of ``body``."""
        expected = _sha256(body)
        with self._errors(what=f"manifest {repo}:{reference}"):
            resp = self._retrying(
                lambda: self._send_checked(
                    "PUT",
                    f"/v2/{repo}/manifests/{reference}",
                    _push(repo),
                    ok=(201,),
                    headers={"Content-Type": media_type},
                    data=body,
                )
            )
        got = resp.headers.get("Docker-Content-Digest", expected)
        if got != expected:
            raise RegistryError(
                f"registry {self.host} stored manifest {repo}:{reference} as {got}, "
                f"but its sha256 is {expected}",
                hint="the registry rewrote the manifest; push to another registry or report it",
            )
        return got

    def get_manifest(
        self, repo: str, reference: str, accept: Iterable[str] = MANIFEST_ACCEPT
    ) -> Manifest:
        """``(body, media_type, digest)``; the body is checked when ``reference`` is a digest."""
        with self._errors(what=f"manifest {repo}:{reference}"):
            resp = self._retrying(
                lambda: self._send_checked(
                    "GET",
                    f"/v2/{repo}/manifests/{reference}",
                    _pull(repo),
                    ok=(200,),
                    headers={"Accept": ", ".join(accept)},
                )
            )
        body = resp.content
        digest = _sha256(body)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"registry {self.host} returned a manifest for {repo}@{reference} "
                f"whose sha256 is {digest}"
            )
        media_type = _media_type(resp) or _guess_media_type(body)
        return Manifest(body, media_type, digest)  # the body's own hash, not a header

    def head_manifest(
        self, repo: str, reference: str, accept: Iterable[str] = MANIFEST_ACCEPT
    ) -> ManifestInfo | None:
        """Digest, media type and size of a tag or digest; None if it does not exist."""
        with self._errors(what=f"manifest {repo}:{reference}"):
            resp = self._retrying(
                lambda: self._send_checked(
                    "HEAD",
                    f"/v2/{repo}/manifests/{reference}",
                    _pull(repo),
                    ok=(200,),
                    allow=(404,),
                    headers={"Accept": ", ".join(accept)},
                )
            )
        if resp.status_code == 404:
            return None
        return ManifestInfo(
            digest=resp.headers.get("Docker-Content-Digest", ""),
            media_type=_media_type(resp),
            size=int(resp.headers.get("Content-Length", "0")),
        )

    def get_blob(self, repo: str, digest: str) -> Iterator[bytes]:
        """Stream a blob in pieces; raises RegistryError at the end if the bytes do not
        hash to ``digest``."""
        with self._errors(what=f"blob {digest}"):
            resp = self._retrying(
                lambda: self._send_checked(
                    "GET", f"/v2/{repo}/blobs/{digest}", _pull(repo), ok=(200,), stream=True
                )
            )
        return self._iter_blob(resp, digest)

    def read_blob(self, repo: str, digest: str, max_size: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (image config) in memory; refuses anything over ``max_size``."""
        out = bytearray()
        for piece in self.get_blob(repo, digest):
            out += piece
            if len(out) > max_size:
                raise RegistryError(f"blob {digest} is larger than {max_size} bytes")
        return bytes(out)

    # -- upload helpers --------------------------------------------------------------------

    def _start_upload(self, repo: str) -> str:
        """POST a new upload session. Doubles as the authentication step for the big
        request that follows: after it, the right credential is cached for this scope."""
        resp = self._send_checked("POST", f"/v2/{repo}/blobs/uploads/", _push(repo), ok=(202,))
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.host} started an upload without a Location")
        # The credential must outlive the request we are about to stream.
        self._authorization(_push(repo))
        return urljoin(resp.url, location)

    def _resume_point(self, repo: str, location: str | None) -> tuple[str, int]:
        """Where an interrupted chunked upload stands: (location, next offset)."""
        if location is None:
            return self._start_upload(repo), 0
        resp = self._send("GET", location, _push(repo))
        resp.close()
        end = _range_end(resp.headers.get("Range", "")) if resp.status_code == 204 else None
        if end is None or end == 0:
            # Lost (e.g. distribution cancels an upload whose state no longer matches) or
            # ambiguous ("0-0" is 0 or 1 byte): start over.
            log.debug("upload not resumable (status %d); restarting", resp.status_code)
            return self._start_upload(repo), 0
        log.debug("resuming upload at byte %d", end + 1)
        return urljoin(location, resp.headers.get("Location", location)), end + 1

    def _cancel_upload(self, resp: requests.Response, scopes: tuple[str, ...]) -> None:
        location = resp.headers.get("Location")
        if not location:
            return
        with contextlib.suppress(requests.RequestException, ModelcarError):
            self._send("DELETE", urljoin(resp.url, location), scopes).close()

    def _count_upload(self, n: int) -> None:
        with self._stats_lock:
            self.stats.bytes_uploaded += n

    def _iter_blob(self, resp: requests.Response, digest: str) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        with resp, self._errors(what=f"blob {digest}"):
            for piece in resp.iter_content(_READ_SIZE):
                hasher.update(piece)
                with self._stats_lock:
                    self.stats.bytes_downloaded += len(piece)
                yield piece
        if digest.startswith("sha256:") and f"sha256:{hasher.hexdigest()}" != digest:
            raise RegistryError(f"blob {digest} from registry {self.host} has another sha256")

    # -- requests, auth, retries -----------------------------------------------------------

    def _send_checked(
        self,
        method: str,
        path: str,
        scopes: tuple[str, ...],
        *,
        ok: tuple[int, ...],
        allow: tuple[int, ...] = (),
        **kwargs: object,
    ) -> requests.Response:
        resp = self._send(method, path, scopes, **kwargs)  # type: ignore[arg-type]
        return self._check(resp, method, path, ok=ok + allow)

    def _send(
        self,
        method: str,
        path: str,
        scopes: tuple[str, ...],
        *,
        headers: dict[str, str] | None = None,
        data: object = None,
        stream: bool = False,
        replayable: bool = True,
    ) -> requests.Response:
        """One request, with one re-authentication round on 401 when the body allows."""
        url = urljoin(self._base_url(), path)
        for round_ in range(2):
            auth = self._authorization(scopes)
            resp = self._raw(method, url, {**(headers or {}), **auth}, data, stream)
            if resp.status_code != 401:
                return resp
            resp.close()
            challenge = _parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            if challenge is None:
                raise self._auth_error(f"answered 401 to {method} {_path(url)} with no challenge")
            if round_ == 1 or (auth and challenge.scheme == "basic"):
                raise self._auth_error()
            self._learn(challenge, scopes, rejected=bool(auth))
            if not replayable:
                # The body iterator is spent; the caller restarts with a fresh stream.
                raise _Transient(resp)
        raise self._auth_error()  # unreachable: the loop returns or raises

    def _raw(
        self, method: str, url: str, headers: dict[str, str], data: object, stream: bool
    ) -> requests.Response:
        with self._stats_lock:
            self.stats.requests += 1
        with warnings.catch_warnings():
            if self._verify is False:
                warnings.simplefilter("ignore", InsecureRequestWarning)
            resp = self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                stream=stream,
                verify=self._verify,  # per request: REQUESTS_CA_BUNDLE beats session.verify
                timeout=self._timeout,
                allow_redirects=True,
            )
        log.debug("%s %s -> %d", method, _path(url), resp.status_code)
        return resp

    def _check(
        self, resp: requests.Response, method: str, path: str, *, ok: tuple[int, ...]
    ) -> requests.Response:
        status = resp.status_code
        if status in ok:
            return resp
        if status >= 500 or status in (408, 429) or status == 401:
            resp.close()
            raise _Transient(resp)
        if status == 403:
            raise self._auth_error(f"denied {method} {_path(path)}")
        detail = _error_detail(resp)
        raise RegistryError(
            self._scrub(f"registry {self.host} answered {status} to {method} {_path(path)}{detail}")
        )

    def _authorization(self, scopes: tuple[str, ...]) -> dict[str, str]:
        """The header to send, fetching a bearer token when ours is missing or expiring."""
        challenge = self._challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            if self.creds is None:
                return {}
            raw = f"{self.creds.username}:{self.creds.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        return {"Authorization": f"Bearer {self._token_for(scopes)}"}

    def _learn(self, challenge: _Challenge, scopes: tuple[str, ...], rejected: bool) -> None:
        with self._lock:
            self._challenge = challenge
            if rejected:
                # The registry refused a token we thought valid (expired early, revoked).
                self._tokens.pop(_scope_key(scopes), None)
            wanted = challenge.params.get("scope")
            if wanted and challenge.scheme == "bearer":
                merged = tuple(dict.fromkeys((*scopes, *wanted.split(" "))))
                if merged != scopes:
                    self._tokens.pop(_scope_key(scopes), None)
                    self._extra_scopes[_scope_key(scopes)] = merged

    def _token_for(self, scopes: tuple[str, ...]) -> str:
        key = _scope_key(scopes)
        with self._lock:
            token = self._tokens.get(key)
            if token is None or time.monotonic() >= token.expires_at - token.margin:
                token = self._fetch_token(self._extra_scopes.get(key, scopes))
                self._tokens[key] = token
            return token.value

    def _fetch_token(self, scopes: tuple[str, ...]) -> _Token:
        assert self._challenge is not None
        params = self._challenge.params
        realm = params.get("realm")
        if not realm:
            raise self._auth_error("sent a Bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scopes]
        started = time.monotonic()
        resp = self._token_request(realm, query)
        if resp.status_code in (401, 403):
            raise self._auth_error()
        if resp.status_code != 200:
            raise RegistryError(
                f"token server {_host(realm)} of registry {self.host} answered "
                f"{resp.status_code}{_error_detail(resp)}"
            )
        try:
            data = resp.json()
            value = data.get("token") or data["access_token"]
            ttl = float(data.get("expires_in") or _DEFAULT_TOKEN_TTL)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(
                f"token server {_host(realm)} of registry {self.host} sent no usable token"
            ) from None
        self._secrets.add(value)
        return _Token(value, started + ttl, margin=min(_TOKEN_MARGIN, ttl / 4))

    def _token_request(self, realm: str, query: list[tuple[str, str]]) -> requests.Response:
        with self._stats_lock:
            self.stats.token_requests += 1
        creds = self.creds
        kwargs: dict[str, object] = {"verify": self._verify, "timeout": self._timeout}
        try:
            with warnings.catch_warnings():
                if self._verify is False:
                    warnings.simplefilter("ignore", InsecureRequestWarning)
                if creds is not None and creds.identity_token:
                    # docker's OAuth2 refresh-token grant for "identitytoken" entries.
                    form = dict(query)
                    form["scope"] = " ".join(v for k, v in query if k == "scope")
                    form.update(
                        grant_type="refresh_token",
                        refresh_token=creds.identity_token,
                        client_id="modelcar-builder",
                    )
                    return self._session.post(realm, data=form, **kwargs)  # type: ignore[arg-type]
                auth = (creds.username, creds.password) if creds is not None else None
                return self._session.get(realm, params=query, auth=auth, **kwargs)  # type: ignore[arg-type]
        except requests.exceptions.SSLError as exc:
            raise RegistryUnreachable(
                f"TLS handshake with token server {_host(realm)} of registry "
                f"{self.host}: {_reason(exc)}",
                hint=_TLS_HINT,
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RegistryUnreachable(
                f"cannot reach token server {_host(realm)} of registry {self.host}: {_reason(exc)}"
            ) from None

    def _auth_error(self, what: str | None = None) -> RegistryAuthError:
        source = self.creds.source if self.creds else "no credentials found"
        detail = what or "refused the credentials"
        return RegistryAuthError(self._scrub(f"registry {self.host} {detail} ({source})"))

    def _base_url(self) -> str:
        """``https://host`` or ``http://host``, decided once with a GET /v2/."""
        if self._base is not None:
            return self._base
        with self._lock:
            if self._base is None:
                self._base = self._probe()
        return self._base

    def _probe(self) -> str:
        schemes = ["http"] if self._plain_http else ["https"]
        if self._plain_http is None and self._verify is False:
            schemes.append("http")
        for i, scheme in enumerate(schemes):
            base = f"{scheme}://{self.host}"
            try:
                resp = self._raw("GET", f"{base}/v2/", {}, None, False)
            except requests.ConnectionError:
                if i + 1 < len(schemes):
                    continue
                raise
            resp.close()
            challenge = _parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            if resp.status_code == 401 and challenge is not None:
                self._challenge = challenge
            return base
        raise AssertionError("unreachable")

    def _retrying(self, fn: Callable[[], _T]) -> _T:
        policy = self._retry
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_exponential(multiplier=policy.initial, max=policy.maximum),
            retry=tenacity.retry_if_exception(_is_transient),
            before_sleep=self._before_retry,
            reraise=True,
        )
        return retrying(fn)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        with self._stats_lock:
            self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "registry %s: %s; retry %d of %d",
            self.host,
            self._scrub(_describe(exc)),
            state.attempt_number,
            self._retry.attempts - 1,
        )

    @contextlib.contextmanager
    def _errors(self, what: str | None = None) -> Iterator[None]:
        """Turn transport failures into the tool's errors, with secrets scrubbed."""
        suffix = f" while transferring {what}" if what else ""
        try:
            yield
        except ModelcarError:
            raise
        except _SourceError as exc:
            if isinstance(exc.error, ModelcarError):
                raise exc.error from None
            raise BuildFailed(
                self._scrub(f"reading the data{suffix} failed: {_describe(exc.error)}"),
                hint="check the workspace / source files and rerun",
            ) from None
        except _Transient as exc:
            resp = exc.response
            if resp.status_code == 401:
                raise self._auth_error() from None
            raise RegistryError(
                self._scrub(
                    f"registry {self.host} answered {resp.status_code} to "
                    f"{resp.request.method} {_path(resp.request.url or '')}{suffix}"
                    f"{_error_detail(resp)}"
                ),
                hint="the registry is failing; check its logs and storage, then rerun",
            ) from None
        except requests.exceptions.SSLError as exc:
            raise RegistryUnreachable(
                self._scrub(f"TLS handshake with registry {self.host} failed: {_reason(exc)}"),
                hint=_TLS_HINT,
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RegistryUnreachable(
                self._scrub(f"cannot reach registry {self.host}{suffix}: {_reason(exc)}")
            ) from None
        except requests.RequestException as exc:  # broken stream, bad redirect, …
            raise RegistryError(
                self._scrub(f"request to registry {self.host} failed{suffix}: {_reason(exc)}")
            ) from None

    def _scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text


_TLS_HINT = (
    "pass --ca-file with the CA that signed the registry certificate (in OpenShift the "
    "service CA), or --tls-verify=false for a test registry"
)


# -- small pure helpers ------------------------------------------------------------------


class _Counter:
    n = 0


@dataclass
class _UploadState:
    """The last Location the registry gave a chunked upload (carries its signed state)."""

    location: str | None = None


class _Reader:
    """Take exact byte counts from an iterator of arbitrary-size chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._rest = b""

    def take(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self._rest:
                self._rest = next(self._it, b"")
                if not self._rest:
                    return
            piece, self._rest = self._rest[:n], self._rest[n:]
            n -= len(piece)
            yield piece


class _Body:
    """A sized iterable body: requests then sends Content-Length (not chunked) and
    streams each piece to the socket as it comes, counting, never buffering."""

    def __init__(
        self, chunks: Iterable[bytes], size: int, count: Callable[[int], None], label: str
    ) -> None:
        self._chunks = chunks
        self._size = size
        self._count = count
        self._label = label

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        it = iter(self._chunks)
        while True:
            try:
                chunk = next(it)
            except StopIteration:
                break
            except Exception as exc:
                raise _SourceError(exc) from exc
            if not chunk:
                continue
            if sent + len(chunk) > self._size:
                raise _SourceError(
                    BuildFailed(f"the data for {self._label} is longer than {self._size} bytes")
                )
            sent += len(chunk)
            self._count(len(chunk))
            yield bytes(chunk)
        if sent != self._size:
            raise _SourceError(
                BuildFailed(f"the data for {self._label} ended at {sent} of {self._size} bytes")
            )


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate does not fix itself
    if isinstance(exc, _SourceError):
        # A network-backed source (e.g. streaming from the Hub) may recover; a bug not.
        return isinstance(exc.error, (OSError, requests.RequestException))
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, _Transient))


def _pull(repo: str) -> tuple[str, ...]:
    return (f"repository:{repo}:pull",)


def _push(repo: str) -> tuple[str, ...]:
    return (f"repository:{repo}:pull,push",)


def _scope_key(scopes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(scopes))


_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def _parse_challenge(header: str) -> _Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("basic", "bearer"):
        return None
    params = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM_RE.finditer(rest)}
    return _Challenge(scheme, params)


def _add_query(url: str, **params: str) -> str:
    # Append without re-encoding: the Location's _state is signed as is.
    extra = "&".join(f"{k}={quote(v, safe=':')}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def _range_end(header: str) -> int | None:
    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", header.strip())
    return int(m.group(1)) if m else None


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _media_type(resp: requests.Response) -> str:
    return resp.headers.get("Content-Type", "").split(";")[0].strip()


def _guess_media_type(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("mediaType", ""))
    return ""


def _path(url: str) -> str:
    """Path only: the query of an upload URL carries signed state, not for messages."""
    return urlsplit(url).path or url


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _error_detail(resp: requests.Response) -> str:
    """``: CODE message`` from a distribution error body, short."""
    try:
        err = resp.json()["errors"][0]
        text = f"{err.get('code', '')} {err.get('message', '')}".strip()
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return f": {text[:_ERROR_BODY_MAX]}" if text else ""


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, _Transient):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, _SourceError):
        return f"source failed: {_describe(exc.error)}"
    if isinstance(exc, requests.RequestException):
        return _reason(exc)
    return str(exc) or type(exc).__name__


_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", None),
    ("WRONG_VERSION_NUMBER", "the server does not speak TLS (plain HTTP registry?)"),
    ("Connection refused", "connection refused"),
    ("Name or service not known", "DNS lookup failed"),
    ("nodename nor servname", "DNS lookup failed"),
    ("Temporary failure in name resolution", "DNS lookup failed"),
    ("No route to host", "no route to host"),
    ("Connection reset", "connection reset"),
    ("Broken pipe", "connection closed by the registry"),
    ("RemoteDisconnected", "connection closed by the registry"),
    ("timed out", "timed out"),
)


def _reason(exc: BaseException) -> str:
    """A short reason from requests' nested exception text (it never holds a secret,
    since credentials travel only in headers)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        m = re.search(r"certificate verify failed: ([^(')\"]+)", text)
        return "certificate verify failed" + (f": {m.group(1).strip()}" if m else "")
    for needle, reason in _REASONS:
        if needle in text and reason:
            return reason
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
