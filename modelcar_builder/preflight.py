"""Everything a build can check before the first model byte moves, as typed results.

`modelcar doctor` runs every check and prints them; `modelcar build` runs the ones its
start has not done (hub, base image) before the download and fails with the first FAIL's
own error. No model byte moves: Hub metadata, the base's manifest, one registry upload
started and cancelled, statvfs, a probe file. Secrets are named by their source only."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelcar_builder.auth import SA_DIR, SA_TOKEN_PATH
from modelcar_builder.buildopts import BuildOptions
from modelcar_builder.engines.catalog import (
    check_stream,
    default_compression,
    disk_needed,
    make_engine,
)
from modelcar_builder.errors import (
    InsufficientSpace,
    ModelcarError,
    OutputNotWritable,
    RegistryUnreachable,
    SourceNotFound,
    TooManyLayers,
    UsageError,
)
from modelcar_builder.oci.consumers import consumers_check
from modelcar_builder.oci.image import Platform
from modelcar_builder.oci.index import check_platforms, parse_platforms
from modelcar_builder.pipeline import Resolved, count_base_layers
from modelcar_builder.plan import Plan
from modelcar_builder.report import DOCUMENT_VERSION
from modelcar_builder.settings import RegistryOptions, created_timestamp, environment
from modelcar_builder.target import LayoutTarget, RegistryTarget, Target, parse_target
from modelcar_builder.units import human
from modelcar_builder.workspace import Workspace, device_of, writable_problem

Status = Literal["PASS", "WARN", "FAIL", "INFO"]
TEKTON_RESULTS = Path("/tekton/results")
TMPDIR_LOW = 64 * 1024 * 1024  # less free in TMPDIR than this is worth a warning
ENV_NO_PREFLIGHT = "MODELCAR_NO_PREFLIGHT"


@dataclass(frozen=True)
class CheckResult:
    """One line of the verdict. A FAIL carries the error `build` raises for it."""

    check: str  # identity, image, base, source, workspace, outputs, engine, registry, disk
    status: Status
    message: str
    fix: str = ""
    error: ModelcarError | None = field(default=None, repr=False, compare=False)

    @property
    def exit_code(self) -> int:
        return self.error.exit_code if self.error is not None else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            "exit_code": self.exit_code,
        }


def _pass(check: str, message: str, status: Status = "PASS") -> CheckResult:
    return CheckResult(check, status, message)


def _warn(check: str, message: str, fix: str) -> CheckResult:
    return CheckResult(check, "WARN", message, fix)


def _fail(check: str, error: ModelcarError) -> CheckResult:
    return CheckResult(check, "FAIL", error.message, error.hint, error)


@dataclass(frozen=True)
class Report:
    checks: tuple[CheckResult, ...]
    seconds: float

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.status == "FAIL")

    @property
    def exit_code(self) -> int:
        """The first FAIL's exit code (README's table), 0 when nothing failed."""
        return self.failures[0].exit_code if self.failures else 0

    def raise_first(self) -> None:
        if self.failures and self.failures[0].error is not None:
            raise self.failures[0].error

    def as_dict(self) -> dict[str, Any]:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("PASS", "WARN", "FAIL")}
        return {
            "version": DOCUMENT_VERSION,
            "document": "doctor",
            "ok": not self.failures,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "counts": counts,
            "checks": [c.as_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class Request:
    """The build's options as the checks read them (`build` before its download, and
    `doctor`): a view of the one carrier, plus the environment the checks read."""

    options: BuildOptions
    env: Mapping[str, str] = field(default_factory=environment, repr=False)

    @property
    def image(self) -> str:
        return self.options.target_image()[0]

    @property
    def push(self) -> bool:
        """False: --load of a local name only, no registry involved."""
        return self.options.target_image()[1]

    def registry(self, target: Target | None) -> RegistryOptions:
        host = target.ref.api_host if isinstance(target, RegistryTarget) else None
        return self.options.registry.for_host(host)


# -- the two runs ----------------------------------------------------------------------------


def diagnose(request: Request, resolve: Callable[[int], Resolved]) -> Report:
    """`modelcar doctor`: every check, each one run even when an earlier one failed
    (a check that needs what a failed one would have given is left out).
    ``resolve(base_layers)`` plans the source (Hub metadata only)."""
    started = time.monotonic()
    out = identity(request.env)
    image, target = check_image(request)
    out.append(image)
    registry = request.registry(target)
    base_layers = None
    if target is not None:
        base, base_layers = check_base(request, registry)
        out.append(base)
    source, resolved = check_source(resolve, base_layers)
    out.append(source)
    workspace, ws = check_workspace(Path(request.options.workspace))
    out.append(workspace)
    out += check_outputs(request, target, create=False)
    if ws is not None:
        out.append(check_engine(request, ws, resolved))
    out.append(CheckResult("consumers", *consumers_check(request.options.compression)))
    if request.push and isinstance(target, RegistryTarget):
        out.append(check_registry(target, registry))
    if resolved is not None and isinstance(target, RegistryTarget):
        out += check_blob_limit(target, resolved.plan)
    if resolved is not None and ws is not None:
        out += check_disk(request, resolved.plan, ws)
    return Report(tuple(out), time.monotonic() - started)


def before_download(request: Request, resolved: Resolved, ws: Workspace) -> Report:
    """`modelcar build`: what its start has not checked yet (target, base image and
    source are parsed and read there). Creates a missing --results-dir / report dir."""
    started = time.monotonic()
    target = parse_target(request.image)
    out = [check_workspace(ws.root)[0]]
    out += check_outputs(request, target, create=True)
    out.append(check_engine(request, ws, resolved))
    out.append(CheckResult("consumers", *consumers_check(request.options.compression)))
    if request.push and isinstance(target, RegistryTarget):
        out.append(check_registry(target, request.registry(target)))
    if isinstance(target, RegistryTarget):
        out += check_blob_limit(target, resolved.plan)
    out += check_disk(request, resolved.plan, ws)
    return Report(tuple(out), time.monotonic() - started)


# -- the checks ------------------------------------------------------------------------------


def identity(env: Mapping[str, str]) -> list[CheckResult]:
    """Who we run as and where: what an SCC or securityContext decided."""
    groups = ",".join(str(g) for g in sorted(set(os.getgroups()))) or "none"
    who = f"uid {os.getuid()} gid {os.getgid()} (groups {groups})"
    if os.geteuid() == 0:
        who += ", root"
    reasons = []
    if env.get("KUBERNETES_SERVICE_HOST"):
        reasons.append("KUBERNETES_SERVICE_HOST is set")
    if SA_DIR.is_dir():
        reasons.append(f"{SA_DIR} is mounted")
    pod = f"in a pod ({'; '.join(reasons)})" if reasons else "not in a pod"
    token = (
        f"service-account token present ({SA_TOKEN_PATH})"
        if SA_TOKEN_PATH.is_file()
        else "no service-account token"
    )
    return [_pass("identity", who, "INFO"), _pass("identity", f"{pod}; {token}", "INFO")]


def build_target(
    image: str, platform: str, env: Mapping[str, str], engine: str, load: bool = False
) -> tuple[Target, tuple[Platform, ...]]:
    """--image, --platform and SOURCE_DATE_EPOCH as `build` needs them: the one rule
    `build` (before it reads anything) and `doctor` (``check_image``) apply. Several
    platforms (an index) need the native engine and a registry (check_platforms)."""
    target = parse_target(image)
    if isinstance(target, RegistryTarget) and target.ref.digest:
        raise UsageError(
            f"--image {image} names a digest; a push needs a tag",
            hint="write REGISTRY/REPO:TAG; the digest is printed when the push is verified",
        )
    platforms = check_platforms(platform, engine, image, load)
    created_timestamp(env)  # the image's `created`: a bad value fails now, not after the download
    return target, platforms


def check_image(request: Request) -> tuple[CheckResult, Target | None]:
    """The image reference and the platform parse, as `build` parses them."""
    try:
        target, _ = build_target(request.image, request.options.platform, request.env,
                                 request.options.engine, load=not request.push)  # fmt: skip
    except ModelcarError as exc:
        return _fail("image", exc), None
    if isinstance(target, RegistryTarget):
        ref = target.ref
        where = f"registry {ref.registry}, repository {ref.repository}, tag {target.tag}"
    else:
        where = f"OCI layout {target.path}, tag {target.tag}"
    return _pass("image", f"{request.image} is a valid reference ({where})"), target


def check_base(request: Request, registry: RegistryOptions) -> tuple[CheckResult, int | None]:
    """The base image exists and its layers leave room in --max-layers."""
    name, max_layers = request.options.base_image, request.options.source_options.max_layers
    try:
        platforms = parse_platforms(request.options.platform)  # each one: the base must have it
        layers = max(count_base_layers(name, p, registry) for p in platforms)
    except ModelcarError as exc:
        return _fail("base", exc), None
    if layers >= max_layers:  # the exact fit is the plan's (source check)
        error = TooManyLayers(
            f"the base image {name} has {layers} layers: --max-layers {max_layers} "
            "leaves no room for the model"
        )
        return _fail("base", error), layers
    room = f"leaves {max_layers - layers} of --max-layers {max_layers}"
    if name == "scratch":
        fix = "use a base image with sh, ln and sleep (the default ubi-micro, or busybox)"
        return _warn("base", "scratch: no sh/ln/sleep, KServe's modelcar sidecar cannot "
                     f"start it (fine for oci:// fetch mode); {room}", fix), 0  # fmt: skip
    return _pass("base", f"{name} exists, {layers} layer(s), {room} for the model"), layers


def check_source(
    resolve: Callable[[int], Resolved], base_layers: int | None
) -> tuple[CheckResult, Resolved | None]:
    """Hub: reachable, repo and revision exist, a gated or private repo readable with the
    token given (named by its source). Local: every selected file readable."""
    try:
        resolved = resolve(1 if base_layers is None else base_layers)
    except ModelcarError as exc:
        return _fail("source", exc), None
    plan = resolved.plan
    snap = plan.snapshot
    size = f"{len(snap.files)} files, {human(plan.total_bytes)}"
    layers = (
        f"{len(plan.layers)} model layers + {plan.base_layers} base = {plan.total_layers} "
        f"of --max-layers {plan.max_layers}"
    )
    if snap.kind == "hub":
        source = resolved.access.token_source if resolved.access else "none"
        token = "anonymously (no token)" if source == "none" else f"with the token from {source}"
        return _pass(
            "source",
            f"hf://{snap.location}@{snap.revision or 'main'} -> commit {snap.commit}, "
            f"{size}, readable {token}; {layers}",
        ), resolved
    root = Path(snap.location)
    unreadable = [f.path for f in snap.files if not os.access(root / f.path, os.R_OK)]
    if unreadable:
        error = SourceNotFound(
            f"{len(unreadable)} of {len(snap.files)} files in {snap.location} are not readable "
            f"by uid {os.getuid()} (first: {unreadable[0]})",
            hint="make the model files readable by this UID or its group",
        )
        return _fail("source", error), None
    return _pass("source", f"{snap.location}: {size}, all readable; {layers}"), resolved


def check_workspace(path: Path) -> tuple[CheckResult, Workspace | None]:
    """Writable by this UID/GID (the layout is created, as `build` does); noexec noted."""
    try:
        ws = Workspace(path).ensure()
    except ModelcarError as exc:
        return _fail("workspace", exc), None
    note = ""
    with contextlib.suppress(OSError):
        if os.statvfs(ws.root).f_flag & os.ST_NOEXEC:
            note = "; mounted noexec: harmless, nothing is ever executed from it"
    who = f"uid {os.getuid()} gid {os.getgid()}"
    return _pass("workspace", f"{ws.root} is writable by {who}{note}"), ws


def results_dir(given: str | None) -> Path | None:
    """Where the Tekton results go: --results-dir, else /tekton/results when it exists
    (a Tekton step), else nowhere."""
    if given:
        return Path(given)
    return TEKTON_RESULTS if TEKTON_RESULTS.is_dir() else None


def check_outputs(request: Request, target: Target | None, create: bool) -> list[CheckResult]:
    """--results-dir, --report and an oci: layout target can be written. A missing
    directory passes when it can be created (``create``: create it now)."""
    wanted: list[tuple[str, Path, Path | None]] = []
    results = results_dir(request.options.results_dir)
    if results is not None:
        label = "--results-dir" if request.options.results_dir else "Tekton results"
        wanted.append((label, results, None))
    if request.options.report_file:
        report = Path(request.options.report_file)
        wanted.append(("--report", report.parent, report))
    if isinstance(target, LayoutTarget):
        wanted.append(("OCI layout", target.path, None))
    if not wanted:
        return [_pass("outputs", "no --results-dir or --report; the oci:// URL goes to stdout")]
    out = []
    for label, directory, file in wanted:
        what = f"{label} {file or directory}"
        existed = directory.exists()
        make = create and label != "OCI layout"  # the layout code makes its own directory
        error = writable_problem(directory, file, make)
        if error is not None:
            hint = "a writable --image oci:PATH" if label == "OCI layout" else None
            out.append(_fail("outputs", OutputNotWritable(f"{what}: {error}", hint)))
        elif existed:
            out.append(_pass("outputs", f"{what} is writable"))
        else:
            done = "created" if make else "does not exist yet; build creates it"
            out.append(_pass("outputs", f"{what}: {directory} {done}, writable"))
    return out


def check_engine(request: Request, ws: Workspace, resolved: Resolved | None) -> CheckResult:
    """The engine's own probe (`Engine.preflight`), and the privileges it needs."""
    name = request.options.engine
    try:
        if request.options.stream:
            check_stream(name, resolved.plan.snapshot.kind if resolved is not None else None)
        engine = make_engine(name)
        engine.check_compression(request.options.compression or default_compression(name))
        ready = engine.preflight(ws)  # buildah: a forced overlay driver is mounted for real
    except ModelcarError as exc:
        return _fail("engine", exc)
    if ready.warning:
        return _warn("engine", ready.warning, ready.fix)
    return _pass("engine", ready.message)


def check_registry(target: RegistryTarget, registry: RegistryOptions) -> CheckResult:
    """Reachable, TLS trusted (naming the CA), credentials accepted for a push: a blob
    upload is started and cancelled, so a pull-only credential fails here."""
    ref = target.ref
    cas = registry.trust()
    try:
        with registry.client_for(ref) as client:
            client.ping()
            base = client.base_url
            client.check_push(ref.repository)
            creds = client.creds.source if client.creds else "no credentials (anonymous)"
    except RegistryUnreachable as exc:
        return _fail("registry", RegistryUnreachable(f"{exc.message}; {cas}", hint=exc.hint))
    except ModelcarError as exc:
        return _fail("registry", exc)
    tls = "plain HTTP, no TLS" if base.startswith("http://") else cas
    return _pass("registry", f"{base} reachable, {tls}; {creds} may push to {ref.repository}")


# Registries whose largest blob is documented (or measured): host -> (bytes, why).
BLOB_LIMITS: dict[str, tuple[int, str]] = {
    "docker.io": (10 * 10**9, "Docker Hub: about 10 GB in practice, it refused a 23 GB blob"),
    "quay.io": (50 * 10**9, "Quay with its default 5 MB S3 chunks caps a blob at 50 GB"),
}
_HOST_ALIASES = {"registry-1.docker.io": "docker.io", "index.docker.io": "docker.io"}


def check_blob_limit(target: RegistryTarget, plan: Plan) -> list[CheckResult]:
    """WARN when the registry is one whose blob limit is documented and a planned layer
    is larger than it (--max-layer-size keeps every layer within it)."""
    host = target.ref.registry
    known = BLOB_LIMITS.get(_HOST_ALIASES.get(host, host))
    if known is None:
        return []
    limit, why = known
    over = [layer for layer in plan.layers if layer.size > limit]
    if not over:
        return [_pass("blob-size", f"every layer is within {host}'s blob limit ({why})")]
    largest = max(over, key=lambda layer: layer.size)
    return [
        _warn(
            "blob-size",
            f"{len(over)} planned layer(s) exceed {host}'s blob limit of {limit // 10**9} GB "
            f"({why}); the largest, {largest.name}, is {human(largest.size)}",
            f"pass --max-layer-size {limit} (a single larger file needs "
            "--allow-large-layer and a registry that takes it)",
        )
    ]


def check_disk(request: Request, plan: Plan, ws: Workspace) -> list[CheckResult]:
    """Free space where the bytes will go (workspace, buildah's storage root on it, and
    TMPDIR) against what the chosen engine needs for this model (`Engine.disk_needed`),
    minus what an earlier run already downloaded."""
    needed = disk_needed(plan, request.env)
    label = _engine_label(request, needed)
    total = needed[label]
    model = 0 if request.options.stream or plan.snapshot.kind != "hub" else plan.total_bytes
    scratch = max(0, total - model)
    present = ws.already_fetched(plan.snapshot) if model else 0
    wants = [(ws.root, max(0, model - present))]
    wants.append((ws.storage_dir if request.options.engine == "buildah" else ws.root, scratch))
    out = []
    devices: dict[int, tuple[Path, int]] = {}
    for path, n in wants:
        dev = device_of(path)
        first, sum_ = devices.get(dev, (path, 0))
        devices[dev] = (first, sum_ + n)
    fresh = f"{human(model)} model + {human(scratch)} {label} peak = {human(total)}"
    for path, need in devices.values():
        usage = shutil.disk_usage(path)
        must = usage.total - usage.free + need  # what is used now, plus what is to come
        if need > usage.free:
            error = InsufficientSpace(
                f"{label} needs {human(need)} more on {path} ({fresh}), only "
                f"{human(usage.free)} free of {human(usage.total)}: the volume must be at "
                f"least {human(must)}"
            )
            out.append(_fail("disk", error))
        else:
            done = f"; {human(present)} already downloaded" if present else ""
            out.append(_pass(
                "disk", f"{path}: {human(usage.free)} free of {human(usage.total)}, {label} "
                f"needs {human(need)} more ({fresh}{done}); a fresh volume needs at least "
                f"{human(total)}",
            ))  # fmt: skip
    with contextlib.suppress(OSError):  # also when no temp dir is usable (read-only root)
        tmp = Path(request.env.get("TMPDIR") or tempfile.gettempdir())
        if device_of(tmp) not in devices:
            free = shutil.disk_usage(tmp).free
            msg = f"TMPDIR {tmp}: {human(free)} free (engines keep big temp files on the workspace)"
            if free < TMPDIR_LOW:
                out.append(_warn("disk", msg, "give TMPDIR (e.g. an emptyDir) some room"))
            else:
                out.append(_pass("disk", msg))
    return out


def _engine_label(request: Request, needed: Mapping[str, int]) -> str:
    """The label the chosen engine answered ``disk_needed`` with (every engine does)."""
    if request.options.engine == "native" and request.options.stream:
        return "native --stream"
    return request.options.engine
