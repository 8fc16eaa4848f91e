"""`modelcar plan`: what would be built, and the disk it needs. Downloads nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from modelcar_builder import api
from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import source_options
from modelcar_builder.engines.catalog import disk_needed
from modelcar_builder.report import dumps, plan_document, plan_text
from modelcar_builder.settings import environment
from modelcar_builder.workspace import Workspace


@click.command(cls=GroupedCommand)
@source_options
@click.option(
    "--workspace",
    type=click.Path(file_okay=False),
    envvar="MODELCAR_WORKSPACE",
    help="Also report free space on this volume.",
)
@click.option(
    "--base-image",
    envvar="MODELCAR_BASE_IMAGE",
    help="Count this base image's layers against --max-layers (default: assume 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(
    src,
    workspace,
    base_image,
    as_json,
):
    """Show what would be built: commit, files, layers, disk needed. Downloads nothing."""
    planned = api.plan(dataclasses.replace(src, base_image=base_image))
    disk = disk_needed(planned, environment())
    if as_json:
        click.echo(dumps(plan_document(planned, disk)))
        return
    free = None
    if workspace and Path(workspace).exists():
        free = Workspace(Path(workspace)).free_bytes()
    click.echo(plan_text(planned, disk, free))
