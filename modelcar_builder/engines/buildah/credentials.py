"""Credentials and TLS for buildah and for our own registry client: resolved once,
handed to buildah only in a 0600 authfile (never argv), written only when buildah talks
to that registry (the chain mode) and only in memory-backed storage
(:mod:`.secretdir`, never the workspace); CAs as a cert dir."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelcar_builder.auth import Credentials, private_authfile, resolve_credentials
from modelcar_builder.engines import BuildRequest
from modelcar_builder.engines.buildah.failures import Remote
from modelcar_builder.engines.buildah.session import BuildRun
from modelcar_builder.engines.buildah.settings import via_layout
from modelcar_builder.registry import RegistryClient
from modelcar_builder.target import RegistryTarget, parse_target


def registry_base(request: BuildRequest) -> RegistryTarget | None:
    """The base image when it lives in a registry; None for scratch or an oci: layout."""
    if request.base_image == "scratch":
        return None
    target = parse_target(request.base_image)
    return target if isinstance(target, RegistryTarget) else None


def resolve_for_build(request: BuildRequest) -> tuple[Credentials | None, Credentials | None]:
    """Target credentials as the native engine resolves them; the base shares them when
    it lives on the same registry, else gets its own lookup (authfile, config files)."""
    opts = request.registry
    target_creds = None
    target_host = None
    if isinstance(request.target, RegistryTarget):
        ref = request.target.ref
        target_host = ref.registry
        target_creds = resolve_credentials(
            ref.api_host,
            repository=ref.repository,
            authfile=opts.authfile,
            token_file=opts.token_file,
        )
    base = registry_base(request)
    if base is None:
        return target_creds, None
    if base.ref.registry == target_host:
        return target_creds, target_creds
    base_creds = resolve_credentials(
        base.ref.api_host, repository=base.ref.repository, authfile=opts.authfile
    )
    return target_creds, base_creds


@contextlib.contextmanager
def target_client(request: BuildRequest) -> Iterator[RegistryClient]:
    """Our own client for the target (read-back, HEADs, uncompressed uploads); it
    resolves credentials exactly as :func:`resolve_for_build` does for buildah."""
    target = request.target
    if not isinstance(target, RegistryTarget):
        raise RuntimeError(f"{target} is not a registry")
    client = request.registry.client_for(target.ref)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def cert_dir(ca_file: str | None, directory: Path) -> Iterator[Path | None]:
    """containers/image reads CAs from a directory (``*.crt``), not a file."""
    if not ca_file:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="modelcar-certs-", dir=directory))
    try:
        shutil.copyfile(ca_file, tmp / "ca.crt")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tls_args(tls_verify: bool, certs: Path | None) -> list[str]:
    args = [f"--tls-verify={'true' if tls_verify else 'false'}"]
    if certs is not None:
        args.append(f"--cert-dir={certs}")
    return args


def buildah_pushes(run: BuildRun) -> bool:
    """Whether buildah itself writes to the registry target: only the chain mode's last
    commit (or zstd push); with ``compression none`` it commits to a layout we upload."""
    return (
        run.settings.mode == "chain"
        and isinstance(run.request.target, RegistryTarget)
        and not via_layout(run.request)
    )


def buildah_pulls_base(run: BuildRun) -> bool:
    """Whether buildah itself pulls the base: only in the chain mode, from a registry
    (per-layer: our own client reads the base, with the credentials in memory)."""
    return run.settings.mode == "chain" and registry_base(run.request) is not None


def connect_target(
    run: BuildRun,
    creds: Credentials | None,
    tls: list[str],
    stack: contextlib.ExitStack,
    secrets: Path | None,
) -> None:
    """Our client for a registry target (pinged: auth and TLS fail here), and buildah's
    arguments for it: an authfile in ``secrets`` only when buildah pushes."""
    target = run.request.target
    if not isinstance(target, RegistryTarget):
        return
    host = target.ref.registry
    run.target_remote = Remote(host, creds.source if creds else None)
    run.target_args = [*tls]
    if buildah_pushes(run):
        run.target_args.insert(0, f"--authfile={_authfile(host, creds, stack, secrets)}")
    client = run.client = stack.enter_context(target_client(run.request))
    client.ping()  # auth and TLS fail here, before any model byte is copied


def connect_base(
    run: BuildRun,
    creds: Credentials | None,
    tls: list[str],
    stack: contextlib.ExitStack,
    secrets: Path | None,
) -> None:
    target = registry_base(run.request)
    if target is None:
        return  # scratch, or an oci: layout on disk
    host = target.ref.registry
    run.base_remote = Remote(host, creds.source if creds else None)
    run.base_args = [*tls]
    if buildah_pulls_base(run):
        run.base_args.insert(0, f"--authfile={_authfile(host, creds, stack, secrets)}")


def _authfile(
    host: str, creds: Credentials | None, stack: contextlib.ExitStack, secrets: Path | None
) -> Path:
    """A 0600 authfile in the run's secret dir (memory-backed, :mod:`.secretdir`); an
    empty one without credentials, so buildah reads no config file of its own."""
    if secrets is None:
        raise RuntimeError("buildah needs an authfile but the run has no secret dir")
    return stack.enter_context(private_authfile(host, creds, directory=secrets))
