"""``verify --deep``: read every blob once, streamed, and prove its bytes.

Each blob is hashed against its digest; a gzip layer is decompressed on the way and the
result hashed against its diff_id (what a runtime checks after unpacking); a model layer's
tar is walked and every file under ``models/`` hashed against what the Hub (or the build
report) says it must be. Memory stays bounded: blobs arrive in pieces and tar members are
read in CHUNK-sized reads, never whole. Base layers are only hashed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from modelcar_builder.errors import RegistryError, VerificationFailed
from modelcar_builder.parallel import run_parallel
from modelcar_builder.signing.modelsig import SIGNATURE_NAME
from modelcar_builder.verify.coherence import Layer
from modelcar_builder.verify.expected import Expected

CHUNK = 1024 * 1024
ROOT = "models/"
OpenBlob = Callable[[str], Iterable[bytes]]  # digest -> its bytes, in pieces


@dataclass(frozen=True)
class SeenFile:
    path: str  # relative to /models
    layer: int
    size: int
    sha256: str
    blob_id: str | None  # computed only where the expected set holds a git id


@dataclass
class LayerRead:
    layer: Layer
    bytes_read: int = 0
    diff_id_checked: bool = False
    files: list[SeenFile] = field(default_factory=list)


@dataclass(frozen=True)
class DeepResult:
    blobs_hashed: int
    bytes_read: int
    diff_ids_checked: int  # compressed layers whose unpacked content = diff_id
    model_layers: int
    files_checked: int  # hashed against the expected set
    files_unhashed: int  # present with the right size, but the expected set has no hash
    expected_from: str  # where the expected set came from, or why there was none
    compared: bool  # False: no expected set, /models was only hashed as part of its blob
    # path under /models -> sha256 hex of every file read in a model layer (verify --key)
    files: dict[str, str] = field(default_factory=dict, repr=False, compare=False)


class _Chunks(io.RawIOBase):
    """A file object over an iterable of byte pieces, hashing every piece it takes."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(pieces)
        self._buf = memoryview(b"")
        self.sha256 = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buf:
            piece = next(self._it, None)
            if piece is None:
                return 0
            self.sha256.update(piece)
            self.count += len(piece)
            self._buf = memoryview(piece)
        n = min(len(target), len(self._buf))
        target[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def drain(self) -> None:
        _drain(self)


class _Hashing(io.RawIOBase):
    """Hashes what is read through it: a compressed layer's unpacked tar, for its diff_id.
    An uncompressed layer's tar is its blob, already hashed: ``digest`` False skips that."""

    def __init__(self, inner: io.IOBase, digest: bool = True) -> None:
        self._inner = inner
        self.sha256 = hashlib.sha256()
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        data = self._inner.read(len(target))
        if self._digest:
            self.sha256.update(data)
        target[: len(data)] = data
        return len(data)


def deep_check(
    layers: tuple[Layer, ...], open_blob: OpenBlob, expected: Expected | str, jobs: int, where: str
) -> DeepResult:
    """Read every layer (``jobs`` at once) and compare /models with ``expected``."""
    git = frozenset(
        p for p, f in (expected.files.items() if isinstance(expected, Expected) else ())
        if f.blob_id and not f.sha256
    )  # fmt: skip
    reads = run_parallel(lambda layer: _read_layer(layer, open_blob, len(layers), git, where),
                         list(layers), jobs)  # fmt: skip
    checked = unhashed = 0
    if isinstance(expected, Expected):
        checked, unhashed = _compare(reads, expected, where)
    return DeepResult(
        blobs_hashed=len(reads),
        bytes_read=sum(r.bytes_read for r in reads),
        diff_ids_checked=sum(r.diff_id_checked for r in reads),
        model_layers=sum(r.layer.is_model for r in reads),
        files_checked=checked,
        files_unhashed=unhashed,
        expected_from=expected.source if isinstance(expected, Expected) else expected,
        compared=isinstance(expected, Expected),
        files={f.path: f.sha256 for r in reads for f in r.files},
    )


def _read_layer(
    layer: Layer, open_blob: OpenBlob, total: int, git: frozenset[str], where: str
) -> LayerRead:
    name = f"{where}: {layer.name(total)}"
    raw = _Chunks(open_blob(layer.digest))
    out = LayerRead(layer)
    try:
        unpacked = _unpacked(raw, layer)
        if unpacked is not None:
            if layer.is_model:
                out.files = _walk_tar(unpacked, layer.number, git, name)
            _drain(unpacked)
    except RegistryError:  # the client's own digest check, at the blob's end
        _drain_checked(raw, layer, name)
        raise
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        # A damaged blob usually breaks the gzip or tar stream first: say which it was.
        _drain_checked(raw, layer, name)
        raise VerificationFailed(f"{name}: cannot unpack it ({exc})") from None
    _drain_checked(raw, layer, name)
    out.bytes_read = raw.count
    if unpacked is not None and layer.compression != "none":
        got = f"sha256:{unpacked.sha256.hexdigest()}"
        if got != layer.diff_id:
            raise VerificationFailed(
                f"{name}: its unpacked content hashes to {got}, the config's diff_id is "
                f"{layer.diff_id}: the layer was swapped or the config is another image's"
            )
        out.diff_id_checked = True
    return out


def _unpacked(raw: _Chunks, layer: Layer) -> _Hashing | None:
    """The layer's tar stream, hashed as read; None when we cannot unpack it (zstd)."""
    if layer.compression == "none":
        return _Hashing(io.BufferedReader(raw, CHUNK), digest=False)
    if layer.compression == "gzip":
        return _Hashing(gzip.GzipFile(fileobj=io.BufferedReader(raw, CHUNK)))
    return None


def _drain(stream: io.RawIOBase) -> None:
    buf = bytearray(CHUNK)
    while stream.readinto(buf):
        pass


def _drain_checked(raw: _Chunks, layer: Layer, name: str) -> None:
    """Read to the end and compare the blob's sha256 with its digest. The registry client
    checks it too and raises RegistryError at the end: the mismatch is ours to name. An
    error before the last byte (a cut connection) is no mismatch: it goes up as it is."""
    try:
        raw.drain()
    except RegistryError:
        if raw.count != layer.size or f"sha256:{raw.sha256.hexdigest()}" == layer.digest:
            raise
    got = f"sha256:{raw.sha256.hexdigest()}"
    if got != layer.digest:
        raise VerificationFailed(f"{name}: the blob's bytes hash to {got}, not its digest")


def _walk_tar(stream: io.RawIOBase, number: int, git: frozenset[str], name: str) -> list[SeenFile]:
    seen: list[SeenFile] = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            path = member.name.removeprefix("./")
            if member.isdir() and (path.rstrip("/") + "/").startswith(ROOT):
                continue
            if not member.isfile():
                raise VerificationFailed(f"{name}: {path} is not a regular file or directory")
            if not path.startswith(ROOT):
                raise VerificationFailed(f"{name}: {path} lies outside /models")
            rel = path.removeprefix(ROOT)
            seen.append(_hash_member(tar, member, rel, number, rel in git))
    return seen


def _hash_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, number: int, git: bool
) -> SeenFile:
    sha256 = hashlib.sha256()
    # The git blob id the Hub gives non-LFS files; a second hash of every byte otherwise.
    sha1 = hashlib.sha1(b"blob %d\0" % member.size) if git else None
    reader = tar.extractfile(member)
    if reader is None:  # a regular file always has one: anything else is not /models data
        raise VerificationFailed(f"layer {number}: {path} is not a regular file")
    while piece := reader.read(CHUNK):
        sha256.update(piece)
        if sha1 is not None:
            sha1.update(piece)
    blob_id = sha1.hexdigest() if sha1 is not None else None
    return SeenFile(path, number, member.size, sha256.hexdigest(), blob_id)


def _compare(reads: list[LayerRead], expected: Expected, where: str) -> tuple[int, int]:
    """Every expected file present once with its size and hash, and nothing else."""
    found: dict[str, SeenFile] = {}
    problems: list[str] = []
    for seen in (f for r in reads for f in r.files):
        if seen.path in found:
            problems.append(f"models/{seen.path} is in layers {found[seen.path].layer} and "
                            f"{seen.layer}")  # fmt: skip
        found[seen.path] = seen
    checked = unhashed = 0
    for path, want in sorted(expected.files.items()):
        got = found.get(path)
        if got is None:
            problems.append(f"models/{path} is missing from the image")
        elif want.size is not None and got.size != want.size:
            problems.append(f"models/{path} in layer {got.layer} is {got.size} bytes, "
                            f"expected {want.size}")  # fmt: skip
        elif want.sha256 or want.blob_id:
            ok = got.sha256 == want.sha256 if want.sha256 else got.blob_id == want.blob_id
            checked += 1
            if not ok:
                problems.append(f"models/{path} in layer {got.layer} has other content")
        else:
            unhashed += 1
    last = max((r.layer.number for r in reads), default=-1)
    for path in sorted(found.keys() - expected.files.keys()):
        if path == SIGNATURE_NAME and found[path].layer == last:
            continue  # build --sign-key's own /models/model.sig, in the last layer
        problems.append(f"models/{path} in layer {found[path].layer} is not expected")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise VerificationFailed(
            f"{where}: /models differs from {expected.source}: {'; '.join(problems[:3])}{more}"
        )
    return checked, unhashed
