"""Credentials for our own registry client, resolved once: buildah never talks to a
registry (it commits each layer to a local OCI layout), so it never receives them; they
serve the base image's client and the scrubbing of buildah's error text. The podman
engine shares the resolution and the CA handling (a cert dir and TLS arguments)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelcar_builder.auth import Credentials, resolve_credentials
from modelcar_builder.engines import BuildRequest
from modelcar_builder.engines.buildah.session import BuildRun
from modelcar_builder.registry import RegistryClient
from modelcar_builder.settings import environment
from modelcar_builder.target import RegistryTarget, parse_target


def registry_base(request: BuildRequest) -> RegistryTarget | None:
    """The base image when it lives in a registry; None for scratch or an oci: layout."""
    if request.options.base_image == "scratch":
        return None
    target = parse_target(request.options.base_image)
    return target if isinstance(target, RegistryTarget) else None


def resolve_for_build(request: BuildRequest) -> tuple[Credentials | None, Credentials | None]:
    """Target credentials as the native engine resolves them (only to scrub them from
    buildah's output); the base shares them when it lives on the same registry, else
    gets its own lookup (authfile, config files)."""
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
            env=environment(),
        )
    base = registry_base(request)
    if base is None:
        return target_creds, None
    if base.ref.registry == target_host:
        return target_creds, target_creds
    base_creds = resolve_credentials(
        base.ref.api_host, repository=base.ref.repository, authfile=opts.authfile, env=environment()
    )
    return target_creds, base_creds


@contextlib.contextmanager
def target_client(request: BuildRequest) -> Iterator[RegistryClient]:
    """Our own client for the target (HEADs, mounts, uploads, the manifest); it
    resolves credentials exactly as :func:`resolve_for_build` does."""
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


def connect_target(run: BuildRun, stack: contextlib.ExitStack) -> None:
    """Our client for a registry target, pinged: auth and TLS fail here, before any
    model byte is copied."""
    if not isinstance(run.request.target, RegistryTarget):
        return
    client = run.client = stack.enter_context(target_client(run.request))
    client.ping()
