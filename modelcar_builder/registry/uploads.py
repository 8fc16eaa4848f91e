"""The three ways a blob goes up: monolithic (one streamed PUT, digest known), streamed
(one chunked-encoding PATCH hashed on the fly, digest learnt at the end) and chunked
(PATCHes of a fixed size that resume where the registry says it stands).

Facts this code is shaped by (docs/architecture.md §5):
- every upload authenticates with a small request (POST) first and sends the big body
  with a fresh credential, since a streamed body cannot be replayed after a 401;
- the upload ``Location`` may be relative and carries signed state: urljoin, never rebuild;
- distribution 2.8 checks neither Content-Range nor descriptor sizes: we must be right.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urljoin

import requests

from modelcar_builder.errors import BuildFailed, ModelcarError, RegistryError
from modelcar_builder.registry.tokens import Authenticator, Scopes, push
from modelcar_builder.registry.transport import SOURCE_ERRORS, SourceFailed, Transport

# A child of "modelcar", the logger the CLI configures (prefix, --debug, --quiet).
log = logging.getLogger("modelcar.registry.uploads")

OCTET = "application/octet-stream"
DEFAULT_CHUNK = 64 * 1024 * 1024  # PATCH size for upload_blob_chunked


class BlobUploader:
    """Upload protocols over one registry's transport and authenticator."""

    def __init__(self, http: Transport, auth: Authenticator) -> None:
        self._http = http
        self._auth = auth

    def monolithic(
        self, repo: str, digest: str, size: int, open_chunks: Callable[[], Iterable[bytes]]
    ) -> None:
        """POST, then one streaming ``PUT <location>&digest=``; ``open_chunks`` is called
        once per attempt and must yield exactly ``size`` bytes."""
        http, scopes = self._http, push(repo)

        def attempt() -> None:
            location = self.start(repo)
            url = _add_query(location, digest=digest)
            body = _Body(open_chunks(), size, self._count, digest) if size else b""
            resp = self._auth.send(
                "PUT",
                url,
                scopes,
                data=body,
                headers={"Content-Type": OCTET, "Content-Length": str(size)},
                replayable=False,
            )
            http.check(resp, "PUT", url, ok=(201,))

        with http.errors(what=f"blob {digest}"):
            http.retrying(attempt)
        http.count(blobs_uploaded=1)

    def streamed(
        self, repo: str, chunks: Iterable[bytes | memoryview], size: int | None = None
    ) -> tuple[str, int]:
        """POST, one streaming PATCH hashed on the fly, then ``PUT ?digest=`` with an
        empty body. The PATCH cannot be retried (the iterable is consumed: the caller
        sends the layer again); POST and PUT are, through a registry restart too, so that
        a resent layer waits for the registry to return. ``size``, when known, goes as
        Content-Length and every chunk is sent as it is; without it the body is sent
        chunked, and urllib3 copies every chunk into a new bytes to frame it."""
        http, scopes = self._http, push(repo)
        hasher = hashlib.sha256()
        counter = _Counter()

        def pieces() -> Iterator[bytes | memoryview]:
            for chunk in chunks:
                if chunk:
                    hasher.update(chunk)
                    counter.n += len(chunk)
                    self._count(len(chunk))
                    yield chunk

        with http.errors(what="streamed blob"):
            location = http.retrying(lambda: self.start(repo))
            resp = self._auth.send(
                "PATCH",
                location,
                scopes,
                data=pieces() if size is None else _Sized(pieces(), size),
                headers={"Content-Type": OCTET},
                replayable=False,
            )
            http.check(resp, "PATCH", location, ok=(202,))
            location = urljoin(location, resp.headers.get("Location", location))
            digest = f"sha256:{hasher.hexdigest()}"
            self._commit(_add_query(location, digest=digest), scopes, retry=True)
        http.count(blobs_uploaded=1)
        return digest, counter.n

    def chunked(
        self,
        repo: str,
        digest: str,
        size: int,
        open_at: Callable[[int], Iterable[bytes]],
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        """PATCH chunks of ``chunk_size``; after a failure ask the upload where it stands
        (GET → ``Range``) and resume there with ``open_at(offset)``, or start over when
        the registry lost the upload."""
        http, scopes = self._http, push(repo)
        state = _UploadState()

        def attempt() -> None:
            location, offset = self._resume_point(repo, state.location)
            state.location = location
            reader = _Reader(open_at(offset)) if offset < size else None
            while offset < size and reader is not None:
                n = min(chunk_size, size - offset)
                resp = self._auth.send(
                    "PATCH",
                    location,
                    scopes,
                    data=_Body(reader.take(n), n, self._count, digest),
                    headers={
                        "Content-Type": OCTET,
                        "Content-Range": f"{offset}-{offset + n - 1}",
                    },
                    replayable=False,
                )
                http.check(resp, "PATCH", location, ok=(202,))
                location = urljoin(location, resp.headers.get("Location", location))
                offset += n
                state.location = location
            self._commit(_add_query(location, digest=digest), scopes, retry=False)

        with http.errors(what=f"blob {digest}"):
            http.retrying(attempt)
        http.count(blobs_uploaded=1)

    # -- steps -----------------------------------------------------------------------------

    def start(self, repo: str) -> str:
        """POST a new upload session. Doubles as the authentication step for the big
        request that follows: after it, the right credential is cached for this scope."""
        resp = self._auth.send_checked("POST", f"/v2/{repo}/blobs/uploads/", push(repo), ok=(202,))
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self._http.host} started an upload without a Location")
        # The credential must outlive the request we are about to stream.
        self._auth.header(push(repo))
        return urljoin(resp.url, location)

    def cancel(self, resp: requests.Response, scopes: Scopes) -> None:
        """Best effort DELETE of the upload ``resp`` opened; a leftover one only expires."""
        location = resp.headers.get("Location")
        if not location:
            return
        with contextlib.suppress(requests.RequestException, ModelcarError):
            self._auth.send("DELETE", urljoin(resp.url, location), scopes).close()

    def _commit(self, url: str, scopes: Scopes, *, retry: bool) -> None:
        """The closing empty ``PUT ?digest=`` that turns the upload into a blob."""

        def put() -> requests.Response:
            return self._auth.send_checked(
                "PUT", url, scopes, ok=(201,), headers={"Content-Length": "0"}, data=b""
            )

        if retry:
            self._http.retrying(put)
        else:
            put()  # already inside the caller's retry loop

    def _resume_point(self, repo: str, location: str | None) -> tuple[str, int]:
        """Where an interrupted chunked upload stands: (location, next offset)."""
        if location is None:
            return self.start(repo), 0
        resp = self._auth.send("GET", location, push(repo))
        resp.close()
        end = _range_end(resp.headers.get("Range", "")) if resp.status_code == 204 else None
        if end is None or end == 0:
            # Lost (e.g. distribution cancels an upload whose state no longer matches) or
            # ambiguous ("0-0" is 0 or 1 byte): start over.
            log.debug("upload not resumable (status %d); restarting", resp.status_code)
            return self.start(repo), 0
        log.debug("resuming upload at byte %d", end + 1)
        return urljoin(location, resp.headers.get("Location", location)), end + 1

    def _count(self, n: int) -> None:
        self._http.count(bytes_uploaded=n)


# -- bodies --------------------------------------------------------------------------------


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
            except SOURCE_ERRORS as exc:
                raise SourceFailed(exc) from exc
            if not chunk:
                continue
            if sent + len(chunk) > self._size:
                raise SourceFailed(
                    BuildFailed(f"the data for {self._label} is longer than {self._size} bytes")
                )
            sent += len(chunk)
            self._count(len(chunk))
            yield bytes(chunk)
        if sent != self._size:
            raise SourceFailed(
                BuildFailed(f"the data for {self._label} ended at {sent} of {self._size} bytes")
            )


class _Sized:
    """An iterable body of known length: requests sends it with Content-Length."""

    def __init__(self, chunks: Iterable[bytes | memoryview], size: int) -> None:
        self._chunks, self._size = chunks, size

    def __iter__(self) -> Iterator[bytes | memoryview]:
        return iter(self._chunks)

    def __len__(self) -> int:
        return self._size


def _add_query(url: str, **params: str) -> str:
    # Append without re-encoding: the Location's _state is signed as is.
    extra = "&".join(f"{k}={quote(v, safe=':')}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def _range_end(header: str) -> int | None:
    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", header.strip())
    return int(m.group(1)) if m else None
