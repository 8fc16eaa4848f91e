"""`build --modelpack`: after the ModelCar is pushed and verified, a ModelPack manifest on
its own blobs (oci/modelpack.py) is pushed as an OCI 1.1 referrer of the tag's manifest
(the image, or the index of a multi-arch build), through the referrers tag scheme that
signing already uses (signing/referrers.py: read, merged, written back, so provenance and
other referrers are kept). Uploads: the ModelPack config (a few hundred bytes) and the
manifest; no layer. Why a referrer and not an index entry: docs/decisions.md."""

from __future__ import annotations

import json
import logging
from typing import Any

from modelcar_builder.errors import UsageError
from modelcar_builder.oci import INDEX_MEDIA_TYPES
from modelcar_builder.oci import modelpack as mp
from modelcar_builder.oci.index import runnable_entries
from modelcar_builder.registry import RegistryClient
from modelcar_builder.settings import RegistryOptions, created_timestamp
from modelcar_builder.signing.referrers import push_referrer_manifest
from modelcar_builder.signing.store import put_blob, sha256
from modelcar_builder.snapshot import Snapshot
from modelcar_builder.target import LayoutTarget, RegistryTarget, parse_target

log = logging.getLogger("modelcar.engines.modelpack")


def push_modelpack(
    client: RegistryClient, repo: str, subject_digest: str, name: str,
    revision: str | None, source_url: str | None, created: str,
) -> str:  # fmt: skip
    """Push the ModelPack manifest referring to ``subject_digest``; returns its digest."""
    subject = client.get_manifest(repo, subject_digest)
    image = subject
    if subject.media_type in INDEX_MEDIA_TYPES:  # every platform has the same model layers
        first = runnable_entries(json.loads(subject.body))[0]
        image = client.get_manifest(repo, first["digest"])
    manifest: dict[str, Any] = json.loads(image.body)
    config = json.loads(client.read_blob(repo, manifest["config"]["digest"]))
    layers = mp.model_layers(manifest)
    diff_ids = config["rootfs"]["diff_ids"][-len(layers) :]
    mp_config = mp.build_config(name, revision, source_url, created, diff_ids)
    put_blob(client, repo, mp_config)
    doc = mp.build_manifest(
        manifest, mp_config, sha256(mp_config),
        {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.body)},
        {"org.opencontainers.image.created": created},
    )  # fmt: skip
    digest = push_referrer_manifest(client, repo, doc)
    log.info("ModelPack manifest %s (referrer of %s, %d layers on the ModelCar's blobs)",
             digest, subject.digest, len(layers))  # fmt: skip
    return digest


def check_modelpack(image: str, push: bool) -> None:
    """--modelpack needs a registry: the ModelPack manifest is a referrer there."""
    if not push or isinstance(parse_target(image), LayoutTarget):
        raise UsageError(
            f"--modelpack needs a registry --image, not {image}",
            hint="push to REGISTRY/REPO:TAG, or drop --modelpack",
        )


def publish(target: RegistryTarget, registry: RegistryOptions, digest: str,
            snapshot: Snapshot) -> str:  # fmt: skip
    """`build --modelpack`, after the verified push of ``digest``."""
    ref = target.ref
    with registry.client_for(ref) as client:
        return push_modelpack(
            client, ref.repository, digest, snapshot.location, snapshot.commit,
            snapshot.source_url, created_timestamp(),
        )  # fmt: skip
