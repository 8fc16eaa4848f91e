"""Options the commands share, each also read from its MODELCAR_* variable (``--help``
shows which), packed into the one carrier of build options (buildopts.SourceOptions,
BuildOptions, RegistryAccess, with FetchOptions; the API re-exports them), so the CLI and
the Python API take one road."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from modelcar_builder.buildopts import (
    ATTEMPTS,
    CONNECTIONS,
    FETCH_JOBS,
    LAYER_THRESHOLD,
    MAX_LAYER_SIZE,
    MAX_LAYERS,
    PROGRESS_INTERVAL,
    READ_TIMEOUT,
    SEGMENT_SIZE,
    SOURCE_FIELDS,
    BuildOptions,
    RegistryAccess,
    SourceOptions,
)
from modelcar_builder.errors import UsageError
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD, DEFAULT_MAX_LAYERS
from modelcar_builder.preflight import ENV_NO_PREFLIGHT
from modelcar_builder.settings import (
    ENV_SEGMENT_SIZE,
    Bounds,
    RegistryOptions,
    check_number,
    env_number,
)
from modelcar_builder.source.download import FetchOptions
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.commands.options")


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


def source_options(fn):
    """Options every command that reads a SOURCE shares, packed into ``src``
    (api.SourceOptions); each also reads MODELCAR_*."""

    @functools.wraps(fn)
    def packed(**kwargs):
        fields = {name: kwargs.pop(name) for name in SOURCE_FIELDS}
        return fn(src=SourceOptions(**fields), **kwargs)

    return source_params(packed)


def source_params(fn):
    """The source options as plain parameters (`build`, `doctor`: build_options packs them)."""
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
            "--max-layer-size",
            type=Number(MAX_LAYER_SIZE),
            default=None,
            envvar="MODELCAR_MAX_LAYER_SIZE",
            metavar="BYTES",
            help="No layer larger than BYTES (a registry's blob limit: Docker Hub refuses "
            "blobs near 10 GB and more, Quay with its default chunking 50 GB). A single "
            "file larger than it is an error (exit 16) unless --allow-large-layer.",
        ),
        click.option(
            "--allow-large-layer",
            is_flag=True,
            envvar="MODELCAR_ALLOW_LARGE_LAYER",
            help="With --max-layer-size: a single file larger than it gets a layer of its "
            "own instead of an error.",
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

    for d in reversed(decorators):
        fn = d(fn)
    return fn


def results_dir_option(fn):
    """--results-dir: where `build` and `assemble` write the image's Tekton results."""
    return click.option(
        "--results-dir",
        type=click.Path(file_okay=False),
        envvar="MODELCAR_RESULTS_DIR",
        help="Write the Tekton results IMAGE_URL, IMAGE_DIGEST and IMAGE_REF "
        "(oci://…@sha256) here (default /tekton/results if present).",
    )(fn)


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


def fetch_options(fn):
    """Download tuning, shared by the commands that fetch; packed into ``fetch_opts``."""

    @functools.wraps(fn)
    def packed(fetch_jobs, connections, attempts, read_timeout, progress_interval, **kwargs):
        return fn(fetch_opts=packed_fetch(fetch_jobs, connections, attempts, read_timeout,
                                          progress_interval), **kwargs)  # fmt: skip

    return fetch_params(packed)


def packed_fetch(fetch_jobs, connections, attempts, read_timeout, progress_interval):
    return FetchOptions(
        jobs=fetch_jobs,
        attempts=attempts,
        read_timeout=read_timeout,
        progress_interval=progress_interval,
        connections=connections,
        segment_size=_segment_size(),
    )


def fetch_params(fn):
    """The download options as plain parameters (`build`, `doctor`)."""
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
            help="Tries per Range segment (a file over one connection is one) before the "
            "download counts as failed.",
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

    for d in reversed(decorators):
        fn = d(fn)
    return fn


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


FETCH_FIELDS = ("fetch_jobs", "connections", "attempts", "read_timeout", "progress_interval")
REGISTRY_FIELDS = tuple(f.name for f in dataclasses.fields(RegistryAccess))


def build_options(params: Mapping[str, Any]) -> BuildOptions:
    """`build`'s (and `doctor`'s) click parameters as the one carrier of build options;
    --no-preflight comes from the context, where its callback left it."""
    rest = dict(params)
    source = SourceOptions(**{name: rest.pop(name) for name in SOURCE_FIELDS})
    fetch = packed_fetch(*(rest.pop(name) for name in FETCH_FIELDS))
    registry = RegistryAccess(**{name: rest.pop(name) for name in REGISTRY_FIELDS})
    rest.pop("as_json", None)
    ctx = click.get_current_context(silent=True)
    preflight = not (ctx is not None and ctx.meta.get(_NO_PREFLIGHT))
    return BuildOptions(source=source, registry=registry, fetch=fetch, preflight=preflight,
                        **rest)  # fmt: skip
