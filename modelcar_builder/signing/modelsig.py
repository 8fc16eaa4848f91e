"""The OpenSSF model signature (the ``model_signing`` library, key-based, offline) over
the model's files, carried in the image at ``/models/model.sig`` in a layer of its own,
appended last: the model layers, and the digest of an unsigned build, stay as they are.
ECDSA signatures differ at every signing, so a signed image's digest is per signing.

The library hashes files on disk: a ``--stream`` build has none, so it is refused up
front with ``--sign-key``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar_builder.errors import UsageError
from modelcar_builder.oci import (
    ANNOTATION_FILE_SHA256,
    ANNOTATION_FILEPATH,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
)
from modelcar_builder.oci.image import canonical_json
from modelcar_builder.oci.layer import END_OF_ARCHIVE, dir_header, file_header
from modelcar_builder.registry import RegistryClient
from modelcar_builder.signing.keys import SigningKey, verify_signature
from modelcar_builder.signing.provenance import PAYLOAD_TYPE, pae
from modelcar_builder.signing.store import (
    ACCEPT_IMAGE,
    descriptor,
    loads,
    put_blob,
    put_json_manifest,
    sha256,
)

SIGNATURE_NAME = "model.sig"  # at /models/model.sig
HISTORY_COMMENT = "modelcar: OpenSSF model signature (/models/model.sig)"


def require_library() -> None:
    try:
        import model_signing  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"--sign-key needs the model_signing library ({exc})",
            hint="pip install 'modelcar-builder[sign]' (model-signing 1.1.1)",
        ) from None


def sign_tree(model_dir: Path, paths: Iterable[str], key: SigningKey) -> bytes:
    """A model_signing signature (a sigstore bundle, JSON) over exactly ``paths`` under
    ``model_dir``; other files there (left out by the selection) are ignored. The
    library's defaults otherwise (sha256 per file, git files ignored), so its own
    ``verify key`` with defaults accepts the tree as it lands in /models."""
    require_library()
    from model_signing import hashing, signing

    wanted = set(paths)
    if SIGNATURE_NAME in wanted:
        raise UsageError(
            f"the model has a file named {SIGNATURE_NAME}, where the signature goes",
            hint="exclude it from the selection, or build without --sign-key",
        )
    extra = [p for p in _files_under(model_dir) if p not in wanted]
    with tempfile.TemporaryDirectory(prefix="modelcar-sign-") as tmp:
        os.chmod(tmp, 0o700)
        # The library loads a PEM file: the key goes there encrypted with a one-time
        # password that lives only in this process.
        once = secrets.token_urlsafe(32)
        pem = Path(tmp) / "key.pem"
        fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.pkcs8_pem(once.encode()))
        sig = Path(tmp) / SIGNATURE_NAME
        # model-signing 1.1.1 annotates password as str, but hands it to cryptography's
        # load_pem_private_key, which takes bytes (a str raises TypeError): the stub is wrong.
        config = signing.Config().use_elliptic_key_signer(
            private_key=pem,
            password=once.encode(),  # type: ignore[arg-type]
        )
        config.set_hashing_config(hashing.Config().set_ignored_paths(paths=extra))
        config.sign(model_dir, sig)
        return sig.read_bytes()


def layer_annotations(signature: bytes) -> dict[str, str]:
    """As every model layer has: the /models path it fills and that file's sha256, so
    `verify --deep` reads it as a model layer (and knows model.sig as the build's own)."""
    return {
        ANNOTATION_FILEPATH: f"/models/{SIGNATURE_NAME}",
        ANNOTATION_FILE_SHA256: hashlib.sha256(signature).hexdigest(),
    }


def signature_layer(signature: bytes) -> bytes:
    """An uncompressed tar: ``models/`` and ``models/model.sig`` (0644, uid 0, mtime 0)."""
    pad = -len(signature) % 512
    return (
        dir_header("models/")
        + file_header(f"models/{SIGNATURE_NAME}", len(signature))
        + signature
        + b"\0" * pad
        + END_OF_ARCHIVE
    )


def append_layer(
    client: RegistryClient,
    repo: str,
    digest: str,
    signature: bytes,
    tag: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Push ``repo@digest`` plus the signature layer on top (config: one more diff_id
    and history entry), at ``tag``, or by its own digest when ``tag`` is None (a
    platform manifest of an index); returns the new manifest's descriptor and the
    layer's.

    The layer takes the image's own kind: an OCI or a Docker schema 2 manifest (docker
    pushes Docker's), uncompressed when the model layers are, else gzip (buildah, podman
    and docker write gzip; a reader of that image reads gzip), so no reader meets a
    layer type it has not met in the rest of the image."""
    manifest = loads(client.get_manifest(repo, digest, ACCEPT_IMAGE).body)
    kind = manifest.get("mediaType", MEDIA_TYPE_MANIFEST)
    if kind not in ACCEPT_IMAGE:
        raise UsageError(
            f"{repo}@{digest} is a {kind} manifest; the model signature layer needs an "
            "OCI or a Docker schema 2 image manifest",
            hint="build without --sign-key, or report this as a bug",
        )
    tar = signature_layer(signature)
    # the top layer is a model layer (the base's may be compressed when the model's are not)
    top = manifest["layers"][-1] if manifest.get("layers") else {}
    compressed = _is_compressed(str(top.get("mediaType", "")))
    blob = gzip.compress(tar, compresslevel=6, mtime=0) if compressed else tar
    config = loads(client.read_blob(repo, manifest["config"]["digest"]))
    put_blob(client, repo, blob)
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), sha256(tar)]  # of the tar itself
    history = list(config.get("history") or [])
    created = history[-1].get("created") if history else config.get("created")
    entry = {"created_by": HISTORY_COMMENT, "comment": HISTORY_COMMENT}
    if created:
        entry["created"] = created
    config["history"] = [*history, entry]
    config_body = json.dumps(config, separators=(",", ":")).encode()
    put_blob(client, repo, config_body)
    layer_desc = descriptor(
        _layer_type(kind, compressed), blob, annotations=layer_annotations(signature)
    )
    manifest["config"] = descriptor(
        manifest["config"].get("mediaType", MEDIA_TYPE_CONFIG), config_body
    )
    manifest["layers"] = [*manifest["layers"], layer_desc]
    reference = tag or sha256(canonical_json(manifest))
    new_digest, body = put_json_manifest(client, repo, reference, manifest)
    return {"mediaType": kind, "digest": new_digest, "size": len(body)}, layer_desc


def _is_compressed(media_type: str) -> bool:
    return media_type.endswith(("gzip", "zstd"))


def _layer_type(manifest_type: str, compressed: bool) -> str:
    if manifest_type == DOCKER_MANIFEST:
        return DOCKER_LAYER_GZIP if compressed else DOCKER_LAYER
    return MEDIA_TYPE_LAYER_GZIP if compressed else MEDIA_TYPE_LAYER


def _files_under(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return out


def signed_files(signature: bytes, key: ec.EllipticCurvePublicKey) -> dict[str, str] | None:
    """path -> sha256 of every file a model_signing signature (a sigstore bundle whose
    DSSE envelope holds an in-toto statement) covers, when ``key`` signed it; else None.
    Paths its serialization ignored (git files) are listed under ``IGNORED``."""
    try:
        bundle = json.loads(signature)
        env = bundle["dsseEnvelope"]
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
        if env.get("payloadType") != PAYLOAD_TYPE:
            return None
    except (ValueError, KeyError, TypeError):
        return None
    if not any(verify_signature(key, sig, pae(PAYLOAD_TYPE, payload)) for sig in sigs):
        return None
    try:
        predicate = json.loads(payload)["predicate"]
        out = {
            str(r["name"]): str(r["digest"])
            for r in predicate["resources"]
            if r.get("algorithm") == "sha256"
        }
        out[IGNORED] = json.dumps(predicate.get("serialization", {}).get("ignore_paths", []))
    except (ValueError, KeyError, TypeError):
        return None
    return out


IGNORED = "\0ignored"  # a key no path can be: the signature's ignore_paths, as JSON


def read_from_layer(layer: bytes) -> bytes | None:
    """``models/model.sig`` from the signature layer's bytes (tar, or tar+gzip)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            member = tar.getmember(f"models/{SIGNATURE_NAME}")
            f = tar.extractfile(member)
            return f.read() if f else None
    except (KeyError, tarfile.TarError):
        return None
