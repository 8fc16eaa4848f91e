"""`modelcar sign IMAGE --key KEY`: sign an image already pushed (cosign's format), and
`--verify --key PUB`: check its signature (and its provenance, when it has one)."""

from __future__ import annotations

import click

from modelcar_builder.commands.options import registry_options, registry_settings
from modelcar_builder.errors import UsageError
from modelcar_builder.reference import ImageRef
from modelcar_builder.signing import flow
from modelcar_builder.signing.keys import load_private_key, load_public_key, read_password


@click.command(short_help="Sign a pushed image, or check its signature.")
@click.argument("image")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False),
    envvar="MODELCAR_SIGN_KEY",
    help="Private key to sign with (cosign format or PKCS#8 PEM); with --verify, the "
    "public key (cosign.pub).",
)
@click.option(
    "--key-password-file",
    type=click.Path(dir_okay=False),
    envvar="MODELCAR_SIGN_KEY_PASSWORD_FILE",
    help="File with the private key's password (else COSIGN_PASSWORD).",
)
@click.option(
    "--verify",
    "check",
    is_flag=True,
    help="Check instead of sign: a signature by --key for this digest, and the "
    "provenance's signature and subject when the image has provenance.",
)
@click.option(
    "--require-provenance",
    is_flag=True,
    help="With --verify: fail when the image has no provenance signed by --key.",
)
@registry_options
def sign(
    image, key_path, key_password_file, check, require_provenance,
    authfile, registry_token_file, tls_verify, ca_file,
):  # fmt: skip
    """Sign IMAGE (REGISTRY/REPO:TAG or @sha256:…) with --key: the signature goes to the
    tag sha256-<hex>.sig beside it, where CRI-O, podman and cosign look."""
    ref = ImageRef.parse(image)
    registry = registry_settings(authfile, registry_token_file, tls_verify, ca_file, ref.api_host)
    if check:
        public = load_public_key(key_path)
        outcome = flow.verify_image(ref, registry, public, require_provenance=require_provenance)
        for line in outcome.lines():
            click.echo(line)
        return
    if require_provenance:
        raise UsageError("--require-provenance goes with --verify")
    password = read_password(key_password_file, required=False)
    key = load_private_key(key_path, password)
    digest = flow.sign_pushed(ref, registry, key)
    click.echo(f"signed {ref.registry}/{ref.repository}@{digest}")
