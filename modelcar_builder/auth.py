"""Where registry credentials come from. First match wins:

1. an explicit ``--authfile`` path;
2. ``$REGISTRY_AUTH_FILE``;
3. a token file (``--registry-token-file``): user ``serviceaccount``, password = its content;
4. in a pod, the service-account token, for OpenShift's internal registry only;
5. ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json``,
   ``~/.docker/config.json`` (``auths`` entries or ``credHelpers`` / ``credsStore``).

Everything is passed in (env mapping, home dir, paths), so tests need no global state.
Secrets never go into a repr, a message or a child's argv.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelcar_builder.errors import MalformedToken, UsageError

# A child of "modelcar", the logger the CLI configures (prefix, --debug, --quiet).
log = logging.getLogger("modelcar.auth")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SA_TOKEN_PATH = SA_DIR / "token"
SERVICE_CA_PATH = SA_DIR / "service-ca.crt"
OPENSHIFT_REGISTRY_HOSTS = frozenset(
    {
        "image-registry.openshift-image-registry.svc:5000",
        "image-registry.openshift-image-registry.svc",
    }
)
TOKEN_USERNAME = "serviceaccount"  # OpenShift's registry ignores the name; this is the convention
# Names Docker Hub goes by in config files written by different tools.
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_HELPER_TIMEOUT = 30

HelperRunner = Callable[[str, str, Mapping[str, str]], "Credentials | None"]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str  # human description for error messages, e.g. "authfile /x/auth.json"
    # OAuth refresh token (docker "identitytoken"): exchanged at the token realm by POST.
    identity_token: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str, ...]:
        """Every secret string, so callers can scrub them from any text they emit."""
        return tuple(s for s in (self.password, self.identity_token) if s)


def resolve_credentials(
    host: str,
    *,
    repository: str | None = None,
    authfile: str | os.PathLike[str] | None = None,
    token_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
    sa_token_path: str | os.PathLike[str] = SA_TOKEN_PATH,
    run_helper: HelperRunner | None = None,
) -> Credentials | None:
    """Credentials for ``host`` (``host[:port]``), or None when no source has any.

    A source "matches" when it holds credentials for this host: an authfile without an
    entry for it falls through to the next source (an explicit one must exist, though).

    ``repository`` lets auth.json entries scoped to ``host/namespace/repo`` win over the
    host-wide entry, as containers/image does."""
    env = os.environ if env is None else env
    home_dir = Path(home) if home is not None else Path(env.get("HOME") or Path.home())
    helper = run_helper or run_credential_helper
    if authfile is not None:
        path = Path(authfile)
        if not path.is_file():
            raise UsageError(
                f"authfile {path} does not exist",
                hint="pass the path of a containers auth.json or docker config.json",
            )
        creds = _from_config_file(path, host, repository, env, helper)
        if creds is not None:
            return creds
    if env.get("REGISTRY_AUTH_FILE"):
        path = Path(env["REGISTRY_AUTH_FILE"])
        creds = _from_config_file(path, host, repository, env, helper) if path.is_file() else None
        if creds is not None:
            return creds
    if token_file is not None:
        return _from_token_file(Path(token_file), f"token file {token_file}")
    if host in OPENSHIFT_REGISTRY_HOSTS and Path(sa_token_path).is_file():
        return _from_token_file(Path(sa_token_path), f"service account token {sa_token_path}")
    for path in _default_config_files(env, home_dir):
        if path.is_file():
            creds = _from_config_file(path, host, repository, env, helper)
            if creds is not None:
                return creds
    return None


def default_ca_file(
    service_ca: str | os.PathLike[str] = SERVICE_CA_PATH, host: str | None = None
) -> str | None:
    """In an OpenShift pod the internal registry's TLS is signed by the service CA.

    With ``host``, only for in-cluster service names: requests' ``verify=<file>`` replaces
    the system bundle, so the service CA alone would break quay.io and friends."""
    if host is not None and not _is_cluster_service(host):
        return None
    return str(service_ca) if Path(service_ca).is_file() else None


def _is_cluster_service(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.endswith((".svc", ".svc.cluster.local"))


@contextlib.contextmanager
def private_authfile(
    host: str, creds: Credentials | None, directory: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """A containers auth.json for ``host`` in a fresh 0700 dir, mode 0600, removed on exit.

    This is how buildah/skopeo get credentials: a password on argv would be readable by
    every user through /proc/*/cmdline."""
    tmp = Path(tempfile.mkdtemp(prefix="modelcar-auth-", dir=directory))  # mkdtemp: 0700
    try:
        path = tmp / "auth.json"
        entries = {host: _auth_entry(creds)} if creds is not None else {}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"auths": entries}, fh)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_credential_helper(helper: str, host: str, env: Mapping[str, str]) -> Credentials | None:
    """``docker-credential-<helper> get`` with the host on stdin (the docker protocol)."""
    exe = shutil.which(f"docker-credential-{helper}", path=env.get("PATH"))
    source = f"credential helper docker-credential-{helper}"
    if exe is None:
        log.warning("%s is not installed; ignoring it for %s", source, host)
        return None
    try:
        proc = subprocess.run(
            [exe, "get"],
            input=host,
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s failed for %s: %s", source, host, type(exc).__name__)
        return None
    if proc.returncode != 0:
        # "credentials not found in native keychain" and the like; stderr may hold no secret
        # but we do not echo it anyway.
        log.debug("%s has no entry for %s", source, host)
        return None
    try:
        data = json.loads(proc.stdout)
        username, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        log.warning("%s returned malformed output for %s", source, host)
        return None
    if username == "<token>":
        return Credentials("<token>", "", source, identity_token=secret)
    return Credentials(username, secret, source)


def _default_config_files(env: Mapping[str, str], home: Path) -> list[Path]:
    files = []
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(home / ".config" / "containers" / "auth.json")
    files.append(home / ".docker" / "config.json")
    return files


def check_token(token: str, source: str) -> str:
    """``token`` (its ends already stripped) if a server could take it in a header, else
    MalformedToken naming ``source``: a non-ASCII character cannot be encoded in HTTP
    headers at all, and a second line or a space means the file holds more than the token.
    The message says what is wrong and where, never a character of the token."""
    for ch in token:
        if not ch.isascii():
            problem = "a non-ASCII character"
        elif not ch.isprintable() or ch.isspace():
            problem = "whitespace or a control character inside it (more than one line?)"
        else:
            continue
        raise MalformedToken(f"the token from {source} is malformed: it has {problem}")
    return token


def _from_token_file(path: Path, source: str) -> Credentials:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(
            f"cannot read {source}: {exc.strerror or type(exc).__name__}",
            hint="pass a readable file that holds the registry token",
        ) from None
    if not token:
        raise UsageError(f"{source} is empty", hint="the file must hold the registry token")
    return Credentials(TOKEN_USERNAME, check_token(token, source), source)


def _from_config_file(
    path: Path,
    host: str,
    repository: str | None,
    env: Mapping[str, str],
    run_helper: HelperRunner,
) -> Credentials | None:
    source = f"authfile {path}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read {source}: {type(exc).__name__}",
            hint='it must be JSON like {"auths": {"host": {"auth": "…"}}}',
        ) from None
    if not isinstance(config, dict):
        raise UsageError(f"{source} is not a JSON object", hint="check the file's content")
    auths = config.get("auths") or {}
    for key in _lookup_keys(host, repository):
        entry = _find_entry(auths, key)
        if entry is not None:
            creds = _decode_entry(entry, source, key)
            if creds is not None:
                return creds
    helpers = config.get("credHelpers") or {}
    for key in _lookup_keys(host, None):
        if key in helpers:
            return run_helper(helpers[key], host, env)
    if config.get("credsStore"):
        return run_helper(config["credsStore"], host, env)
    return None


def _lookup_keys(host: str, repository: str | None) -> list[str]:
    """Most specific first: host/ns/repo, host/ns, host (containers auth.json semantics)."""
    keys = []
    if repository:
        parts = repository.split("/")
        keys += [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    keys += list(_DOCKER_HUB_ALIASES) if host in _DOCKER_HUB_ALIASES else [host]
    return keys


def _normalize_key(key: str) -> str:
    # docker writes "https://index.docker.io/v1/"; older tools "http://host".
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            key = key.split("/", 1)[0]  # with a scheme, the path is an API path, not a repo
            break
    return key.rstrip("/")


def _find_entry(auths: Mapping[str, object], key: str) -> Mapping[str, object] | None:
    for raw_key, entry in auths.items():
        if _normalize_key(raw_key) == key and isinstance(entry, Mapping):
            return entry
    return None


def _decode_entry(entry: Mapping[str, object], source: str, key: str) -> Credentials | None:
    identity = entry.get("identitytoken")
    if isinstance(identity, str) and identity:
        username = entry.get("username")
        return Credentials(
            username if isinstance(username, str) and username else "<token>",
            "",
            source,
            identity_token=identity,
        )
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise UsageError(
                f'{source}: the "auth" entry for {key} is not base64 of user:password',
                hint="log in again (podman login / docker login) to rewrite it",
            )
        return Credentials(username, password, source)
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(secret, str) and user:
        return Credentials(user, secret, source)
    return None


def _auth_entry(creds: Credentials) -> dict[str, str]:
    if creds.identity_token:
        return {"identitytoken": creds.identity_token}
    raw = f"{creds.username}:{creds.password}".encode()
    return {"auth": base64.b64encode(raw).decode("ascii")}
