"""Our readers against what the reference tools wrote (tests/data/cosign/README.md):
cosign's encrypted private key, and cosign's image signatures from containers/image's
own fixtures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from modelcar_builder.errors import UsageError
from modelcar_builder.signing import cosign, keys
from modelcar_builder.signing.store import sha256

DATA = Path(__file__).parent / "data" / "cosign"


def test_a_key_cosign_generate_key_pair_wrote_opens_to_its_public_key():
    key = keys.load_private_key(DATA / "constellation" / "cosign.key", b"")
    assert key.public_pem() == (DATA / "constellation" / "cosign.pub").read_bytes()
    with pytest.raises(UsageError) as wrong:
        keys.load_private_key(DATA / "constellation" / "cosign.key", b"x")
    assert "password does not open" in wrong.value.message


def test_keys_we_write_reopen_and_sign_like_cosigns(tmp_path):
    private, public = keys.write_pair(tmp_path, b"pw")
    key = keys.load_private_key(private, b"pw")
    sig = key.sign(b"data")
    assert keys.verify_signature(keys.load_public_key(public), sig, b"data")
    assert not keys.verify_signature(keys.load_public_key(public), sig, b"datA")


def cimage_signature(name: str) -> tuple[bytes, str]:
    """(payload, base64 signature) from a containers/image ``dir:`` signature file."""
    raw = (DATA / "cimage" / name).read_bytes()
    prefix = b"\x00sigstore-json\n"
    assert raw.startswith(prefix)
    doc = json.loads(raw[len(prefix) :])
    assert doc["mimeType"] == cosign.SIMPLESIGNING_MEDIA_TYPE
    return base64.b64decode(doc["payload"]), doc["annotations"][cosign.SIGNATURE_ANNOTATION]


def test_a_cosign_signature_is_accepted_for_its_manifest_only():
    public = keys.load_public_key(DATA / "cimage" / "cosign.pub")
    payload, sig = cimage_signature("valid/signature-1")
    digest = sha256((DATA / "cimage" / "valid" / "manifest.json").read_bytes())
    identity = cosign.check_payload(public, payload, sig, digest)
    assert identity == "192.168.64.2:5000/cosign-signed-single-sample"
    # the same signature for another manifest, a changed payload, another key: refused
    other = sha256((DATA / "cimage" / "modified-manifest" / "manifest.json").read_bytes())
    assert other != digest
    assert cosign.check_payload(public, payload, sig, other) is None
    assert cosign.check_payload(public, payload.replace(b"5000", b"5001"), sig, digest) is None


def test_a_cosign_signature_by_another_key_is_refused():
    public = keys.load_public_key(DATA / "cimage" / "cosign.pub")
    payload, sig = cimage_signature("unknown-cosign-key.signature")
    named = json.loads(payload)["critical"]["image"]["docker-manifest-digest"]
    assert cosign.check_payload(public, payload, sig, named) is None  # another key


def test_our_payload_has_exactly_the_fields_containers_image_requires():
    body = json.loads(cosign.payload("host:5000/repo:tag", "sha256:" + "a" * 64))
    reference, _ = cimage_signature("valid/signature-1")
    theirs = json.loads(reference)
    assert set(body) == set(theirs) == {"critical", "optional"}
    assert set(body["critical"]) == set(theirs["critical"])
    assert body["critical"]["type"] == theirs["critical"]["type"]
    assert set(body["optional"]) <= {"creator", "timestamp"}  # c/image's typed fields
