"""`build --sign-key`: after the push is verified, sign at the source.

1. the OpenSSF model signature over the verified files, as ``/models/model.sig`` in a
   layer of its own on top of each image manifest (the tag moves to that image, or to a
   new index of the platform manifests, verified again by digest);
2. the cosign-format image signature of that digest, and of each platform manifest of
   an index (``sha256-<hex>.sig``);
3. SLSA provenance v1 naming those digests, a DSSE envelope signed with the same key, as
   an OCI 1.1 referrer of each (referrers tag scheme).

Every engine's image is signed the same way after its verified push: native and buildah
push with our client, podman and docker with their own (docker writes Docker schema 2
manifests); the signature layer takes the image's manifest kind and compression.

Checked before the download (``check_signing``): a registry target, no ``--stream``
(the library hashes files on disk), the key opens.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelcar_builder.buildopts import BuildOptions
from modelcar_builder.errors import ModelcarError, RegistryError, UsageError
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.pipeline import Resolved
from modelcar_builder.reference import ImageRef
from modelcar_builder.run import BuildOutcome, image_url
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.signing import cosign, flow, images, modelsig, provenance
from modelcar_builder.signing.keys import SigningKey, load_private_key, read_password
from modelcar_builder.signing.store import ACCEPT_IMAGE, loads
from modelcar_builder.target import RegistryTarget, Target
from modelcar_builder.verify import verify_push
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.signed_build")


def check_signing(
    key_path: str, password_file: str | None, options: BuildOptions, target: Target
) -> SigningKey:
    """Everything that would stop the signing, before the download: then load the key."""
    if not isinstance(target, RegistryTarget) or not options.target_image()[1]:
        raise UsageError(
            "--sign-key signs a pushed image: --image must name a registry",
            hint="push to a registry (REGISTRY/REPO:TAG), or drop --sign-key",
        )
    if options.stream:
        raise UsageError(
            "--stream with --sign-key: the model signature (model_signing) hashes the "
            "files on disk, and --stream keeps none",
            hint="drop --stream to sign (the model then needs room on disk), or drop --sign-key",
        )
    if options.load:
        raise UsageError(
            "--load with --sign-key: the local copy would lack /models/model.sig",
            hint="pull the signed image by digest instead, or drop --load",
        )
    modelsig.require_library()
    return load_private_key(key_path, read_password(password_file, required=False))


def sign_build(
    outcome: BuildOutcome,
    resolved: Resolved,
    workspace: Workspace,
    target: RegistryTarget,
    options: BuildOptions,
    registry: RegistryOptions,
    platform: tuple[str, ...],
    key: SigningKey,
    started: datetime.datetime,
) -> BuildOutcome:
    plan = resolved.plan
    snapshot = plan.snapshot
    ref, tag, repo = target.ref, target.tag, target.ref.repository
    files_dir = workspace.files_dir(snapshot)
    paths = [f.path for f in snapshot.files]
    signature = modelsig.sign_tree(files_dir, paths, key)
    with registry.client_for(ref) as client:
        # every engine's image: OCI or Docker manifest, one image or an index of several
        signed, sig_layer = images.add_model_signature(
            client, repo, tag, outcome.result.manifest_digest, signature
        )
        digest = str(signed.top["digest"])
        verified = verify_push(client, repo, tag, digest, snapshot.image_labels)
        identity = flow.identity(ref, tag)
        for each in signed.digests:  # the index and each platform manifest, as cosign does
            cosign.sign_image(client, repo, each, identity, key)
        doc = provenance.statement(
            image_name=f"{ref.registry}/{repo}",
            image_digest=digest,
            snapshot=snapshot,
            files=provenance.file_digests(snapshot.files, outcome.file_sha256()),
            bases=_bases(client, repo, signed, outcome.result.base_layers, options, registry),
            parameters=_parameters(snapshot, target, options.base_image, platform),
            internal=_internal(plan, options),
            started=started,
            finished=datetime.datetime.now(datetime.UTC),
            platforms=[(p, str(d["digest"])) for p, d in signed.platforms],
        )
        doc["predicate"]["runDetails"]["byproducts"] = [
            {"name": "/models/model.sig", "mediaType": sig_layer["mediaType"],
             "digest": {"sha256": sig_layer["digest"].split(":", 1)[1]}},
        ]  # fmt: skip
        try:
            # one statement, a referrer of each digest it names: found from the tag's
            # digest and from the platform manifest a runtime resolves (docs/decisions.md)
            flow.push_provenance(client, repo, signed.descriptors, doc, key)
        except RegistryError as exc:
            raise RegistryError(
                f"{exc.message} (pushing the provenance, an OCI 1.1 artifact referring to "
                f"{digest}; the image, /models/model.sig and the image signature are pushed)",
                hint="a registry that refuses OCI artifacts (subject, artifactType) cannot "
                "hold the provenance; `modelcar verify --key` will say it is missing",
            ) from exc
    what = f" ({len(signed.platforms)} platforms and their index)" if signed.platforms else ""
    log.info(
        "signed %s/%s@%s%s: image signature, /models/model.sig, SLSA provenance",
        ref.registry, repo, digest, what,
    )  # fmt: skip
    result = replace(outcome.result, manifest_digest=digest)
    return replace(outcome, result=result, verified=verified, image_url=image_url(target, digest))


def _bases(
    client,
    repo: str,
    signed: images.Signed,
    base_layers: int,
    options: BuildOptions,
    registry: RegistryOptions,
) -> list[provenance.BaseImageDep]:
    """The base image by digest, with its layers as they are in each pushed manifest."""
    digest = _base_digest(options.base_image, registry)
    if not signed.platforms:
        layers = _layers(client, repo, str(signed.top["digest"]))[:base_layers]
        return [provenance.BaseImageDep(options.base_image, digest, tuple(layers))]
    return [
        provenance.BaseImageDep(
            options.base_image,
            digest,
            tuple(_layers(client, repo, str(d["digest"]))[:base_layers]),
            platform,
        )
        for platform, d in signed.platforms
    ]


def _layers(client, repo: str, digest: str) -> list[str]:
    doc = loads(client.get_manifest(repo, digest, ACCEPT_IMAGE).body)
    return [str(layer["digest"]) for layer in doc.get("layers") or []]


def _base_digest(base: str, registry: RegistryOptions) -> str | None:
    """The digest the base reference names now (index or manifest); None for scratch or
    when it cannot be read (the base layers' digests are recorded either way)."""
    if base == "scratch":
        return None
    try:
        if base.startswith("oci:"):
            path, _, tag = base[4:].partition(":")
            return OciLayout(Path(path)).resolve(tag or "latest").digest
        bref = ImageRef.parse(base)
        if bref.digest:
            return bref.digest
        with registry.client_for(bref) as client:
            info = client.head_manifest(bref.repository, bref.tag or "latest")
            return info.digest if info else None
    except (ModelcarError, OSError, ValueError) as exc:
        log.warning("the provenance names the base image %s without a digest: %s", base, exc)
        return None


def _parameters(
    snapshot, target: RegistryTarget, base_image: str, platform: tuple[str, ...]
) -> dict[str, Any]:
    """What the user chose. No secret: no password, token, authfile or key path."""
    return {
        "source": snapshot.canonical,
        "revision": snapshot.revision,
        "image": f"{target.ref.registry}/{target.ref.repository}:{target.tag}",
        "baseImage": base_image,
        "platform": "/".join(platform),
    }


def _internal(plan, options: BuildOptions) -> dict[str, Any]:
    return {
        "engine": options.engine,
        "compression": options.compression,
        "layerThreshold": plan.threshold,
        "maxLayers": plan.max_layers,
        "upload": options.upload,
    }
