"""Image signatures in the format containers/image (CRI-O, podman, skopeo) and cosign
verify: a *simple signing* payload naming the manifest digest and the image's identity,
signed with ECDSA P-256, stored as a layer of an OCI manifest at the tag
``sha256-<hex>.sig`` of the same repository ("sigstore attachments"), the signature
base64 in the layer's ``dev.cosignproject.cosign/signature`` annotation.

Signatures already there (another signer, skopeo, cosign) are kept: ours is appended,
as containers/image does. No transparency log: offline, the key alone vouches.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar_builder import __version__
from modelcar_builder.errors import VerificationFailed
from modelcar_builder.oci import MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST
from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing.keys import SigningKey, verify_signature
from modelcar_builder.signing.store import (
    ACCEPT_MANIFEST,
    get_optional,
    loads,
    put_blob,
    put_json_manifest,
    sha256,
    tag_for,
)

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"


def signature_tag(digest: str) -> str:
    return tag_for(digest, ".sig")


def payload(identity: str, digest: str) -> bytes:
    """The simple signing payload: ``identity`` is the docker reference the signature
    vouches for (``host/repo:tag``; a policy's matchRepoDigestOrExact then accepts a pull
    by that tag or by digest), ``digest`` the manifest's."""
    doc = {
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": {"creator": f"modelcar {__version__}", "timestamp": int(time.time())},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sign_image(
    client: RegistryClient, repo: str, digest: str, identity: str, key: SigningKey
) -> str:
    """Sign ``repo@digest`` and push the signature; returns the signature tag."""
    body = payload(identity, digest)
    signature = base64.b64encode(key.sign(body)).decode()
    tag = signature_tag(digest)
    layers, diff_ids = _existing_layers(client, repo, tag)
    put_blob(client, repo, body)
    layers.append(
        {
            "mediaType": SIMPLESIGNING_MEDIA_TYPE,
            "digest": sha256(body),
            "size": len(body),
            "annotations": {SIGNATURE_ANNOTATION: signature},
        }
    )
    diff_ids.append(sha256(body))
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        separators=(",", ":"),
    ).encode()
    put_blob(client, repo, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": layers,
    }
    put_json_manifest(client, repo, tag, manifest)
    return tag


def _existing_layers(
    client: RegistryClient, repo: str, tag: str
) -> tuple[list[dict[str, Any]], list[str]]:
    found = get_optional(client, repo, tag, ACCEPT_MANIFEST)
    if found is None:
        return [], []
    try:
        layers = list(loads(found.body).get("layers") or [])
    except ValueError:
        return [], []  # not a manifest we can extend: replaced, as cosign would
    return layers, [str(layer["digest"]) for layer in layers]


@dataclass(frozen=True)
class Signature:
    identity: str
    digest: str
    payload: bytes


def verified_signatures(
    client: RegistryClient, repo: str, digest: str, key: ec.EllipticCurvePublicKey
) -> list[Signature]:
    """Every signature at ``sha256-<hex>.sig`` that ``key`` made over a payload naming
    ``digest``; others (other keys, other images) are skipped."""
    found = get_optional(client, repo, signature_tag(digest), ACCEPT_MANIFEST)
    if found is None:
        return []
    out = []
    for layer in loads(found.body).get("layers") or []:
        if layer.get("mediaType") != SIMPLESIGNING_MEDIA_TYPE:
            continue
        raw = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if not raw:
            continue
        body = client.read_blob(repo, layer["digest"], max_size=64 * 1024)
        identity = check_payload(key, body, raw, digest)
        if identity is not None:
            out.append(Signature(identity, digest, body))
    return out


def check_payload(
    key: ec.EllipticCurvePublicKey, body: bytes, signature_b64: str, digest: str
) -> str | None:
    """The identity a simple signing ``body`` vouches for, when ``signature_b64`` is
    ``key``'s signature over it and it names ``digest``; else None."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        return None
    if not verify_signature(key, sig, body):
        return None
    try:
        critical = json.loads(body).get("critical") or {}
    except (ValueError, AttributeError):
        return None
    if critical.get("type") != SIGNATURE_TYPE:
        return None
    if (critical.get("image") or {}).get("docker-manifest-digest") != digest:
        return None
    return str((critical.get("identity") or {}).get("docker-reference", ""))


def require_signature(
    client: RegistryClient, repo: str, digest: str, key: ec.EllipticCurvePublicKey, where: str
) -> list[Signature]:
    """``verified_signatures`` with at least one for ``where``'s repository, or fail."""
    good = verified_signatures(client, repo, digest, key)
    mine = [s for s in good if _repository(s.identity) == where]
    if not mine:
        raise VerificationFailed(
            f"no signature by this key for {where}@{digest}",
            hint="sign it (`modelcar sign`, or build with --sign-key), or pass the right --key",
        )
    return mine


def _repository(identity: str) -> str:
    """``host/repo:tag`` or ``host/repo@sha256:…`` -> ``host/repo``."""
    name = identity.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name
