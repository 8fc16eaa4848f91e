"""Signing keys: cosign's encrypted private key (what ``cosign generate-key-pair`` writes
and Tekton Chains' ``signing-secrets`` hold), plain PKCS#8 PEM (ECDSA P-256), and the
PEM public key every verifier (containers/image, cosign, model_signing) reads.

cosign's format: a PEM block whose body is JSON ``{"kdf": scrypt(N, r, p, salt),
"cipher": nacl/secretbox(nonce), "ciphertext"}`` around the PKCS#8 DER of the key
(go-securesystemslib's ``encrypted`` package). The password never appears in an error,
a log line or argv: it comes from a file or ``COSIGN_PASSWORD``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from modelcar_builder.errors import UsageError
from modelcar_builder.settings import environment

# cosign 2.x writes SIGSTORE, 1.x wrote COSIGN; we read both. We write COSIGN: cosign 2.x
# and newer containers/image read both, but containers/image 5.23 (skopeo 1.9, podman 4.3,
# CRI-O of that age) reads only COSIGN (signature/sigstore/copied.go at v5.23.1).
ENCRYPTED_PEM_TYPES = ("ENCRYPTED COSIGN PRIVATE KEY", "ENCRYPTED SIGSTORE PRIVATE KEY")
WRITTEN_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 32768, 8, 1  # cosign's defaults
PASSWORD_ENV = "COSIGN_PASSWORD"


@dataclass(frozen=True)
class SigningKey:
    """A loaded ECDSA P-256 private key; ``where`` names the file, never its secret."""

    private: ec.EllipticCurvePrivateKey
    where: str

    @property
    def public(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        return public_pem(self.public)

    def sign(self, data: bytes) -> bytes:
        """ASN.1 DER ECDSA signature over sha256(data), cosign's and containers/image's."""
        return self.private.sign(data, ec.ECDSA(hashes.SHA256()))

    def pkcs8_pem(self, password: bytes) -> bytes:
        """The key as encrypted PKCS#8 PEM (what the model_signing library loads)."""
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def encrypt_cosign(key: ec.EllipticCurvePrivateKey, password: bytes) -> bytes:
    """cosign's encrypted private key PEM for ``key``."""
    from nacl.secret import SecretBox

    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, nonce = secrets.token_bytes(32), secrets.token_bytes(24)
    box = SecretBox(_scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    envelope = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": _b64(salt),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
        "ciphertext": _b64(box.encrypt(der, nonce).ciphertext),
    }
    return _pem(WRITTEN_PEM_TYPE, json.dumps(envelope).encode())


def load_private_key(path: str | Path, password: bytes | None) -> SigningKey:
    """cosign's encrypted format, or PKCS#8/SEC1 PEM (encrypted with ``password`` or not).
    Only ECDSA P-256: the one containers/image, cosign and model_signing all accept."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the signing key {where}: {exc.strerror}",
            hint="--sign-key names the private key file (cosign.key from `modelcar keygen`)",
        ) from None
    block = _pem_block(data)
    if block is not None and block[0] in ENCRYPTED_PEM_TYPES:
        key = _decrypt_cosign(block[1], password, where)
    else:
        key = _load_pem_private(data, password, where)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(
            f"the signing key {where} is not an ECDSA P-256 key",
            hint="write one with `modelcar keygen DIR` or `cosign generate-key-pair`",
        )
    return SigningKey(key, where)


def load_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    where = str(path)
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the public key {where}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(
            f"{where} is not a PEM public key",
            hint="pass the cosign.pub written beside the private key",
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError(f"the public key {where} is not an ECDSA key")
    return key


def verify_signature(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def read_password(password_file: str | None, *, required: bool) -> bytes | None:
    """The key's password from ``password_file``, else ``COSIGN_PASSWORD``; a file's one
    trailing newline is dropped (as skopeo's --sign-passphrase-file does)."""
    if password_file:
        try:
            raw = Path(password_file).read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read the key password file {password_file}: {exc.strerror}"
            ) from None
        return raw.removesuffix(b"\n").removesuffix(b"\r")
    env = environment().get(PASSWORD_ENV)
    if env is not None:
        return env.encode()
    if required:
        raise UsageError(
            "no password for the signing key",
            hint=f"put it in a file for --sign-key-password-file, or set {PASSWORD_ENV}",
        )
    return None


def write_pair(directory: Path, password: bytes, *, force: bool = False) -> tuple[Path, Path]:
    """``cosign.key`` (cosign's encrypted format, mode 0600) and ``cosign.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / "cosign.key", directory / "cosign.pub"
    if not force:
        for p in (private_path, public_path):
            if p.exists():
                raise UsageError(f"{p} exists", hint="pick another directory, or add --force")
    key = generate()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(encrypt_cosign(key, password))
    os.chmod(private_path, 0o600)  # an existing file keeps its mode through O_TRUNC
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path


# -- internals ------------------------------------------------------------------------------


def _decrypt_cosign(body: bytes, password: bytes | None, where: str):
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    if password is None:
        raise UsageError(
            f"the signing key {where} is encrypted and no password was given",
            hint=f"put it in a file for --sign-key-password-file, or set {PASSWORD_ENV}",
        )
    try:
        env = json.loads(body)
        kdf, cipher = env["kdf"], env["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise ValueError("unknown kdf or cipher")
        params = kdf["params"]
        secret = _scrypt(
            password, base64.b64decode(kdf["salt"]), params["N"], params["r"], params["p"]
        )
        nonce = base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(env["ciphertext"])
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"the signing key {where} is not a readable cosign key") from None
    try:
        der = SecretBox(secret).decrypt(ciphertext, nonce)
    except CryptoError:
        raise UsageError(
            f"the password does not open the signing key {where}",
            hint="check the password file or COSIGN_PASSWORD",
        ) from None
    return serialization.load_der_private_key(der, None)


def _load_pem_private(data: bytes, password: bytes | None, where: str):
    for attempt in (password, None) if password else (None,):
        try:
            return serialization.load_pem_private_key(data, attempt)
        except TypeError:
            # encrypted without a password, or a password for an unencrypted key
            continue
        except ValueError:
            break
    encrypted = b"ENCRYPTED" in data
    raise UsageError(
        f"cannot load the signing key {where}"
        + (": wrong or missing password" if encrypted else ": not a PEM private key"),
        hint="a cosign key (`modelcar keygen`, `cosign generate-key-pair`) or PKCS#8 PEM",
    )


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)


def _pem_block(data: bytes) -> tuple[str, bytes] | None:
    text = data.decode("ascii", "replace")
    begin = text.find("-----BEGIN ")
    if begin < 0:
        return None
    head_end = text.find("-----", begin + 11)
    kind = text[begin + 11 : head_end]
    end = text.find(f"-----END {kind}-----", head_end)
    if end < 0:
        return None
    body = "".join(text[head_end + 5 : end].split())
    try:
        return kind, base64.b64decode(body)
    except ValueError:
        return None


def _pem(kind: str, body: bytes) -> bytes:
    b64 = base64.b64encode(body).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"]) + "\n").encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
