"""Prove an image by digest, reading it back from where it lives (a registry or an OCI
layout) and trusting nothing the push reported.

Always (cheap: the manifest, the config and one HEAD per blob): the tag resolves to the
digest we expect, manifest and config agree (coherence.py), every blob is there with its
declared size, and the config keeps the ModelCar contract (no Entrypoint, no Cmd, the
labels asked for). With ``deep`` every blob is read and its bytes proved (deep.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from modelcar_builder.errors import ImageNotFound, RegistryError, VerificationFailed
from modelcar_builder.oci import (
    ANNOTATION_REVISION,
    DOCKER_MANIFEST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
)
from modelcar_builder.oci.image import Descriptor
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.registry import RegistryClient
from modelcar_builder.verify.coherence import (
    MAX_CONFIG,
    Image,
    check_runtime_config,
    coherent_image,
    descriptors,
    parse_json,
)
from modelcar_builder.verify.deep import CHUNK, DeepResult, deep_check
from modelcar_builder.verify.expected import DeepOptions, expected_files
from modelcar_builder.verify.index import model_layers, verify_index_entries
from modelcar_builder.verify.modelpack import check_modelpack

__all__ = [
    "DeepOptions",
    "VerifyResult",
    "check_local_image",
    "resolve_layout",
    "verify_layout",
    "verify_push",
]

# Single-image manifests; an index (--platform A,B) is verified manifest by manifest.
_ACCEPT = (MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST)


@dataclass(frozen=True)
class VerifyResult:
    digest: str
    media_type: str
    config_digest: str
    layer_count: int
    total_size: int  # config + layers, bytes as declared and confirmed by HEAD
    labels: dict[str, str] = field(default_factory=dict)
    checks: tuple[str, ...] = ()  # what was proved, one phrase each
    unchecked: tuple[str, ...] = ()  # what could not be told without --deep, one phrase each
    bytes_read: int = 0  # manifest + config, and with --deep every blob
    blobs_present: int = 0  # blobs confirmed with their size (HEAD / stat)
    deep: DeepResult | None = None

    @property
    def revision(self) -> str | None:
        return self.labels.get(ANNOTATION_REVISION)


def verify_push(
    client: RegistryClient,
    repo: str,
    tag_or_digest: str,
    expected_digest: str,
    expected_labels: Mapping[str, str],
    deep: DeepOptions | None = None,
) -> VerifyResult:
    where = f"{client.host}/{repo}{'@' if tag_or_digest.startswith('sha256:') else ':'}"
    where += tag_or_digest
    info = client.head_manifest(repo, tag_or_digest, accept=(*_ACCEPT, MEDIA_TYPE_INDEX))
    if info is None:
        raise ImageNotFound(f"{where} does not exist")
    if info.digest != expected_digest:
        raise VerificationFailed(
            f"{where} resolves to {info.digest or 'no digest'}, but we pushed {expected_digest}"
        )
    if info.media_type == MEDIA_TYPE_INDEX:  # --platform A,B: each manifest (verify/index.py)
        return _verify_index(client, repo, where, expected_digest, expected_labels, deep)
    manifest = client.get_manifest(repo, expected_digest, accept=_ACCEPT)
    doc = parse_json(manifest.body, f"{where}: the manifest")
    _, config_desc, layer_descs = descriptors(doc, manifest.media_type, where)
    for desc in (config_desc, *layer_descs):
        _check_blob(client, repo, desc, where)
    config = _read_config(client, repo, config_desc["digest"], where)
    image = coherent_image(doc, manifest.media_type, config, expected_labels, where)
    deep_result = None
    if deep is not None:
        deep_result = deep_check(
            image.layers,
            lambda digest: client.get_blob(repo, digest),
            expected_files(deep, image.labels),
            deep.jobs,
            where,
        )
    result = _result(expected_digest, image, len(manifest.body) + len(config), deep_result)
    found = check_modelpack(client, repo, expected_digest, model_layers(doc), where)
    return dataclasses.replace(result, checks=(*result.checks, *found)) if found else result


def _verify_index(client, repo, where, digest, labels, deep) -> VerifyResult:
    body = client.get_manifest(repo, digest, accept=(MEDIA_TYPE_INDEX,)).body
    one = lambda d: verify_push(client, repo, d, d, labels, deep)  # noqa: E731
    results, checks, shared = verify_index_entries(client, repo, where, body, one)
    checks += check_modelpack(client, repo, digest, shared, where)
    first = results[0]
    return dataclasses.replace(
        first, digest=digest, media_type=MEDIA_TYPE_INDEX, checks=(*checks, *first.checks),
        bytes_read=len(body) + sum(r.bytes_read for r in results),
        blobs_present=sum(r.blobs_present for r in results),
    )  # fmt: skip


def _read_config(client: RegistryClient, repo: str, digest: str, where: str) -> bytes:
    """The config's bytes; a digest mismatch is the image's fault (60), named as such."""
    out = bytearray()
    try:
        for piece in client.get_blob(repo, digest):
            out += piece
            if len(out) > MAX_CONFIG:
                raise VerificationFailed(f"{where}: the config is larger than {MAX_CONFIG} bytes")
    except RegistryError:
        got = f"sha256:{hashlib.sha256(out).hexdigest()}"
        if got == digest:
            raise
        raise VerificationFailed(f"{where}: the config blob {digest} hashes to {got}") from None
    return bytes(out)


def _check_blob(client: RegistryClient, repo: str, desc: dict, where: str) -> None:
    size = client.blob_size(repo, desc["digest"])
    if size is None:
        raise VerificationFailed(f"{where}: blob {desc['digest']} is missing from the registry")
    if size != int(desc["size"]):
        raise VerificationFailed(
            f"{where}: blob {desc['digest']} is {size} bytes, the manifest says {desc['size']}"
        )


def _result(digest: str, image: Image, read: int, deep: DeepResult | None) -> VerifyResult:
    blobs = 1 + len(image.layers)
    checks = (*image.checks, f"{blobs} blobs present with their sizes")
    return VerifyResult(
        digest=digest,
        media_type=image.media_type,
        config_digest=image.config_digest,
        layer_count=len(image.layers),
        total_size=image.total_size,
        labels=image.labels,
        checks=checks,
        unchecked=image.unchecked if deep is None else (),
        bytes_read=read + (deep.bytes_read if deep else 0),
        blobs_present=blobs,
        deep=deep,
    )


def verify_layout(
    layout: OciLayout,
    tag: str,
    expected_digest: str,
    expected_labels: Mapping[str, str],
    deep: DeepOptions | None = None,
) -> VerifyResult:
    """The same checks as verify_push, against an OCI image layout on disk."""
    where = f"oci:{layout.path}:{tag}"
    desc = resolve_layout(layout, tag)
    if desc.digest != expected_digest:
        raise VerificationFailed(
            f"{where} resolves to {desc.digest}, but we wrote {expected_digest}"
        )
    body = _layout_bytes(layout, expected_digest, f"{where}: the manifest")
    doc = parse_json(body, f"{where}: the manifest")
    _, config_desc, layer_descs = descriptors(doc, desc.media_type, where)
    for blob in (config_desc, *layer_descs):
        path = layout.blob_path(blob["digest"])
        if not path.is_file() or path.stat().st_size != int(blob["size"]):
            raise VerificationFailed(f"{where}: blob {blob['digest']} missing or wrong size")
    config = layout.blob_path(config_desc["digest"]).read_bytes()
    image = coherent_image(doc, desc.media_type, config, expected_labels, where)
    deep_result = None
    if deep is not None:
        open_blob = functools.partial(_file_pieces, layout)
        expected = expected_files(deep, image.labels)
        deep_result = deep_check(image.layers, open_blob, expected, deep.jobs, where)
    return _result(expected_digest, image, len(body) + len(config), deep_result)


def resolve_layout(layout: OciLayout, tag: str | None) -> Descriptor:
    """The index entry for ``tag``; ImageNotFound when the layout or the tag is not there."""
    try:
        return layout.resolve(tag)
    except (KeyError, OSError, ValueError) as exc:
        raise ImageNotFound(f"oci:{layout.path}:{tag or ''} does not exist ({exc})") from None


def _layout_bytes(layout: OciLayout, digest: str, what: str) -> bytes:
    try:
        data = layout.blob_path(digest).read_bytes()
    except OSError:
        raise VerificationFailed(f"{what} blob {digest} is missing from the layout") from None
    if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
        raise VerificationFailed(f"{what} does not hash to its digest {digest}")
    return data


def _file_pieces(layout: OciLayout, digest: str) -> Iterator[bytes]:
    with layout.open_blob(digest) as fh:
        while piece := fh.read(CHUNK):
            yield piece


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
    labels = check_runtime_config({"config": inspected["config"]}, expected_labels, where)
    return VerifyResult(image_id, "local", image_id, layer_count, 0, labels)
