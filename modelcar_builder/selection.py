"""Which repo files go into the image: safe paths, --include/--exclude, duplicate formats.

Pure functions over path lists, so hub and local sources share one rule set.
"""

from __future__ import annotations

import fnmatch
import posixpath
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelcar_builder.errors import UnsafeSource
from modelcar_builder.snapshot import FileEntry, Skipped

# Other serializations of the same weights. When safetensors are present, shipping these
# too only doubles the image (a 438 GB model becomes 876 GB on the PVC and registry).
DUPLICATE_WEIGHT_GLOBS = (
    "pytorch_model*.bin",
    "*/pytorch_model*.bin",
    "*.pt",
    "*.pth",
    "tf_model.h5",
    "*/tf_model.h5",
    "flax_model.msgpack",
    "*/flax_model.msgpack",
    "original/*",
)
ALWAYS_SKIPPED_GLOBS = (".git*", "*/.git*")


@dataclass(frozen=True)
class Selection:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_files: bool = False


def check_repo_path(path: str) -> str:
    """Refuse any path that would land outside /models. Returns the normalized path."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise UnsafeSource(
            f"refusing file path {path!r}: not a relative POSIX path",
            hint="the source must only hold paths relative to the model root",
        )
    control = next((ch for ch in path if unicodedata.category(ch) == "Cc"), None)
    if control is not None:
        # A newline or an ESC would be printed raw by `plan` and the logs, so a repo could
        # forge output lines ("pushed … verified"); no model file is named like that, and
        # such a name in a tar header or an overlay path is a hazard of its own.
        raise UnsafeSource(
            f"refusing file path {path!r}: it holds the control character {control!r}",
            hint="rename the file in the source; control characters (newline, ESC, "
            "C0/C1 codes) are never accepted in file names",
        )
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(path) != path:
        raise UnsafeSource(
            f"refusing file path {path!r}: it would land outside /models",
            hint="remove '..', '.' and empty segments from the repo's file names",
        )
    return path


def _matches(path: str, globs: Iterable[str]) -> bool:
    # A glob matches the full path, or the basename when the glob has no '/'.
    name = posixpath.basename(path)
    return any(
        fnmatch.fnmatchcase(path, g) or ("/" not in g and fnmatch.fnmatchcase(name, g))
        for g in globs
    )


def select_files(
    files: Sequence[FileEntry], selection: Selection
) -> tuple[tuple[FileEntry, ...], tuple[Skipped, ...]]:
    """Apply the rules in a fixed order and say for every skipped file why."""
    for f in files:
        check_repo_path(f.path)
    has_safetensors = any(f.path.endswith(".safetensors") for f in files)
    kept: list[FileEntry] = []
    skipped: list[Skipped] = []
    for f in sorted(files, key=lambda f: f.path):
        reason = _skip_reason(f.path, selection, has_safetensors)
        if reason:
            skipped.append(Skipped(f.path, reason))
        else:
            kept.append(f)
    return tuple(kept), tuple(skipped)


def _skip_reason(path: str, selection: Selection, has_safetensors: bool) -> str | None:
    if selection.include and not _matches(path, selection.include):
        return "not matched by --include"
    if _matches(path, selection.exclude):
        return "matched by --exclude"
    if selection.all_files or selection.include:
        # An explicit --include is the user saying exactly what they want.
        return None
    if _matches(path, ALWAYS_SKIPPED_GLOBS):
        return "git metadata"
    if has_safetensors and _is_duplicate_format(path):
        return "duplicate weight format (safetensors present; --all-files keeps it)"
    return None


def _is_duplicate_format(path: str) -> bool:
    # A skipped format's shard index goes with its shards (pytorch_model.bin.index.json):
    # kept alone it would name files the image lacks.
    if path.endswith(".index.json"):
        path = path.removesuffix(".index.json")
    return _matches(path, DUPLICATE_WEIGHT_GLOBS)
