"""Settings that are not command-line options, in one place, and how to talk to
registries: the user's credential and TLS choices and the one place that turns them into
a connected client (twine keeps `settings` apart the same way).

The environment: :func:`environment` is the one place the package reads it (click reads
the options' own MODELCAR_* variables). The tool's tuning variables (MODELCAR_BUILDAH_*,
MODELCAR_REGISTRY_RETRY_WINDOW, MODELCAR_SEGMENT_SIZE) and SOURCE_DATE_EPOCH are parsed
and validated here only. Other tools' standard variables (PATH, TMPDIR, DOCKER_HOST,
REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR, COSIGN_PASSWORD, ...) are read from that mapping
where they are used. ``auth.py`` sits below this module: its callers pass the mapping
down; its ``os.environ`` default serves direct callers only. (``source/hub.py`` still
reads ``os.environ`` for the Hub's variables; source/ is being restructured.)"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import certifi

from modelcar_builder.auth import default_ca_file, resolve_credentials
from modelcar_builder.errors import UsageError
from modelcar_builder.reference import ImageRef
from modelcar_builder.registry import RegistryClient, RetryPolicy
from modelcar_builder.registry.transport import DEFAULT_RETRY_WINDOW


@dataclass(frozen=True)
class RegistryOptions:
    authfile: str | None = None
    token_file: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    retry_window: float = DEFAULT_RETRY_WINDOW  # seconds an outage mid-run is ridden out
    ca_source: str | None = None  # where ca_file came from, for doctor (None: --ca-file)

    @classmethod
    def for_host(
        cls,
        authfile: str | None,
        token_file: str | None,
        tls_verify: bool,
        ca_file: str | None,
        host: str | None,
    ) -> RegistryOptions:
        """The options for a registry ``host``; in a pod the service CA is the default
        CA of in-cluster registries only (default_ca_file knows which); then OpenSSL's
        SSL_CERT_FILE / SSL_CERT_DIR (env_ca_bundle)."""
        default_ca = default_ca_file(host=host) if tls_verify and host else None
        source = None
        if ca_file is None and default_ca is None and tls_verify:
            default_ca, source = env_ca_bundle(environment()) or (None, None)
        return cls(
            authfile,
            token_file,
            tls_verify,
            ca_file or default_ca,
            retry_window=registry_retry_window(),
            ca_source=source,
        )

    def client_for(self, ref: ImageRef) -> RegistryClient:
        """A client for ``ref``'s registry with the first credentials that apply."""
        creds = resolve_credentials(
            ref.api_host,
            repository=ref.repository,
            authfile=self.authfile,
            token_file=self.token_file,
            env=environment(),
        )
        return RegistryClient(
            ref.api_host,
            creds,
            tls_verify=self.tls_verify,
            ca_file=self.ca_file,
            retry=RetryPolicy(window=self.retry_window),
        )

    def trust(self) -> str:
        """How TLS is checked, in words (doctor's registry line): the CA named, or the
        bundle requests uses (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's)."""
        if not self.tls_verify:
            return "TLS not verified (--no-tls-verify)"
        if self.ca_file:
            return f"TLS trusted with CA {self.ca_source or self.ca_file}"
        env = environment()
        bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or certifi.where()
        return f"TLS checked against the system bundle {bundle} (no --ca-file)"


def env_ca_bundle(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The CAs OpenSSL's variables name, as one file requests and buildah can take, and
    what they were; None when neither is set.

    requests ignores SSL_CERT_FILE and SSL_CERT_DIR (it trusts certifi's bundle), so a
    registry behind a CA given that way (OpenShift Pipelines injects the cluster's trusted
    CA bundle as SSL_CERT_DIR=/tekton-custom-certs:...) failed to verify. SSL_CERT_FILE
    replaces the default bundle, as in OpenSSL; every certificate file in each
    SSL_CERT_DIR directory (':'-separated; read as Go does, no c_rehash names needed) is
    added to it. The result is written once per content under the temp dir."""
    cert_file = env.get("SSL_CERT_FILE") or ""
    dirs = [d for d in (env.get("SSL_CERT_DIR") or "").split(":") if d]
    if not cert_file and not dirs:
        return None
    if cert_file and not dirs:
        return (cert_file, f"SSL_CERT_FILE {cert_file}") if Path(cert_file).is_file() else None
    import certifi

    base = Path(cert_file) if cert_file and Path(cert_file).is_file() else Path(certifi.where())
    parts, found = [base.read_bytes()], 0
    for d in dirs:
        directory = Path(d)
        if not directory.is_dir():
            continue
        for f in sorted(directory.iterdir()):
            try:
                data = f.read_bytes() if f.is_file() else b""
            except OSError:
                continue
            if b"-----BEGIN CERTIFICATE-----" in data:
                parts.append(data)
                found += 1
    if not found:
        return (str(base), f"SSL_CERT_FILE {cert_file}") if cert_file else None
    bundle = b"\n".join(parts)
    path = (
        Path(tempfile.gettempdir()) / f"modelcar-ca-{hashlib.sha256(bundle).hexdigest()[:16]}.pem"
    )
    if not path.is_file():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(bundle)
        partial.replace(path)
    what = (
        f"SSL_CERT_DIR {':'.join(dirs)} ({found} file{'s' if found != 1 else ''} added to {base})"
    )
    return str(path), what


# Numeric tuning variables that are not options: each is validated like one (env_number).
ENV_RETRY_WINDOW = "MODELCAR_REGISTRY_RETRY_WINDOW"
ENV_SEGMENT_SIZE = "MODELCAR_SEGMENT_SIZE"

# -- the buildah engine's settings (environment only: they tune one engine) ------------------

ENGINE_NAME = "buildah"
ENV_STORAGE_DRIVER = "MODELCAR_BUILDAH_STORAGE_DRIVER"
ENV_ISOLATION = "MODELCAR_BUILDAH_ISOLATION"
ENV_PRIVATE_STATE = "MODELCAR_BUILDAH_PRIVATE_STATE"
ENV_OVERLAP = "MODELCAR_BUILDAH_OVERLAP"
DEFAULT_OVERLAP = True  # upload layer i while layer i+1 is built (measured)


@dataclass(frozen=True)
class BuildahSettings:
    storage_driver: str = "auto"  # auto: overlay where it can mount, else vfs
    isolation: str = "chroot"
    private_state: bool = True
    overlap: bool = DEFAULT_OVERLAP  # registry target: one upload in flight

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BuildahSettings:
        private = env.get(ENV_PRIVATE_STATE, "1").strip().lower() not in ("0", "false", "no")
        overlap = env.get(ENV_OVERLAP, "").strip().lower()
        if overlap not in ("", "0", "1", "true", "false", "yes", "no"):
            raise UsageError(f"{ENV_OVERLAP}={overlap!r} is not a switch", hint="use 0 or 1")
        return cls(
            storage_driver=env.get(ENV_STORAGE_DRIVER, "").strip() or "auto",
            isolation=env.get(ENV_ISOLATION, "").strip() or "chroot",
            private_state=private,
            overlap=overlap in ("1", "true", "yes") if overlap else DEFAULT_OVERLAP,
        )


def buildah_settings(env: Mapping[str, str] | None = None) -> BuildahSettings:
    """The buildah engine's MODELCAR_BUILDAH_* settings, from ``env`` (default: the
    process environment)."""
    return BuildahSettings.from_env(environment() if env is None else env)


def environment() -> Mapping[str, str]:
    """The process environment: the one place the package reads it (auth.py, below this
    module, takes it from its callers). Modules that need another tool's standard
    variable (PATH, HOME, TMPDIR, XDG_RUNTIME_DIR, DOCKER_HOST, REGISTRY_AUTH_FILE,
    KUBERNETES_SERVICE_HOST, COSIGN_PASSWORD, a child process's environment) get the
    mapping here and read that one variable where it is used."""
    return os.environ


# What `modelcar build --help` lists under its options: settings read from the environment.
ENVIRONMENT = {
    ENV_OVERLAP: "buildah: 1 (default) uploads a layer while the next builds",
    ENV_STORAGE_DRIVER: "buildah: auto (overlay where it mounts, else vfs), overlay or vfs",
    ENV_ISOLATION: "buildah: chroot (default)",
    ENV_PRIVATE_STATE: "buildah: 1 (default) keeps its blob-info cache on the workspace",
    ENV_RETRY_WINDOW: "seconds a registry that answered before may be away "
    "(a restart) before the build gives up (default 120, 0..86400)",
    ENV_SEGMENT_SIZE: "bytes per Range segment of a multi-connection download (default "
    "64 MiB, 65536..1073741824; --stream reads ahead min(this, 4 MiB))",
    "SOURCE_DATE_EPOCH": "the image's created time (default: the epoch, for stable digests)",
    "HF_TOKEN, HF_ENDPOINT": "the Hub token and address",
    "REGISTRY_AUTH_FILE": "registry credentials (containers auth.json)",
    "COSIGN_PASSWORD": "the --sign-key password when no --sign-key-password-file is given",
}
DEFAULT_CREATED = "1970-01-01T00:00:00Z"  # fixed: the same model gives the same digest


def created_timestamp(env: Mapping[str, str] | None = None) -> str:
    """The image's `created`: SOURCE_DATE_EPOCH when set (reproducible-builds.org), else
    the epoch. Never "now": that would give every build a new digest and re-push."""
    seconds = env_number("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH, -1, env)
    if seconds < 0:  # unset
        return DEFAULT_CREATED
    return datetime.fromtimestamp(int(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- numbers: one rule for every numeric option and tuning variable ------------------------


@dataclass(frozen=True)
class Bounds:
    """What a numeric setting accepts: ``kind`` (int or float), ``low``..``high`` inclusive.
    Always finite: inf would overflow an int() later, and nan passes every comparison."""

    kind: type[int] | type[float]
    low: float
    high: float
    example: str  # a sane value for the hint, e.g. the default

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        return f"{what} from {_plain(self.low)} to {_plain(self.high)}"

    def span(self) -> str:
        return f"{_plain(self.low)}..{_plain(self.high)}"


def _plain(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


def check_number(raw: str | float, name: str, bounds: Bounds) -> int | float:
    """``raw`` (an option's text, a variable's value, or a default) as ``bounds.kind``,
    finite and in range; else UsageError (exit 2) naming ``name`` and the range."""
    text = str(raw).strip()
    value: int | float | None
    try:
        value = int(text) if bounds.kind is int else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not bounds.low <= value <= bounds.high:
        raise UsageError(
            f"{name} must be {bounds.describe()}, not {text!r}",
            hint=f"e.g. {name}{'=' if name.isupper() else ' '}{bounds.example}",
        )
    return value


def env_number(
    name: str, bounds: Bounds, default: float, env: Mapping[str, str] | None = None
) -> int | float:
    """A numeric tuning variable, validated as an option would be; unset or empty:
    ``default``. Never ignored silently: a typo would quietly change the tuning."""
    env = environment() if env is None else env
    raw = env.get(name, "").strip()
    return default if not raw else check_number(raw, name, bounds)


SOURCE_DATE_EPOCH = Bounds(int, 0, 253402300799, "1700000000")  # up to 9999-12-31
RETRY_WINDOW = Bounds(float, 0, 86400, "120")  # 0: give up after the first quick retries


def registry_retry_window(env: Mapping[str, str] | None = None) -> float:
    return float(env_number(ENV_RETRY_WINDOW, RETRY_WINDOW, DEFAULT_RETRY_WINDOW, env))
