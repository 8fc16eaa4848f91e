"""`build --platform linux/amd64,linux/arm64 --sign-key`: every platform manifest gets
/models/model.sig (one blob, shared), the new index is at the tag, the index and each
manifest have a cosign signature (checked here with the cryptography library over the
payload read raw from the registry), and one provenance names the index and every
manifest, a referrer of each (checked with securesystemslib and in-toto-attestation's
protos). `verify --key` checks every platform and fails when one is unsigned."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing import cosign, flow, keys
from tests.support.clitools import run
from tests.support.models import REPO, build_args, model_files
from tests.support.multiarch import build_multiarch_base
from tests.support.signing import (
    PASSWORD,
    KeyPair,
    extracted_tree_verifies,
    make_keypair,
    raw_blob,
    raw_manifest,
    verify_with_key,
)

PLATFORMS = "linux/amd64,linux/arm64"
DSSE = "application/vnd.in-toto+json"


@pytest.fixture
def keypair(tmp_path, capsys, monkeypatch) -> KeyPair:
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    return make_keypair(capsys, tmp_path / "keys")


@pytest.fixture
def multi_base(base_image, registry, tmp_path) -> str:
    return build_multiarch_base(base_image, registry, tmp_path / "multi-base")


def cosign_payloads(registry, repo: str, digest: str, public: ec.EllipticCurvePublicKey) -> list:
    """The simple-signing payloads at ``sha256-<hex>.sig`` whose signature ``public``
    verifies (cryptography's ECDSA, not our reader)."""
    sig = raw_manifest(registry, repo, digest.replace(":", "-") + ".sig")
    good = []
    for layer in sig["layers"]:
        body = raw_blob(registry, repo, layer["digest"])
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        public.verify(signature, body, ec.ECDSA(hashes.SHA256()))  # raises if not
        good.append(json.loads(body))
    return good


@pytest.mark.slow
def test_each_platform_and_the_index_are_signed_with_one_provenance_for_all(
    hub, registry, multi_base, keypair, capsys, tmp_path
):
    hub.add_repo(REPO, model_files())
    image = f"{registry.host}/models/multi-signed:v1"
    res = run(capsys, *build_args(image, tmp_path / "ws", multi_base, "--platform", PLATFORMS,
                                  "--sign-key", str(keypair.private)))  # fmt: skip
    assert res.code == 0, res.err
    index_digest = res.last_line.rsplit("@", 1)[1]
    repo = "models/multi-signed"

    # the tag names the new index; each platform manifest ends with the same model.sig blob
    index = raw_manifest(registry, repo, "v1")
    assert raw_manifest(registry, repo, index_digest) == index  # the digest printed
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert set(by_arch) == {"amd64", "arm64"}
    tops = {a: raw_manifest(registry, repo, d)["layers"][-1] for a, d in by_arch.items()}
    assert tops["amd64"] == tops["arm64"]
    assert tops["amd64"]["annotations"]["org.cncf.model.filepath"] == "/models/model.sig"

    # a cosign signature for the index and for each manifest, identity = the tag
    public = serialization.load_pem_public_key(keypair.public.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for digest in (index_digest, *by_arch.values()):
        (payload,) = cosign_payloads(registry, repo, digest, public)
        assert payload["critical"]["image"]["docker-manifest-digest"] == digest
        assert payload["critical"]["identity"]["docker-reference"] == image

    # one provenance (the same DSSE blob) is a referrer of the index and of each manifest
    blobs = set()
    for digest in (index_digest, *by_arch.values()):
        referrers = raw_manifest(registry, repo, digest.replace(":", "-"))["manifests"]
        (entry,) = [m for m in referrers if m["artifactType"] == DSSE]
        artifact = raw_manifest(registry, repo, entry["digest"])
        assert artifact["subject"]["digest"] == digest
        blobs.add(artifact["layers"][0]["digest"])
    (blob,) = blobs
    envelope = Envelope.from_dict(json.loads(raw_blob(registry, repo, blob)))
    key = SSlibKey("", "ecdsa", "ecdsa-sha2-nistp256", {"public": keypair.public.read_text()})
    assert "" in envelope.verify([key], 1)
    statement = json.loads(envelope.pae().split(b" ", 4)[4])
    Statement.copy_from_pb(json_format.ParseDict(statement, statement_pb2.Statement())).validate()
    subjects = {s["digest"]["sha256"]: (s.get("annotations") or {}).get("platform")
                for s in statement["subject"]}  # fmt: skip
    assert subjects == {
        index_digest.split(":")[1]: None,
        by_arch["amd64"].split(":")[1]: "linux/amd64",
        by_arch["arm64"].split(":")[1]: "linux/arm64",
    }
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    bases = {d["annotations"]["platform"]: d for d in deps if d["name"] == "base-image"}
    assert set(bases) == {"linux/amd64", "linux/arm64"}
    for arch, digest in by_arch.items():  # each platform's own base layers
        layers = raw_manifest(registry, repo, digest)["layers"]
        assert bases[f"linux/{arch}"]["annotations"]["layers"] == [layers[0]["digest"]]
    files = {d["name"]: d["digest"]["sha256"] for d in deps if d["name"] in model_files()}
    assert files == {p: hashlib.sha256(c).hexdigest() for p, c in model_files().items()}

    # our verify checks every platform; model_signing accepts the extracted amd64 tree
    out = verify_with_key(capsys, image, keypair.public, len(model_files()))
    assert f"ok: linux/amd64 {by_arch['amd64']} signed by this key" in out.out
    assert f"ok: linux/arm64 {by_arch['arm64']} signed by this key" in out.out
    arm = run(capsys, "sign", "--verify", f"{registry.host}/{repo}@{by_arch['arm64']}",
              "--key", str(keypair.public), "--no-tls-verify", "--require-provenance")  # fmt: skip
    assert arm.code == 0, arm.err
    extracted_tree_verifies(f"docker://{image}", tmp_path / "check", keypair.public)


@pytest.mark.slow
def test_verify_key_refuses_an_index_whose_platform_manifest_is_unsigned(
    hub, registry, multi_base, keypair, capsys, tmp_path
):
    """An unsigned two-platform build whose index and amd64 manifest are then signed:
    the arm64 manifest's signature is missing, and verify --key says so; once all are
    signed, a provenance referring to the index alone is refused the same way."""
    hub.add_repo(REPO, model_files())
    image = f"{registry.host}/models/multi-half:v1"
    res = run(capsys, *build_args(image, tmp_path / "ws", multi_base, "--platform", PLATFORMS))
    assert res.code == 0, res.err
    index_digest = res.last_line.rsplit("@", 1)[1]
    index = raw_manifest(registry, "models/multi-half", index_digest)
    arm64 = next(m["digest"] for m in index["manifests"]
                 if m["platform"]["architecture"] == "arm64")  # fmt: skip
    key = keys.load_private_key(keypair.private, PASSWORD.encode())
    amd64 = next(m["digest"] for m in index["manifests"]
                 if m["platform"]["architecture"] == "amd64")  # fmt: skip
    with RegistryClient(registry.host, plain_http=True) as client:
        for digest in (index_digest, amd64):
            cosign.sign_image(client, "models/multi-half", digest, image, key)
    check = run(capsys, "sign", "--verify", image, "--key", str(keypair.public), "--no-tls-verify")
    assert check.code == 60
    assert f"its linux/arm64 manifest {arm64} has no signature by this key" in check.err
    # `modelcar sign` signs the index and each platform manifest, as cosign --recursive
    assert run(capsys, "sign", image, "--key", str(keypair.private), "--no-tls-verify").code == 0
    again = run(capsys, "sign", "--verify", image, "--key", str(keypair.public), "--no-tls-verify")
    assert again.code == 0, again.err
    assert "ok: linux/arm64" in again.out and "note: no provenance" in again.out
    # a provenance for the index alone: the platform manifests lack theirs, and verify says so
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": image, "digest": {"sha256": index_digest[7:]}}],
                 "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}}  # fmt: skip
    with RegistryClient(registry.host, plain_http=True) as client:
        info = client.head_manifest("models/multi-half", index_digest)
        subject = {"mediaType": info.media_type, "digest": index_digest, "size": info.size}
        flow.push_provenance(client, "models/multi-half", subject, statement, key)
    partial = run(capsys, "verify", image, "--key", str(keypair.public), "--no-tls-verify")
    assert partial.code == 60
    assert f"its linux/amd64 manifest {amd64} has no provenance signed by this key" in partial.err
