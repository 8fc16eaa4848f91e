"""``RegistryClient``: the OCI distribution API of one registry host (ping, blobs,
manifests), over ``Transport`` (HTTP, retries, errors), ``Authenticator`` (credentials)
and ``BlobUploader`` (the upload protocols).

No secret (password, identity token, bearer token) appears in any exception or log line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple
from urllib.parse import quote

import requests

from modelcar_builder.auth import Credentials
from modelcar_builder.errors import RegistryAuthError, RegistryError
from modelcar_builder.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
)
from modelcar_builder.registry.tokens import Authenticator, pull, push
from modelcar_builder.registry.transport import RetryPolicy, TransferStats, Transport
from modelcar_builder.registry.uploads import DEFAULT_CHUNK, BlobUploader

# A child of "modelcar", the logger the CLI configures (prefix, --debug, --quiet).
log = logging.getLogger("modelcar.registry.client")

MANIFEST_ACCEPT: tuple[str, ...] = (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
)
_READ_SIZE = 1024 * 1024  # download piece size


class Manifest(NamedTuple):
    body: bytes
    media_type: str
    digest: str


class ManifestInfo(NamedTuple):
    digest: str
    media_type: str
    size: int


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
        self._http = Transport(
            host,
            verify=(ca_file or True) if tls_verify else False,
            plain_http=plain_http,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            session=session or requests.Session(),
            creds_source=creds.source if creds else "no credentials found",
            secrets=creds.secrets() if creds else (),
        )
        self._auth = Authenticator(self._http, creds)
        self._uploads = BlobUploader(self._http, self._auth)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> TransferStats:
        return self._http.stats

    @property
    def bytes_uploaded(self) -> int:
        return self.stats.bytes_uploaded

    @property
    def requests_made(self) -> int:
        return self.stats.requests

    # -- blobs -----------------------------------------------------------------------------

    def ping(self) -> None:
        """Reach ``/v2/`` and prove the credentials work, before any big transfer."""
        with self._http.errors():
            self._auth.send_checked("GET", "/v2/", (), ok=(200,))

    @property
    def base_url(self) -> str:
        """``https://host`` or ``http://host``: the scheme the registry answered on."""
        with self._http.errors():
            return self._auth.base_url()

    def check_push(self, repo: str) -> None:
        """Prove the credentials may push to ``repo`` without writing a byte: start a
        blob upload (POST, push scope) and cancel it (DELETE its Location). A registry
        that lets these credentials pull but not push refuses the POST."""
        scopes = push(repo)
        try:
            with self._http.errors(what=f"a test upload to {repo}"):
                resp = self._http.retrying(
                    lambda: self._auth.send_checked(
                        "POST", f"/v2/{repo}/blobs/uploads/", scopes, ok=(202,)
                    )
                )
        except RegistryAuthError:
            what = f"refused to let these credentials push to {repo}"
            raise self._http.auth_error(what) from None
        self._uploads.cancel(resp, scopes)

    def blob_size(self, repo: str, digest: str) -> int | None:
        """Size of the blob if the repository has it, else None (HEAD)."""
        # Retried like every other request of a push: this HEAD runs just before each
        # layer's upload, whenever its files are ready, so a registry restart lands on it
        # as often as on the upload itself (it once ended builds with exit 50).
        with self._http.errors():
            resp = self._http.retrying(
                lambda: self._auth.send_checked(
                    "HEAD", f"/v2/{repo}/blobs/{digest}", pull(repo), ok=(200,), allow=(404,)
                )
            )
            if resp.status_code == 404:
                return None
            return int(resp.headers.get("Content-Length", "0"))

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; False when the registry would rather take an upload."""
        if from_repo == repo:
            return self.blob_size(repo, digest) is not None
        path = f"/v2/{repo}/blobs/uploads/?mount={quote(digest, safe=':')}&from={from_repo}"
        scopes = (*push(repo), *pull(from_repo))
        try:
            with self._http.errors():
                resp = self._http.retrying(
                    lambda: self._auth.send_checked("POST", path, scopes, ok=(201, 202))
                )
        except RegistryAuthError:
            # No pull right on the source repository: not an error, just no shortcut.
            log.debug("mount of %s from %s refused; will upload", digest, from_repo)
            return False
        if resp.status_code == 201:
            self._http.count(blobs_mounted=1)
            return True
        self._uploads.cancel(resp, scopes)
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
        self._uploads.monolithic(repo, digest, size, open_chunks)

    def upload_blob_stream(
        self, repo: str, chunks: Iterable[bytes | memoryview], size: int | None = None
    ) -> tuple[str, int]:
        """Upload bytes whose digest is not known yet (their ``size`` may be); returns
        ``(digest, size)``. The body PATCH is not retried (the iterable is consumed
        once); POST and PUT are."""
        return self._uploads.streamed(repo, chunks, size)

    def upload_blob_chunked(
        self,
        repo: str,
        digest: str,
        size: int,
        open_at: Callable[[int], Iterable[bytes]],
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        """Resumable PATCH upload, ``open_at(offset)`` reopening the data mid-way. Some
        registries reject PATCH (GAR) or big PATCH bodies (ghcr): ``upload_blob`` is the
        default, this is for flaky links to friendly ones."""
        self._uploads.chunked(repo, digest, size, open_at, chunk_size)

    def get_blob(self, repo: str, digest: str) -> Iterator[bytes]:
        """Stream a blob in pieces; raises RegistryError at the end if the bytes do not
        hash to ``digest``."""
        with self._http.errors(what=f"blob {digest}"):
            resp = self._http.retrying(
                lambda: self._auth.send_checked(
                    "GET", f"/v2/{repo}/blobs/{digest}", pull(repo), ok=(200,), stream=True
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

    def _iter_blob(self, resp: requests.Response, digest: str) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        with resp, self._http.errors(what=f"blob {digest}"):
            for piece in resp.iter_content(_READ_SIZE):
                hasher.update(piece)
                self._http.count(bytes_downloaded=len(piece))
                yield piece
        if digest.startswith("sha256:") and f"sha256:{hasher.hexdigest()}" != digest:
            raise RegistryError(f"blob {digest} from registry {self.host} has another sha256")

    # -- manifests -------------------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT the manifest; returns its digest, checked against sha256 of ``body``."""
        expected = _sha256(body)
        with self._http.errors(what=f"manifest {repo}:{reference}"):
            resp = self._http.retrying(
                lambda: self._auth.send_checked(
                    "PUT",
                    f"/v2/{repo}/manifests/{reference}",
                    push(repo),
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
        with self._http.errors(what=f"manifest {repo}:{reference}"):
            resp = self._http.retrying(
                lambda: self._auth.send_checked(
                    "GET",
                    f"/v2/{repo}/manifests/{reference}",
                    pull(repo),
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
        with self._http.errors(what=f"manifest {repo}:{reference}"):
            resp = self._http.retrying(
                lambda: self._auth.send_checked(
                    "HEAD",
                    f"/v2/{repo}/manifests/{reference}",
                    pull(repo),
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


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _media_type(resp: requests.Response) -> str:
    return resp.headers.get("Content-Type", "").split(";")[0].strip()


def _guess_media_type(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("mediaType", ""))
    return ""
