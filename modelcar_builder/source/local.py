"""A local directory as a snapshot: models already on disk, an S3 mount, the bundled model."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from modelcar_builder.errors import SourceNotFound, UnsafeSource
from modelcar_builder.selection import Selection, check_repo_path, select_files
from modelcar_builder.snapshot import FileEntry, Skipped, Snapshot

log = logging.getLogger("modelcar.source.local")


def local_snapshot(directory: str, selection: Selection) -> Snapshot:
    root = Path(directory)
    try:
        return _snapshot(root, selection)
    except PermissionError as exc:
        raise SourceNotFound(
            f"cannot read source {exc.filename or directory} as uid {os.getuid()}: "
            "permission denied",
            hint="make the model directory readable (files o+r, directories o+rx)",
        ) from None


def _snapshot(root: Path, selection: Selection) -> Snapshot:
    directory = str(root)
    if not root.is_dir():
        raise SourceNotFound(
            f"source directory {directory} does not exist or is not a directory",
            hint="pass an existing directory, or hf://ORG/NAME for a Hub repo",
        )
    files: list[FileEntry] = []
    odd: list[Skipped] = []
    for item in _walk(root):
        if isinstance(item, FileEntry):
            files.append(item)
        else:
            odd.append(item)
    kept, skipped = select_files(files, selection)
    for s in odd:
        check_repo_path(s.path)  # its name is printed next: the same rule as a file's
        log.warning("skipping %s: %s", s.path, s.reason)
    return Snapshot(
        kind="local",
        location=str(root),
        revision=None,
        commit=None,
        files=kept,
        skipped=tuple(sorted((*skipped, *odd), key=lambda s: s.path)),
    )


def _walk(root: Path, top: Path | None = None) -> Iterator[FileEntry | Skipped]:
    """Every regular file under ``root`` (paths relative to ``top``), following links
    that stay inside the source; what cannot be shipped is yielded as Skipped."""
    top = top or root
    real_top = _resolve(top)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_raise):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            full = Path(dirpath, name)
            rel = full.relative_to(top).as_posix()
            if full.is_symlink():
                try:
                    _check_link(full, real_top)
                except FileNotFoundError:
                    yield Skipped(rel, "dangling symlink")
                    continue
            if name in dirnames:
                if full.is_symlink():
                    # os.walk does not descend into linked dirs: follow it explicitly,
                    # so its files still land in the image.
                    yield from _walk(full, top)
                continue
            if not full.is_file():
                yield Skipped(rel, "not a regular file (fifo, socket or device)")
                continue
            yield FileEntry(path=rel, size=full.stat().st_size)


def _raise(exc: OSError) -> None:
    raise exc  # os.walk skips unreadable directories silently; a missing file is a bug


def _resolve(path: Path) -> Path:
    """The real path; FileNotFoundError for a dangling link, UnsafeSource for a loop."""
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, OSError) as exc:  # RuntimeError or ELOOP: a symlink loop
        raise UnsafeSource(
            f"refusing symlink {path}: it loops ({exc})",
            hint="remove the link loop from the source directory",
        ) from None


def _check_link(link: Path, real_root: Path) -> None:
    target = _resolve(link)
    if target != real_root and real_root not in target.parents:
        raise UnsafeSource(
            f"refusing symlink {link} -> {target}: it points outside the source directory",
            hint="copy the file into the directory, or point SOURCE at the real location",
        )
    if target.is_dir() and (
        target == _resolve(link.parent) or target in link.parent.resolve().parents
    ):
        raise UnsafeSource(
            f"refusing symlink {link} -> {target}: it points to a directory that holds it, "
            "so the model would be packed again inside itself",
            hint="remove the link, or replace it with the files it should add",
        )
