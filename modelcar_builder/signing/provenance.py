"""SLSA provenance v1 in an in-toto Statement v1, signed as a DSSE envelope.

subject: the image (``host/repo`` and its manifest sha256; for a several-platform build
the index and each platform manifest, docs/decisions.md); resolvedDependencies: the
model's source at its commit, every file with its sha256 (and git blob id where the Hub
gave one), and the base image by digest (its layers per platform); builder: modelcar and
its version; the parameters of the build, no secret among them (no password, token or key
path).
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar_builder import __version__
from modelcar_builder.signing.keys import SigningKey, verify_signature
from modelcar_builder.snapshot import FileEntry, Snapshot

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:modelcar-builder:build-type:modelcar:v1"  # no project URL to name
BUILDER_ID = "urn:modelcar-builder:builder"


@dataclass(frozen=True)
class BaseImageDep:
    reference: str  # as the user wrote it (registry ref, oci:PATH, "scratch")
    digest: str | None  # the manifest (or index) digest it resolved to
    layers: tuple[str, ...]  # the base layers' digests as they are in the pushed image
    platform: str | None = None  # OS/ARCH of an index's platform these layers are for


def file_digests(
    entries: Iterable[FileEntry], computed: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Per path: sha256 (from the plan, else ``computed``: what the build hashed, or read
    back from the verified file, for files the source gives none of) and the git blob id
    where the Hub gave one."""
    out: dict[str, dict[str, str]] = {}
    for entry in entries:
        digest: dict[str, str] = {}
        sha = entry.sha256 or computed.get(entry.path)
        if sha:
            digest["sha256"] = sha
        if entry.blob_id:
            digest["gitBlob"] = entry.blob_id
        out[entry.path] = digest
    return out


def statement(
    *,
    image_name: str,
    image_digest: str,
    snapshot: Snapshot,
    files: Mapping[str, Mapping[str, str]],
    bases: Sequence[BaseImageDep],
    parameters: Mapping[str, Any],
    internal: Mapping[str, Any],
    started: datetime.datetime | None = None,
    finished: datetime.datetime | None = None,
    platforms: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """``image_digest`` is what the tag names (an image manifest, or the index of a
    several-platform build); ``platforms`` the index's (OS/ARCH, manifest digest): every
    one is a subject, annotated with its platform, and ``bases`` has one entry each."""
    subjects = [_subject(image_name, image_digest)]
    subjects += [_subject(image_name, d, {"platform": p}) for p, d in platforms]
    source = _source_dependency(snapshot)
    deps = [source]
    for path in sorted(files):
        deps.append({"name": path, "uri": _file_uri(snapshot, path), "digest": dict(files[path])})
    for base in bases:
        if base.reference == "scratch":
            continue
        dep: dict[str, Any] = {"name": "base-image", "uri": _base_uri(base.reference)}
        if base.digest:
            a, _, h = base.digest.partition(":")
            dep["digest"] = {a: h}
        notes: dict[str, Any] = {"platform": base.platform} if base.platform else {}
        if base.layers:
            notes["layers"] = list(base.layers)
        if notes:
            dep["annotations"] = notes
        deps.append(dep)
    metadata: dict[str, Any] = {}
    if started:
        metadata["startedOn"] = _rfc3339(started)
    if finished:
        metadata["finishedOn"] = _rfc3339(finished)
    run_details: dict[str, Any] = {
        "builder": {"id": BUILDER_ID, "version": {"modelcar": __version__}}
    }
    if metadata:
        run_details["metadata"] = metadata
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": dict(parameters),
                "internalParameters": dict(internal),
                "resolvedDependencies": deps,
            },
            "runDetails": run_details,
        },
    }


# -- DSSE -----------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def envelope(doc: Mapping[str, Any], key: SigningKey) -> bytes:
    """The statement as a DSSE envelope signed by ``key`` (keyid empty, as cosign's)."""
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    env = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}],
    }
    return json.dumps(env, separators=(",", ":")).encode()


def open_envelope(raw: bytes, key: ec.EllipticCurvePublicKey) -> dict[str, Any] | None:
    """The statement, when one of the envelope's signatures is ``key``'s; else None."""
    try:
        env = json.loads(raw)
        payload = base64.b64decode(env["payload"], validate=True)
        if env.get("payloadType") != PAYLOAD_TYPE:
            return None
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env.get("signatures") or []]
    except (ValueError, KeyError, TypeError):
        return None
    signed = pae(PAYLOAD_TYPE, payload)
    if not any(verify_signature(key, sig, signed) for sig in sigs):
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def subject_digests(doc: Mapping[str, Any]) -> set[str]:
    out = set()
    for subject in doc.get("subject") or []:
        for algorithm, value in (subject.get("digest") or {}).items():
            out.add(f"{algorithm}:{value}")
    return out


# -- internals ------------------------------------------------------------------------------


def _subject(name: str, digest: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    algorithm, _, hexpart = digest.partition(":")
    out: dict[str, Any] = {"name": name, "digest": {algorithm: hexpart}}
    if annotations:
        out["annotations"] = annotations
    return out


def _source_dependency(snapshot: Snapshot) -> dict[str, Any]:
    dep: dict[str, Any] = {"name": "model", "uri": snapshot.source_url}
    if snapshot.commit:
        dep["digest"] = {"gitCommit": snapshot.commit}
    if snapshot.revision:
        dep["annotations"] = {"revision": snapshot.revision}
    return dep


def _file_uri(snapshot: Snapshot, path: str) -> str:
    if snapshot.kind == "hub" and snapshot.commit and not snapshot.url:
        return f"{snapshot.source_url}/resolve/{snapshot.commit}/{quote(path)}"
    return f"{snapshot.source_url.rstrip('/')}/{quote(path)}"


def _base_uri(reference: str) -> str:
    if reference.startswith("oci:"):
        return reference
    return f"docker://{reference}"


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
