"""Where an image goes: a registry reference, or a local OCI image layout (skopeo's
``oci:PATH[:TAG]`` syntax, the no-registry default the README's demo uses)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelcar_builder.errors import UsageError
from modelcar_builder.reference import ImageRef

DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class LayoutTarget:
    path: Path
    tag: str

    def __str__(self) -> str:
        return f"oci:{self.path}:{self.tag}"


@dataclass(frozen=True)
class RegistryTarget:
    ref: ImageRef

    def __str__(self) -> str:
        return str(self.ref)

    @property
    def tag(self) -> str:
        """The tag a push goes to: the reference's, else ``latest`` (as docker/podman)."""
        return self.ref.tag or DEFAULT_TAG

    @property
    def repository(self) -> str:
        return self.ref.repository


Target = LayoutTarget | RegistryTarget  # both have .tag


def parse_target(text: str, default_tag: str = DEFAULT_TAG) -> Target:
    if text.startswith("oci:") and not text.startswith("oci://"):
        body = text[len("oci:") :]
        path, sep, tag = body.rpartition(":")
        if not sep or "/" in tag or not tag:
            path, tag = body, default_tag
        if not path:
            raise UsageError(
                f"empty path in image {text!r}", hint="write oci:PATH[:TAG], e.g. oci:./out:v1"
            )
        return LayoutTarget(Path(path).expanduser().resolve(), tag)
    ref = ImageRef.parse(text[len("docker://") :] if text.startswith("docker://") else text)
    return RegistryTarget(ref)
