"""The `modelcar` command. Parses options, chains pipeline stages, maps errors to exit
codes. No logic of its own: everything it calls is importable and tested directly."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from modelcar_builder import __version__
from modelcar_builder.context import DEFAULT_BASE_IMAGE, prepare_context
from modelcar_builder.errors import Interrupted, ModelcarError, UsageError
from modelcar_builder.fetch import FetchOptions, fetch
from modelcar_builder.pipeline import disk_needed, resolve
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD
from modelcar_builder.report import dumps, plan_document, plan_text
from modelcar_builder.selection import Selection
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar")


def source_options(fn):
    """Options every command that reads a SOURCE shares; each also reads MODELCAR_*."""
    decorators = [
        click.argument("source", envvar="MODELCAR_SOURCE"),
        click.option(
            "--include",
            multiple=True,
            envvar="MODELCAR_INCLUDE",
            metavar="GLOB",
            help="Only files matching GLOB (repeatable).",
        ),
        click.option(
            "--exclude",
            multiple=True,
            envvar="MODELCAR_EXCLUDE",
            metavar="GLOB",
            help="Skip files matching GLOB (repeatable).",
        ),
        click.option(
            "--all-files",
            is_flag=True,
            envvar="MODELCAR_ALL_FILES",
            help="Keep duplicate weight formats and .git* files.",
        ),
        click.option(
            "--hf-token-file",
            type=click.Path(dir_okay=False),
            envvar="MODELCAR_HF_TOKEN_FILE",
            help="File holding the Hub token (default: $HF_TOKEN).",
        ),
        click.option(
            "--layer-threshold",
            type=int,
            default=DEFAULT_LAYER_THRESHOLD,
            show_default=True,
            envvar="MODELCAR_LAYER_THRESHOLD",
            help="Files this big or larger get their own layer.",
        ),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def workspace_option(fn):
    return click.option(
        "--workspace",
        type=click.Path(file_okay=False),
        envvar="MODELCAR_WORKSPACE",
        default="./modelcar-work",
        show_default=True,
        help="Volume for downloads, build context and state ($MODELCAR_WORKSPACE).",
    )(fn)


def _resolve(source, include, exclude, all_files, hf_token_file, layer_threshold):
    if layer_threshold <= 0:
        raise UsageError("--layer-threshold must be positive", hint="e.g. 67108864 (64 MiB)")
    selection = Selection(tuple(include), tuple(exclude), all_files)
    return resolve(source, selection, hf_token_file, layer_threshold)


def _fetch(resolved, workspace: Workspace):
    return fetch(resolved.plan, workspace, resolved.access, _fetch_options())


def _fetch_options() -> FetchOptions:
    interval = os.environ.get("MODELCAR_PROGRESS_INTERVAL")
    timeout = os.environ.get("MODELCAR_READ_TIMEOUT")
    attempts = os.environ.get("MODELCAR_ATTEMPTS")
    return FetchOptions(
        progress_interval=float(interval) if interval else None,
        read_timeout=float(timeout) if timeout else FetchOptions.read_timeout,
        attempts=int(attempts) if attempts else FetchOptions.attempts,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelcar")
@click.option("--debug", is_flag=True, envvar="MODELCAR_DEBUG", help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, envvar="MODELCAR_QUIET", help="Only warnings.")
def cli(debug: bool, quiet: bool) -> None:
    """Build KServe ModelCar images from Hugging Face repos or local directories."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("modelcar: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)


@cli.command()
@source_options
@click.option(
    "--workspace",
    type=click.Path(file_okay=False),
    envvar="MODELCAR_WORKSPACE",
    help="Also report free space on this volume.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(source, include, exclude, all_files, hf_token_file, layer_threshold, workspace, as_json):
    """Show what would be built: commit, files, layers, disk needed. Downloads nothing."""
    resolved = _resolve(source, include, exclude, all_files, hf_token_file, layer_threshold)
    disk = disk_needed(resolved.plan)
    if as_json:
        click.echo(dumps(plan_document(resolved.plan, disk)))
        return
    free = None
    if workspace and Path(workspace).exists():
        free = Workspace(Path(workspace)).free_bytes()
    click.echo(plan_text(resolved.plan, disk, free))


@cli.command(name="fetch")
@source_options
@workspace_option
def fetch_cmd(source, include, exclude, all_files, hf_token_file, layer_threshold, workspace):
    """Download and verify the model onto the workspace (resumable)."""
    resolved = _resolve(source, include, exclude, all_files, hf_token_file, layer_threshold)
    ws = Workspace(Path(workspace)).ensure()
    result = _fetch(resolved, ws)
    log.info(
        "downloaded %d bytes; %d files fetched, %d reused",
        result.downloaded_bytes,
        len(result.fetched),
        len(result.reused),
    )
    click.echo(str(result.files_dir))


@cli.command()
@source_options
@workspace_option
@click.option(
    "--base-image",
    default=DEFAULT_BASE_IMAGE,
    show_default=True,
    envvar="MODELCAR_BASE_IMAGE",
    help="Image that provides sh, ln and sleep.",
)
def prepare(
    source, include, exclude, all_files, hf_token_file, layer_threshold, workspace, base_image
):
    """Fetch, then lay out a build context (layer dirs + Containerfile) for buildah/podman."""
    resolved = _resolve(source, include, exclude, all_files, hf_token_file, layer_threshold)
    ws = Workspace(Path(workspace)).ensure()
    fetched = _fetch(resolved, ws)
    ctx = prepare_context(resolved.plan, fetched.files_dir, ws, base_image)
    log.info(
        "context ready: %d layers, %d files linked, %d copied",
        len(ctx.layer_dirs),
        ctx.linked,
        ctx.copied,
    )
    click.echo(str(ctx.directory))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("MODELCAR_DEBUG") not in (None, "", "0")
    try:
        cli.main(args=args, prog_name="modelcar", standalone_mode=False)
    except ModelcarError as exc:
        if debug:
            raise
        _fail(exc)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _fail(Interrupted("interrupted"))
    except OSError as exc:
        # Last resort for I/O failures no stage anticipated: still one line, no traceback.
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(ModelcarError(f"{exc.strerror or exc}{where}", hint="rerun with --debug for details"))
    except click.ClickException as exc:
        exc.show()
        sys.exit(UsageError.exit_code)
    sys.exit(0)


def _fail(exc: ModelcarError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)
