"""What a signature covers: one image manifest, or an image index and each of its
platform manifests (``--platform A,B``). ``add_model_signature`` puts /models/model.sig
on top of each image manifest (the same layer blob for every platform: the model is the
same) and, for an index, writes a new index naming the new manifests at the tag."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelcar_builder.errors import VerificationFailed
from modelcar_builder.oci import MEDIA_TYPE_INDEX
from modelcar_builder.oci.index import entry_platform, runnable_entries
from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing import modelsig
from modelcar_builder.signing.store import ACCEPT_INDEX, loads, put_json_manifest


@dataclass(frozen=True)
class Signed:
    """The descriptor a tag names (an image manifest or an index) and, for an index,
    each platform manifest's as ``(OS/ARCH[/VARIANT], descriptor)``."""

    top: dict[str, Any]
    platforms: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def digests(self) -> list[str]:
        """Every digest a signature and the provenance cover: the top one first."""
        return [str(self.top["digest"])] + [str(d["digest"]) for _, d in self.platforms]

    @property
    def descriptors(self) -> list[dict[str, Any]]:
        return [self.top] + [d for _, d in self.platforms]


def read(client: RegistryClient, repo: str, reference: str) -> Signed:
    """What ``reference`` names now: the image manifest, or the index and its platform
    manifests (the entries a runtime may pick)."""
    info = client.head_manifest(repo, reference)
    if info is None or not info.digest:
        raise VerificationFailed(f"{client.host}/{repo}:{reference} does not exist")
    top = {"mediaType": info.media_type, "digest": info.digest, "size": info.size}
    if info.media_type != MEDIA_TYPE_INDEX:
        return Signed(top)
    index = loads(client.get_manifest(repo, info.digest, ACCEPT_INDEX).body)
    return Signed(top, tuple((entry_platform(e), _desc(e)) for e in runnable_entries(index)))


def add_model_signature(
    client: RegistryClient, repo: str, tag: str, digest: str, signature: bytes
) -> tuple[Signed, dict[str, Any]]:
    """``repo@digest`` with /models/model.sig on top of each image manifest, at ``tag``;
    returns what the tag names now and the signature layer's descriptor."""
    info = client.head_manifest(repo, digest)
    if info is None or info.media_type != MEDIA_TYPE_INDEX:
        top, layer = modelsig.append_layer(client, repo, digest, signature, tag)
        return Signed(top), layer
    index = loads(client.get_manifest(repo, digest, ACCEPT_INDEX).body)
    runnable = {id(e) for e in runnable_entries(index)}
    entries, platforms, layer = [], [], {}
    for entry in index.get("manifests") or []:
        if id(entry) not in runnable:  # an artifact or attestation entry: kept as it is
            entries.append(entry)
            continue
        # each platform manifest by its own digest; only the index goes to the tag
        image, layer = modelsig.append_layer(client, repo, entry["digest"], signature, None)
        new = {**entry, **image}
        entries.append(new)
        platforms.append((entry_platform(new), _desc(new)))
    new_index = {**index, "manifests": entries}
    media_type = str(index.get("mediaType", MEDIA_TYPE_INDEX))
    index_digest, body = put_json_manifest(client, repo, tag, new_index)
    top = {"mediaType": media_type, "digest": index_digest, "size": len(body)}
    return Signed(top, tuple(platforms)), layer


def _desc(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("mediaType", "digest", "size")}
