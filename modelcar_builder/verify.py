"""Prove a push by digest: the tag resolves to what we built, every blob is there with
its declared size, and the config keeps the ModelCar contract (no Entrypoint, no Cmd,
our labels). Reads back from the registry; trusts nothing the push itself reported."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelcar_builder.errors import VerificationFailed
from modelcar_builder.oci import DOCKER_MANIFEST, MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.registry import RegistryClient

# Only single-image manifests: a ModelCar is never an index.
_ACCEPT = (MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST)


@dataclass(frozen=True)
class VerifyResult:
    digest: str
    media_type: str
    config_digest: str
    layer_count: int
    total_size: int  # config + layers, bytes as declared and confirmed by HEAD
    labels: dict[str, str] = field(default_factory=dict)


def verify_push(
    client: RegistryClient,
    repo: str,
    tag_or_digest: str,
    expected_digest: str,
    expected_labels: Mapping[str, str],
) -> VerifyResult:
    where = f"{client.host}/{repo}{'@' if tag_or_digest.startswith('sha256:') else ':'}"
    where += tag_or_digest
    info = client.head_manifest(repo, tag_or_digest, accept=_ACCEPT)
    if info is None:
        raise VerificationFailed(f"{where} does not exist after the push")
    if info.digest != expected_digest:
        raise VerificationFailed(
            f"{where} resolves to {info.digest or 'no digest'}, but we pushed {expected_digest}"
        )
    manifest = client.get_manifest(repo, expected_digest, accept=_ACCEPT)
    doc = _json(manifest.body, f"manifest {expected_digest}")
    config_desc, layers = _descriptors(doc, expected_digest)
    for desc in (config_desc, *layers):
        _check_blob(client, repo, desc, where)
    config = _json(client.read_blob(repo, config_desc["digest"]), "image config")
    labels = _check_config(config, expected_labels, where)
    return VerifyResult(
        digest=expected_digest,
        media_type=manifest.media_type,
        config_digest=config_desc["digest"],
        layer_count=len(layers),
        total_size=sum(int(d["size"]) for d in (config_desc, *layers)),
        labels=labels,
    )


def _json(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except ValueError:
        raise VerificationFailed(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise VerificationFailed(f"{what} is not a JSON object")
    return doc


def _descriptors(doc: dict, digest: str) -> tuple[dict, list[dict]]:
    config, layers = doc.get("config"), doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise VerificationFailed(f"manifest {digest} has no config or layers (is it an index?)")
    for desc in (config, *layers):
        if not isinstance(desc, dict) or "digest" not in desc or "size" not in desc:
            raise VerificationFailed(f"manifest {digest} has a descriptor without digest/size")
    return config, layers


def _check_blob(client: RegistryClient, repo: str, desc: dict, where: str) -> None:
    size = client.blob_size(repo, desc["digest"])
    if size is None:
        raise VerificationFailed(f"{where}: blob {desc['digest']} is missing from the registry")
    if size != int(desc["size"]):
        raise VerificationFailed(
            f"{where}: blob {desc['digest']} is {size} bytes, the manifest says {desc['size']}"
        )


def _check_config(config: dict, expected: Mapping[str, str], where: str) -> dict[str, str]:
    cfg = config.get("config") or {}
    # KServe starts the modelcar container with args only: an Entrypoint would swallow them.
    if cfg.get("Entrypoint"):
        raise VerificationFailed(f"{where} has an Entrypoint {cfg['Entrypoint']}; must have none")
    if cfg.get("Cmd"):
        raise VerificationFailed(f"{where} has a Cmd {cfg['Cmd']}; must have none")
    labels = cfg.get("Labels") or {}
    for key, value in expected.items():
        if key not in labels:
            raise VerificationFailed(f"{where} lacks label {key}")
        if labels[key] != value:
            raise VerificationFailed(f"{where} has label {key}={labels[key]!r}, expected {value!r}")
    return dict(labels)


def verify_layout(
    layout: OciLayout, tag: str, expected_digest: str, expected_labels: Mapping[str, str]
) -> VerifyResult:
    """The same checks as verify_push, against an OCI image layout on disk."""
    where = f"oci:{layout.path}:{tag}"
    desc = layout.resolve(tag)
    if desc.digest != expected_digest:
        raise VerificationFailed(
            f"{where} resolves to {desc.digest}, but we wrote {expected_digest}"
        )
    doc = _json(layout.read_blob(expected_digest), f"manifest {expected_digest}")
    config_desc, layers = _descriptors(doc, expected_digest)
    for blob in (config_desc, *layers):
        path = layout.blob_path(blob["digest"])
        if not path.is_file() or path.stat().st_size != int(blob["size"]):
            raise VerificationFailed(f"{where}: blob {blob['digest']} missing or wrong size")
    config = _json(layout.read_blob(config_desc["digest"]), "image config")
    labels = _check_config(config, expected_labels, where)
    return VerifyResult(
        digest=expected_digest,
        media_type=doc.get("mediaType", ""),
        config_digest=config_desc["digest"],
        layer_count=len(layers),
        total_size=sum(int(d["size"]) for d in (config_desc, *layers)),
        labels=labels,
    )


def check_local_image(
    inspected: Mapping,
    name: str,
    expected_id: str | None,
    expected_labels: Mapping[str, str],
    layer_count: int,
) -> VerifyResult:
    """``--load`` without a push: the image ``name`` in a local store (podman/docker
    inspect: ``id``, ``config``, ``diff_ids``) is the one we made (its id is the config
    digest, when we know it), has ``layer_count`` layers and keeps the ModelCar contract."""
    where = f"local image {name}"
    image_id = inspected["id"]
    if expected_id is not None and image_id != expected_id:
        raise VerificationFailed(f"{where} has id {image_id}, but we loaded {expected_id}")
    diff_ids = list(inspected["diff_ids"])
    if len(diff_ids) != layer_count:
        raise VerificationFailed(f"{where} has {len(diff_ids)} layers, expected {layer_count}")
    labels = _check_config({"config": inspected["config"]}, expected_labels, where)
    return VerifyResult(image_id, "local", image_id, layer_count, 0, labels)
