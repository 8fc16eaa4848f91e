"""Image config, manifest and annotations as canonical bytes.

Canonical means: keys in a fixed order, maps (labels, annotations) sorted, compact
separators, UTF-8. The digest of a manifest is the sha256 of these exact bytes, so the same
inputs must give the same bytes on every run and every machine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelcar_builder.errors import MalformedBaseImage, PlatformNotFound, UsageError
from modelcar_builder.oci import (
    ANNOTATION_BASE_DIGEST,
    ANNOTATION_BASE_NAME,
    ANNOTATION_CREATED,
    ANNOTATION_REVISION,
    ANNOTATION_SOURCE,
    ANNOTATION_TOOL_VERSION,
    DOCKER_CONFIG,
    DOCKER_LAYER_FOREIGN_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_NONDIST_GZIP,
    MEDIA_TYPE_MANIFEST,
)

Platform = tuple[str, ...]  # (os, architecture) or (os, architecture, variant)
DEFAULT_PLATFORM: Platform = ("linux", "amd64")

# Base config fields we keep. Everything else is dropped on purpose: Entrypoint and Cmd
# (KServe starts the modelcar with args only, an entrypoint would swallow them), Volumes
# (a VOLUME on /models could mask the model), ExposedPorts, Healthcheck, OnBuild, Shell.
KEPT_CONFIG_FIELDS = ("User", "Env", "WorkingDir", "StopSignal")

# Docker schema 2 → OCI. The layer bytes of both are the same gzip-compressed tar (the OCI
# spec was written from Docker's format), and a blob is addressed by its digest alone, so a
# base layer can be referenced from an OCI manifest with the OCI type and the *same* digest
# and size; registries store and serve blobs without regard to media type. skopeo copy
# --format oci does the same rewrite. Config JSON is rewritten by build_config anyway.
DOCKER_TO_OCI = {
    DOCKER_MANIFEST: MEDIA_TYPE_MANIFEST,
    DOCKER_MANIFEST_LIST: MEDIA_TYPE_INDEX,
    DOCKER_CONFIG: MEDIA_TYPE_CONFIG,
    DOCKER_LAYER_GZIP: MEDIA_TYPE_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN_GZIP: MEDIA_TYPE_LAYER_NONDIST_GZIP,
}


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sorted_map(mapping: Mapping[str, str] | None) -> dict[str, str]:
    return {key: str(mapping[key]) for key in sorted(mapping)} if mapping else {}


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, str] | None = None  # only for entries of an index

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.annotations:
            out["annotations"] = _sorted_map(self.annotations)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Descriptor:
        return cls(
            media_type=data["mediaType"],
            digest=data["digest"],
            size=int(data["size"]),
            annotations=dict(data.get("annotations") or {}),
            platform=dict(data["platform"]) if data.get("platform") else None,
        )


def to_oci_media_type(media_type: str) -> str:
    """The OCI name of a Docker media type; OCI types pass through unchanged."""
    return DOCKER_TO_OCI.get(media_type, media_type)


@dataclass(frozen=True)
class BaseImage:
    """A base image resolved to one platform, with layer descriptors already in OCI terms."""

    name: str  # what the user gave, for org.opencontainers.image.base.name
    manifest_digest: str
    config: Mapping[str, Any]
    config_descriptor: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))


def base_image(
    name: str, manifest_digest: str, manifest: Mapping[str, Any], config_bytes: bytes
) -> BaseImage:
    """Build a BaseImage from a parsed image manifest and its config blob."""
    media_type = manifest.get("mediaType", MEDIA_TYPE_MANIFEST)
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise MalformedBaseImage(f"base image {name}: {media_type} is not an image manifest")
    config = json.loads(config_bytes)
    layers = tuple(
        Descriptor(
            media_type=to_oci_media_type(layer["mediaType"]),
            digest=layer["digest"],
            size=int(layer["size"]),
            annotations=dict(layer.get("annotations") or {}),
        )
        for layer in manifest.get("layers", [])
    )
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(layers):
        raise MalformedBaseImage(
            f"base image {name}: its manifest has {len(layers)} layers but its config "
            f"{len(diff_ids)} diff_ids"
        )
    return BaseImage(
        name=name,
        manifest_digest=manifest_digest,
        config=config,
        config_descriptor=Descriptor.from_dict(manifest["config"]),
        layers=layers,
    )


def _platform_dict(platform: Platform) -> dict[str, str]:
    out = {"os": platform[0], "architecture": platform[1]}
    if len(platform) > 2 and platform[2]:
        out["variant"] = platform[2]
    return out


def parse_platform(text: str) -> Platform:
    """``OS/ARCH[/VARIANT]`` as a tuple. One platform: an image index is not built yet."""
    if "," in text:
        raise UsageError(
            f"--platform {text!r} names several platforms: multi-arch images are not "
            "supported yet", hint="build one image per platform, each with --platform OS/ARCH",
        )  # fmt: skip
    parts = tuple(text.strip().split("/"))
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise UsageError(f"bad --platform {text!r}", hint="write OS/ARCH, e.g. linux/amd64")
    return parts


def platform_matches(candidate: Mapping[str, str] | None, platform: Platform) -> bool:
    if not candidate:
        return False
    wanted = _platform_dict(platform)
    if candidate.get("os") != wanted["os"]:
        return False
    if candidate.get("architecture") != wanted["architecture"]:
        return False
    # A missing variant on either side matches (arm64 images often omit "v8").
    return "variant" not in wanted or candidate.get("variant") in (None, wanted["variant"])


def select_platform(index: Mapping[str, Any], platform: Platform) -> Descriptor:
    """Pick the manifest for ``platform`` out of an image index / Docker manifest list."""
    return Descriptor.from_dict(platform_entry(index, platform))


def platform_entry(index: Mapping[str, Any], platform: Platform) -> Mapping[str, Any]:
    """The raw ``manifests`` entry for ``platform``: only the chosen entry has to be a
    complete descriptor, and callers that need just its digest need nothing more."""
    media_type = index.get("mediaType", MEDIA_TYPE_INDEX)
    if media_type not in INDEX_MEDIA_TYPES:
        raise MalformedBaseImage(f"base image: {media_type} is not an image index")
    entries: list[Mapping[str, Any]] = list(index.get("manifests", []))
    for entry in entries:
        if platform_matches(entry.get("platform"), platform):
            return entry
    available = sorted(
        "/".join(v for v in (p.get("os"), p.get("architecture"), p.get("variant")) if v)
        for p in (e.get("platform") for e in entries)
        if p
    )
    raise PlatformNotFound(
        f"base image has no {'/'.join(platform)} variant",
        hint=f"available: {', '.join(available) or 'none'}; pick one with --platform",
    )


def require_platform(config: Mapping[str, Any], platform: Platform, name: str = "") -> None:
    """A base image's config must be for ``platform``: the model layers run anywhere, the
    base's ``sh`` not. A config that names no architecture says nothing and passes."""
    if "architecture" not in config:
        return
    have = {k: config[k] for k in ("os", "architecture", "variant") if config.get(k)}
    if not platform_matches(have, platform):
        raise PlatformNotFound(
            f"base image {name + ' ' if name else ''}is {'/'.join(have.values())}, "
            f"not {'/'.join(platform)}",
            hint=f"pass --platform {'/'.join(have.values())}, or a base image built for "
            f"{'/'.join(platform)} (or an index that has it)",
        )


def build_config(
    base_config: Mapping[str, Any] | None,
    diff_ids: Sequence[str],
    labels: Mapping[str, str],
    created: str,
    history_comment: str | Sequence[str],
    platform: Platform = DEFAULT_PLATFORM,
    created_by: str = "modelcar-builder",
) -> bytes:
    """The image config: base runtime settings + base layers + our layers, no entrypoint.

    ``history_comment`` is one comment for every added layer or one per layer. The
    platform must agree with the base's: model layers run anywhere, the base's ``sh`` not.
    """
    base = dict(base_config or {})
    base_runtime = dict(base.get("config") or {})
    comments = (
        [history_comment] * len(diff_ids)
        if isinstance(history_comment, str)
        else list(history_comment)
    )
    if len(comments) != len(diff_ids):
        raise ValueError("history_comment: one per added layer")

    wanted = _platform_dict(platform)
    if base_config is not None and "architecture" in base:
        require_platform(base, platform)
        wanted = {k: base[k] for k in ("os", "architecture", "variant") if base.get(k)}

    runtime: dict[str, Any] = {k: base_runtime[k] for k in KEPT_CONFIG_FIELDS if k in base_runtime}
    merged_labels = {**(base_runtime.get("Labels") or {}), **labels}
    if merged_labels:
        runtime["Labels"] = _sorted_map(merged_labels)

    history = [dict(h) for h in base.get("history") or []]
    history += [
        {"created": created, "created_by": created_by, "comment": comment} for comment in comments
    ]
    config: dict[str, Any] = {
        "created": created,
        "architecture": wanted["architecture"],
        "os": wanted["os"],
    }
    if "variant" in wanted:
        config["variant"] = wanted["variant"]
    config["config"] = runtime
    config["rootfs"] = {
        "type": "layers",
        "diff_ids": list((base.get("rootfs") or {}).get("diff_ids") or []) + list(diff_ids),
    }
    config["history"] = history
    return canonical_json(config)


def build_manifest(
    config: Descriptor, layers: Sequence[Descriptor], annotations: Mapping[str, str]
) -> bytes:
    """OCI image manifest v1 (schemaVersion 2) as canonical bytes."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = _sorted_map(annotations)
    return canonical_json(manifest)


def image_annotations(
    source_url: str,
    revision: str | None,
    created: str,
    version: str,
    *,
    base_name: str | None = None,
    base_digest: str | None = None,
) -> dict[str, str]:
    """Manifest annotations (also used as config labels). ``revision`` None for local dirs."""
    annotations = {ANNOTATION_SOURCE: source_url, ANNOTATION_CREATED: created}
    if revision:
        annotations[ANNOTATION_REVISION] = revision
    annotations[ANNOTATION_TOOL_VERSION] = version
    if base_name:
        annotations[ANNOTATION_BASE_NAME] = base_name
    if base_digest:
        annotations[ANNOTATION_BASE_DIGEST] = base_digest
    return _sorted_map(annotations)
