"""A local directory as a snapshot: models already on disk, an S3 mount, the bundled model."""

from __future__ import annotations

import os
from pathlib import Path

from modelcar_builder.errors import SourceNotFound, UnsafeSource
from modelcar_builder.selection import Selection, select_files
from modelcar_builder.snapshot import FileEntry, Snapshot


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
    files = tuple(_walk(root))
    kept, skipped = select_files(files, selection)
    return Snapshot(
        kind="local",
        location=str(root),
        revision=None,
        commit=None,
        files=kept,
        skipped=skipped,
    )


def _walk(root: Path):
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_raise):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            full = Path(dirpath, name)
            if full.is_symlink():
                _check_link(full, real_root)
        for dirname in list(dirnames):
            # os.walk does not descend into symlinked dirs; a link inside the tree is
            # followed explicitly below so its files still land in the image.
            full = Path(dirpath, dirname)
            if full.is_symlink():
                yield from _walk_linked_dir(full, root)
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if not full.is_file():
                continue  # sockets, fifos, dangling links: nothing to ship
            rel = full.relative_to(root).as_posix()
            yield FileEntry(path=rel, size=full.stat().st_size)


def _raise(exc: OSError) -> None:
    raise exc  # os.walk skips unreadable directories silently; a missing file is a bug


def _walk_linked_dir(link: Path, root: Path):
    for dirpath, _dirs, filenames in os.walk(link, followlinks=False, onerror=_raise):
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if full.is_file():
                yield FileEntry(path=full.relative_to(root).as_posix(), size=full.stat().st_size)


def _check_link(link: Path, real_root: Path) -> None:
    target = link.resolve()
    if target != real_root and real_root not in target.parents:
        raise UnsafeSource(
            f"refusing symlink {link} -> {target}: it points outside the source directory",
            hint="copy the file into the directory, or point SOURCE at the real location",
        )
