"""The buildah engine's cache in the workspace state (``BuildState.engine_cache``), and
the keys it is indexed by. This module alone knows the JSON layout of its sections:

    per_layer   layer key -> {"digest", "size", "diff_id"}     built blobs
    blob_repos  blob digest -> [registry/repository, ...]      for mounts

A workspace an older version built in its removed chain mode may also hold ``images``,
``blobs``, ``layers`` and ``results``: nothing reads them (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelcar_builder.engines.buildah.choices import ENGINE_NAME
from modelcar_builder.plan import LayerPlan
from modelcar_builder.state import BuildState, LayerRecord, layer_key

RECIPE_PER_LAYER = "buildah-per-layer-v1"  # part of every layer key: change it with the commands
_MAX_REPOS = 8  # repositories remembered per blob, the most recent last


# -- keys ----------------------------------------------------------------------------------


def digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def per_layer_key(files_dir: Path, layer: LayerPlan, compression: str, timestamp: int) -> str:
    """Identity of a built layer blob: content and compression (:func:`state.layer_key`,
    the key every engine uses), timestamp and the recipe; not the layer's position or
    neighbours."""
    return digest_of([RECIPE_PER_LAYER, timestamp, layer_key(layer, compression, files_dir)])


# -- records -------------------------------------------------------------------------------


def _remember_repo(repos: Iterable[str], repo: str) -> list[str]:
    """``repo`` last (the most recent), at most ``_MAX_REPOS`` kept."""
    return [*(r for r in repos if r != repo), repo][-_MAX_REPOS:]


class BuildahCache:
    """Typed access to the engine's section of the workspace state. Changes are made
    under the state's lock (the download may save it meanwhile: layers are built while
    it runs) and written by ``save`` (the whole state, atomically)."""

    def __init__(self, state: BuildState) -> None:
        self._state = state
        self._doc = state.engine_cache(ENGINE_NAME)

    def save(self) -> None:
        self._state.save()

    def _section(self, name: str) -> dict[str, Any]:
        return self._doc.setdefault(name, {})

    def layer(self, key: str) -> LayerRecord | None:
        doc = self._doc.get("per_layer", {}).get(key)
        return LayerRecord.from_json(doc) if doc else None

    def remember_layer(self, key: str, record: LayerRecord) -> None:
        with self._state.locked():
            self._section("per_layer")[key] = record.to_json()

    def repos_holding(self, digest: str) -> list[str]:
        return list(self._doc.get("blob_repos", {}).get(digest, []))

    def note_repo(self, digest: str, repo: str) -> None:
        with self._state.locked():
            repos = self._section("blob_repos")
            repos[digest] = _remember_repo(repos.get(digest, []), repo)
