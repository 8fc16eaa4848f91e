"""What the signing tests share: a key pair `modelcar keygen` wrote, and the two
verifiers every signed build must pass: our `verify --key` (`--deep`) and the OpenSSF
library's own `model_signing verify key` on the tree skopeo + umoci extracted; and plain
HTTP reads and writes of manifests and signature tags, none of our code."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.clitools import Result, run
from tests.support.imagecheck import Unpacked, unpack

PASSWORD = "build-signing-password"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_keypair(capsys: pytest.CaptureFixture[str], directory: Path) -> KeyPair:
    """`modelcar keygen DIR` with COSIGN_PASSWORD set (the caller's monkeypatch)."""
    res = run(capsys, "keygen", str(directory))
    assert res.code == 0, res.err
    return KeyPair(directory / "cosign.key", directory / "cosign.pub")


def model_signing_verify(tree: Path, public: Path) -> subprocess.CompletedProcess[str]:
    """The OpenSSF library's own CLI, defaults only."""
    argv = [sys.executable, "-m", "model_signing", "verify", "key", "--signature",
            str(tree / "model.sig"), "--public_key", str(public), str(tree)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def verify_with_key(
    capsys: pytest.CaptureFixture[str], image: str, public: Path, files: int | None
) -> Result:
    """`modelcar verify --key`: the image signature and the provenance; with ``files``
    (the model's file count) `--deep` too: every file against both the provenance and
    /models/model.sig."""
    deep = ("--deep",) if files is not None else ()
    res = run(capsys, "verify", image, *deep, "--key", str(public), "--no-tls-verify")
    assert res.code == 0, res.err
    assert "provenance https://slsa.dev/provenance/v1 signed by this key" in res.out
    if files is not None:
        assert f"ok: {files} files = the provenance; " in res.out
    return res


def extracted_tree_verifies(src: str, workdir: Path, public: Path) -> Unpacked:
    """skopeo + umoci extract ``src``; model_signing accepts /models, and refuses it
    once one byte of one file changed (config.json is left changed)."""
    img = unpack(src, workdir)
    models = img.rootfs / "models"
    assert (models / "model.sig").is_file()
    ok = model_signing_verify(models, public)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    victim = models / "config.json"
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    assert model_signing_verify(models, public).returncode != 0
    return img


ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))  # fmt: skip


def raw_manifest(registry, repo: str, reference: str) -> dict:
    """A manifest or index as the registry serves it, read with plain HTTP."""
    resp = requests.get(f"{registry.url}/v2/{repo}/manifests/{reference}",
                        headers={"Accept": ACCEPT}, timeout=30)  # fmt: skip
    resp.raise_for_status()
    return resp.json()


def raw_blob(registry, repo: str, digest: str) -> bytes:
    resp = requests.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30)
    resp.raise_for_status()
    assert f"sha256:{hashlib.sha256(resp.content).hexdigest()}" == digest
    return resp.content


def signature_tag(registry, repo: str, digest: str) -> requests.Response:
    """HEAD of the cosign signature tag of ``digest``, ``sha256-<hex>.sig``."""
    url = f"{registry.url}/v2/{repo}/manifests/{digest.replace(':', '-')}.sig"
    return requests.head(url, headers={"Accept": ACCEPT}, timeout=30)


def delete_signature(registry, repo: str, digest: str) -> None:
    """Remove the cosign signature of ``digest`` (the ``sha256-<hex>.sig`` tag and the
    manifest it names), as anyone with delete rights could; the tag is gone after."""
    head = signature_tag(registry, repo, digest)
    head.raise_for_status()
    sig_digest = head.headers["Docker-Content-Digest"]
    gone = requests.delete(f"{registry.url}/v2/{repo}/manifests/{sig_digest}", timeout=30)
    assert gone.status_code == 202, gone.text
    assert signature_tag(registry, repo, digest).status_code == 404


def put_raw_manifest(registry, repo: str, reference: str, doc: dict) -> str:
    """PUT ``doc`` (its own mediaType) at ``reference`` with plain HTTP; returns its digest."""
    body = json.dumps(doc).encode()
    resp = requests.put(f"{registry.url}/v2/{repo}/manifests/{reference}", data=body,
                        headers={"Content-Type": doc["mediaType"]}, timeout=30)  # fmt: skip
    assert resp.status_code == 201, resp.text
    return f"sha256:{hashlib.sha256(body).hexdigest()}"
