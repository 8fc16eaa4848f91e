"""The buildah engine's cache in the workspace state (``BuildState.engine_cache``), and
the keys it is indexed by. This module alone knows the JSON layout of its sections:

    per_layer   layer key -> {"digest", "size", "diff_id"}     per-layer mode: built blobs
    blob_repos  blob digest -> [registry/repository, ...]      per-layer mode: for mounts
    images      chain key -> image ID                          chain: committed cache images
    blobs       "<compression>:<diff_id>" -> {"digest", "size", "repos"}   chain: pushed
    layers      last chain key -> diff_id of the last layer    chain
    results     result key -> {"manifest", "config", "base_layers", "layers"}  chain
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelcar_builder.engines.buildah.settings import ENGINE_NAME
from modelcar_builder.plan import LayerPlan, Plan
from modelcar_builder.state import BuildState, LayerRecord

RECIPE = "buildah-chain-v1"  # part of every cache key: change it when the commands change
RECIPE_PER_LAYER = "buildah-per-layer-v1"  # the same for the per-layer mode's layer cache
_MAX_REPOS = 8  # repositories remembered per blob, the most recent last


# -- keys ----------------------------------------------------------------------------------


def digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def layer_key(files_dir: Path, layer: LayerPlan) -> str:
    """Identity of a layer's bytes without reading them (like the native engine's)."""
    files = []
    for f in layer.files:
        ident = f.sha256 or f.blob_id or f"mtime:{(files_dir / f.path).stat().st_mtime_ns}"
        files.append([f.path, f.size, ident])
    return digest_of(files)


def chain_keys(head: Any, files_dir: Path, plan: Plan) -> list[str]:
    """key[i] names the image holding layers 0..i on top of the base: any change in the
    base, labels, timestamp or an earlier layer changes every later key."""
    keys, prev = [], digest_of([RECIPE, head])
    for layer in plan.layers:
        prev = digest_of([prev, layer.name, layer_key(files_dir, layer)])
        keys.append(prev)
    return keys


def per_layer_key(files_dir: Path, layer: LayerPlan, compression: str, timestamp: int) -> str:
    """Identity of a per-layer blob: content (as the chain's keys name it), compression,
    timestamp and the recipe; not the layer's position or neighbours."""
    return digest_of([RECIPE_PER_LAYER, compression, timestamp, layer_key(files_dir, layer)])


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushedBlob:
    """A blob the chain pushed, and the repositories known to hold it (for mounts)."""

    digest: str
    size: int
    repos: tuple[str, ...] = ()


@dataclass(frozen=True)
class PushedImage:
    """An image the chain pushed: enough to check it is still whole and re-tag it."""

    manifest: str
    config: str
    base_layers: int
    layers: tuple[tuple[str, int, str, str], ...]  # digest, size, diff_id, media type

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "config": self.config,
            "base_layers": self.base_layers,
            "layers": [list(x) for x in self.layers],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PushedImage:
        layers = tuple((str(d), int(s), str(i), str(m)) for d, s, i, m in doc["layers"])
        return cls(str(doc["manifest"]), str(doc["config"]), int(doc["base_layers"]), layers)


def _remember_repo(repos: Iterable[str], repo: str) -> list[str]:
    """``repo`` last (the most recent), at most ``_MAX_REPOS`` kept."""
    return [*(r for r in repos if r != repo), repo][-_MAX_REPOS:]


class BuildahCache:
    """Typed access to the engine's section of the workspace state. Changes are made
    under the state's lock (the download may save it meanwhile: the per-layer mode builds
    while it runs) and written by ``save`` (the whole state, atomically)."""

    def __init__(self, state: BuildState) -> None:
        self._state = state
        self._doc = state.engine_cache(ENGINE_NAME)

    def save(self) -> None:
        self._state.save()

    def _section(self, name: str) -> dict[str, Any]:
        return self._doc.setdefault(name, {})

    # -- per-layer mode ---------------------------------------------------------------------

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

    # -- chain: cache images ----------------------------------------------------------------

    def image(self, key: str) -> str | None:
        return self._doc.get("images", {}).get(key)

    def remember_image(self, key: str, image_id: str) -> None:
        with self._state.locked():
            self._section("images")[key] = image_id

    def keep_images(self, keys: Sequence[str]) -> set[str]:
        """Forget the images of every key but ``keys``; the IDs of those kept."""
        with self._state.locked():
            images = self._section("images")
            for key in [k for k in images if k not in keys]:
                del images[key]
            return set(images.values())

    # -- chain: pushed blobs and images -----------------------------------------------------

    def blob(self, compression: str, diff_id: str | None) -> PushedBlob | None:
        doc = self._doc.get("blobs", {}).get(f"{compression}:{diff_id}")
        if not doc:
            return None
        return PushedBlob(doc["digest"], int(doc.get("size", 0)), tuple(doc.get("repos", [])))

    def remember_blob(
        self, compression: str, diff_id: str, digest: str, size: int, repo: str | None
    ) -> None:
        """A blob now in ``repo`` (None: an ``oci:`` layout); the repositories it was
        known in stay only while its digest is the same."""
        with self._state.locked():
            record = self._section("blobs").setdefault(f"{compression}:{diff_id}", {})
            repos = record.get("repos", []) if record.get("digest") == digest else []
            if repo and repo not in repos:
                repos = [*repos, repo][-_MAX_REPOS:]
            record.update(digest=digest, size=size, repos=repos)

    def last_diff_id(self, last_key: str) -> str | None:
        return self._doc.get("layers", {}).get(last_key)

    def remember_last_diff_id(self, last_key: str, diff_id: str) -> None:
        with self._state.locked():
            self._section("layers")[last_key] = diff_id

    def pushed_image(self, result_key: str | None) -> PushedImage | None:
        doc = self._doc.get("results", {}).get(result_key) if result_key else None
        return PushedImage.from_json(doc) if doc else None

    def remember_pushed_image(self, result_key: str, image: PushedImage) -> None:
        with self._state.locked():
            self._section("results")[result_key] = image.to_json()
