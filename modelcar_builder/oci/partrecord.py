"""A part's record in the registry: what `modelcar build --part K/N` pushed, kept beside
the image it is a part of, so `modelcar assemble` needs no shared volume.

The record is a small OCI artifact: an image manifest whose config blob (media type
``application/vnd.modelcar.part.v1+json``) holds the part, the plan digest, the image
template (``oci/template.py``) and the part's layers (digest, size, diff_id, index), and
whose ``layers`` reference those layer blobs, so a registry's garbage collection keeps
them until the assembled image references them too. Its tag is derived from the image's
tag (``record_tag``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelcar_builder.oci.image import Descriptor, build_manifest, canonical_json
from modelcar_builder.oci.template import ImageTemplate, sha256_of

RECORD_MEDIA_TYPE = "application/vnd.modelcar.part.v1+json"
RECORD_VERSION = 1
ANNOTATION_PART = "io.modelcar.part"
ANNOTATION_PLAN = "io.modelcar.part.plan"
MAX_TAG = 128  # the distribution spec's tag length


@dataclass(frozen=True)
class PartLayer:
    """One model layer a part pushed: its place in the plan and its blob."""

    index: int
    digest: str
    size: int
    diff_id: str


@dataclass(frozen=True)
class PartRecord:
    k: int
    n: int
    plan: str  # shares.plan_digest of the whole model's plan
    source: str  # the pinned source, for messages (hf://ORG/NAME@COMMIT, file://DIR)
    template: ImageTemplate
    layers: tuple[PartLayer, ...]
    # False while the part still pushes: the record is rewritten after each layer, so a
    # retried pod (its volume gone) finds what its predecessor pushed; assemble waits on it
    complete: bool = True

    def config(self) -> bytes:
        return canonical_json(
            {
                "version": RECORD_VERSION,
                "part": self.k,
                "parts": self.n,
                "plan": self.plan,
                "source": self.source,
                "complete": self.complete,
                "template": self.template.to_json(),
                "layers": [
                    {"index": x.index, "digest": x.digest, "size": x.size, "diff_id": x.diff_id}
                    for x in self.layers
                ],
            }
        )

    def manifest(self, config: bytes) -> bytes:
        layers = [Descriptor(self.template.layer_media_type, x.digest, x.size) for x in self.layers]
        annotations = {ANNOTATION_PART: f"{self.k}/{self.n}", ANNOTATION_PLAN: self.plan}
        return build_manifest(
            Descriptor(RECORD_MEDIA_TYPE, sha256_of(config), len(config)), layers, annotations
        )


def parse_record(config: bytes) -> PartRecord:
    """A record from its config blob; ValueError when it is not one this version reads."""
    try:
        doc: Mapping[str, Any] = json.loads(config)
        if doc.get("version") != RECORD_VERSION:
            raise ValueError(f"record version {doc.get('version')!r}, not {RECORD_VERSION}")
        return PartRecord(
            k=int(doc["part"]),
            n=int(doc["parts"]),
            plan=str(doc["plan"]),
            source=str(doc["source"]),
            complete=bool(doc["complete"]),
            template=ImageTemplate.from_json(doc["template"]),
            layers=tuple(
                PartLayer(int(x["index"]), str(x["digest"]), int(x["size"]), str(x["diff_id"]))
                for x in doc["layers"]
            ),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a part record ({exc!r})") from exc


def record_tag(tag: str, k: int, n: int) -> str:
    """``TAG.part-K-of-N``; a tag too long for that keeps its start and a hash of the
    whole tag, so two long tags never share a record."""
    suffix = f".part-{k}-of-{n}"
    if len(tag) + len(suffix) <= MAX_TAG:
        return tag + suffix
    short = hashlib.sha256(tag.encode()).hexdigest()[:12]
    return f"{tag[: MAX_TAG - len(suffix) - 13]}-{short}{suffix}"
