"""`modelcar fetch` and `modelcar prepare`: the model onto the workspace, verified and
resumable; `prepare` then lays out a build context for buildah/podman/docker."""

from __future__ import annotations

import logging

import click

from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import (
    fetch_options,
    open_workspace,
    registry_options,
    registry_settings,
    source_options,
    workspace_option,
)
from modelcar_builder.context import DEFAULT_BASE_IMAGE, prepare_context
from modelcar_builder.pipeline import count_base_layers, pinned_base, resolve_source
from modelcar_builder.source.download import fetch
from modelcar_builder.target import RegistryTarget, parse_target
from modelcar_builder.units import human

log = logging.getLogger("modelcar.commands.fetch")


@click.command(name="fetch", cls=GroupedCommand)
@source_options
@workspace_option
@fetch_options
def fetch_cmd(src, fetch_opts, workspace):
    """Download and verify the model onto the workspace (resumable)."""
    resolved = resolve_source(src, hub_timeout=fetch_opts.read_timeout)
    ws = open_workspace(workspace)
    result = fetch(resolved.plan, ws, resolved.access, fetch_opts)
    log.info(
        "downloaded %s; %d files fetched, %d reused",
        human(result.downloaded_bytes),
        len(result.fetched),
        len(result.reused),
    )
    click.echo(str(result.files_dir))


@click.command(
    cls=GroupedCommand, short_help="Fetch, then write a build context for buildah/podman."
)
@source_options
@workspace_option
@fetch_options
@click.option(
    "--base-image",
    default=DEFAULT_BASE_IMAGE,
    show_default=True,
    envvar="MODELCAR_BASE_IMAGE",
    help="Image that provides sh, ln and sleep; FROM names it by digest when it can be "
    "read (else by the name given, with a warning).",
)
@registry_options
def prepare(
    src,
    fetch_opts,
    workspace,
    base_image,
    authfile,
    registry_token_file,
    tls_verify,
    ca_file,
):
    """Fetch, then lay out a build context (layer dirs + Containerfile) for buildah/podman."""
    host = None if base_image == "scratch" else _registry_host(base_image)
    registry = registry_settings(authfile, registry_token_file, tls_verify, ca_file, host)
    pinned = pinned_base(base_image, registry)  # read once: unreadable, it is not retried
    base = count_base_layers(pinned, ("linux", "amd64"), registry, strict=False) if pinned else 1
    resolved = resolve_source(src, base, hub_timeout=fetch_opts.read_timeout)
    ws = open_workspace(workspace)
    fetched = fetch(resolved.plan, ws, resolved.access, fetch_opts)
    ctx = prepare_context(resolved.plan, fetched.files_dir, ws, pinned or base_image)
    log.info(
        "context ready: %d layers, %d files linked, %d copied",
        len(ctx.layer_dirs),
        ctx.linked,
        ctx.copied,
    )
    click.echo(str(ctx.directory))


def _registry_host(name: str) -> str | None:
    target = parse_target(name)
    return target.ref.api_host if isinstance(target, RegistryTarget) else None
