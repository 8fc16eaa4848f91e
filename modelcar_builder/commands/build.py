"""`modelcar build`: fetch, build, push and verify; prints the oci:// URL KServe takes."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import click

from modelcar_builder.build import DEFAULT_ENGINE, ENGINES, BuildSettings, run_build, write_results
from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import (
    CHUNK_SIZE,
    JOBS,
    Number,
    check_before_download,
    fetch_options,
    is_local_name,
    local_name,
    open_workspace,
    preflight_option,
    registry_options,
    registry_settings,
    source_options,
    workspace_option,
)
from modelcar_builder.context import DEFAULT_BASE_IMAGE
from modelcar_builder.engines.buildah.probe import BUILDAH_NEEDS
from modelcar_builder.errors import UsageError
from modelcar_builder.oci.image import parse_platform
from modelcar_builder.pipeline import count_base_layers
from modelcar_builder.report import build_document, dumps
from modelcar_builder.settings import ENVIRONMENT, created_timestamp
from modelcar_builder.signed_build import check_signing, sign_build
from modelcar_builder.target import RegistryTarget, parse_target

log = logging.getLogger("modelcar")
TEKTON_RESULTS = Path("/tekton/results")


ENV_HELP = "\b\nAlso read from the environment:\n" + "\n".join(
    f"  {name}: {what}" for name, what in ENVIRONMENT.items()
)


@click.command(cls=GroupedCommand, epilog=ENV_HELP)
@source_options
@workspace_option
@fetch_options
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
    type=click.Choice(["auto", "podman", "docker"]),
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
    type=click.Choice(["none", "gzip", "zstd"]),
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
    help="OS/ARCH of the base image to use.",
)
@click.option(
    "--upload",
    type=click.Choice(["monolithic", "chunked"]),
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
    "--results-dir",
    type=click.Path(file_okay=False),
    envvar="MODELCAR_RESULTS_DIR",
    help="Write the Tekton results IMAGE_URL, IMAGE_DIGEST and IMAGE_REF (oci://…@sha256) "
    "here (default /tekton/results if present).",
)
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
@preflight_option
def build(
    src,
    fetch_opts,
    workspace,
    image,
    engine,
    load,
    base_image,
    compression,
    stream,
    jobs,
    platform,
    upload,
    chunk_size,
    authfile,
    registry_token_file,
    tls_verify,
    ca_file,
    results_dir,
    report_file,
    as_json,
    sign_key,
    sign_key_password_file,
):
    """Fetch, build, push and verify a ModelCar. Prints the oci:// URL KServe takes."""
    push = True
    if load and is_local_name(image):
        image, push = local_name(image), False
    target = parse_target(image)
    if isinstance(target, RegistryTarget) and target.ref.digest:
        raise UsageError(
            f"--image {image} names a digest; a push needs a tag",
            hint="write REGISTRY/REPO:TAG; the digest is printed when the push is verified",
        )
    wanted = parse_platform(platform)  # the rule `doctor` applies too
    created_timestamp()  # a bad SOURCE_DATE_EPOCH fails now, not after the download
    registry = registry_settings(
        authfile,
        registry_token_file,
        tls_verify,
        ca_file,
        target.ref.api_host if isinstance(target, RegistryTarget) else None,
    )
    # The base image's depth counts against --max-layers, and its platform must be the
    # one asked for: read its manifest and config (no layer) before the Hub plan.
    base_layers = count_base_layers(base_image, wanted, registry)
    resolved = src.resolve(base_layers, hub_timeout=fetch_opts.read_timeout)
    ws = open_workspace(workspace)
    check_before_download(resolved, ws, engine)  # what `modelcar doctor` checks
    settings = BuildSettings(
        engine=engine,
        base_image=base_image,
        registry=registry,
        compression=compression,
        jobs=jobs,
        stream=stream,
        platform=wanted,
        upload=upload,
        chunk_size=chunk_size * 1024 * 1024,
        load=load,
        push=push,
    )
    key = sign_key and check_signing(sign_key, sign_key_password_file, settings, target)
    started = datetime.datetime.now(datetime.UTC)
    outcome = run_build(resolved, ws, target, settings, fetch_opts)
    if key:  # after the verified push: model.sig layer, image signature, provenance
        outcome = sign_build(outcome, resolved, ws, target, settings, key, started)
    result = outcome.result
    uploaded = sum(1 for layer in result.layers if layer.uploaded)
    log.info(
        "%s %s with %s: %d model layers (%d uploaded, %d already there), %s verified",
        "pushed" if push else "loaded",
        result.target,
        result.engine,
        len(result.layers),
        uploaded,
        len(result.layers) - uploaded,
        result.manifest_digest,
    )
    document = dumps(build_document(resolved.plan, outcome))
    if report_file:
        Path(report_file).write_text(document + "\n")
    results = Path(results_dir) if results_dir else TEKTON_RESULTS
    if push and (results_dir or results.is_dir()):
        write_results(outcome, target, results)
    click.echo(document if as_json else outcome.image_url)
