"""`verify` of a ModelPack referrer (`build --modelpack`): when the image (or index) has
one, its layers must be the image's own model layer blobs (same digests and sizes), its
config blob must be there with its size, and its ``modelfs.diffIds`` must name one diff_id
per layer. No referrer: nothing to check (a plain ModelCar)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from modelcar_builder.errors import VerificationFailed
from modelcar_builder.oci.modelpack import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE
from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing.referrers import artifacts


def check_modelpack(
    client: RegistryClient, repo: str, subject: str, model_layers: Iterable[tuple[str, int]],
    where: str,
) -> tuple[str, ...]:  # fmt: skip
    ours = set(model_layers)
    checks = []
    for entry, manifest in artifacts(client, repo, subject, ARTIFACT_TYPE):
        name = f"{where}: the ModelPack manifest {entry['digest']}"
        layers = [(x["digest"], int(x["size"])) for x in manifest.get("layers", [])]
        if not layers or not set(layers) <= ours:
            raise VerificationFailed(f"{name} names layers that are not the image's model layers")
        config = manifest.get("config") or {}
        if config.get("mediaType") != CONFIG_MEDIA_TYPE:
            raise VerificationFailed(f"{name} has a config of type {config.get('mediaType')}")
        if client.blob_size(repo, config["digest"]) != int(config["size"]):
            raise VerificationFailed(f"{name}: its config blob is missing or the wrong size")
        doc = json.loads(client.read_blob(repo, config["digest"]))
        if len((doc.get("modelfs") or {}).get("diffIds") or []) != len(layers):
            raise VerificationFailed(f"{name}: modelfs.diffIds does not match its layers")
        checks.append(
            f"ModelPack manifest {entry['digest'][:19]}… on the image's own {len(layers)} "
            "model layer blobs"
        )
    return tuple(checks)
