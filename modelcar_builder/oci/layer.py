"""Deterministic tar layers, streamed straight from the model files.

A layer is never written to disk as a tar and no file is ever held in memory: the tar
stream is generated on the fly (headers from ``tarfile.TarInfo.tobuf``, contents read in
8 MiB blocks), so one pass can hash it, write it to an OCI layout or upload it.

Tar facts this module relies on (docs/architecture.md §3):
- entries are ``models/<relpath>``, sorted by path, parents before children;
- directories 0755, files 0644, uid/gid 0, empty uname/gname, fixed mtime, so the same
  files give the same digest on any machine and a re-push uploads nothing;
- PAX headers (POSIX.1-2001): a file >= 8 GiB, a path > 100 bytes or a non-ASCII path
  gets an extended header record instead of failing or being truncated;
- the stream ends with the two zero blocks the format requires and nothing else. We skip
  the padding of the archive to a 10240-byte record that ``tarfile`` adds: no reader
  needs it (Go's archive/tar, which containerd, CRI-O, buildah and umoci use, writes none
  either), and without it ``size`` is a plain sum.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelcar_builder.errors import SourceSizeMismatch, UnsafeSource, UsageError
from modelcar_builder.oci import (
    ANNOTATION_FILE_SHA256,
    ANNOTATION_FILEPATH,
    ANNOTATION_FILES,
    ANNOTATION_TITLE,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
)
from modelcar_builder.snapshot import FileEntry

BLOCK = tarfile.BLOCKSIZE  # 512
CHUNK_SIZE = 8 * 1024 * 1024
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
FILE_MODE = 0o644
DIR_MODE = 0o755
DEFAULT_GZIP_LEVEL = 6  # gzip(1)'s and zlib's default; weights barely compress at any level
SMALL_FILES_TITLE = "small-files"
TAR_FORMAT = "pax-v1"  # part of layer cache keys: change it whenever the tar bytes change

Chunk = bytes | memoryview
Readable = BinaryIO | io.RawIOBase  # a member's bytes: a file, an HTTP body, a Hub stream
OpenEntry = Callable[["LayerEntry"], Readable]


@dataclass(frozen=True)
class LayerEntry:
    """One regular file of a layer: ``path`` relative to the layer root (``models/``)."""

    path: str
    size: int
    source: Path | None = None


@dataclass(frozen=True)
class _Member:
    header: bytes
    entry: LayerEntry | None  # None for a directory


def check_relpath(path: str) -> None:
    """Refuse any path that could land outside ``/models`` or be misread by an unpacker."""
    parts = path.split("/")
    bad = (
        not path
        or path.startswith("/")
        or "\0" in path
        or any(part in ("", ".", "..") for part in parts)
        # An unpacker treats ".wh.<name>" as "delete <name> from lower layers".
        or any(part.startswith(".wh.") for part in parts)
    )
    if bad:
        raise UnsafeSource(f"refusing file path {path!r}: not a clean relative path")


def _header(name: str, *, size: int, mode: int, type_: bytes, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX adds a "size"/"path" record only when ustar cannot hold the value.
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def file_header(name: str, size: int, mtime: int = 0) -> bytes:
    """The header block(s) of a regular file ``name`` (a full tar path, e.g. models/x)."""
    return _header(name, size=size, mode=FILE_MODE, type_=tarfile.REGTYPE, mtime=mtime)


def dir_header(name: str, mtime: int = 0) -> bytes:
    return _header(name, size=0, mode=DIR_MODE, type_=tarfile.DIRTYPE, mtime=mtime)


def _padding(size: int) -> int:
    return -size % BLOCK


class TarLayer:
    """A deterministic tar stream of ``entries`` under ``root/``.

    ``size`` and the headers are computed up front without touching any file, so a
    registry upload or a disk-space check can know the exact length before the first byte.
    """

    def __init__(self, entries: Iterable[LayerEntry], root: str = "models", mtime: int = 0):
        check_relpath(root)
        self.root = root
        self.mtime = mtime
        self.entries: tuple[LayerEntry, ...] = tuple(sorted(entries, key=lambda e: e.path))
        self._members = tuple(self._plan_members())
        self.size: int = len(END_OF_ARCHIVE) + sum(
            len(m.header) + (m.entry.size + _padding(m.entry.size) if m.entry else 0)
            for m in self._members
        )

    @classmethod
    def from_files(
        cls, files: Iterable[FileEntry], base_dir: Path | None, root: str = "models"
    ) -> TarLayer:
        """Entries for snapshot files; ``base_dir`` None when bytes will come via open_entry."""
        return cls(
            (
                LayerEntry(f.path, f.size, base_dir / f.path if base_dir is not None else None)
                for f in files
            ),
            root=root,
        )

    def _plan_members(self) -> Iterator[_Member]:
        emitted_dirs: set[str] = set()
        files: set[str] = set()
        yield _Member(dir_header(self.root, self.mtime), None)
        for entry in self.entries:
            check_relpath(entry.path)
            if entry.size < 0:
                raise ValueError(f"negative size for {entry.path!r}")
            if entry.path in files or entry.path in emitted_dirs:
                raise UnsafeSource(f"{entry.path!r} appears twice (or as file and directory)")
            parent = posixpath.dirname(entry.path)
            missing: list[str] = []
            while parent and parent not in emitted_dirs:
                missing.append(parent)
                parent = posixpath.dirname(parent)
            for directory in reversed(missing):
                if directory in files:
                    raise UnsafeSource(f"{directory!r} is both a file and a directory")
                emitted_dirs.add(directory)
                yield _Member(dir_header(f"{self.root}/{directory}", self.mtime), None)
            files.add(entry.path)
            yield _Member(file_header(f"{self.root}/{entry.path}", entry.size, self.mtime), entry)

    def chunks(self, open_entry: OpenEntry | None = None) -> Iterator[Chunk]:
        """Yield the tar stream.

        File bytes come from ``entry.source`` or, when given, ``open_entry(entry)`` (for
        instance an HTTP response body); this generator closes what it opened. File data is
        yielded as memoryviews of one reused 8 MiB buffer: a chunk is valid only until the
        next one is requested, and is released then, so a consumer that keeps chunks (e.g.
        ``list(...)``) fails loudly instead of silently reading overwritten bytes.
        """
        buf = memoryview(bytearray(CHUNK_SIZE))
        for member in self._members:
            yield member.header
            entry = member.entry
            if entry is None:
                continue
            stream = _open(entry, open_entry)
            with stream:
                yield from _copy_exact(stream, entry, buf)
            pad = _padding(entry.size)
            if pad:
                yield END_OF_ARCHIVE[:pad]
        yield END_OF_ARCHIVE

    def chunks_from(self, offset: int) -> Iterator[Chunk]:
        """The tar stream from byte ``offset`` on, seeking in the source files instead of
        reading what comes before: a resumed upload continues where the registry stopped."""
        if not 0 <= offset <= self.size:
            raise ValueError(f"offset {offset} outside the layer (size {self.size})")
        pos = 0
        for member in self._members:
            yield from _tail(member.header, offset - pos)
            pos += len(member.header)
            entry = member.entry
            if entry is None:
                continue
            span = entry.size + _padding(entry.size)
            if pos + span > offset:
                yield from _file_from(entry, max(0, offset - pos))
                yield from _tail(END_OF_ARCHIVE[: _padding(entry.size)], offset - pos - entry.size)
            pos += span
        yield from _tail(END_OF_ARCHIVE, offset - pos)

    def frame(self) -> tuple[bytes, bytes]:
        """For a one-file layer: the tar bytes before the file's content and after it.
        sha256(prefix + content + suffix) is the layer digest, so it can be computed while
        the file downloads, sparing a second read of the model."""
        *head, last = self._members
        if last.entry is None or any(m.entry is not None for m in head):
            raise ValueError("frame() needs a layer of exactly one file")
        prefix = b"".join(m.header for m in self._members)
        return prefix, END_OF_ARCHIVE[: _padding(last.entry.size)] + END_OF_ARCHIVE

    def digest(self, open_entry: OpenEntry | None = None) -> str:
        """``sha256:<hex>`` of the uncompressed stream (= the layer's diff_id)."""
        h = hashlib.sha256()
        for chunk in self.chunks(open_entry):
            h.update(chunk)
        return f"sha256:{h.hexdigest()}"


def _tail(block: bytes, skip: int) -> Iterator[bytes]:
    """``block`` without its first ``skip`` bytes (nothing when skip covers it all)."""
    skip = max(0, skip)
    if skip < len(block):
        yield block[skip:]


def _file_from(entry: LayerEntry, skip: int) -> Iterator[bytes]:
    if skip >= entry.size:
        return
    if entry.source is None:
        raise ValueError(f"{entry.path!r}: resuming needs a file on disk")
    with open(entry.source, "rb") as stream:
        stream.seek(skip)
        remaining = entry.size - skip
        while remaining:
            block = stream.read(min(remaining, CHUNK_SIZE))
            if not block:
                raise SourceSizeMismatch(f"{entry.path}: source shorter than {entry.size} bytes")
            remaining -= len(block)
            yield block


def _open(entry: LayerEntry, open_entry: OpenEntry | None) -> Readable:
    if open_entry is not None:
        return open_entry(entry)
    if entry.source is None:
        raise ValueError(f"{entry.path!r} has no source file and no open_entry was given")
    # Unbuffered: readinto goes straight from the page cache into our buffer, no extra copy.
    stream = open(entry.source, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return stream


def _copy_exact(stream: Readable, entry: LayerEntry, buf: memoryview) -> Iterator[memoryview]:
    """Yield exactly ``entry.size`` bytes of ``stream``; raise if it has fewer or more."""
    remaining = entry.size
    readinto = getattr(stream, "readinto", None)
    while remaining:
        want = min(remaining, len(buf))
        filled = 0
        # Fill the whole block before yielding: network streams return small reads and
        # many tiny chunks would cost more per byte downstream (hashing, socket writes).
        while filled < want:
            n = _read_into(stream, readinto, buf[filled:want])
            if not n:
                raise SourceSizeMismatch(
                    f"{entry.path}: source ended after {entry.size - remaining + filled} of "
                    f"{entry.size} bytes"
                )
            filled += n
        remaining -= filled
        chunk = buf[:filled]
        yield chunk
        # BufferError: the consumer still holds a view of it; it knows what it is doing.
        with contextlib.suppress(BufferError):
            chunk.release()
    if stream.read(1):
        raise SourceSizeMismatch(f"{entry.path}: source has more than {entry.size} bytes")


def _read_into(stream: Readable, readinto: Callable | None, target: memoryview) -> int:
    if readinto is not None:
        with target:
            return readinto(target) or 0
    data = stream.read(len(target)) or b""  # None (non-blocking, nothing yet) ends it too
    target[: len(data)] = data
    return len(data)


class DigestingIterator:
    """Pass chunks through while counting them and hashing them with sha256.

    For uploads of streams whose digest is not known in advance (a gzip layer, or a tar
    pushed while it downloads): ``digest`` and ``size`` are readable once exhausted.
    """

    def __init__(self, chunks: Iterable[Chunk]):
        self._it = iter(chunks)
        self._hash = hashlib.sha256()
        self.size = 0
        self.done = False

    def __iter__(self) -> DigestingIterator:
        return self

    def __next__(self) -> Chunk:
        try:
            chunk = next(self._it)
        except StopIteration:
            self.done = True
            raise
        self._hash.update(chunk)
        self.size += len(chunk)
        return chunk

    @property
    def digest(self) -> str:
        if not self.done:
            # A digest of a partial stream is a silent corruption waiting to happen.
            raise RuntimeError("digest requested before the stream was fully consumed")
        return f"sha256:{self._hash.hexdigest()}"


def gzip_chunks(chunks: Iterable[Chunk], level: int = DEFAULT_GZIP_LEVEL) -> Iterator[bytes]:
    """Deterministic gzip (RFC 1952) of a chunk stream: mtime 0, no file name, OS 255.

    The same input and level give the same bytes with the same zlib build. (A different
    deflate implementation, e.g. zlib-ng, may produce other valid bytes, hence another
    digest; the layer's diff_id does not change.)
    """
    # XFL as gzip(1) and Python's gzip module set it: 2 = best compression, 4 = fastest.
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    yield b"\x1f\x8b\x08\x00" + b"\0\0\0\0" + bytes([xfl, 255])
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8)
    crc = 0
    length = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
        length += len(chunk)
        out = compressor.compress(chunk)
        if out:
            yield out
    yield (
        compressor.flush() + crc.to_bytes(4, "little") + (length & 0xFFFFFFFF).to_bytes(4, "little")
    )


def layer_media_type(compression: str) -> str:
    """Media type for ``--compression`` ("none" or "gzip"); zstd is refused by KServe."""
    types = {"none": MEDIA_TYPE_LAYER, "gzip": MEDIA_TYPE_LAYER_GZIP}
    try:
        return types[compression]
    except KeyError:
        raise UsageError(
            f"--compression {compression}: layers are written uncompressed (none) or gzip",
            hint="use none (the native default, fastest) or gzip; KServe cannot read zstd layers",
        ) from None


def layer_annotations(files: Sequence[FileEntry], root: str = "models") -> dict[str, str]:
    """Descriptor annotations of a layer holding ``files``.

    One file: its basename as title, ``/models/<path>`` as the ModelPack filepath and its
    sha256 when known. Several (the small-files layer): a fixed title, ``/models`` as the
    filepath (the directory the layer fills; ModelPack consumers expect a single path) and
    the sorted list of paths as a JSON array under ``io.modelcar.files``.
    """
    if not files:
        raise ValueError("a layer holds at least one file")
    if len(files) == 1:
        (only,) = files
        annotations = {
            ANNOTATION_TITLE: posixpath.basename(only.path),
            ANNOTATION_FILEPATH: f"/{root}/{only.path}",
        }
        if only.sha256:
            annotations[ANNOTATION_FILE_SHA256] = only.sha256
        return annotations
    paths = sorted(f.path for f in files)
    return {
        ANNOTATION_TITLE: SMALL_FILES_TITLE,
        ANNOTATION_FILEPATH: f"/{root}",
        ANNOTATION_FILES: json.dumps(paths, separators=(",", ":"), ensure_ascii=False),
    }


def layer_cache_key(files: Sequence[tuple[str, int, str]], compression: str = "none") -> str:
    """Identity of a layer's bytes without reading them: (path, size, content id) of each
    file, the tar format and the compression. Content ids are the Hub's sha256 / blob id,
    or for local files something that changes with the bytes (size + mtime)."""
    doc = json.dumps([TAR_FORMAT, compression, [list(f) for f in files]], separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()
