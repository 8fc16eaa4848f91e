"""`modelcar build`: fetch, build, push and verify; prints the oci:// URL KServe takes."""

from __future__ import annotations

import click

from modelcar_builder import api
from modelcar_builder.buildopts import CHUNK_SIZE, COMPRESSIONS, JOBS, LOADS, UPLOADS
from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import (
    Number,
    build_options,
    fetch_params,
    preflight_option,
    registry_options,
    results_dir_option,
    source_params,
    workspace_option,
)
from modelcar_builder.context import DEFAULT_BASE_IMAGE
from modelcar_builder.engines.buildah.probe import BUILDAH_NEEDS
from modelcar_builder.engines.catalog import DEFAULT_ENGINE, ENGINES
from modelcar_builder.report import dumps
from modelcar_builder.settings import ENVIRONMENT

ENV_HELP = "\b\nAlso read from the environment:\n" + "\n".join(
    f"  {name}: {what}" for name, what in ENVIRONMENT.items()
)


@click.command(cls=GroupedCommand, epilog=ENV_HELP)
@source_params
@workspace_option
@fetch_params
@click.option(
    "--image",
    required=True,
    envvar="MODELCAR_IMAGE",
    help="REGISTRY/REPO[:TAG], or oci:PATH[:TAG] for a local OCI layout.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=DEFAULT_ENGINE,
    show_default=True,
    envvar="MODELCAR_ENGINE",
    help="native: no daemon, no privilege, any UID; uncompressed layers. buildah: "
    + BUILDAH_NEEDS
    + ". podman: podman build + push (workstation). docker: the Docker Engine API at "
    "DOCKER_HOST (dockerd, or podman's service). buildah, podman and docker write gzip "
    "layers: another digest for the same model (said in one line when the build starts).",
)
@click.option(
    "--load",
    type=click.Choice(LOADS),
    is_flag=False,
    flag_value="auto",
    default=None,
    envvar="MODELCAR_LOAD",
    help="Also leave the image in a local store for podman/docker run. With a registry "
    "--image: push, verify, and load under that name. With a short --image NAME:TAG "
    "(no registry host, or localhost/NAME:TAG): load as localhost/NAME:TAG, push nothing. "
    "Bare --load: the engine's own store (podman, docker), else podman when installed.",
)
@click.option(
    "--base-image",
    default=DEFAULT_BASE_IMAGE,
    show_default=True,
    envvar="MODELCAR_BASE_IMAGE",
    help="Image with sh/ln/sleep (registry ref, oci:PATH[:TAG], or scratch).",
)
@click.option(
    "--compression",
    type=click.Choice(COMPRESSIONS),
    envvar="MODELCAR_COMPRESSION",
    help="Layer compression. native default none (weights do not compress); "
    "buildah default gzip. KServe's oci:// fetch rejects zstd.",
)
@click.option(
    "--stream",
    is_flag=True,
    envvar="MODELCAR_STREAM",
    help="native only: Hub -> registry in one pass, no disk for the model.",
)
@click.option(
    "--part",
    envvar="MODELCAR_PART",
    metavar="K/N",
    help="Build part K of N (K from 1 to N; index/N: K = JOB_COMPLETION_INDEX + 1) of a "
    "model too large for one pod: plan the whole model, fetch and push this part's share "
    "of the layers (balanced by bytes), record it in the registry; `modelcar assemble "
    "--parts N` makes the image (README: Very large models). native engine only.",
)
@click.option(
    "--jobs",
    type=Number(JOBS),
    default=2,
    show_default=True,
    envvar="MODELCAR_JOBS",
    help="Layers pushed in parallel (native).",
)
@click.option(
    "--platform",
    default="linux/amd64",
    show_default=True,
    envvar="MODELCAR_PLATFORM",
    help="OS/ARCH of the base image to use; a list (linux/amd64,linux/arm64) builds an "
    "image index, one manifest per platform on the same model layers (native engine).",
)
@click.option(
    "--upload",
    type=click.Choice(UPLOADS),
    default="monolithic",
    show_default=True,
    envvar="MODELCAR_UPLOAD",
    help="native: one streaming PUT per layer (works everywhere), or PATCH chunks that "
    "resume where a cut connection stopped (registries that allow PATCH).",
)
@click.option(
    "--chunk-size",
    type=Number(CHUNK_SIZE),
    default=64,
    show_default=True,
    envvar="MODELCAR_CHUNK_SIZE",
    help="MiB per PATCH with --upload chunked.",
)
@registry_options
@click.option(
    "--mount-from",
    multiple=True,
    envvar="MODELCAR_MOUNT_FROM",
    metavar="REPO",
    help="A repository of --image's registry that may hold the model's layers "
    "(repeatable): a layer it has is mounted, not uploaded. Where this workspace pushed "
    "the model before is tried first.",
)
@results_dir_option
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False),
    envvar="MODELCAR_REPORT",
    help="Write a JSON report here.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report (what --report writes) as the only thing on stdout, instead "
    "of the oci:// URL; it holds that URL as image_url.",
)
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False),
    envvar="MODELCAR_SIGN_KEY",
    help="Sign the pushed image with this key (cosign format or PKCS#8 PEM, ECDSA "
    "P-256): /models/model.sig, a cosign signature and SLSA provenance (README).",
)
@click.option(
    "--sign-key-password-file",
    type=click.Path(dir_okay=False),
    envvar="MODELCAR_SIGN_KEY_PASSWORD_FILE",
    help="File with the --sign-key password (else COSIGN_PASSWORD).",
)
@click.option(
    "--modelpack",
    is_flag=True,
    envvar="MODELCAR_MODELPACK",
    help="Also push a CNCF ModelPack manifest on the same blobs (no layer uploaded "
    "twice), as an OCI 1.1 referrer of the image (README).",
)
@preflight_option
def build(as_json: bool, **params) -> None:
    """Fetch, build, push and verify a ModelCar. Prints the oci:// URL KServe takes."""
    built = api.build(build_options(params))  # the Python API, with the same options
    click.echo(dumps(built.report) if as_json else built.image_url)
