"""``verify --deep``: read every blob once, streamed, and prove its bytes.

Each blob is hashed against its digest; a gzip layer is decompressed on the way and the
result hashed against its diff_id (what a runtime checks after unpacking); every layer's
tar is walked (layertar.py) and the /models the layers make together is compared, file by
file, with what the Hub (or the build report) says it must be. A layer is a model layer
when our builder annotated it with its /models path, or, without that annotation (podman
and docker build from a Containerfile; a base layer has none either), when its tar holds
files under /models. Memory stays bounded: blobs arrive in pieces and tar members are read
in CHUNK-sized reads, never whole.
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
from modelcar_builder.verify.layertar import CHUNK, LayerFiles, union, walk_layer

OpenBlob = Callable[[str], Iterable[bytes]]  # digest -> its bytes, in pieces


@dataclass
class LayerRead:
    layer: Layer
    bytes_read: int = 0
    diff_id_checked: bool = False
    files: LayerFiles = field(default_factory=LayerFiles)
    unpacked: bool = False  # False: a zstd layer, hashed but its tar unread

    @property
    def is_model(self) -> bool:
        """Annotated with its /models path by our builder, or (a Containerfile build's
        layer) found to hold files under /models when its tar was read."""
        return self.layer.annotated or self.files.touches_models


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
        model_layers=sum(r.is_model for r in reads),
        files_checked=checked,
        files_unhashed=unhashed,
        expected_from=expected.source if isinstance(expected, Expected) else expected,
        compared=isinstance(expected, Expected),
        files={path: f.sha256 for path, f in union(r.files for r in reads)[0].items()},
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
            # Every layer's tar is read: one without our annotation (a base layer, or a
            # Containerfile build's COPY) shows only here whether it holds /models files.
            out.files = walk_layer(unpacked, layer.number, layer.annotated, git, name)
            out.unpacked = True
            _drain(unpacked)
    except (RegistryError, VerificationFailed):
        # The client's own digest check, at the blob's end; or what the tar holds: a
        # damaged blob is named as such before anything its bytes seem to say.
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


def _compare(reads: list[LayerRead], expected: Expected, where: str) -> tuple[int, int]:
    """Every expected file present once with its size and hash, and nothing else."""
    found, problems = union(r.files for r in reads)
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
        # What is missing may sit in a layer Python's tarfile cannot unpack: say which.
        unread = [r.layer.name(len(reads)) for r in reads if not r.unpacked]
        why = f"; {', '.join(unread)}: tar+zstd, not unpacked by --deep" if unread else ""
        listed = "; ".join(problems[:3])
        raise VerificationFailed(f"{where}: /models differs from {expected.source}: "
                                 f"{listed}{more}{why}")  # fmt: skip
    return checked, unhashed
