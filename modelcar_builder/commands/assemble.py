"""`modelcar assemble`: the image of a model built by N parts (`build --part K/N`)."""

from __future__ import annotations

import click

from modelcar_builder.api import AssembleOptions, RegistryAccess, assemble
from modelcar_builder.assembly import PARTS, WAIT
from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import Number, registry_options, results_dir_option


@click.command(
    name="assemble",
    cls=GroupedCommand,
    short_help="Make the image of a model built by N parts (build --part K/N).",
)
@click.option(
    "--image",
    required=True,
    envvar="MODELCAR_IMAGE",
    help="REGISTRY/REPO:TAG: the --image every part was built with.",
)
@click.option(
    "--parts",
    type=Number(PARTS),
    required=True,
    envvar="MODELCAR_PARTS",
    help="N: how many parts (`build --part K/N`) make the image.",
)
@click.option(
    "--wait",
    type=Number(WAIT),
    default=float(WAIT.example),
    show_default=True,
    envvar="MODELCAR_WAIT",
    metavar="SECONDS",
    help="How long to wait for every part's record (a progress line while waiting); "
    "then the missing parts are named (exit 62).",
)
@registry_options
@results_dir_option
def assemble_cmd(
    image: str,
    parts: int,
    wait: float,
    authfile: str | None,
    registry_token_file: str | None,
    tls_verify: bool,
    ca_file: str | None,
    results_dir: str | None,
) -> None:
    """Make the image of a model built by N parts (`modelcar build --part K/N`): wait
    for every part's record in the registry, check its layers, push the config and
    manifest (the digest a one-pod build gives), verify. Prints the oci:// URL."""
    access = RegistryAccess(authfile, registry_token_file, tls_verify, ca_file)
    done = assemble(AssembleOptions(image, parts, wait, access, results_dir))
    click.echo(done.image_url)
