"""The engine registry: every engine by name, made on demand, and what is asked of all of
them at once (the disk each needs). The run, the preflight, ``plan`` and ``doctor`` reach
engines only through here and the ``Engine`` Protocol (``preflight``, ``disk_needed``,
``builds_locally``, ``pushes_while_fetching``, ``build``), so no caller names an engine's
class or reads an attribute the Protocol does not declare. (Named ``catalog`` rather
than ``registry``: ``registry/`` is the OCI distribution client.)"""

from __future__ import annotations

from collections.abc import Mapping

from modelcar_builder.engines import Engine
from modelcar_builder.errors import UsageError
from modelcar_builder.plan import Plan

DEFAULT_ENGINE = "native"  # no daemon, no privilege, any UID; the others when asked
ENGINES = ("native", "buildah", "podman", "docker")


def make_engine(name: str) -> Engine:
    """The engine called ``name``. Each is imported here, when asked for: buildah's and
    docker's modules cost start-up time that a native build skips. Making one runs no
    probe; ``Engine.preflight`` does."""
    if name == "native":
        from modelcar_builder.engines.native import NativeEngine

        return NativeEngine()
    if name == "buildah":
        from modelcar_builder.engines.buildah import BuildahEngine

        return BuildahEngine()
    if name == "podman":
        from modelcar_builder.engines.podman import PodmanEngine

        return PodmanEngine()
    if name == "docker":
        from modelcar_builder.engines.docker import DockerEngine

        return DockerEngine()
    raise UsageError(f"unknown engine {name!r}", hint=f"choose one of: {', '.join(ENGINES)}")


def disk_needed(plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
    """Extra workspace bytes for ``plan``, by every engine's label (an engine with modes,
    such as ``native --stream``, gives one label per mode): each engine answers for
    itself through ``Engine.disk_needed``; ``env`` holds the engines' settings."""
    needed: dict[str, int] = {}
    for name in ENGINES:
        needed.update(make_engine(name).disk_needed(plan, env))
    return needed


def default_compression(engine: str) -> str:
    """Layers as each engine writes them unless --compression says otherwise: native
    uncompressed (weights do not compress), buildah, podman and docker gzip."""
    return "none" if engine == "native" else "gzip"


def check_stream(engine: str, source_kind: str | None, load: bool = False) -> None:
    """``--stream``'s rules, the one copy the run, the preflight (so ``doctor``) and the
    native engine apply: only native streams, only from the Hub (``source_kind`` None:
    not known yet), and ``--load`` needs the files on disk."""
    if engine != "native":
        raise UsageError("--stream works only with --engine native", hint="add --engine native")
    if source_kind is not None and source_kind != "hub":
        raise UsageError("--stream needs a Hub source", hint="drop --stream for local directories")
    if load:
        raise UsageError("--load needs the model files on disk", hint="drop --stream")
