"""Credentials and TLS for buildah and for our own registry client: resolved once,
handed to buildah only in a 0600 authfile (never argv), CAs as a cert dir."""

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
from modelcar_builder.registry import RegistryClient
from modelcar_builder.target import RegistryTarget, parse_target


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
    base = parse_target(request.base_image) if request.base_image != "scratch" else None
    if not isinstance(base, RegistryTarget):
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


def connect_target(
    run: BuildRun, creds: Credentials | None, tls: list[str], stack: contextlib.ExitStack
) -> None:
    target = run.request.target
    if not isinstance(target, RegistryTarget):
        return
    host = target.ref.registry
    run.target_remote = Remote(host, creds.source if creds else None)
    tmp = run.request.workspace.tmp_dir
    authfile = stack.enter_context(private_authfile(host, creds, directory=tmp))
    run.target_args = [f"--authfile={authfile}", *tls]
    client = run.client = stack.enter_context(target_client(run.request))
    client.ping()  # auth and TLS fail here, before any model byte is copied


def connect_base(
    run: BuildRun, creds: Credentials | None, tls: list[str], stack: contextlib.ExitStack
) -> None:
    base = run.request.base_image
    target = parse_target(base) if base != "scratch" else None
    if not isinstance(target, RegistryTarget):
        return  # scratch, or an oci: layout on disk
    host = target.ref.registry
    run.base_remote = Remote(host, creds.source if creds else None)
    tmp = run.request.workspace.tmp_dir
    authfile = stack.enter_context(private_authfile(host, creds, directory=tmp))
    run.base_args = [f"--authfile={authfile}", *tls]
