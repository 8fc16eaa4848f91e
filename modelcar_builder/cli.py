"""The `modelcar` command. Parses options, chains pipeline stages, maps errors to exit
codes. No logic of its own: everything it calls is importable and tested directly."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import click

from modelcar_builder import __version__
from modelcar_builder.auth import default_ca_file
from modelcar_builder.build import (
    ENGINES,
    BuildSettings,
    default_engine,
    run_build,
    write_results,
)
from modelcar_builder.context import DEFAULT_BASE_IMAGE, prepare_context
from modelcar_builder.errors import Interrupted, ModelcarError, UsageError, VerificationFailed
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.pipeline import Resolved, count_base_layers, disk_needed, resolve
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD, DEFAULT_MAX_LAYERS
from modelcar_builder.report import build_document, dumps, plan_document, plan_text
from modelcar_builder.selection import Selection
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.source.download import FetchOptions, fetch
from modelcar_builder.target import RegistryTarget, parse_target
from modelcar_builder.verify import verify_layout, verify_push
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar")
TEKTON_RESULTS = Path("/tekton/results")


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
        click.option(
            "--max-layers",
            type=click.IntRange(2, 127),
            default=DEFAULT_MAX_LAYERS,
            show_default=True,
            envvar="MODELCAR_MAX_LAYERS",
            help="Most layers the image may have, base included: CRI-O and podman cannot "
            "mount more than 127. Over it, consecutive large files share layers.",
        ),
        click.option(
            "--allow-incomplete",
            is_flag=True,
            envvar="MODELCAR_ALLOW_INCOMPLETE",
            help="Build even when a *.index.json names shards that are not selected.",
        ),
        click.option(
            "--source-url",
            envvar="MODELCAR_SOURCE_URL",
            help="Value of the org.opencontainers.image.source label (default: the Hub "
            "repo URL, or file://DIR). Set it for local models so the digest does not "
            "depend on where the files sit.",
        ),
    ]

    @functools.wraps(fn)
    def packed(**kwargs):
        fields = {name: kwargs.pop(name) for name in SOURCE_FIELDS}
        return fn(src=SourceArgs(**fields), **kwargs)

    for d in reversed(decorators):
        packed = d(packed)
    return packed


def workspace_option(fn):
    return click.option(
        "--workspace",
        type=click.Path(file_okay=False),
        envvar="MODELCAR_WORKSPACE",
        default="./modelcar-work",
        show_default=True,
        help="Volume for downloads, build context and state ($MODELCAR_WORKSPACE).",
    )(fn)


def _workspace(path: str) -> Workspace:
    """The checked workspace, locked until the command finishes."""
    ws = Workspace(Path(path)).ensure()
    click.get_current_context().call_on_close(ws.lock())
    return ws


@dataclass(frozen=True)
class SourceArgs:
    """The SOURCE argument and the options that shape what is read from it."""

    source: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    all_files: bool
    hf_token_file: str | None
    layer_threshold: int
    max_layers: int
    allow_incomplete: bool
    source_url: str | None

    def resolve(self, base_layers: int = 1) -> Resolved:
        """``base_layers``: what the base image adds to the layer count; the default
        base (ubi-micro) and busybox have one."""
        if self.layer_threshold <= 0:
            raise UsageError("--layer-threshold must be positive", hint="e.g. 67108864 (64 MiB)")
        selection = Selection(tuple(self.include), tuple(self.exclude), self.all_files)
        return resolve(
            self.source,
            selection,
            self.hf_token_file,
            self.layer_threshold,
            self.source_url,
            max_layers=self.max_layers,
            base_layers=base_layers,
            allow_incomplete=self.allow_incomplete,
        )


SOURCE_FIELDS = tuple(f.name for f in fields(SourceArgs))


def _fetch(resolved, workspace: Workspace):
    return fetch(resolved.plan, workspace, resolved.access, _fetch_options())


def _fetch_options() -> FetchOptions:
    interval = os.environ.get("MODELCAR_PROGRESS_INTERVAL")
    timeout = os.environ.get("MODELCAR_READ_TIMEOUT")
    attempts = os.environ.get("MODELCAR_ATTEMPTS")
    jobs = os.environ.get("MODELCAR_FETCH_JOBS")
    return FetchOptions(
        progress_interval=float(interval) if interval else None,
        read_timeout=float(timeout) if timeout else FetchOptions.read_timeout,
        attempts=int(attempts) if attempts else FetchOptions.attempts,
        jobs=int(jobs) if jobs else FetchOptions.jobs,
    )


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time, not the one at setup (a test's
    capture, or a redirected stderr, may have been replaced or closed since)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelcar")
@click.option("--debug", is_flag=True, envvar="MODELCAR_DEBUG", help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, envvar="MODELCAR_QUIET", help="Only warnings.")
def cli(debug: bool, quiet: bool) -> None:
    """Build KServe ModelCar images from Hugging Face repos or local directories."""
    handler = _StderrHandler()
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
    if base_image:
        base = count_base_layers(base_image, ("linux", "amd64"), RegistryOptions(), strict=False)
        resolved = src.resolve(base)
    else:
        resolved = src.resolve()
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
def fetch_cmd(src, workspace):
    """Download and verify the model onto the workspace (resumable)."""
    resolved = src.resolve()
    ws = _workspace(workspace)
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
    src,
    workspace,
    base_image,
):
    """Fetch, then lay out a build context (layer dirs + Containerfile) for buildah/podman."""
    base = count_base_layers(base_image, ("linux", "amd64"), RegistryOptions(), strict=False)
    resolved = src.resolve(base)
    ws = _workspace(workspace)
    fetched = _fetch(resolved, ws)
    ctx = prepare_context(resolved.plan, fetched.files_dir, ws, base_image)
    log.info(
        "context ready: %d layers, %d files linked, %d copied",
        len(ctx.layer_dirs),
        ctx.linked,
        ctx.copied,
    )
    click.echo(str(ctx.directory))


def registry_options(fn):
    decorators = [
        click.option(
            "--authfile",
            type=click.Path(dir_okay=False),
            envvar="MODELCAR_AUTHFILE",
            help="containers auth.json / docker config.json (default: REGISTRY_AUTH_FILE, "
            "then the usual places).",
        ),
        click.option(
            "--registry-token-file",
            type=click.Path(dir_okay=False),
            envvar="MODELCAR_REGISTRY_TOKEN_FILE",
            help="File with a registry token (e.g. a service-account token); "
            "sent as user 'serviceaccount'.",
        ),
        click.option(
            "--tls-verify/--no-tls-verify",
            default=True,
            envvar="MODELCAR_TLS_VERIFY",
            help="Verify the registry's TLS certificate.",
        ),
        click.option(
            "--ca-file",
            type=click.Path(dir_okay=False),
            envvar="MODELCAR_CA_FILE",
            help="CA bundle for the registry (default in a pod: the service CA).",
        ),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _registry_options(
    authfile, registry_token_file, tls_verify, ca_file, host: str | None
) -> RegistryOptions:
    # In a pod, the service CA signs in-cluster registries only (default_ca_file knows).
    default_ca = default_ca_file(host=host) if tls_verify and host else None
    return RegistryOptions(
        authfile=authfile,
        token_file=registry_token_file,
        tls_verify=tls_verify,
        ca_file=ca_file or default_ca,
    )


@cli.command()
@source_options
@workspace_option
@click.option(
    "--image",
    required=True,
    envvar="MODELCAR_IMAGE",
    help="REGISTRY/REPO[:TAG], or oci:PATH[:TAG] for a local OCI layout.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    envvar="MODELCAR_ENGINE",
    help="native: no daemon, no privilege; buildah: needs SETFCAP. "
    "Default: buildah when installed, else native.",
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
    type=click.IntRange(1, 16),
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
    type=click.IntRange(1, 4096),
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
    help="Write IMAGE_URL and IMAGE_DIGEST here (default /tekton/results if present).",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False),
    envvar="MODELCAR_REPORT",
    help="Write a JSON report here.",
)
def build(
    src,
    workspace,
    image,
    engine,
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
):
    """Fetch, build, push and verify a ModelCar. Prints the oci:// URL KServe takes."""
    target = parse_target(image)
    if isinstance(target, RegistryTarget) and target.ref.digest:
        raise UsageError(
            f"--image {image} names a digest; a push needs a tag",
            hint="write REGISTRY/REPO:TAG; the digest is printed when the push is verified",
        )
    os_, _, arch = platform.partition("/")
    if not os_ or not arch:
        raise UsageError(f"bad --platform {platform!r}", hint="write OS/ARCH, e.g. linux/amd64")
    registry = _registry_options(
        authfile,
        registry_token_file,
        tls_verify,
        ca_file,
        target.ref.api_host if isinstance(target, RegistryTarget) else None,
    )
    # The base image's depth counts against --max-layers: read it before the Hub plan.
    resolved = src.resolve(count_base_layers(base_image, (os_, arch), registry))
    ws = _workspace(workspace)
    settings = BuildSettings(
        engine=engine or default_engine(),
        base_image=base_image,
        registry=registry,
        compression=compression,
        jobs=jobs,
        stream=stream,
        platform=(os_, arch),
        upload=upload,
        chunk_size=chunk_size * 1024 * 1024,
    )
    outcome = run_build(resolved, ws, target, settings, _fetch_options())
    result = outcome.result
    uploaded = sum(1 for layer in result.layers if layer.uploaded)
    log.info(
        "pushed %s with %s: %d model layers (%d uploaded, %d already there), %s verified",
        result.target,
        result.engine,
        len(result.layers),
        uploaded,
        len(result.layers) - uploaded,
        result.manifest_digest,
    )
    if report_file:
        Path(report_file).write_text(dumps(build_document(resolved.plan, outcome)) + "\n")
    results = Path(results_dir) if results_dir else TEKTON_RESULTS
    if results_dir or results.is_dir():
        write_results(outcome, target, results)
    click.echo(outcome.image_url)


@cli.command()
@click.argument("image")
@registry_options
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label the image must carry (repeatable).",
)
def verify(image, authfile, registry_token_file, tls_verify, ca_file, labels):
    """Check a pushed ModelCar: digest, blobs, no Entrypoint/Cmd, labels."""
    target = parse_target(image)
    expected = dict(item.split("=", 1) for item in labels if "=" in item)
    host = target.ref.api_host if isinstance(target, RegistryTarget) else None
    opts = _registry_options(authfile, registry_token_file, tls_verify, ca_file, host)
    if isinstance(target, RegistryTarget):
        ref = target.ref
        with opts.client_for(ref) as client:
            reference = ref.digest or ref.tag or "latest"
            info = client.head_manifest(ref.repository, reference)
            if info is None:
                raise VerificationFailed(f"{ref} does not exist")
            result = verify_push(client, ref.repository, reference, info.digest, expected)
        click.echo(f"ok: {result.layer_count} layers, {result.total_size} bytes")
        click.echo(f"oci://{ref.registry}/{ref.repository}@{result.digest}")
        return
    desc = OciLayout(target.path).resolve(target.tag)
    result = verify_layout(OciLayout(target.path), target.tag, desc.digest, expected)
    click.echo(f"ok: {result.layer_count} layers, {result.total_size} bytes")
    click.echo(f"oci:{target.path}@{result.digest}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("MODELCAR_DEBUG") not in (None, "", "0")
    # Kubernetes stops a pod with SIGTERM: unwind like Ctrl-C so state is saved and the
    # exit code says "interrupted, rerun to continue" instead of a bare kill.
    signal.signal(signal.SIGTERM, _raise_interrupt)
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


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _fail(exc: ModelcarError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)
