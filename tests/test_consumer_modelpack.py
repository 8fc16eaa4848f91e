"""`build --modelpack`: a CNCF ModelPack manifest on the ModelCar's own blobs, an OCI 1.1
referrer of the tag's manifest (docs/decisions.md), found through the referrers tag scheme
(`sha256-<hex>`, distribution 2.8 has no referrers API).

Checked with model-spec's own definitions, vendored in tests/data/model-spec (commit in
its README): the config against `config-schema.json` (JSON schema 2020-12, formats
checked), the artifact type and every media type against `specs-go/v1/mediatype.go`.
The registry log shows no weight byte uploaded twice; the tag still gives runtimes the
runnable image (podman runs it) and KServe's fetch still extracts the model."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import requests

from modelcar_builder import errors
from modelcar_builder.oci import modelpack
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.signing.referrers import push_referrer_manifest
from modelcar_builder.target import parse_target
from tests.support.clitools import run
from tests.support.kserve_fetch import download_oci, expected_digests, tree_digests
from tests.support.models import REPO, build_args, model_files
from tests.support.multiarch import build_multiarch_base
from tests.support.podman_fixture import podman  # noqa: F401 (fixture, by name)

SPEC = Path(__file__).parent / "data" / "model-spec"
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


def spec_media_types() -> dict[str, str]:
    """model-spec's Go constants (name -> value), read from its own source."""
    text = (SPEC / "mediatype.go").read_text()
    return dict(re.findall(r'^\s*(\w+)\s*=\s*"([^"]+)"', text, flags=re.M))


def manifest(registry, repo: str, reference: str) -> tuple[dict, str]:
    resp = requests.get(f"{registry.url}/v2/{repo}/manifests/{reference}",
                        headers={"Accept": ACCEPT}, timeout=30)  # fmt: skip
    resp.raise_for_status()
    return resp.json(), "sha256:" + hashlib.sha256(resp.content).hexdigest()


def blob(registry, repo: str, digest: str) -> bytes:
    resp = requests.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30)
    resp.raise_for_status()
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
    return resp.content


def modelpack_referrers(registry, repo: str, subject: str) -> list[dict]:
    index, _ = manifest(registry, repo, subject.replace(":", "-"))
    types = spec_media_types()
    return [
        m for m in index["manifests"] if m.get("artifactType") == types["ArtifactTypeModelManifest"]
    ]


def check_modelpack(registry, repo: str, subject: str, image_manifest: dict, hub) -> dict:
    """The ModelPack referrer of ``subject``, checked against model-spec; returns it."""
    types = spec_media_types()
    (entry,) = modelpack_referrers(registry, repo, subject)
    doc, digest = manifest(registry, repo, entry["digest"])
    assert digest == entry["digest"]
    assert doc["artifactType"] == types["ArtifactTypeModelManifest"]
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["subject"]["digest"] == subject
    assert doc["config"]["mediaType"] == types["MediaTypeModelConfig"]
    layer_types = {
        v
        for k, v in types.items()
        if k.startswith("MediaTypeModel") and k != "MediaTypeModelConfig"
    }
    for layer in doc["layers"]:
        assert layer["mediaType"] in layer_types, layer["mediaType"]
        assert layer["annotations"]["org.cncf.model.filepath"].startswith("/models")
    # the config, against model-spec's JSON schema (formats such as date-time checked)
    config = json.loads(blob(registry, repo, doc["config"]["digest"]))
    schema = json.loads((SPEC / "config-schema.json").read_text())
    formats = jsonschema.Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in formats.checkers  # rfc3339-validator (test extra): never skipped
    jsonschema.Draft202012Validator(schema, format_checker=formats).validate(config)
    assert config["descriptor"]["name"] == REPO
    assert config["descriptor"]["revision"] == hub.head(REPO)
    image_config = json.loads(blob(registry, repo, image_manifest["config"]["digest"]))
    labels = image_config["config"]["Labels"]
    assert config["descriptor"]["sourceURL"] == labels["org.opencontainers.image.source"]
    # the weight layers ARE the ModelCar's layers: same digests, sizes and annotations
    model_layers = image_manifest["layers"][1:]
    assert [(x["digest"], x["size"], x["annotations"]) for x in doc["layers"]] == [
        (x["digest"], x["size"], x["annotations"]) for x in model_layers
    ]
    assert config["modelfs"] == {
        "type": "layers", "diffIds": image_config["rootfs"]["diff_ids"][-len(model_layers):],
    }  # fmt: skip
    kinds = [x["mediaType"] for x in doc["layers"]]
    assert kinds.count(types["MediaTypeModelWeight"]) == 2  # the two safetensors shards
    # the small-files layer (configs, a .py, a .txt: mixed kinds) and, when signed, the
    # model.sig layer: weight configs (oci/modelpack.py says why)
    assert set(kinds) - {types["MediaTypeModelWeight"]} == {types["MediaTypeModelWeightConfig"]}
    return doc


@pytest.mark.slow
def test_modelpack_manifest_on_the_same_blobs_reachable_from_the_tag(
    hub, registry, base_image, capsys, tmp_path, request, monkeypatch
):
    hub.add_repo(REPO, model_files())
    monkeypatch.setenv("COSIGN_PASSWORD", "modelpack-signing-password")  # keygen's and build's
    assert run(capsys, "keygen", str(tmp_path / "keys")).code == 0
    repo, image = "models/mp", f"{registry.host}/models/mp:v1"
    mark = registry.mark()
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref, "--modelpack",
                                  "--sign-key", str(tmp_path / "keys" / "cosign.key")))  # fmt: skip
    assert res.code == 0, res.err
    digest = res.last_line.rsplit("@", 1)[1]

    # the tag is still the runnable image, a plain image manifest
    tagged, tag_digest = manifest(registry, repo, "v1")
    assert tag_digest == digest and tagged["mediaType"].endswith("image.manifest.v1+json")
    doc = check_modelpack(registry, repo, digest, tagged, hub)

    # the referrers tag was merged: the signing's provenance referrer is still listed
    index, _ = manifest(registry, repo, digest.replace(":", "-"))
    assert len(index["manifests"]) >= 2
    assert any("in-toto" in (m.get("artifactType") or "") or "sig" in (m.get("artifactType") or "")
               for m in index["manifests"]), index  # fmt: skip

    # 0 extra weight bytes: every model layer blob was committed once; besides the
    # image's own blobs, only small JSON documents were uploaded
    committed = registry.committed_blobs(since=mark)
    counts = Counter(b.digest for b in committed)
    assert all(counts[x["digest"]] == 1 for x in doc["layers"])
    image_blobs = {x["digest"] for x in tagged["layers"]} | {tagged["config"]["digest"]}
    others = [b for b in committed if b.digest not in image_blobs]
    assert others and all(b.size < 64 * 1024 for b in others), others

    # a runtime pulling the tag gets the runnable image; KServe's fetch still reads it
    pm = request.getfixturevalue("podman")
    pm.pull(image)
    assert (
        pm.start(image, "cat /models/config.json").stdout == model_files()["config.json"].decode()
    )
    fetched = tree_digests(download_oci(image, tmp_path / "fetched"))
    assert fetched.pop("model.sig")  # the signed image's OpenSSF model signature
    assert fetched == expected_digests(model_files())
    out = run(capsys, "verify", image, "--no-tls-verify", "--json")
    assert out.code == 0, out.err
    assert (
        f"ModelPack manifest {modelpack_referrers(registry, repo, digest)[0]['digest'][:19]}"
        in out.out
    )


@pytest.mark.slow
def test_verify_refuses_a_modelpack_referrer_on_other_blobs(
    hub, registry, base_image, capsys, tmp_path
):
    hub.add_repo(REPO, model_files())
    repo, image = "models/mp-bad", f"{registry.host}/models/mp-bad:v1"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref, "--modelpack"))
    assert res.code == 0, res.err
    digest = res.last_line.rsplit("@", 1)[1]
    tagged, _ = manifest(registry, repo, "v1")
    (entry,) = modelpack_referrers(registry, repo, digest)
    doc, _ = manifest(registry, repo, entry["digest"])
    # a second ModelPack referrer whose first layer is the busybox base layer, not the model
    doc["layers"][0] = {**doc["layers"][0], "digest": tagged["layers"][0]["digest"],
                        "size": tagged["layers"][0]["size"]}  # fmt: skip
    with RegistryOptions(tls_verify=False).client_for(parse_target(image).ref) as client:
        push_referrer_manifest(client, repo, doc)
    out = run(capsys, "verify", image, "--no-tls-verify")
    assert out.code == errors.VerificationFailed.exit_code, out.err
    assert "names layers that are not the image's model layers" in out.err


@pytest.mark.slow
def test_modelpack_of_a_multiarch_index_refers_to_the_index(
    hub, registry, base_image, capsys, tmp_path
):
    hub.add_repo(REPO, model_files())
    multi = build_multiarch_base(base_image, registry, tmp_path / "multi-base")
    repo, image = "models/mp-multi", f"{registry.host}/models/mp-multi:v1"
    res = run(capsys, *build_args(image, tmp_path / "ws", multi, "--modelpack",
                                  "--platform", "linux/amd64,linux/arm64"))  # fmt: skip
    assert res.code == 0, res.err
    index, digest = manifest(registry, repo, "v1")
    assert index["mediaType"].endswith("image.index.v1+json")
    # the index itself is untouched: runtimes see only the two platforms
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    amd64, _ = manifest(registry, repo, index["manifests"][0]["digest"])
    check_modelpack(registry, repo, digest, amd64, hub)


def test_modelpack_needs_a_registry(hub, capsys, tmp_path):
    hub.add_repo(REPO, model_files())
    res = run(capsys, *build_args(f"oci:{tmp_path}/layout:v1", tmp_path / "ws", "scratch",
                                  "--modelpack"))  # fmt: skip
    assert res.code == 2 and "--modelpack needs a registry" in res.err
    assert hub.requests == []


@pytest.mark.parametrize(
    ("path", "kind"),
    [("model-00001-of-00002.safetensors", "weight"), ("model.gguf", "weight"),
     ("pytorch_model.bin", "weight"), ("config.json", "weight.config"),
     ("tokenizer/tokenizer.model", "weight.config"), ("README.md", "doc"), ("LICENSE", "doc"),
     ("modeling_custom.py", "code")],
)  # fmt: skip
def test_every_kind_and_compression_is_a_model_spec_media_type(path, kind):
    assert modelpack.file_kind(path) == kind
    spec = set(spec_media_types().values())
    for layer_type in ("application/vnd.oci.image.layer.v1.tar",
                       "application/vnd.oci.image.layer.v1.tar+gzip",
                       "application/vnd.oci.image.layer.v1.tar+zstd"):  # fmt: skip
        assert modelpack.media_type(kind, layer_type) in spec
