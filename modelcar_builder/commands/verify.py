"""`modelcar verify`: check an image already pushed (or in a layout) is a sound ModelCar,
and say what was checked."""

from __future__ import annotations

from pathlib import Path

import click

from modelcar_builder import api
from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import registry_options
from modelcar_builder.report import dumps, verify_document, verify_text
from modelcar_builder.units import human


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
    "--deep",
    is_flag=True,
    envvar="MODELCAR_VERIFY_DEEP",
    help="Read every blob: hash it, unpack gzip layers against their diff_id, and check "
    "every file under /models against the Hub at the image's revision (or --report).",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--deep: the expected files from this `build --report` JSON instead of the Hub.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="--deep from the Hub: the --include the image was built with.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="--deep from the Hub: the --exclude the image was built with.",
)
@click.option(
    "--all-files", is_flag=True, help="--deep from the Hub: the image was built with --all-files."
)
@click.option(
    "--hf-token-file",
    type=click.Path(dir_okay=False),
    envvar="MODELCAR_HF_TOKEN_FILE",
    help="--deep from the Hub: file holding the Hub token (default: $HF_TOKEN).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False),
    help="Also check the image's signature and its signed provenance (subject = this "
    "digest) with this public key (cosign.pub).",
)
def verify(image, authfile, registry_token_file, tls_verify, ca_file, labels, deep,
           report_file, include, exclude, all_files, hf_token_file, as_json,
           key_path):  # fmt: skip
    """Check a pushed ModelCar: digest, manifest/config coherence, blobs, no
    Entrypoint/Cmd, labels; with --deep every byte."""
    checked = api.verify(
        api.VerifyOptions(
            image=image,
            labels=dict(item.split("=", 1) for item in labels if "=" in item),
            deep=deep,
            report_file=str(report_file) if report_file else None,
            include=tuple(include),
            exclude=tuple(exclude),
            all_files=all_files,
            hf_token_file=hf_token_file,
            registry=api.RegistryAccess(authfile, registry_token_file, tls_verify, ca_file),
            key=key_path,
        )
    )
    result, url, signed = checked.result, checked.image_url, checked.signed
    if as_json:
        click.echo(dumps(verify_document(result, url)))
        return
    for line in verify_text(result):
        click.echo(line)
    click.echo(f"ok: {result.layer_count} layers, {human(result.total_size)}")
    for line in signed:
        click.echo(line)
    click.echo(url)
