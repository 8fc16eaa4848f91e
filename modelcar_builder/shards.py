"""Is the model whole? A sharded checkpoint ships an index (``model.safetensors.index.json``)
whose ``weight_map`` names every shard. When ``--include``/``--exclude`` (or a repo that
lost a file) leaves one out, the image still builds, pushes and verifies, and the model
server fails at load time, hours later. Checked here, before any shard is downloaded."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable

from modelcar_builder.errors import IncompleteModel
from modelcar_builder.snapshot import FileEntry, Snapshot

INDEX_SUFFIX = ".index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024  # DeepSeek-V3's index is ~9 MB; a bigger one is no index
_SHOWN = 3  # missing files named in the one error line


def index_files(snapshot: Snapshot) -> list[FileEntry]:
    return [
        f for f in snapshot.files if f.path.endswith(INDEX_SUFFIX) and 0 < f.size <= MAX_INDEX_BYTES
    ]


def named_files(index: FileEntry, content: bytes) -> list[str]:
    """The repo paths an index's weight_map points to (relative to the index's folder).
    An index without a weight_map (or not JSON at all) names nothing."""
    try:
        doc = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        return []
    folder = posixpath.dirname(index.path)
    names = {v for v in weight_map.values() if isinstance(v, str)}
    return sorted(posixpath.normpath(posixpath.join(folder, n)) for n in names)


def check_complete(snapshot: Snapshot, read: Callable[[FileEntry], bytes]) -> None:
    """Raise IncompleteModel naming the first index with files the snapshot lacks.
    ``read`` returns an index file's bytes (from the Hub, or from the directory)."""
    selected = {f.path for f in snapshot.files}
    why = {s.path: s.reason for s in snapshot.skipped}
    for index in index_files(snapshot):
        missing = [p for p in named_files(index, read(index)) if p not in selected]
        if missing:
            raise IncompleteModel(_message(index.path, missing, why))


def _message(index: str, missing: list[str], why: dict[str, str]) -> str:
    shown = ", ".join(f"{p} ({why.get(p, 'not in the repo')})" for p in missing[:_SHOWN])
    more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
    noun = "file" if len(missing) == 1 else "files"
    return f"{index} names {len(missing)} {noun} the image would lack: {shown}{more}"
