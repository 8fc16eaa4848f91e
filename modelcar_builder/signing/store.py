"""Small registry writes and reads the signing parts share: a blob from bytes, an OCI
manifest from a dict, a manifest that may be absent. Over ``RegistryClient`` only."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modelcar_builder.oci import DOCKER_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import canonical_json
from modelcar_builder.registry import Manifest, RegistryClient

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def put_blob(client: RegistryClient, repo: str, data: bytes) -> str:
    """Upload ``data`` unless the repository already has it; returns its digest."""
    digest = sha256(data)
    if client.blob_size(repo, digest) is None:
        client.upload_blob(repo, digest, len(data), lambda: [data])
    return digest


def put_json_manifest(
    client: RegistryClient, repo: str, reference: str, manifest: dict[str, Any]
) -> tuple[str, bytes]:
    """PUT an OCI manifest or index (its own ``mediaType``); returns (digest, body)."""
    body = canonical_json(manifest)
    media_type = manifest.get("mediaType", MEDIA_TYPE_MANIFEST)
    return client.put_manifest(repo, reference, body, media_type), body


def get_optional(
    client: RegistryClient, repo: str, reference: str, accept: tuple[str, ...]
) -> Manifest | None:
    """The manifest at ``reference``, or None when the registry has none there."""
    if client.head_manifest(repo, reference, accept) is None:
        return None
    return client.get_manifest(repo, reference, accept)


def tag_for(digest: str, suffix: str = "") -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>`` (+ suffix): the tag schemes cosign and
    OCI 1.1's referrers fallback use."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}{suffix}"


def loads(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


ACCEPT_MANIFEST = (MEDIA_TYPE_MANIFEST,)
ACCEPT_INDEX = (MEDIA_TYPE_INDEX,)
# an image as any engine pushes it: OCI (native, buildah, podman) or Docker schema 2 (docker)
ACCEPT_IMAGE = (MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST)
