"""The CAs OpenSSL's variables name are trusted for registries: SSL_CERT_DIR (as OpenShift
Pipelines injects the cluster's trusted bundle, /tekton-custom-certs/ca-bundle.crt, a file
with no c_rehash name) and SSL_CERT_FILE, with no --ca-file; doctor names the one used.
Real parts: the TLS docker-registry (its CA made by openssl for the session), the
in-process CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from modelcar_builder import errors
from tests.support.clitools import run

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "modelcar_builder" / "examples" / "tiny-model"


def _args(command: str, image: str, ws: Path) -> list[str]:
    return [command, str(TINY), "--engine", "native", "--image", image, "--workspace", str(ws),
            "--base-image", "scratch"]  # fmt: skip


@pytest.fixture
def no_ca_env(monkeypatch):
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                "MODELCAR_CA_FILE"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)


def test_a_ca_only_in_ssl_cert_dir_is_trusted(registry_tls, no_ca_env, monkeypatch, capsys,
                                              tmp_path):  # fmt: skip
    image = f"{registry_tls.host}/trust/dir:v1"
    res = run(capsys, *_args("build", image, tmp_path / "ws0"))
    assert res.code == errors.RegistryUnreachable.exit_code, res.err  # untrusted without it

    certs = tmp_path / "tekton-custom-certs"
    certs.mkdir()
    shutil.copyfile(registry_tls.ca_file, certs / "ca-bundle.crt")
    (certs / "README").write_text("not a certificate\n")
    monkeypatch.setenv("SSL_CERT_DIR", f"{certs}:{tmp_path / 'absent'}:/etc/ssl/certs")
    res = run(capsys, *_args("build", image, tmp_path / "ws"))
    assert res.code == 0, res.err
    assert res.last_line.startswith(f"oci://{registry_tls.host}/trust/dir@sha256:")

    res = run(capsys, *_args("doctor", image, tmp_path / "ws"))
    assert res.code == 0, res.out + res.err
    assert f"TLS trusted with CA SSL_CERT_DIR {certs}:" in res.out
    assert re.search(r"\(\d+ files? added to \S+certifi\S+cacert.pem\)", res.out), res.out


def test_a_ca_in_ssl_cert_file_is_trusted(registry_tls, no_ca_env, monkeypatch, capsys,
                                          tmp_path):  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(registry_tls.ca_file))
    image = f"{registry_tls.host}/trust/file:v1"
    res = run(capsys, *_args("build", image, tmp_path / "ws"))
    assert res.code == 0, res.err
    res = run(capsys, *_args("doctor", image, tmp_path / "ws"))
    assert f"TLS trusted with CA SSL_CERT_FILE {registry_tls.ca_file}" in res.out, res.out


def test_ca_file_wins_over_the_environment(registry_tls, no_ca_env, monkeypatch, capsys,
                                           tmp_path):  # fmt: skip
    empty = tmp_path / "certs"
    empty.mkdir()
    (empty / "other.crt").write_text((ROOT / "tests" / "data" / "README.md").read_text())
    monkeypatch.setenv("SSL_CERT_DIR", str(empty))
    image = f"{registry_tls.host}/trust/cafile:v1"
    res = run(capsys, *_args("doctor", image, tmp_path / "ws"), "--ca-file",
              str(registry_tls.ca_file))  # fmt: skip
    assert res.code == 0, res.out + res.err
    assert f"TLS trusted with CA {registry_tls.ca_file}" in res.out
