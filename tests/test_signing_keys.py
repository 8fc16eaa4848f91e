"""`modelcar keygen` and the key formats, checked by containers/image (skopeo signs with
the key we wrote and verifies through a policy with our public key)."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelcar_builder.errors import UsageError
from modelcar_builder.signing import keys
from tests.support.clitools import run

PASSWORD = "correct horse battery staple"


def test_keygen_writes_a_cosign_pair_the_password_opens(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    res = run(capsys, "keygen", str(tmp_path / "k"))
    assert res.code == 0, res.err
    private, public = tmp_path / "k" / "cosign.key", tmp_path / "k" / "cosign.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    text = private.read_text()
    # the PEM type containers/image 5.23 (skopeo 1.9.3) insists on; cosign 2 reads it too
    assert text.startswith("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----")
    assert PASSWORD not in res.out + res.err
    key = keys.load_private_key(private, PASSWORD.encode())
    loaded_pub = serialization.load_pem_public_key(public.read_bytes())
    assert key.public_pem() == keys.public_pem(loaded_pub)
    with pytest.raises(UsageError) as wrong:
        keys.load_private_key(private, b"not it")
    assert "password does not open" in wrong.value.message
    assert "not it" not in wrong.value.message
    again = run(capsys, "keygen", str(tmp_path / "k"))
    assert again.code == 2 and "exists" in again.err


def test_keygen_reads_the_password_from_a_file_never_argv(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    missing = run(capsys, "keygen", str(tmp_path / "a"))
    assert missing.code == 2 and "no password" in missing.err
    res = run(capsys, "keygen", str(tmp_path / "b"), "--password-file", str(pw))
    assert res.code == 0, res.err
    keys.load_private_key(tmp_path / "b" / "cosign.key", PASSWORD.encode())


def test_plain_pkcs8_p256_is_accepted_and_other_curves_refused(tmp_path):
    p256 = ec.generate_private_key(ec.SECP256R1())
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        p256.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert keys.load_private_key(plain, None).public_pem() == keys.public_pem(p256.public_key())
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(p256.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ))  # fmt: skip
    assert keys.load_private_key(encrypted, b"pw").public_pem() == plain_pub(p256)
    with pytest.raises(UsageError):
        keys.load_private_key(encrypted, b"wrong")
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(UsageError) as other:
        keys.load_private_key(p384, None)
    assert "P-256" in other.value.message


def test_the_cosign_2_pem_type_is_read_too(tmp_path):
    private, public = keys.write_pair(tmp_path, b"pw")
    renamed = tmp_path / "cosign2.key"
    renamed.write_text(private.read_text().replace("COSIGN PRIVATE", "SIGSTORE PRIVATE"))
    assert keys.load_private_key(renamed, b"pw").public_pem() == public.read_bytes()


def plain_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    return keys.public_pem(key.public_key())
