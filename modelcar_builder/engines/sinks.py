"""Where the native engine puts blobs and manifests: a registry or an OCI layout.
One small interface so the engine does not know which it writes to (go-containerregistry
keeps ``remote`` and ``layout`` apart the same way)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from modelcar_builder.oci.layer import Chunk
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.registry import RegistryClient

Chunks = Iterable[bytes]


class Sink(Protocol):
    def has_blob(self, digest: str, size: int) -> bool: ...

    def put_blob(self, digest: str, size: int, open_chunks: Callable[[], Chunks]) -> None: ...

    def put_stream(self, chunks: Iterable[Chunk], size: int | None = None) -> tuple[str, int]: ...

    def put_resumable(
        self, digest: str, size: int, open_at: Callable[[int], Chunks], chunk_size: int
    ) -> None: ...

    def put_manifest(self, body: bytes, media_type: str, tag: str) -> str: ...

    def mount(self, digest: str, from_host: str, from_repo: str) -> bool: ...

    @property
    def bytes_uploaded(self) -> int: ...


class RegistrySink:
    """``chunk_size`` (``--upload chunked``): every blob put here goes up in PATCHes of at
    most that size, base layers and the config too, not only the model's layers: a
    proxy's body-size limit (the reason to ask for chunks) refuses any larger request."""

    def __init__(self, client: RegistryClient, repo: str, chunk_size: int | None = None) -> None:
        self.client = client
        self.repo = repo
        self.chunk_size = chunk_size

    def has_blob(self, digest: str, size: int) -> bool:
        # A blob of the wrong size is as good as missing: upload it again.
        return self.client.blob_size(self.repo, digest) == size

    def put_blob(self, digest: str, size: int, open_chunks: Callable[[], Chunks]) -> None:
        if self.chunk_size is None:
            self.client.upload_blob(self.repo, digest, size, open_chunks)
            return

        # These bytes have no random access (a base layer streamed from its registry):
        # a resumed upload reads them again from the start and skips what was sent.
        def open_at(offset: int) -> Chunks:
            return skip_bytes(open_chunks(), offset)

        self.put_resumable(digest, size, open_at, self.chunk_size)

    def put_stream(self, chunks: Iterable[Chunk], size: int | None = None) -> tuple[str, int]:
        return self.client.upload_blob_stream(self.repo, chunks, size)

    def put_resumable(
        self, digest: str, size: int, open_at: Callable[[int], Chunks], chunk_size: int
    ) -> None:
        self.client.upload_blob_chunked(self.repo, digest, size, open_at, chunk_size=chunk_size)

    def put_manifest(self, body: bytes, media_type: str, tag: str) -> str:
        return self.client.put_manifest(self.repo, tag, body, media_type)

    def mount(self, digest: str, from_host: str, from_repo: str) -> bool:
        if from_host != self.client.host:
            return False
        return self.client.mount_blob(self.repo, digest, from_repo)

    @property
    def bytes_uploaded(self) -> int:
        return self.client.bytes_uploaded


class LayoutSink:
    def __init__(self, layout: OciLayout) -> None:
        self.layout = layout.init()
        self._written = 0

    def has_blob(self, digest: str, size: int) -> bool:
        return self.layout.has_blob(digest) and self.layout.blob_path(digest).stat().st_size == size

    def put_blob(self, digest: str, size: int, open_chunks: Callable[[], Chunks]) -> None:
        _, n = self.layout.write_blob(open_chunks(), expected_digest=digest)
        self._written += n

    def put_stream(self, chunks: Iterable[Chunk], size: int | None = None) -> tuple[str, int]:
        digest, n = self.layout.write_blob(chunks)
        self._written += n
        return digest, n

    def put_resumable(
        self, digest: str, size: int, open_at: Callable[[int], Chunks], chunk_size: int
    ) -> None:
        self.put_blob(digest, size, lambda: open_at(0))  # a local write has nothing to resume

    def put_manifest(self, body: bytes, media_type: str, tag: str) -> str:
        return self.layout.add_manifest(body, media_type, tag=tag).digest

    def mount(self, digest: str, from_host: str, from_repo: str) -> bool:
        return False

    @property
    def bytes_uploaded(self) -> int:
        return self._written


def skip_bytes(chunks: Chunks, offset: int) -> Iterator[bytes]:
    """``chunks`` from byte ``offset`` on."""
    for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        yield bytes(chunk[offset:]) if offset else chunk
        offset = 0
