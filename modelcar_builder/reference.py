"""Image references: ``host[:port]/repo[:tag][@sha256:…]`` and docker-hub short names.

Grammar follows the docker/distribution reference package (what podman, skopeo and
KServe accept), so a name that parses here is one the rest of the toolchain takes too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from modelcar_builder.errors import UsageError

DOCKER_HUB = "docker.io"
# Docker Hub's API host; "docker.io" itself serves no /v2/.
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_MAX_NAME = 255
_SCHEMES = ("docker://", "oci://")


@dataclass(frozen=True)
class ImageRef:
    registry: str  # "host[:port]"; "docker.io" for Docker Hub
    repository: str  # "org/name"; Docker Hub official images get "library/"
    tag: str | None = None
    digest: str | None = None  # "sha256:<64 hex>"

    @classmethod
    def parse(cls, text: str, default_tag: str | None = DEFAULT_TAG) -> ImageRef:
        """Parse IMAGE. Without tag and digest, ``default_tag`` is filled in.

        Accepts an optional ``docker://`` or ``oci://`` prefix (the forms skopeo and
        KServe print), so a reference copied from either tool works as is."""
        raw = text.strip()
        if not raw:
            raise _bad(text, "it is empty")
        for scheme in _SCHEMES:
            if raw.startswith(scheme):
                raw = raw[len(scheme) :]
                break
        else:
            if "://" in raw:
                raise _bad(text, "only docker:// or oci:// may prefix an image reference")
        name, digest = _split_digest(text, raw)
        name, tag = _split_tag(text, name)
        registry, repository = _split_registry(text, name)
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name_for_pull(self) -> str:
        """The most precise single reference: ``name@digest`` if pinned, else ``name:tag``."""
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    @property
    def api_host(self) -> str:
        """The host to send /v2/ requests to (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def docker_uri(self) -> str:
        """For skopeo/buildah: ``docker://name:tag`` or ``docker://name@digest``."""
        return f"docker://{self.name_for_pull}"

    @property
    def oci_uri(self) -> str:
        """KServe ``storageUri``: ``oci://registry/repo@sha256:…``; needs a digest."""
        if not self.digest:
            raise UsageError(
                f"image {self} has no digest; an oci:// storage URI must pin one",
                hint="push first, then use the digest the registry returned",
            )
        return f"oci://{self.name}@{self.digest}"

    def with_digest(self, digest: str) -> ImageRef:
        if not _DIGEST_RE.match(digest):
            raise _bad(digest, "a digest must look like sha256:<64 lowercase hex>")
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> ImageRef:
        if not _TAG_RE.match(tag):
            raise _bad(tag, "a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -")
        return replace(self, tag=tag)


def _bad(text: str, why: str, hint: str | None = None) -> UsageError:
    return UsageError(
        f"invalid image reference {text!r}: {why}",
        hint=hint
        or "use host[:port]/repository[:tag] or …@sha256:<digest>, e.g. quay.io/org/model:v1",
    )


def _split_digest(text: str, raw: str) -> tuple[str, str | None]:
    if "@" not in raw:
        return raw, None
    name, digest = raw.split("@", 1)
    if not _DIGEST_RE.match(digest):
        raise _bad(text, "a digest must look like sha256:<64 lowercase hex>")
    return name, digest


def _split_tag(text: str, name: str) -> tuple[str, str | None]:
    # A colon after the last slash is a tag; before it, it is the registry port.
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon <= slash:
        return name, None
    tag = name[colon + 1 :]
    if not _TAG_RE.match(tag):
        raise _bad(text, "a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -")
    return name[:colon], tag


def _check_host(text: str, registry: str) -> None:
    """Catch at parse time what would otherwise fail as a DNS or connect error after the
    whole download: a port out of range, an uppercase "host" that is really a repo name."""
    host, _, port = registry.rpartition(":") if registry.count(":") == 1 else (registry, "", "")
    if port and not 0 < int(port) < 65536:
        raise _bad(text, f"port {port} is out of range (1-65535)")
    if host != host.lower() and "." not in host and ":" not in registry and host != "localhost":
        raise _bad(
            text,
            "repository names are lowercase letters, digits and . _ - separated by /",
            "use lowercase, e.g. org/model; a registry host needs a dot or a port",
        )


def names_host(first: str) -> bool:
    """Whether ``first``, the component before a name's first ``/``, is a registry host:
    the rule docker applies (a dot, a port, ``localhost``, or an uppercase letter, which
    a repository name cannot have). Every reader of a host in a name asks here."""
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


def _split_registry(text: str, name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and names_host(first):
        registry, repository = first, rest
        if not _HOST_RE.match(registry):
            raise _bad(text, f"{registry!r} is not a valid registry host[:port]")
        _check_host(text, registry)
    else:
        registry, repository = DOCKER_HUB, name
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not repository:
        raise _bad(text, "the repository name is missing")
    if not _REPOSITORY_RE.match(repository):
        why = "repository names are lowercase letters, digits and . _ - separated by /"
        hint = "use lowercase, e.g. quay.io/org/model" if repository.lower() != repository else None
        raise _bad(text, why, hint)
    if len(f"{registry}/{repository}") > _MAX_NAME:
        raise _bad(text, f"the name is longer than {_MAX_NAME} characters")
    return registry, repository
