"""What the workspace holds for one snapshot, so a rerun continues instead of restarting:
the files already verified, the digest of every layer already built, where each layer
blob was pushed (the sources of a cross-repository mount), and each engine's own cache.
One typed, versioned record with one reader and one writer.

The file is rewritten atomically (a crash never leaves half of it). A record from an
older version is migrated; one from a newer version, or a damaged one, is set aside and
the run starts clean: the worst case is re-hashing files, never trusting stale data.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelcar_builder.oci.layer import layer_cache_key
from modelcar_builder.plan import LayerPlan

log = logging.getLogger("modelcar.state")
# 1: the untyped sections "verified", "layers", "buildah" (no "version"); 2: typed, with
# "version"; 3: adds "pushes" (layer digest -> the registry repositories that hold it)
STATE_VERSION = 3


@dataclass(frozen=True)
class LayerRecord:
    """A built layer: its blob digest and size, and its uncompressed digest (diff_id)."""

    digest: str
    size: int
    diff_id: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "diff_id": self.diff_id}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LayerRecord:
        return cls(str(doc["digest"]), int(doc["size"]), str(doc["diff_id"]))


def layer_key(layer: LayerPlan, compression: str, files_dir: Path | None = None) -> str:
    """A layer's identity across runs and engines, without reading its bytes: every
    file's path, size and content id (see ``layer_cache_key``). Local files carry no hash,
    so size + mtime in ns stand in: they change whenever the bytes do."""
    files = []
    for f in layer.files:
        content = f.sha256 or f.blob_id
        if content is None and files_dir is not None:
            content = f"mtime:{(files_dir / f.path).stat().st_mtime_ns}"
        files.append((f.path, f.size, content or ""))
    return layer_cache_key(files, compression)


class BuildState:
    """The record for one snapshot. Thread-safe: the download and an engine that pushes
    while it runs share one instance (two would overwrite each other's records)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.verified: dict[str, str] = {}  # path -> the sha256 / git blob id it matched
        # git blob id -> sha256 of the same bytes, hashed while they were checked (for
        # --report; an LFS file's id is its sha256 already). Content-addressed: never stale.
        self.sha256: dict[str, str] = {}
        self.layers: dict[str, LayerRecord] = {}  # layer_key -> what was built
        self._engines: dict[str, dict[str, Any]] = {}  # engine name -> its own cache
        # layer blob digest -> "HOST/REPO" of every repository it was pushed or mounted to
        self.pushes: dict[str, list[str]] = {}
        self._load()

    # -- files --------------------------------------------------------------------------

    def is_verified(self, path: str, content_id: str | None) -> bool:
        return content_id is not None and self.verified.get(path) == content_id

    def mark_verified(self, path: str, content_id: str | None) -> None:
        if content_id is not None:
            with self._lock:
                self.verified[path] = content_id

    def remember_sha256(self, content_id: str | None, sha256: str) -> None:
        if content_id is not None and content_id != sha256:
            with self._lock:
                self.sha256[content_id] = sha256

    def forget(self, path: str) -> None:
        with self._lock:
            self.verified.pop(path, None)

    # -- layers -------------------------------------------------------------------------

    def layer(self, key: str) -> LayerRecord | None:
        return self.layers.get(key)

    def remember_layer(self, key: str, record: LayerRecord) -> None:
        with self._lock:
            self.layers[key] = record

    # -- pushes ---------------------------------------------------------------------------

    def remember_push(self, digest: str, host: str, repo: str) -> None:
        """``digest`` is in ``host``'s ``repo`` (uploaded, mounted or found there)."""
        where = f"{host}/{repo}"
        with self._lock:
            known = self.pushes.setdefault(digest, [])
            if where not in known:
                known.append(where)

    def pushed_to(self, digest: str, host: str) -> list[str]:
        """The repositories of ``host`` that ``digest`` was pushed to, oldest first."""
        with self._lock:
            places = list(self.pushes.get(digest, ()))
        return [p.split("/", 1)[1] for p in places if p.split("/", 1)[0] == host]

    def engine_cache(self, engine: str) -> dict[str, Any]:
        """An engine's private cache; the engine owns its schema (JSON-able values) and
        changes it only under :meth:`locked` (the download may be saving meanwhile)."""
        with self._lock:
            return self._engines.setdefault(engine, {})

    def locked(self) -> AbstractContextManager[Any]:
        """Held while an engine changes its cache: ``save`` never reads it half-changed."""
        return self._lock

    # -- reading and writing --------------------------------------------------------------

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        doc = {
            "version": STATE_VERSION,
            "verified": dict(sorted(self.verified.items())),
            "sha256": dict(sorted(self.sha256.items())),
            "layers": {k: r.to_json() for k, r in sorted(self.layers.items())},
            "pushes": {k: list(v) for k, v in sorted(self.pushes.items())},
            "engines": self._engines,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.chmod(tmp, 0o664)
        os.replace(tmp, self.path)

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._start_clean("it is not valid JSON")
            return
        version = doc.get("version", 1) if isinstance(doc, dict) else None
        if version == 1:
            doc = _migrate_v2(_migrate_v1(doc))
        elif version == 2:
            doc = _migrate_v2(doc)
        elif version != STATE_VERSION:
            self._start_clean(f"it has version {version!r}, this tool writes {STATE_VERSION}")
            return
        try:
            self.verified = {str(k): str(v) for k, v in doc.get("verified", {}).items()}
            self.sha256 = {str(k): str(v) for k, v in doc.get("sha256", {}).items()}
            self.layers = {k: LayerRecord.from_json(v) for k, v in doc.get("layers", {}).items()}
            self._engines = dict(doc.get("engines", {}))
            self.pushes = {
                str(k): [str(p) for p in v if "/" in str(p)]
                for k, v in doc.get("pushes", {}).items()
                if isinstance(v, list)
            }
        except (AttributeError, KeyError, TypeError, ValueError):
            self.verified, self.sha256, self.layers, self._engines = {}, {}, {}, {}
            self.pushes = {}
            self._start_clean("its records are malformed")

    def _start_clean(self, why: str) -> None:
        aside = self.path.with_name(self.path.name + ".old")
        log.warning("state %s set aside as %s (%s); starting clean", self.path, aside.name, why)
        os.replace(self.path, aside)


def _migrate_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept its sections at the top level; the layer keys were built the same
    way, so every recorded layer stays usable."""
    engines = {"buildah": doc["buildah"]} if isinstance(doc.get("buildah"), dict) else {}
    return {
        "verified": doc.get("verified", {}),
        "layers": doc.get("layers", {}),
        "engines": engines,
    }


def _migrate_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 2 did not record where layers were pushed: no mount source is known yet
    (the next push records its own); every other section is kept as it was."""
    return {**doc, "version": STATE_VERSION, "pushes": {}}
