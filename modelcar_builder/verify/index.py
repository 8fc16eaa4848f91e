"""`verify` of an image index (``--platform A,B``): every runnable manifest is verified as
a single image (coherence, blobs, ModelCar contract; ``--deep`` too), its config says the
platform its index entry claims, and every platform carries the *same* model layers
(descriptors with ``org.cncf.model.filepath``: identical digests, sizes and order)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from modelcar_builder.errors import VerificationFailed
from modelcar_builder.oci import ANNOTATION_FILEPATH, MANIFEST_MEDIA_TYPES
from modelcar_builder.oci.index import entry_platform, runnable_entries
from modelcar_builder.registry import RegistryClient
from modelcar_builder.verify.coherence import parse_json


def model_layers(manifest: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(digest, size) of the layers a ModelCar adds: those naming a model file path."""
    return [
        (layer["digest"], int(layer["size"]))
        for layer in manifest.get("layers", [])
        if ANNOTATION_FILEPATH in (layer.get("annotations") or {})
    ]


def verify_index_entries(
    client: RegistryClient,
    repo: str,
    where: str,
    body: bytes,
    verify_one: Callable[[str], Any],
) -> tuple[list[Any], tuple[str, ...], list[tuple[str, int]]]:
    """Each runnable entry verified with ``verify_one(digest)`` (a VerifyResult);
    returns the results, what was proved of the index itself, and the model layers
    (digest, size) every platform shares."""
    index = parse_json(body, f"{where}: the image index")
    entries = runnable_entries(index)
    if not entries:
        raise VerificationFailed(f"{where}: the image index names no runnable platform")
    results, models = [], []
    for entry in entries:
        plat = entry["platform"]
        name = entry_platform(entry)
        if entry.get("mediaType") not in MANIFEST_MEDIA_TYPES:
            raise VerificationFailed(f"{where}: {name} is a {entry.get('mediaType')}")
        results.append(verify_one(entry["digest"]))
        manifest = json.loads(client.get_manifest(repo, entry["digest"]).body)
        config = json.loads(client.read_blob(repo, manifest["config"]["digest"]))
        said = {k: config.get(k) for k in ("os", "architecture")}
        if said != {"os": plat["os"], "architecture": plat["architecture"]}:
            raise VerificationFailed(
                f"{where}: the {name} entry's config says {said['os']}/{said['architecture']}"
            )
        models.append((name, model_layers(manifest)))
    first_name, first = models[0]
    for name, layers in models[1:]:
        if layers != first:
            raise VerificationFailed(
                f"{where}: {name} has other model layers than {first_name}: the index's "
                "platforms must share one copy of the model"
            )
    names = ", ".join(name for name, _ in models)
    checks = (
        f"image index of {len(models)} platforms ({names}), each manifest verified",
        f"the {len(first)} model layers are the same blobs on every platform",
    )
    return results, checks, first
