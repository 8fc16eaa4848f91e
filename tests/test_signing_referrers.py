"""Provenance as an OCI 1.1 referrer on distribution 2.8 (no referrers API): the
referrers tag keeps what others put there, and our check takes only an envelope signed
by the key whose statement names the image."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import requests

from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing import flow, keys, provenance, referrers
from tests.support.clitools import run

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def put(registry, path: str, body: bytes, media_type: str) -> None:
    resp = requests.put(f"{registry.url}/v2/{path}", data=body,
                        headers={"Content-Type": media_type}, timeout=30)  # fmt: skip
    assert resp.status_code == 201, resp.text


def put_blob(registry, repo: str, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    start = requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", timeout=30)
    location = start.headers["Location"]
    sep = "&" if "?" in location else "?"
    url = location if location.startswith("http") else f"{registry.url}{location}"
    done = requests.put(f"{url}{sep}digest={digest}", data=data, timeout=30)
    assert done.status_code == 201, done.text
    return digest


def foreign_referrer(registry, repo: str, subject: dict) -> dict:
    """A ModelPack-like artifact someone else pushed, listed in the referrers tag the
    way ORAS does on a registry without the API. Plain HTTP, none of our code."""
    empty = put_blob(registry, repo, b"{}")
    layer = put_blob(registry, repo, b'{"modelpack": true}')
    manifest = {
        "schemaVersion": 2, "mediaType": MANIFEST,
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.cncf.model.config.v1+json",
                    "digest": layer, "size": 19}],
        "subject": subject,
    }  # fmt: skip
    body = json.dumps(manifest).encode()
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    put(registry, f"{repo}/manifests/{digest}", body, MANIFEST)
    entry = {"mediaType": MANIFEST, "digest": digest, "size": len(body),
             "artifactType": manifest["artifactType"]}  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry]}
    tag = subject["digest"].replace(":", "-")
    put(registry, f"{repo}/manifests/{tag}", json.dumps(index).encode(), INDEX)
    return entry


def referrers_tag(registry, repo: str, digest: str) -> dict:
    tag = digest.replace(":", "-")
    resp = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}",
                        headers={"Accept": INDEX}, timeout=30)  # fmt: skip
    resp.raise_for_status()
    return resp.json()


@pytest.mark.slow
def test_provenance_joins_other_referrers_and_only_a_good_one_counts(
    registry, base_image, capsys, tmp_path
):
    private, public = keys.write_pair(tmp_path / "k", b"pw")
    key = keys.load_private_key(private, b"pw")
    image = base_image.copy_to(registry, "ref/model", "v1")
    assert run(capsys, "sign", image, "--key", str(private), "--no-tls-verify",
               "--key-password-file", str(write(tmp_path / "pw", "pw"))).code == 0  # fmt: skip
    client = RegistryClient(registry.host, plain_http=True)
    info = client.head_manifest("ref/model", "v1")
    subject = {"mediaType": info.media_type, "digest": info.digest, "size": info.size}
    theirs = foreign_referrer(registry, "ref/model", subject)
    check = ("sign", "--verify", image, "--key", str(public), "--no-tls-verify",
             "--require-provenance")  # fmt: skip
    none = run(capsys, *check)
    assert none.code == 60 and "no provenance" in none.err

    good = {"_type": provenance.STATEMENT_TYPE, "predicateType": provenance.SLSA_PROVENANCE_V1,
            "subject": [{"name": "x", "digest": {"sha256": info.digest.split(":")[1]}}],
            "predicate": {"buildDefinition": {"buildType": "t"}}}  # fmt: skip
    # a statement about another image, signed, listed under this one: refused
    other = json.loads(json.dumps(good))
    other["subject"][0]["digest"]["sha256"] = "0" * 64
    flow.push_provenance(client, "ref/model", subject, other, key)
    # a good statement whose envelope was changed after signing: refused
    env = json.loads(provenance.envelope(good, key))
    doc = json.loads(base64.b64decode(env["payload"]))
    doc["predicate"]["buildDefinition"]["buildType"] = "changed"
    env["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    referrers.push_referrer(client, "ref/model", subject, flow.PROVENANCE_ARTIFACT_TYPE,
                            json.dumps(env).encode(), flow.DSSE_MEDIA_TYPE, {})  # fmt: skip
    still = run(capsys, *check)
    assert still.code == 60 and "no provenance" in still.err

    flow.push_provenance(client, "ref/model", subject, good, key)
    ok = run(capsys, *check)
    assert ok.code == 0, ok.err
    assert ok.out.count("ok: provenance") == 1

    listed = referrers_tag(registry, "ref/model", info.digest)["manifests"]
    assert theirs in listed  # the other tool's referrer is kept, byte for byte
    assert len(listed) == 4
    client.close()


def write(path, text: str):
    path.write_text(text)
    return path
