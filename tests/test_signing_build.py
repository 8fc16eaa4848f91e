"""`build --sign-key` end to end: Hub imitation -> registry, then each part checked by a
verifier we did not write: model_signing's own CLI on the tree skopeo/umoci extracted,
securesystemslib's DSSE verify and in-toto-attestation's Statement/SLSA protos on the
provenance read raw from the registry."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import requests
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing import flow, keys
from tests.support.clitools import run
from tests.support.models import REPO, build_args, model_files
from tests.support.signing import (
    PASSWORD,
    extracted_tree_verifies,
    make_keypair,
    raw_blob,
    raw_manifest,
)


@pytest.fixture
def keypair(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    pair = make_keypair(capsys, tmp_path / "keys")
    return pair.private, pair.public


@pytest.mark.slow
def test_signed_build_model_signature_provenance_and_unsigned_digest(
    hub_repo, registry, base_image, keypair, capsys, tmp_path
):
    private, public = keypair
    unsigned_image = f"{registry.host}/models/llm:unsigned"
    plain = run(capsys, *build_args(unsigned_image, tmp_path / "ws", base_image.ref))
    assert plain.code == 0, plain.err
    unsigned_digest = plain.last_line.split("@")[1]

    image = f"{registry.host}/models/llm:signed"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref),
              "--sign-key", str(private))  # fmt: skip
    assert res.code == 0, res.err
    assert PASSWORD not in res.out + res.err
    digest = res.last_line.split("@")[1]
    assert digest != unsigned_digest

    # The model layers and the unsigned digest are today's: model.sig is one layer on top.
    signed_manifest = raw_manifest(registry, "models/llm", digest)
    unsigned_manifest = raw_manifest(registry, "models/llm", unsigned_digest)
    assert signed_manifest["layers"][:-1] == unsigned_manifest["layers"]
    top = signed_manifest["layers"][-1]
    assert top["mediaType"] == "application/vnd.oci.image.layer.v1.tar"

    # model_signing's own verify accepts the tree as it comes out of the registry, and
    # refuses it once one byte of one file changed
    extracted_tree_verifies(f"docker://{image}", tmp_path / "check", public)

    # our own check: the image signature and the provenance, by the public key
    check = run(capsys, "sign", "--verify", image, "--key", str(public), "--no-tls-verify",
                "--require-provenance")  # fmt: skip
    assert check.code == 0, check.err
    assert "provenance https://slsa.dev/provenance/v1" in check.out
    verified = run(capsys, "verify", image, "--key", str(public), "--no-tls-verify")
    assert verified.code == 0, verified.err
    assert "provenance https://slsa.dev/provenance/v1" in verified.out
    assert verified.last_line == res.last_line  # still the oci:// URL last
    # --deep: every file against the Hub; model.sig is the build's own file, not a Hub one
    deep = run(capsys, "verify", image, "--deep", "--key", str(public), "--no-tls-verify")
    assert deep.code == 0, deep.err
    n = len(model_files())
    assert f"ok: {n} files = the provenance; " in deep.out
    assert f"{n} = /models/model.sig (model_signing leaves out .git" in deep.out
    unsigned_check = run(capsys, "verify", unsigned_image, "--key", str(public), "--no-tls-verify")
    assert unsigned_check.code == 60 and "no signature" in unsigned_check.err

    # The provenance, read raw from the registry's referrers tag.
    index = raw_manifest(registry, "models/llm", digest.replace(":", "-"))
    (entry,) = [
        m for m in index["manifests"] if m["artifactType"] == "application/vnd.in-toto+json"
    ]
    referrer = raw_manifest(registry, "models/llm", entry["digest"])
    assert referrer["subject"]["digest"] == digest
    raw_env = raw_blob(registry, "models/llm", referrer["layers"][0]["digest"])

    # securesystemslib verifies the DSSE envelope with our public key ...
    key = SSlibKey("", "ecdsa", "ecdsa-sha2-nistp256", {"public": public.read_text()})
    envelope = Envelope.from_dict(json.loads(raw_env))
    assert "" in envelope.verify([key], 1)
    # ... and refuses a changed statement
    tampered = json.loads(raw_env)
    doc = json.loads(base64.b64decode(tampered["payload"]))
    doc["subject"][0]["digest"]["sha256"] = unsigned_digest.split(":")[1]
    tampered["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    with pytest.raises(VerificationError):
        Envelope.from_dict(tampered).verify([key], 1)

    # in-toto-attestation's Statement v1 and SLSA provenance v1 (its protos; upstream
    # publishes no JSON schema for either: tests/data/provenance/README.md)
    statement = json.loads(envelope.pae().split(b" ", 4)[4])
    parsed = json_format.ParseDict(statement, statement_pb2.Statement())  # unknown fields fail
    Statement.copy_from_pb(parsed).validate()
    predicate = json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())
    assert predicate.build_definition.build_type
    assert predicate.run_details.builder.id
    assert statement["subject"][0]["digest"] == {"sha256": digest.split(":")[1]}
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"

    # every file's sha256 is the Hub's; the commit and the base image by digest are named
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    by_name = {d["name"]: d for d in deps}
    for path, content in model_files().items():
        assert by_name[path]["digest"]["sha256"] == hashlib.sha256(content).hexdigest(), path
        if hub_repo.file(REPO, path).sha256:  # LFS: the Hub's own sha256
            assert by_name[path]["digest"]["sha256"] == hub_repo.file(REPO, path).sha256
    assert flow.provenance_files(statement) == {
        path: hashlib.sha256(content).hexdigest() for path, content in model_files().items()
    }
    assert by_name["model"]["digest"] == {"gitCommit": hub_repo.head(REPO)}
    assert by_name["base-image"]["digest"] == {"sha256": base_image.digest.split(":")[1]}
    assert PASSWORD not in json.dumps(statement)
    assert str(private) not in json.dumps(statement)

    # A second provenance for this digest, signed by the key, naming other bytes for one
    # file: verify --deep --key compares every file with every signed provenance.
    other = json.loads(json.dumps(statement))
    for dep in other["predicate"]["buildDefinition"]["resolvedDependencies"]:
        if dep["name"] == "config.json":
            dep["digest"]["sha256"] = "0" * 64
    key = keys.load_private_key(private, PASSWORD.encode())
    with RegistryClient(registry.host, plain_http=True) as client:
        info = client.head_manifest("models/llm", digest)
        subject = {"mediaType": info.media_type, "digest": digest, "size": info.size}
        flow.push_provenance(client, "models/llm", subject, other, key)
    bad_deep = run(capsys, "verify", image, "--deep", "--key", str(public), "--no-tls-verify")
    assert bad_deep.code == 60
    assert "config.json differs from the provenance" in bad_deep.err


@pytest.mark.slow
def test_stream_with_sign_key_is_refused_before_any_download(
    hub_repo, registry, keypair, capsys, tmp_path
):
    private, _ = keypair
    image = f"{registry.host}/models/llm:streamed"
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch"), "--stream",
              "--sign-key", str(private))  # fmt: skip
    assert res.code == 2
    assert "--stream with --sign-key" in res.err
    assert not any(hub_repo.bytes_served.values())  # not one byte of a model file
    assert raw_manifest_missing(registry, "models/llm", "streamed")


def raw_manifest_missing(registry, repo: str, tag: str) -> bool:
    return requests.head(f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=30).status_code == 404


@pytest.mark.slow
def test_a_wrong_password_stops_the_build_before_the_download(
    hub_repo, registry, keypair, capsys, tmp_path, monkeypatch
):
    private, _ = keypair
    monkeypatch.setenv("COSIGN_PASSWORD", "not the password")
    image = f"{registry.host}/models/llm:wrongpw"
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch"), "--sign-key", str(private))
    assert res.code == 2
    assert "password does not open" in res.err
    assert "not the password" not in res.err
    assert not any(hub_repo.bytes_served.values())


@pytest.mark.slow
def test_a_registry_refusing_oci_artifacts_fails_the_provenance_push_clearly(
    hub_repo, registry, base_image, keypair, cutting_proxy, capsys, tmp_path
):
    """A registry (or the proxy before it) that refuses the provenance artifact's PUT by
    digest: the build says what was pushed and what was not; verify --key then finds the
    signature but no provenance."""
    private, public = keypair
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    proxy.refuse(b"PUT /v2/models/llm/manifests/sha256:", b"400 Bad Request")
    image = f"{proxy.host}/models/llm:refused"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref),
              "--sign-key", str(private))  # fmt: skip
    assert res.code == 52
    assert "pushing the provenance" in res.err and "image signature are pushed" in res.err
    proxy.restore()
    check = run(capsys, "verify", image, "--key", str(public), "--no-tls-verify")
    assert check.code == 60 and "no provenance" in check.err
    signature_only = run(capsys, "sign", "--verify", image, "--key", str(public),
                         "--no-tls-verify")  # fmt: skip
    assert signature_only.code == 0 and "no provenance signed by this key" in signature_only.out
