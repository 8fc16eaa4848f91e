"""OCI 1.1 referrers: an artifact manifest whose ``subject`` is the image, listed in the
image's referrers index. Registries without the referrers API (Debian's distribution
2.8 has none) are served by the tag scheme: the index lives at tag ``sha256-<hex>``;
it is read, merged (other referrers, e.g. a ModelPack manifest, are kept) and written
back. The tag is written on registries with the API too: our client does not see the
``OCI-Subject`` header that would say the registry indexed the referrer itself, and an
extra tag costs nothing there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from modelcar_builder.oci import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import canonical_json
from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing.store import (
    ACCEPT_INDEX,
    ACCEPT_MANIFEST,
    EMPTY_JSON,
    EMPTY_MEDIA_TYPE,
    descriptor,
    get_optional,
    loads,
    put_blob,
    put_json_manifest,
    sha256,
    tag_for,
)


def push_referrer(
    client: RegistryClient,
    repo: str,
    subject: Mapping[str, Any],
    artifact_type: str,
    blob: bytes,
    blob_media_type: str,
    annotations: Mapping[str, str],
) -> str:
    """Push ``blob`` as a one-layer artifact referring to ``subject`` (a descriptor of
    the image manifest) and list it in the referrers tag; returns its digest."""
    put_blob(client, repo, EMPTY_JSON)
    put_blob(client, repo, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(EMPTY_MEDIA_TYPE, EMPTY_JSON),
        "layers": [descriptor(blob_media_type, blob)],
        "subject": dict(subject),
        "annotations": dict(annotations),
    }
    return push_referrer_manifest(client, repo, manifest)


def push_referrer_manifest(client: RegistryClient, repo: str, manifest: Mapping[str, Any]) -> str:
    """Push an artifact ``manifest`` (its ``subject`` and ``artifactType`` set, its blobs
    already there) and list it in the subject's referrers tag; returns its digest."""
    digest, body = put_json_manifest(client, repo, _digest_of(manifest), dict(manifest))
    entry = {
        "mediaType": MEDIA_TYPE_MANIFEST,
        "digest": digest,
        "size": len(body),
        "artifactType": manifest["artifactType"],
        "annotations": dict(manifest.get("annotations") or {}),
    }
    _add_to_index(client, repo, str(manifest["subject"]["digest"]), entry)
    return digest


def referrers(client: RegistryClient, repo: str, subject_digest: str) -> list[dict[str, Any]]:
    """The descriptors listed in the referrers tag of ``subject_digest`` (empty if none)."""
    found = get_optional(client, repo, tag_for(subject_digest), ACCEPT_INDEX)
    if found is None:
        return []
    try:
        return [m for m in loads(found.body).get("manifests") or [] if isinstance(m, dict)]
    except ValueError:
        return []


def artifacts(
    client: RegistryClient, repo: str, subject_digest: str, artifact_type: str
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(descriptor, manifest) of each referrer of that type whose manifest names
    ``subject_digest`` as its subject (a listed referrer that does not is skipped)."""
    for entry in referrers(client, repo, subject_digest):
        if entry.get("artifactType") != artifact_type:
            continue
        manifest = loads(client.get_manifest(repo, entry["digest"], ACCEPT_MANIFEST).body)
        if (manifest.get("subject") or {}).get("digest") != subject_digest:
            continue
        yield entry, manifest


def _add_to_index(
    client: RegistryClient, repo: str, subject_digest: str, entry: dict[str, Any]
) -> None:
    tag = tag_for(subject_digest)
    manifests = [m for m in referrers(client, repo, subject_digest)
                 if m.get("digest") != entry["digest"]]  # fmt: skip
    manifests.append(entry)
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests}
    put_json_manifest(client, repo, tag, index)


def _digest_of(manifest: Mapping[str, Any]) -> str:
    return sha256(canonical_json(manifest))
