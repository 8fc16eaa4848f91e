"""`modelcar keygen DIR`: a signing key pair in cosign's format (cosign.key, cosign.pub)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import click

from modelcar_builder.signing.keys import PASSWORD_ENV, read_password, write_pair

log = logging.getLogger("modelcar.commands.keygen")


@click.command(short_help="Write a signing key pair in cosign's format.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    help=f"Encrypt the private key with the password in this file (else {PASSWORD_ENV}).",
)
@click.option("--force", is_flag=True, help="Overwrite cosign.key and cosign.pub.")
def keygen(directory: str, password_file: str | None, force: bool) -> None:
    """Write cosign.key (cosign's encrypted format, mode 0600) and cosign.pub (PEM) in
    DIRECTORY: the key for build --sign-key, skopeo and cosign; the public key for
    verify --key, a policy.json keyPath or a ClusterImagePolicy."""
    # required=True: read_password raises a UsageError rather than return None
    password = cast(bytes, read_password(password_file, required=True))
    private, public = write_pair(Path(directory), password, force=force)
    log.info("wrote %s and %s", private, public)
    click.echo(str(public))
