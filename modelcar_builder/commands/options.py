"""Options the commands share, each also read from its MODELCAR_* variable (``--help``
shows which), packed into values: SourceArgs, FetchOptions, RegistryOptions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from modelcar_builder.build import DEFAULT_ENGINE, make_engine
from modelcar_builder.errors import UsageError
from modelcar_builder.pipeline import Resolved, resolve
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD, DEFAULT_MAX_LAYERS
from modelcar_builder.preflight import ENV_NO_PREFLIGHT, Request, before_download
from modelcar_builder.selection import Selection
from modelcar_builder.settings import (
    ENV_SEGMENT_SIZE,
    Bounds,
    RegistryOptions,
    check_number,
    env_number,
)
from modelcar_builder.source.download import FetchOptions
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar")


class Number(click.ParamType):
    """A numeric option checked by the one rule every number obeys (settings.check_number):
    finite, in range, else exit 2 naming the option (or its MODELCAR_* variable)."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.name = "integer" if bounds.kind is int else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        return check_number(value, _spelling(param, ctx), self.bounds)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"{'INTEGER' if self.bounds.kind is int else 'FLOAT'} {self.bounds.span()}"


def _spelling(param: click.Parameter | None, ctx: click.Context | None) -> str:
    """How the user gave the value: the variable's name when it came from there."""
    if param is None or param.name is None:
        return "value"
    source = ctx.get_parameter_source(param.name) if ctx is not None else None
    if source == click.core.ParameterSource.ENVIRONMENT and isinstance(param.envvar, str):
        return param.envvar
    return param.opts[0] if param.opts else param.name


LAYER_THRESHOLD = Bounds(int, 1, 1 << 50, str(DEFAULT_LAYER_THRESHOLD))
MAX_LAYERS = Bounds(int, 2, 127, str(DEFAULT_MAX_LAYERS))  # CRI-O/podman mount <= 127
FETCH_JOBS = Bounds(int, 1, 64, str(FetchOptions.jobs))
CONNECTIONS = Bounds(int, 1, 256, str(FetchOptions.connections))
ATTEMPTS = Bounds(int, 1, 100, str(FetchOptions.attempts))
READ_TIMEOUT = Bounds(float, 0.1, 86400, f"{FetchOptions.read_timeout:g}")  # seconds
PROGRESS_INTERVAL = Bounds(float, 0, 86400, "5")  # seconds
JOBS = Bounds(int, 1, 16, "2")  # build --jobs: layers pushed at once
CHUNK_SIZE = Bounds(int, 1, 4096, "64")  # build --chunk-size, MiB
SEGMENT_SIZE = Bounds(int, 64 * 1024, 1 << 30, str(FetchOptions.segment_size))  # bytes


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
            type=Number(LAYER_THRESHOLD),
            default=DEFAULT_LAYER_THRESHOLD,
            show_default=True,
            envvar="MODELCAR_LAYER_THRESHOLD",
            help="Files this big or larger get their own layer.",
        ),
        click.option(
            "--max-layers",
            type=Number(MAX_LAYERS),
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


def open_workspace(path: str) -> Workspace:
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

    def resolve(self, base_layers: int = 1, hub_timeout: float | None = None) -> Resolved:
        """``base_layers``: what the base image adds to the layer count; the default
        base (ubi-micro) and busybox have one. ``hub_timeout``: --read-timeout, where the
        command has it, for the Hub's metadata calls too."""
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
            hub_timeout=hub_timeout,
        )


SOURCE_FIELDS = tuple(f.name for f in fields(SourceArgs))


def fetch_options(fn):
    """Download tuning, shared by the commands that fetch; packed into ``fetch_opts``."""
    decorators = [
        click.option(
            "--fetch-jobs",
            type=Number(FETCH_JOBS),
            default=FetchOptions.jobs,
            envvar="MODELCAR_FETCH_JOBS",
            help="Files downloaded in parallel.",
        ),
        click.option(
            "--connections",
            type=Number(CONNECTIONS),
            default=FetchOptions.connections,
            show_default=True,
            envvar="MODELCAR_CONNECTIONS",
            help="HTTP connections to the Hub, all files together: a large file is "
            "fetched as several Range segments at once.",
        ),
        click.option(
            "--attempts",
            type=Number(ATTEMPTS),
            default=FetchOptions.attempts,
            envvar="MODELCAR_ATTEMPTS",
            help="Tries per file before the download counts as failed.",
        ),
        click.option(
            "--read-timeout",
            type=Number(READ_TIMEOUT),
            default=FetchOptions.read_timeout,
            envvar="MODELCAR_READ_TIMEOUT",
            help="Seconds without a byte before a download or Hub call counts as stalled.",
        ),
        click.option(
            "--progress-interval",
            type=Number(PROGRESS_INTERVAL),
            envvar="MODELCAR_PROGRESS_INTERVAL",
            help="Seconds between plain progress lines when stderr is not a TTY (default 5).",
        ),
    ]

    @functools.wraps(fn)
    def packed(fetch_jobs, connections, attempts, read_timeout, progress_interval, **kwargs):
        opts = FetchOptions(
            jobs=fetch_jobs,
            attempts=attempts,
            read_timeout=read_timeout,
            progress_interval=progress_interval,
            connections=connections,
            segment_size=_segment_size(),
        )
        return fn(fetch_opts=opts, **kwargs)

    for d in reversed(decorators):
        packed = d(packed)
    return packed


def _segment_size() -> int:
    """Range segment size: internal tuning (tests use small ones), not an option."""
    return int(env_number(ENV_SEGMENT_SIZE, SEGMENT_SIZE, FetchOptions.segment_size))


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
            help="Verify the registry's TLS certificate. --tls-verify=false and "
            "--tls-verify=true (skopeo's and podman's spelling) work too.",
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


TLS_VERIFY = "--tls-verify"


def spell_tls_verify(args: list[str]) -> list[str]:
    """``--tls-verify=false|true`` (how skopeo and podman take it) as click's flag pair.
    A click boolean flag refuses an attached value, and an option whose value may be left
    out would take the next argument as its value (``verify --tls-verify IMAGE``)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":  # what follows is arguments, never options
            return out + args[i:]
        name, sep, value = arg.partition("=")
        if not sep or name != TLS_VERIFY:
            out.append(arg)
            continue
        try:
            verify = click.BOOL.convert(value, None, None)
        except click.BadParameter:
            raise UsageError(
                f"{TLS_VERIFY} takes true or false, not {value!r}",
                hint="write --tls-verify=false (or --no-tls-verify), or --tls-verify=true",
            ) from None
        out.append(TLS_VERIFY if verify else "--no-tls-verify")
    return out


def registry_settings(
    authfile, registry_token_file, tls_verify, ca_file, host: str | None
) -> RegistryOptions:
    return RegistryOptions.for_host(authfile, registry_token_file, tls_verify, ca_file, host)


def preflight_option(fn):
    """``--no-preflight`` (MODELCAR_NO_PREFLIGHT): skip the checks `build` runs before the
    download. Kept out of the command's arguments: it lands in ``ctx.meta``."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.meta[_NO_PREFLIGHT] = value
        return value

    return click.option(
        "--no-preflight",
        is_flag=True,
        envvar=ENV_NO_PREFLIGHT,
        expose_value=False,
        callback=remember,
        help="Skip the checks run before the download (what `modelcar doctor` reports).",
    )(fn)


_NO_PREFLIGHT = "modelcar.no_preflight"


def preflight_request(params: Mapping[str, Any], engine: str | None = None) -> Request:
    """The preflight's view of a `build` command line (its click parameters by name)."""
    image, push = params["image"], True
    if params.get("load") and is_local_name(image):  # load-only: no registry to check
        image, push = local_name(image), False
    return Request(
        image=image,
        push=push,
        workspace=Path(params["workspace"]),
        engine=engine or params.get("engine") or DEFAULT_ENGINE,
        base_image=params["base_image"],
        platform=params.get("platform") or "linux/amd64",
        authfile=params.get("authfile"),
        token_file=params.get("registry_token_file"),
        tls_verify=params.get("tls_verify", True),
        ca_file=params.get("ca_file"),
        max_layers=params.get("max_layers") or DEFAULT_MAX_LAYERS,
        stream=bool(params.get("stream")),
        compression=params.get("compression"),
        results_dir=params.get("results_dir"),
        report_file=params.get("report_file"),
        make_engine=make_engine,
    )


def source_args(params: Mapping[str, Any]) -> SourceArgs:
    return SourceArgs(**{name: params[name] for name in SOURCE_FIELDS})


def check_before_download(resolved: Resolved, ws: Workspace, engine: str) -> None:
    """`build`: run the preflight on this command's own options, unless --no-preflight;
    WARN lines are logged, the first FAIL is raised (its own exit code and hint)."""
    ctx = click.get_current_context()
    if ctx.meta.get(_NO_PREFLIGHT):
        log.info("preflight skipped (--no-preflight)")
        return
    report = before_download(preflight_request(ctx.params, engine), resolved, ws)
    for check in report.checks:
        if check.status == "WARN":
            log.warning("preflight %s: %s (fix: %s)", check.check, check.message, check.fix)
        else:
            log.debug("preflight %s %s: %s", check.status, check.check, check.message)
    for check in report.failures[1:]:
        log.error("preflight %s: %s", check.check, check.message)
    report.raise_first()
    log.info("preflight: %d checks passed in %.1f s", len(report.checks), report.seconds)


def is_local_name(image: str) -> bool:
    """A name without a registry host (``NAME[:TAG]``, ``ORG/NAME[:TAG]``) or under
    ``localhost/``: with ``--load`` it names an image in the local store only."""
    if image.startswith(("oci:", "docker://")):
        return False
    first, sep, _rest = image.partition("/")
    if not sep:
        return True
    if first == "localhost":
        return True
    return not ("." in first or ":" in first)


def local_name(image: str) -> str:
    """``localhost/NAME:TAG``, the form podman gives local images (docker takes it too)."""
    name = image if image.startswith("localhost/") else f"localhost/{image}"
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else f"{name}:latest"
