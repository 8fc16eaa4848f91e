"""What one layer's tar puts under /models, and the /models a runtime sees once every layer
is unpacked in order (``verify --deep``).

Two kinds of layer reach here. A layer our own tar writer made (native, buildah, the
signature layer) names its /models path in an annotation and holds nothing else: any entry
outside ``models/`` or of another type is refused, as before. A layer a Containerfile build
made (podman, docker: ``COPY … /models/``) carries no annotation, and neither does a base
layer; such a layer is read the way a runtime unpacks it: what lies outside /models is the
base's business and skipped, what lies under it counts. A layer without annotation that
has no file under /models is a base layer, not a model layer.

Every engine promises the same /models: directories 0755, files 0644, owner 0:0 (docker's
tar writer names uid 0 ``root``, ours leaves the names empty: only the ids are checked).
Whiteouts (``.wh.NAME``, ``.wh..wh..opq``) in an unannotated layer remove what the layers
below put under /models, as overlay unpacking does.
"""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from modelcar_builder.errors import VerificationFailed

CHUNK = 1024 * 1024
ROOT = "models/"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
FILE_MODE, DIR_MODE = 0o644, 0o755


@dataclass(frozen=True)
class SeenFile:
    path: str  # relative to /models
    layer: int
    size: int
    sha256: str
    blob_id: str | None  # computed only where the expected set holds a git id


@dataclass
class LayerFiles:
    """What one layer does to /models: files it adds, and (unannotated layers only) the
    paths its whiteouts remove from the layers below ("" = everything: an opaque /models
    or a whiteout of /models itself)."""

    files: list[SeenFile] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # relative to /models, no trailing /

    @property
    def touches_models(self) -> bool:
        return bool(self.files or self.removed)


def walk_layer(
    tar_stream: io.RawIOBase, number: int, annotated: bool, git: frozenset[str], name: str
) -> LayerFiles:
    """Read the whole tar once, hashing every regular file under models/ in pieces."""
    out = LayerFiles()
    by_path: dict[str, SeenFile] = {}  # this layer's files, for hard links within it
    # A base layer may bring an empty /models of its own making: its directories count
    # (and must keep the promise) only once the layer turns out to hold model files.
    dirs: list[str] = []
    with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
        for member in tar:
            path = member.name.removeprefix("./")
            inside = (path.rstrip("/") + "/").startswith(ROOT)
            rel = path.removeprefix(ROOT).rstrip("/")
            base = rel.rsplit("/", 1)[-1]
            if not annotated and _root_whiteout(path):
                out.removed.append("")
                continue
            if not inside:
                if annotated:
                    raise VerificationFailed(f"{name}: {path} lies outside /models")
                continue  # the base image's own files: not /models
            if not annotated and base.startswith(WHITEOUT) and member.isfile():
                parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
                gone = parent if base == OPAQUE else _join(parent, base[len(WHITEOUT) :])
                out.removed.append(gone)
                continue
            problem = _owner_mode(member, path)
            if member.isdir():
                if problem:
                    dirs.append(problem)
                continue
            if problem:
                raise VerificationFailed(f"{name}: {problem}")
            if member.islnk() and not annotated:
                target = by_path.get(member.linkname.removeprefix("./").removeprefix(ROOT))
                if target is None:
                    raise VerificationFailed(
                        f"{name}: {path} is a hard link to {member.linkname}, which is not a "
                        "file under /models in this layer"
                    )
                seen = SeenFile(rel, number, target.size, target.sha256, target.blob_id)
            elif member.isfile():
                seen = _hash_member(tar, member, rel, number, rel in git)
            else:
                raise VerificationFailed(f"{name}: {path} is not a regular file or directory")
            by_path[rel] = seen
            out.files.append(seen)
    if dirs and (annotated or out.files):
        raise VerificationFailed(f"{name}: {dirs[0]}")
    return out


def _root_whiteout(path: str) -> bool:
    """A whiteout of /models itself, or an opaque root: nothing below survives."""
    return path.rstrip("/") in (WHITEOUT + "models", OPAQUE)


def _join(parent: str, child: str) -> str:
    return f"{parent}/{child}" if parent else child


def _owner_mode(member: tarfile.TarInfo, path: str) -> str | None:
    """What every engine promises for /models (0:0, directories 0755, files 0644), or
    how this entry breaks it."""
    if (member.uid, member.gid) != (0, 0):
        return f"{path} is owned by {member.uid}:{member.gid}, every engine writes 0:0"
    if not (member.isfile() or member.isdir()):
        return None  # a hard link has the mode of the file it names; others are refused
    want = DIR_MODE if member.isdir() else FILE_MODE
    got = stat.S_IMODE(member.mode)
    return f"{path} has mode {got:04o}, expected {want:04o}" if got != want else None


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


def union(layers: Iterable[LayerFiles]) -> tuple[dict[str, SeenFile], list[str]]:
    """/models after unpacking ``layers`` bottom to top: path -> the file a runtime sees,
    and the problems found on the way (a file two layers both add, with no whiteout
    between: no engine of ours writes one)."""
    found: dict[str, SeenFile] = {}
    problems: list[str] = []
    for layer in layers:
        for gone in layer.removed:  # a whiteout hides the layers below, not its own
            for path in [p for p in found if _under(p, gone)]:
                del found[path]
        for seen in layer.files:
            if seen.path in found:
                problems.append(f"models/{seen.path} is in layers {found[seen.path].layer} "
                                f"and {seen.layer}")  # fmt: skip
            found[seen.path] = seen
    return found, problems


def _under(path: str, gone: str) -> bool:
    return not gone or path == gone or path.startswith(gone + "/")
