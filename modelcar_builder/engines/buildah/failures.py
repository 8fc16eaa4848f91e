"""What a failed buildah command means for the user: one line out of buildah's stderr,
the error class it maps to (always with a hint), and no secret left in it."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator, Sequence

from modelcar_builder.auth import Credentials
from modelcar_builder.errors import (
    BuildFailed,
    EnginePrivilegeError,
    ModelcarError,
)

_MAX_LINE = 300

INSTALL_HINT = (
    "install the buildah package (Debian/Ubuntu: apt-get install buildah; "
    "RHEL/Fedora: dnf install buildah), or use --engine native, which needs no buildah"
)
MOUNT_HINT = (
    "the overlay driver mounts, which needs CAP_SYS_ADMIN: add SYS_ADMIN to the pod's "
    "securityContext.capabilities (OpenShift: the privileged SCC), or set "
    "MODELCAR_BUILDAH_STORAGE_DRIVER=vfs, or use --engine native"
)
# Fallbacks for failures no probe foresaw: they still say what to try (never an empty hint).
STORAGE_TEXT_HINT = (
    "buildah's storage driver failed: set MODELCAR_BUILDAH_STORAGE_DRIVER=vfs, or give the pod "
    "SYS_ADMIN (OpenShift: the privileged SCC) for overlay, or use --engine native"
)
BUILD_HINT = (
    "rerun with --debug to see buildah's whole output; --engine native builds the same image "
    "without buildah"
)

_LOGRUS_RE = re.compile(r'level=(?:error|fatal) msg="((?:[^"\\]|\\.)*)"')
_NOISE = ("(unable to determine exit status)", "exit status 1", "exit status 125")
# containers/storage's words for a graph driver it cannot use (overlay without CAP_SYS_ADMIN
# reads the same as a filesystem overlay does not support: only the probe tells them apart).
_STORAGE_MARKERS = ("graph driver", "overlay fs", "storage driver")
_USERNS_MARKERS = ("uid_map", "gid_map", "newuidmap", "newgidmap", "clone_newuser", "setgroups")


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def secret_forms(creds: Credentials | None) -> tuple[str, ...]:
    """Every string that would reveal the secret: itself and its auth.json encoding."""
    if creds is None:
        return ()
    forms = list(creds.secrets())
    if creds.password:
        forms.append(base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode())
    return tuple(forms)


def meaningful_line(stderr: str) -> str:
    """The line that says what went wrong: the last ``Error:`` line, else the last
    logrus error, else the last non-empty line (buildah ends with noise like
    ``(Unable to determine exit status)``)."""
    errors: list[str] = []
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        match = _LOGRUS_RE.search(line)
        if match:
            text = match.group(1).encode().decode("unicode_escape", errors="replace")
        elif line.startswith("Error:"):
            text = line[len("Error:") :].strip()
        else:
            continue
        if text and text.lower() not in _NOISE:
            errors.append(text)
    plain = [line for line in lines if not line.startswith("time=")]
    best = (errors or plain or lines or ["no error output"])[-1]
    return best if len(best) <= _MAX_LINE else best[: _MAX_LINE - 1] + "…"


def classify_failure(step: str, stderr: str, secrets: Sequence[str] = ()) -> ModelcarError:
    """One user-facing error for a failed buildah command; no secret survives in it.
    Text matching is the fallback for what the probes could not foresee; every error it
    returns carries a hint. (Buildah never talks to a registry: registry errors come
    from our own client, mapped in ``registry/``.)"""
    text = scrub(stderr, secrets)
    low = text.lower()
    line = meaningful_line(text)
    if "operation not permitted" in low and any(m in low for m in _USERNS_MARKERS):
        return EnginePrivilegeError(f"buildah cannot create its user namespace: {line}")
    if "operation not permitted" in low and "mount" in low:
        return EnginePrivilegeError(f"buildah cannot mount its storage: {line}", hint=MOUNT_HINT)
    if any(m in low for m in _STORAGE_MARKERS):
        return BuildFailed(f"buildah {step} failed: {line}", hint=STORAGE_TEXT_HINT)
    return BuildFailed(f"buildah {step} failed: {line}", hint=BUILD_HINT)


@contextlib.contextmanager
def scrubbed(secrets: Sequence[str]) -> Iterator[None]:
    """Last line of defence: no exception leaving the engine carries a secret."""
    try:
        yield
    except ModelcarError as exc:
        exc.message = scrub(exc.message, secrets)
        exc.hint = scrub(exc.hint or "", secrets)
        exc.args = (exc.message,)
        raise
