"""What `build --sign-key`, `modelcar sign` and `verify --key` run: sign a pushed image
(and push its provenance), or check both by a public key."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar_builder.errors import VerificationFailed
from modelcar_builder.reference import ImageRef
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.signing import cosign
from modelcar_builder.signing.keys import SigningKey

log = logging.getLogger("modelcar.signing")


def identity(ref: ImageRef, tag: str | None) -> str:
    """The docker reference a signature vouches for: ``host/repo:tag`` when there is a
    tag (a policy's default matchRepoDigestOrExact then accepts that tag and any pull
    by digest), else ``host/repo``."""
    name = f"{ref.registry}/{ref.repository}"
    return f"{name}:{tag}" if tag else name


def sign_pushed(ref: ImageRef, registry: RegistryOptions, key: SigningKey) -> str:
    """Sign what ``ref`` names now; returns the manifest digest signed."""
    with registry.client_for(ref) as client:
        reference = ref.digest or ref.tag or "latest"
        info = client.head_manifest(ref.repository, reference)
        if info is None or not info.digest:
            raise VerificationFailed(f"{ref} does not exist", hint="push it first")
        digest = info.digest
        tag = cosign.sign_image(
            client, ref.repository, digest, identity(ref, None if ref.digest else ref.tag), key
        )
    log.info("signed %s/%s@%s (signature at :%s)", ref.registry, ref.repository, digest, tag)
    return digest


@dataclass
class VerifyOutcome:
    digest: str
    signatures: list[cosign.Signature]
    provenance: list[str] = field(default_factory=list)  # predicate types checked

    def lines(self) -> list[str]:
        out = [f"ok: {len(self.signatures)} signature(s) by this key for {self.digest}"]
        out += [f"ok: provenance {p} signed by this key, subject {self.digest}"
                for p in self.provenance]  # fmt: skip
        return out


def verify_image(
    ref: ImageRef,
    registry: RegistryOptions,
    public: ec.EllipticCurvePublicKey,
    *,
    require_provenance: bool = False,
) -> VerifyOutcome:
    with registry.client_for(ref) as client:
        reference = ref.digest or ref.tag or "latest"
        info = client.head_manifest(ref.repository, reference)
        if info is None or not info.digest:
            raise VerificationFailed(f"{ref} does not exist")
        digest = info.digest
        where = f"{ref.registry}/{ref.repository}"
        sigs = cosign.require_signature(client, ref.repository, digest, public, where)
        return VerifyOutcome(digest, sigs)
