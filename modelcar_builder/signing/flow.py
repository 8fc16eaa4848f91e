"""What `build --sign-key`, `modelcar sign` and `verify --key` run: sign a pushed image
(and push its provenance), or check both by a public key."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar_builder.errors import UsageError, VerificationFailed
from modelcar_builder.reference import ImageRef
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.signing import cosign, images, modelsig, provenance, referrers
from modelcar_builder.signing.keys import SigningKey

log = logging.getLogger("modelcar.signing.flow")


def identity(ref: ImageRef, tag: str | None) -> str:
    """The docker reference a signature vouches for: ``host/repo:tag`` when there is a
    tag (a policy's default matchRepoDigestOrExact then accepts that tag and any pull
    by digest), else ``host/repo@sha256:…`` (pulls by digest), as containers/image
    writes it when it signs. Never ``host/repo`` alone for a digest: matchRepoDigestOrExact
    refuses a name-only identity ("Signature for identity … is not accepted")."""
    name = f"{ref.registry}/{ref.repository}"
    if tag:
        return f"{name}:{tag}"
    return f"{name}@{ref.digest}" if ref.digest else name


def sign_pushed(ref: ImageRef, registry: RegistryOptions, key: SigningKey) -> str:
    """Sign what ``ref`` names now (an index: it and each platform manifest, as
    ``cosign sign --recursive``); returns the digest ``ref`` names."""
    with registry.client_for(ref) as client:
        reference = ref.digest or ref.tag or "latest"
        found = images.read(client, ref.repository, reference)
        who = identity(ref, None if ref.digest else ref.tag)
        for digest in found.digests:
            tag = cosign.sign_image(client, ref.repository, digest, who, key)
            log.info("signed %s/%s@%s (signature at :%s)", ref.registry, ref.repository,
                     digest, tag)  # fmt: skip
    return found.digests[0]


@dataclass
class VerifyOutcome:
    digest: str
    signatures: list[cosign.Signature]
    provenance: list[str] = field(default_factory=list)  # predicate types checked
    statements: list[dict] = field(default_factory=list)
    platforms: list[tuple[str, str]] = field(default_factory=list)  # an index's, checked too

    def lines(self) -> list[str]:
        out = [f"ok: {len(self.signatures)} signature(s) by this key for {self.digest}"]
        out += [f"ok: {p} {d} signed by this key" for p, d in self.platforms]
        also = f" and each of the {len(self.platforms)} platforms" if self.platforms else ""
        out += [f"ok: provenance {p} signed by this key, subject {self.digest}{also}"
                for p in self.provenance]  # fmt: skip
        if not self.provenance:
            out.append("note: no provenance signed by this key")
        return out


def verify_image(
    ref: ImageRef,
    registry: RegistryOptions,
    public: ec.EllipticCurvePublicKey,
    *,
    require_provenance: bool = False,
) -> VerifyOutcome:
    """The signature of what ``ref`` names and its provenance; for an index, also each
    platform manifest's signature and a provenance naming it (a pull by tag checks the
    index's signature and then the chosen platform's)."""
    with registry.client_for(ref) as client:
        reference = ref.digest or ref.tag or "latest"
        try:
            found = images.read(client, ref.repository, reference)
        except VerificationFailed:
            raise VerificationFailed(f"{ref} does not exist") from None
        digest = found.digests[0]
        where = f"{ref.registry}/{ref.repository}"
        sigs = cosign.require_signature(client, ref.repository, digest, public, where)
        docs = verified_provenance(client, ref.repository, digest, public)
        if require_provenance and not docs:
            raise VerificationFailed(
                f"no provenance signed by this key for {where}@{digest}",
                hint="a build with --sign-key pushes it beside the image",
            )
        for platform, desc in found.platforms:
            each = str(desc["digest"])
            try:  # a pull by tag checks the index's signature, then the chosen platform's
                cosign.require_signature(client, ref.repository, each, public, where)
            except VerificationFailed:
                raise VerificationFailed(
                    f"{where}@{digest}: its {platform} manifest {each} has no signature "
                    "by this key",
                    hint="sign the index and every platform manifest (`modelcar sign` "
                    "does, as `cosign sign --recursive`)",
                ) from None
            if docs and not verified_provenance(client, ref.repository, each, public):
                raise VerificationFailed(
                    f"{where}@{digest}: its {platform} manifest {each} has no provenance "
                    "signed by this key",
                    hint="a build with --sign-key makes one provenance naming the index "
                    "and every platform manifest",
                )
        platforms = [(p, str(d["digest"])) for p, d in found.platforms]
        return VerifyOutcome(
            digest, sigs, [str(d.get("predicateType")) for d in docs], docs, platforms
        )


# -- provenance -----------------------------------------------------------------------------

PROVENANCE_ARTIFACT_TYPE = "application/vnd.in-toto+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"


def push_provenance(
    client, repo: str, about: dict | Sequence[dict], doc: dict, key: SigningKey
) -> list[str]:
    """Sign ``doc`` (an in-toto statement about ``about``, manifest or index
    descriptors) as a DSSE envelope, once, and push it as a referrer of each; returns
    the referrer manifests' digests."""
    env = provenance.envelope(doc, key)
    subjects = [about] if isinstance(about, dict) else list(about)
    return [
        referrers.push_referrer(
            client,
            repo,
            image,
            PROVENANCE_ARTIFACT_TYPE,
            env,
            DSSE_MEDIA_TYPE,
            {PREDICATE_ANNOTATION: str(doc.get("predicateType", ""))},
        )
        for image in subjects
    ]


def verified_provenance(
    client, repo: str, digest: str, public: ec.EllipticCurvePublicKey
) -> list[dict]:
    """Every statement in a referrer of ``repo@digest`` signed by ``public`` whose
    subject is that digest."""
    out = []
    for _entry, manifest in referrers.artifacts(client, repo, digest, PROVENANCE_ARTIFACT_TYPE):
        for layer in manifest.get("layers") or []:
            if layer.get("mediaType") != DSSE_MEDIA_TYPE:
                continue
            raw = client.read_blob(repo, layer["digest"], max_size=64 * 1024 * 1024)
            doc = provenance.open_envelope(raw, public)
            if doc is not None and digest in provenance.subject_digests(doc):
                out.append(doc)
    return out


def verify_signed(
    target, registry: RegistryOptions, key_path: str, digest: str, deep=None
) -> list[str]:
    """`verify --key`: the image signature and a signed provenance whose subject is
    ``digest`` (the digest `verify` just checked), by the public key at ``key_path``.
    With ``deep`` (what `verify --deep` read: every file's sha256 under /models), every
    file is also checked against the provenance and against /models/model.sig."""
    from modelcar_builder.signing.keys import load_public_key
    from modelcar_builder.target import RegistryTarget

    if not isinstance(target, RegistryTarget):
        raise UsageError("--key checks signatures in a registry; an OCI layout has none")
    ref = target.ref
    public = load_public_key(key_path)
    pinned = ImageRef(ref.registry, ref.repository, None, digest)
    outcome = verify_image(pinned, registry, public, require_provenance=True)
    lines = outcome.lines()
    if deep is not None and deep.files:
        where = f"{ref.registry}/{ref.repository}@{digest}"
        image = {p: h for p, h in deep.files.items() if p != modelsig.SIGNATURE_NAME}
        for doc in outcome.statements:
            _same_files(image, provenance_files(doc), where, "the provenance")
        with registry.client_for(pinned) as client:
            signature = _model_signature(client, ref.repository, digest, where)
        if hashlib.sha256(signature).hexdigest() != deep.files.get(modelsig.SIGNATURE_NAME):
            raise VerificationFailed(f"{where}: model.sig changed between two reads")
        signed = modelsig.signed_files(signature, public)
        if signed is None:
            raise VerificationFailed(f"{where}: /models/model.sig is not signed by this key")
        ignored = json.loads(signed.pop(modelsig.IGNORED))
        covered = {p: h for p, h in image.items() if not _ignored(p, ignored)}
        _same_files(covered, signed, where, "/models/model.sig")
        lines.append(
            f"ok: {len(image)} files = the provenance; {len(covered)} = /models/model.sig "
            f"(model_signing leaves out {', '.join(ignored) or 'nothing'})"
        )
    return lines


def _ignored(path: str, ignored: list[str]) -> bool:
    return any(path == i or path.startswith(i.rstrip("/") + "/") for i in ignored)


def _same_files(image: dict[str, str], signed: dict[str, str], where: str, what: str) -> None:
    problems = [f"{p} is not in {what}" for p in sorted(image.keys() - signed.keys())]
    problems += [f"{p} of {what} is not in the image" for p in sorted(signed.keys() - image.keys())]
    problems += [f"{p} differs from {what}" for p in sorted(image.keys() & signed.keys())
                 if image[p] != signed[p]]  # fmt: skip
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise VerificationFailed(f"{where}: {'; '.join(problems[:3])}{more}")


def _model_signature(client, repo: str, digest: str, where: str) -> bytes:
    """/models/model.sig from the last layer of the image (of every platform manifest of
    an index: the same layer blob on each, as the build puts it)."""
    from modelcar_builder.oci import ANNOTATION_FILEPATH
    from modelcar_builder.signing.store import ACCEPT_IMAGE, loads

    found = images.read(client, repo, digest)
    manifests = [str(d["digest"]) for _, d in found.platforms] or [digest]
    path = f"/models/{modelsig.SIGNATURE_NAME}"
    tops = set()
    for each in manifests:
        layers = loads(client.get_manifest(repo, each, ACCEPT_IMAGE).body).get("layers") or []
        top = layers[-1] if layers else {}
        if (top.get("annotations") or {}).get(ANNOTATION_FILEPATH) != path:
            raise VerificationFailed(
                f"{where} has no {path} in its last layer"
                + (f" ({each})" if each != digest else ""),
                hint="an image built with --sign-key has one",
            )
        tops.add(str(top["digest"]))
    if len(tops) != 1:
        raise VerificationFailed(f"{where}: its platforms carry different {path} layers")
    signature = modelsig.read_from_layer(client.read_blob(repo, tops.pop()))
    if signature is None:
        raise VerificationFailed(f"{where}: its last layer does not hold {path}")
    return signature


def provenance_files(doc: dict) -> dict[str, str]:
    """path -> sha256 of every model file a provenance statement names (for --deep)."""
    deps = ((doc.get("predicate") or {}).get("buildDefinition") or {}).get(
        "resolvedDependencies"
    ) or []
    return {
        d["name"]: d["digest"]["sha256"]
        for d in deps
        if d.get("name") not in ("model", "base-image") and "sha256" in (d.get("digest") or {})
    }
