"""Multi-arch ModelCars: ``--platform OS/ARCH[/VARIANT][,OS/ARCH…]`` and the OCI image
index that points to one manifest per platform. Each manifest has its platform's base
layers and the *same* model layers (one blob each in the registry)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelcar_builder.errors import UsageError
from modelcar_builder.oci import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import Platform, _platform_dict, canonical_json
from modelcar_builder.target import LayoutTarget, parse_target


def parse_platforms(text: str) -> tuple[Platform, ...]:
    """``linux/amd64`` -> one platform; ``linux/amd64,linux/arm64`` -> an index of two.
    Each as ``OS/ARCH[/VARIANT]``; a platform named twice is a usage error."""
    out: list[Platform] = []
    for item in text.split(","):
        parts = tuple(item.strip().split("/"))
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise UsageError(f"bad --platform {text!r}", hint="write OS/ARCH[,OS/ARCH…], "
                             "e.g. linux/amd64 or linux/amd64,linux/arm64")  # fmt: skip
        if parts in out:
            raise UsageError(f"--platform {text!r} names {'/'.join(parts)} twice")
        out.append(parts)
    return tuple(out)


def check_platforms(text: str, engine: str, image: str, load: bool) -> tuple[Platform, ...]:
    """``--platform`` parsed; several platforms need the native engine and a push to a
    registry (the image index is written there). A usage error (exit 2) otherwise."""
    platforms = parse_platforms(text)
    if len(platforms) == 1:
        return platforms
    if engine != "native":
        raise UsageError(
            f"--platform {text}: an image index of several platforms is built by the native "
            f"engine only, not --engine {engine}",
            hint="add --engine native (the default)",
        )
    if load or isinstance(parse_target(image), LayoutTarget):
        raise UsageError(
            f"--platform {text}: an image index is pushed to a registry; --load and oci: "
            "layouts take one platform",
            hint="--image REGISTRY/REPO:TAG, without --load",
        )
    return platforms


def platform_text(platform: Platform) -> str:
    return "/".join(platform)


def entry_platform(entry: Mapping[str, Any]) -> str:
    """``OS/ARCH[/VARIANT]`` of an index entry, for messages."""
    plat = entry.get("platform") or {}
    text = f"{plat.get('os')}/{plat.get('architecture')}"
    return f"{text}/{plat['variant']}" if plat.get("variant") else text


def build_index(
    manifests: Sequence[tuple[Platform, str, int]],
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """An OCI image index: one entry per (platform, manifest digest, manifest size)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": _platform_dict(platform),
            }
            for platform, digest, size in manifests
        ],
    }
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return canonical_json(doc)


def runnable_entries(index: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The index entries a runtime may pick: a platform that is not unknown/unknown
    (olot and buildx put artifacts and attestations there)."""
    out = []
    for entry in index.get("manifests", []):
        plat = entry.get("platform") or {}
        if plat.get("os", "unknown") != "unknown" and plat.get("architecture") != "unknown":
            out.append(entry)
    return out
