"""An OCI image layout on disk (image-spec image-layout.md), the form ``oci:PATH:TAG`` names.

Blobs are written by streaming into a temp file beside their final place while hashing,
then fsync and an atomic rename: a crash leaves either no blob or a complete, verified one,
so a rerun can trust ``has_blob`` and skip the work. Modes are set explicitly (files 0644,
directories 0755) because the workspace may be read by another UID and the umask of a
Tekton step is not ours to rely on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from modelcar_builder.errors import BlobDigestMismatch, MalformedBaseImage
from modelcar_builder.oci import (
    ANNOTATION_REF_NAME,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
)
from modelcar_builder.oci.image import (
    DEFAULT_PLATFORM,
    BaseImage,
    Descriptor,
    Platform,
    base_image,
    canonical_json,
    select_platform,
)
from modelcar_builder.oci.layer import Chunk

FILE_MODE = 0o644
DIR_MODE = 0o755
LAYOUT_VERSION = "1.0.0"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _check_digest(digest: str) -> str:
    # Digests come from manifests we read: never let one turn into a path elsewhere.
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"unsupported or malformed digest {digest!r}")
    return digest


def _write_all(fd: int, chunk: Chunk) -> None:
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


class OciLayout:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.blobs = self.path / "blobs" / "sha256"

    # --- structure ---------------------------------------------------------------------
    def init(self) -> OciLayout:
        """Create the layout if missing; keep an existing one (and its index) as it is."""
        _mkdir(self.path)
        _mkdir(self.path / "blobs")
        _mkdir(self.blobs)
        marker = self.path / "oci-layout"
        if marker.exists():
            version = json.loads(marker.read_bytes()).get("imageLayoutVersion")
            if version != LAYOUT_VERSION:
                raise ValueError(f"{self.path}: unsupported image layout version {version!r}")
        else:
            self._write_file(marker, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        if not (self.path / "index.json").exists():
            self._write_index([])
        return self

    def _write_file(self, target: Path, data: bytes) -> None:
        """Atomic small-file write (index.json must never be seen half written)."""
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            _write_all(fd, data)
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, target)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)

    def index(self) -> dict[str, Any]:
        return json.loads((self.path / "index.json").read_bytes())

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests}
        self._write_file(self.path / "index.json", canonical_json(index))

    # --- blobs -------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / _check_digest(digest).split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        return open(self.blob_path(digest), "rb")

    def read_blob(self, digest: str) -> bytes:
        """A small blob (manifest, config), checked against its digest."""
        data = self.blob_path(digest).read_bytes()
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise BlobDigestMismatch(f"{self.blob_path(digest)} has digest {actual}")
        return data

    def write_blob(
        self, chunks: Iterable[Chunk], expected_digest: str | None = None
    ) -> tuple[str, int]:
        """Stream ``chunks`` into a blob; return (digest, size).

        With ``expected_digest`` an existing blob is kept and ``chunks`` is not consumed
        (a rerun skips finished layers), and a mismatch removes the temp file and raises.
        """
        if expected_digest is not None and self.has_blob(expected_digest):
            return expected_digest, self.blob_path(expected_digest).stat().st_size
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        try:
            digest, size = self._fill(fd, chunks)
            if expected_digest is not None and digest != expected_digest:
                raise BlobDigestMismatch(
                    f"blob has digest {digest}, expected {expected_digest} ({size} bytes)"
                )
            os.replace(tmp, self.blob_path(digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.blobs)
        return digest, size

    @staticmethod
    def _fill(fd: int, chunks: Iterable[Chunk]) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        try:
            for chunk in chunks:
                h.update(chunk)
                _write_all(fd, chunk)
                size += len(chunk)
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        return f"sha256:{h.hexdigest()}", size

    def write_blob_bytes(self, data: bytes) -> tuple[str, int]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        return self.write_blob([data], expected_digest=digest)

    def copy_blob_from(self, other: OciLayout, digest: str) -> None:
        """Bring a blob over from another layout: a hard link when possible (blobs are
        immutable and content addressed, so sharing the inode is safe), else a verified copy.
        """
        if self.has_blob(digest):
            return
        source = other.blob_path(digest)
        # Only link a blob that already has our mode: a chmod would change the other
        # layout's file as well (umoci, for one, writes its blobs 0600).
        if source.stat().st_mode & 0o777 == FILE_MODE:
            try:
                os.link(source, self.blob_path(digest))
                return
            except FileExistsError:
                return
            except OSError:
                pass  # another filesystem, or links not allowed: copy instead
        with source.open("rb") as stream:
            self.write_blob(iter(lambda: stream.read(8 << 20), b""), expected_digest=digest)

    # --- manifests and tags ------------------------------------------------------------
    def add_manifest(
        self,
        manifest_bytes: bytes,
        media_type: str = MEDIA_TYPE_MANIFEST,
        tag: str | None = None,
        platform: dict[str, str] | None = None,
    ) -> Descriptor:
        """Store a manifest (or index) blob and point ``tag`` at it in index.json.

        An entry with the same ref.name is replaced; an untagged manifest is added once.
        """
        if tag is not None and (not tag or any(c in tag for c in "\0\n\r")):
            raise ValueError(f"invalid tag {tag!r}")
        digest, size = self.write_blob_bytes(manifest_bytes)
        annotations = {ANNOTATION_REF_NAME: tag} if tag is not None else {}
        descriptor = Descriptor(media_type, digest, size, annotations, platform)
        entries = [
            entry
            for entry in self.index().get("manifests", [])
            if not self._same_slot(entry, tag, digest)
        ]
        entries.append(descriptor.to_dict())
        self._write_index(entries)
        return descriptor

    @staticmethod
    def _same_slot(entry: dict[str, Any], tag: str | None, digest: str) -> bool:
        name = (entry.get("annotations") or {}).get(ANNOTATION_REF_NAME)
        if tag is not None:
            return name == tag
        return name is None and entry.get("digest") == digest

    def resolve(self, tag: str | None = None) -> Descriptor:
        """The index.json entry for ``tag``; without a tag, the only entry there is."""
        entries = [Descriptor.from_dict(e) for e in self.index().get("manifests", [])]
        if tag is None:
            if len(entries) != 1:
                raise KeyError(f"{self.path}: {len(entries)} images, give a tag")
            return entries[0]
        for entry in entries:
            if entry.annotations.get(ANNOTATION_REF_NAME) == tag:
                return entry
        raise KeyError(f"{self.path}: no image tagged {tag!r}")

    def read_manifest(self, tag: str | None = None) -> tuple[Descriptor, dict[str, Any]]:
        """The descriptor and parsed JSON of what ``tag`` names (a manifest or an index)."""
        descriptor = self.resolve(tag)
        return descriptor, json.loads(self.read_blob(descriptor.digest))

    def read_image(
        self, tag: str | None = None, platform: Platform = DEFAULT_PLATFORM, name: str = ""
    ) -> BaseImage:
        """Resolve ``tag`` to one image for ``platform`` (following indexes) and read its
        config; Docker media types come back as their OCI equivalents."""
        descriptor, document = self.read_manifest(tag)
        # Nested indexes are legal; a depth bound keeps a malicious layout from looping.
        for _ in range(8):
            media_type = document.get("mediaType", descriptor.media_type)
            if media_type in MANIFEST_MEDIA_TYPES:
                config = self.read_blob(document["config"]["digest"])
                return base_image(
                    name or str(self.path), descriptor.digest, document, config_bytes=config
                )
            if media_type not in INDEX_MEDIA_TYPES:
                raise MalformedBaseImage(f"{self.path}: unsupported manifest type {media_type}")
            descriptor = select_platform(document, platform)
            document = json.loads(self.read_blob(descriptor.digest))
        raise MalformedBaseImage(f"{self.path}: image indexes nested too deeply")
