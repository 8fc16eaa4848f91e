"""`modelcar verify`: check an image already pushed (or in a layout) is a sound ModelCar."""

from __future__ import annotations

import click

from modelcar_builder.build import image_url, verify_image
from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import registry_options, registry_settings
from modelcar_builder.signing.flow import verify_signed
from modelcar_builder.target import RegistryTarget, parse_target


@click.command(
    cls=GroupedCommand, short_help="Check a pushed ModelCar is what a runtime will trust."
)
@click.argument("image")
@registry_options
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label the image must carry (repeatable).",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False),
    help="Also check the image's signature and its signed provenance (subject = this "
    "digest) with this public key (cosign.pub).",
)
def verify(image, authfile, registry_token_file, tls_verify, ca_file, labels, key_path):
    """Check a pushed ModelCar: digest, blobs, no Entrypoint/Cmd, labels."""
    target = parse_target(image)
    expected = dict(item.split("=", 1) for item in labels if "=" in item)
    host = target.ref.api_host if isinstance(target, RegistryTarget) else None
    registry = registry_settings(authfile, registry_token_file, tls_verify, ca_file, host)
    result = verify_image(target, registry, expected)
    click.echo(f"ok: {result.layer_count} layers, {result.total_size} bytes")
    for line in verify_signed(target, registry, key_path, result.digest) if key_path else ():
        click.echo(line)
    click.echo(image_url(target, result.digest))
