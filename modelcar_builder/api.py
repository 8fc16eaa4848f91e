"""The Python API: ``plan``, ``build`` and ``verify``, with the CLI's checks, errors and
results; the CLI's commands call these. Every failure is a
:class:`~modelcar_builder.errors.ModelcarError` whose ``exit_code`` and ``hint`` are what
the CLI exits with and prints.

    from modelcar_builder import api

    built = api.build(api.BuildOptions("hf://org/name@main", "quay.io/org/name:v1"))
    print(built.image_url)  # oci://quay.io/org/name@sha256:…

The options are frozen dataclasses, one per command, whose fields are the CLI's options
(``--read-timeout`` is ``FetchOptions.read_timeout``); defaults are the CLI's. Numbers are
checked by the CLI's own rule (finite, in range), choices against the CLI's choices.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from modelcar_builder.context import DEFAULT_BASE_IMAGE
from modelcar_builder.engines.catalog import DEFAULT_ENGINE, ENGINES
from modelcar_builder.engines.modelpack import check_modelpack
from modelcar_builder.engines.modelpack import publish as publish_modelpack
from modelcar_builder.engines.part import prepare_part, start_part
from modelcar_builder.errors import UsageError
from modelcar_builder.oci.consumers import consumers_check
from modelcar_builder.pipeline import Resolved, count_base_layers, resolve
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD, DEFAULT_MAX_LAYERS, Plan
from modelcar_builder.preflight import TEKTON_RESULTS, Request, before_download, build_target
from modelcar_builder.report import build_document, dumps
from modelcar_builder.run import (
    BuildOutcome,
    BuildSettings,
    image_url,
    run_build,
    verify_image,
    write_results,
)
from modelcar_builder.selection import Selection
from modelcar_builder.settings import (
    Bounds,
    RegistryOptions,
    check_number,
    environment,
)
from modelcar_builder.signed_build import check_signing, sign_build
from modelcar_builder.signing.flow import verify_signed
from modelcar_builder.source.download import FetchOptions
from modelcar_builder.source.hub import hub_access
from modelcar_builder.target import RegistryTarget, Target, parse_target
from modelcar_builder.verify import DeepOptions, VerifyResult
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.api")

__all__ = [
    "BuildOptions",
    "Built",
    "FetchOptions",
    "RegistryAccess",
    "SourceOptions",
    "VerifyOptions",
    "build",
    "plan",
    "verify",
]

# The range of every numeric option, for the CLI's click types and for the API alike.
LAYER_THRESHOLD = Bounds(int, 1, 1 << 50, str(DEFAULT_LAYER_THRESHOLD))
MAX_LAYERS = Bounds(int, 2, 127, str(DEFAULT_MAX_LAYERS))  # CRI-O/podman mount <= 127
MAX_LAYER_SIZE = Bounds(int, 1, 1 << 50, "10000000000")  # bytes; None (default): no limit
FETCH_JOBS = Bounds(int, 1, 64, str(FetchOptions.jobs))
CONNECTIONS = Bounds(int, 1, 256, str(FetchOptions.connections))
ATTEMPTS = Bounds(int, 1, 100, str(FetchOptions.attempts))
READ_TIMEOUT = Bounds(float, 0.1, 86400, f"{FetchOptions.read_timeout:g}")  # seconds
PROGRESS_INTERVAL = Bounds(float, 0, 86400, "5")  # seconds
JOBS = Bounds(int, 1, 16, "2")  # build --jobs: layers pushed at once
CHUNK_SIZE = Bounds(int, 1, 4096, "64")  # build --chunk-size, MiB
SEGMENT_SIZE = Bounds(int, 64 * 1024, 1 << 30, str(FetchOptions.segment_size))  # bytes

COMPRESSIONS = ("none", "gzip", "zstd")
UPLOADS = ("monolithic", "chunked")
LOADS = ("auto", "podman", "docker")


def _choice(value: str | None, option: str, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise UsageError(
            f"{option} must be one of {', '.join(choices)}, not {value!r}",
            hint=f"e.g. {option} {choices[0]}",
        )


@dataclass(frozen=True)
class SourceOptions:
    """SOURCE and what shapes what is read from it (``plan``, ``build``)."""

    source: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_files: bool = False
    hf_token_file: str | None = None
    layer_threshold: int = DEFAULT_LAYER_THRESHOLD
    max_layers: int = DEFAULT_MAX_LAYERS
    max_layer_size: int | None = None  # bytes: no layer larger (a registry's blob limit)
    allow_large_layer: bool = False  # a single file over max_layer_size gets its own layer
    allow_incomplete: bool = False
    source_url: str | None = None
    base_image: str | None = None  # plan only: count its layers (default: assume 1)

    def resolve(self, base_layers: int = 1, hub_timeout: float | None = None) -> Resolved:
        """Pin the source and plan its layers; ``base_layers`` is what the base image
        adds to the layer count, ``hub_timeout`` bounds the Hub's metadata calls."""
        check_number(self.layer_threshold, "--layer-threshold", LAYER_THRESHOLD)
        check_number(self.max_layers, "--max-layers", MAX_LAYERS)
        if self.max_layer_size is not None:
            check_number(self.max_layer_size, "--max-layer-size", MAX_LAYER_SIZE)
        selection = Selection(tuple(self.include), tuple(self.exclude), self.all_files)
        return resolve(
            self.source,
            selection,
            self.hf_token_file,
            self.layer_threshold,
            self.source_url,
            max_layers=self.max_layers,
            base_layers=base_layers,
            allow_incomplete=self.allow_incomplete,
            hub_timeout=hub_timeout,
            max_layer_size=self.max_layer_size,
            allow_large_layer=self.allow_large_layer,
        )


@dataclass(frozen=True)
class RegistryAccess:
    """How to reach the registries: the CLI's --authfile, --registry-token-file,
    --tls-verify and --ca-file."""

    authfile: str | None = None
    registry_token_file: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None

    def options(self, image: str | None) -> RegistryOptions:
        """Settings for ``image``'s registry (in a pod, its service CA where it applies)."""
        target = parse_target(image) if image and image != "scratch" else None
        host = target.ref.api_host if isinstance(target, RegistryTarget) else None
        return RegistryOptions.for_host(
            self.authfile, self.registry_token_file, self.tls_verify, self.ca_file, host
        )


def check_fetch(opts: FetchOptions) -> None:
    check_number(opts.jobs, "--fetch-jobs", FETCH_JOBS)
    check_number(opts.connections, "--connections", CONNECTIONS)
    check_number(opts.attempts, "--attempts", ATTEMPTS)
    check_number(opts.read_timeout, "--read-timeout", READ_TIMEOUT)
    if opts.progress_interval is not None:
        check_number(opts.progress_interval, "--progress-interval", PROGRESS_INTERVAL)
    check_number(opts.segment_size, "MODELCAR_SEGMENT_SIZE", SEGMENT_SIZE)


@dataclass(frozen=True)
class BuildOptions:
    """Everything `modelcar build` takes. ``source`` may be a plain SOURCE string."""

    source: SourceOptions | str
    image: str
    workspace: str = "./modelcar-work"
    engine: str = DEFAULT_ENGINE
    base_image: str = DEFAULT_BASE_IMAGE
    platform: str = "linux/amd64"
    compression: str | None = None  # None: the engine's default
    load: str | None = None
    stream: bool = False
    jobs: int = 2
    upload: str = "monolithic"
    chunk_size: int = 64  # MiB
    registry: RegistryAccess = field(default_factory=RegistryAccess)
    fetch: FetchOptions = field(default_factory=FetchOptions)
    results_dir: str | None = None
    report_file: str | None = None
    preflight: bool = True  # False: --no-preflight
    sign_key: str | None = None  # cosign-format or PKCS#8 PEM key (README: Signing)
    sign_key_password_file: str | None = None  # else COSIGN_PASSWORD
    modelpack: bool = False  # also a ModelPack manifest on the same blobs (a referrer)
    mount_from: tuple[str, ...] = ()  # repositories of --image's registry to mount from
    part: str | None = None  # --part K/N or index/N: one share of the layers (README)

    @property
    def source_options(self) -> SourceOptions:
        return self.source if isinstance(self.source, SourceOptions) else SourceOptions(self.source)

    def check(self) -> None:
        """Choices and numbers, as click checks them on the command line."""
        _choice(self.engine, "--engine", ENGINES)
        _choice(self.compression, "--compression", COMPRESSIONS)
        _choice(self.upload, "--upload", UPLOADS)
        _choice(self.load, "--load", LOADS)
        check_number(self.jobs, "--jobs", JOBS)
        check_number(self.chunk_size, "--chunk-size", CHUNK_SIZE)
        check_fetch(self.fetch)

    def target_image(self) -> tuple[str, bool]:
        """The image to write and whether it is pushed: with --load, a name without a
        registry host is a local store's image, and nothing is pushed."""
        if self.load and is_local_name(self.image):
            return local_name(self.image), False
        return self.image, True

    def preflight_request(self) -> Request:
        """The preflight's view of these options (`doctor`, and `build` before its
        download)."""
        image, push = self.target_image()
        return Request(
            image=image,
            push=push,
            workspace=Path(self.workspace),
            engine=self.engine,
            base_image=self.base_image,
            platform=self.platform,
            authfile=self.registry.authfile,
            token_file=self.registry.registry_token_file,
            tls_verify=self.registry.tls_verify,
            ca_file=self.registry.ca_file,
            max_layers=self.source_options.max_layers,
            stream=self.stream,
            compression=self.compression,
            results_dir=self.results_dir,
            report_file=self.report_file,
        )


@dataclass(frozen=True)
class Built:
    """What `build` made: the URL KServe takes, the report `--report` writes, and the
    full typed outcome (engine result, verification, timings)."""

    image_url: str  # oci://REGISTRY/REPO@sha256:… (or oci:PATH@sha256:…)
    digest: str
    plan: Plan
    outcome: BuildOutcome

    @functools.cached_property
    def report(self) -> dict[str, Any]:
        """The `--report` document. Made when first asked for: it may read a local
        model's files again for their sha256 (run.file_sha256s)."""
        return build_document(self.plan, self.outcome)


def plan(options: SourceOptions | str) -> Plan:
    """`modelcar plan`: pin the source and plan its layers; downloads nothing."""
    opts = options if isinstance(options, SourceOptions) else SourceOptions(options)
    if opts.base_image:
        platform = ("linux", "amd64")
        base = count_base_layers(opts.base_image, platform, RegistryOptions(), strict=False)
        return opts.resolve(base).plan
    return opts.resolve().plan


def build(options: BuildOptions) -> Built:
    """`modelcar build`: fetch, build, push and verify; raises a ModelcarError on failure
    (nothing is lost: the same call again continues)."""
    options.check()
    image, push = options.target_image()
    target, platforms = build_target(image, options.platform, environment(), options.engine,
                                     load=bool(options.load))  # doctor's rule too  # fmt: skip
    wanted = platforms[0]
    if options.modelpack:
        check_modelpack(image, push)
    if options.sign_key and len(platforms) > 1:
        raise UsageError("--sign-key signs one image manifest, not an index of several "
                         "platforms", hint="sign a single-platform build")  # fmt: skip
    part = start_part(options.part, environment(), engine=options.engine, platforms=platforms,
                      load=options.load, target=target, sign_key=options.sign_key,
                      modelpack=options.modelpack) if options.part else None  # fmt: skip
    registry = options.registry.options(image)
    # The base image's depth counts against --max-layers, and its platform must be the
    # one asked for: read its manifest and config (no layer) before the Hub plan.
    base_layers = max(count_base_layers(options.base_image, p, registry) for p in platforms)
    source = options.source_options
    resolved = source.resolve(base_layers, hub_timeout=options.fetch.read_timeout)
    job = None
    if part is not None and isinstance(target, RegistryTarget):  # its share, to its record
        share, target, job = prepare_part(resolved.plan, part, target, registry,
                                          options.compression)  # fmt: skip
        resolved = dataclasses.replace(resolved, plan=share)
    ws = Workspace(Path(options.workspace)).ensure()
    release = ws.lock()
    try:
        if options.preflight:
            _check_before_download(options, resolved, ws)
        else:
            log.info("preflight skipped (--no-preflight)")
            status, message, fix = consumers_check(options.compression)  # zstd: still said
            if status == "WARN":
                log.warning("%s (fix: %s)", message, fix)
        settings = BuildSettings(
            engine=options.engine,
            base_image=options.base_image,
            registry=registry,
            compression=options.compression,
            jobs=options.jobs,
            stream=options.stream,
            platform=wanted,
            platforms=platforms,
            upload=options.upload,
            chunk_size=options.chunk_size * 1024 * 1024,
            load=options.load,
            push=push,
            mount_from=mount_sources(options.mount_from, target),
            part=job,
        )
        key = None
        if options.sign_key:  # refused before the download when it could not sign
            key = check_signing(options.sign_key, options.sign_key_password_file, settings,
                                target)  # fmt: skip
        started = datetime.datetime.now(datetime.UTC)
        outcome = run_build(resolved, ws, target, settings, options.fetch)
        if key is not None and isinstance(target, RegistryTarget):
            # after the verified push: model.sig layer, image signature, provenance
            outcome = sign_build(outcome, resolved, ws, target, settings, key, started)
        if options.modelpack and isinstance(target, RegistryTarget):  # docs/decisions.md
            t0 = time.monotonic()
            publish_modelpack(target, registry, outcome.result.manifest_digest,
                              resolved.plan.snapshot)  # fmt: skip
            outcome.timings["modelpack"] = time.monotonic() - t0
    finally:
        release()
    _log_summary(outcome, push)
    built = Built(outcome.image_url, outcome.result.manifest_digest, resolved.plan, outcome)
    if options.report_file:
        Path(options.report_file).write_text(dumps(built.report) + "\n")
    results = Path(options.results_dir) if options.results_dir else TEKTON_RESULTS
    if push and job is None and (options.results_dir or results.is_dir()):  # a part: no image
        write_results(outcome, target, results)
    return built


def _check_before_download(options: BuildOptions, resolved: Resolved, ws: Workspace) -> None:
    """What `modelcar doctor` checks that the build's start has not: WARN lines are
    logged, the first FAIL is raised (its own exit code and hint)."""
    report = before_download(options.preflight_request(), resolved, ws)
    for check in report.checks:
        if check.status == "WARN":
            log.warning("preflight %s: %s (fix: %s)", check.check, check.message, check.fix)
        else:
            log.debug("preflight %s %s: %s", check.status, check.check, check.message)
    for check in report.failures[1:]:
        log.error("preflight %s: %s", check.check, check.message)
    report.raise_first()
    log.info("preflight: %d checks passed in %.1f s", len(report.checks), report.seconds)


def _log_summary(outcome: BuildOutcome, push: bool) -> None:
    result = outcome.result
    uploaded = sum(1 for layer in result.layers if layer.uploaded)
    mounted = sum(1 for layer in result.layers if layer.mounted)
    log.info(
        "%s %s with %s: %d model layers (%d uploaded, %d mounted, %d already there), %s verified",
        "pushed" if push else "loaded",
        result.target,
        result.engine,
        len(result.layers),
        uploaded,
        mounted,
        len(result.layers) - uploaded - mounted,
        result.manifest_digest,
    )


def mount_sources(repos: tuple[str, ...], target: Target) -> tuple[str, ...]:
    """--mount-from as repositories of --image's registry: ``REPO`` or ``HOST/REPO``
    with --image's own host; another host is a usage error (a mount never crosses
    registries), as is --mount-from with a target that is not a registry."""
    if not repos:
        return ()
    if not isinstance(target, RegistryTarget):
        raise UsageError("--mount-from mounts blobs within a registry: --image is not one",
                         hint="drop --mount-from, or push to a registry")  # fmt: skip
    ref = target.ref
    out: list[str] = []
    for text in repos:
        first, sep, rest = text.strip().strip("/").partition("/")
        if sep and first in (ref.registry, ref.api_host):
            repo = rest
        elif sep and ("." in first or ":" in first or first == "localhost"):
            raise UsageError(
                f"--mount-from {text}: another registry than --image's {ref.registry}",
                hint="a mount only works within one registry: name a repository of it",
            )
        else:
            repo = f"{first}{sep}{rest}"
        if not repo or "@" in repo or ":" in repo:
            raise UsageError(f"--mount-from {text!r} is not a repository",
                             hint="e.g. --mount-from models/dev (no tag, no digest)")  # fmt: skip
        if repo not in out:
            out.append(repo)
    return tuple(out)


@dataclass(frozen=True)
class VerifyOptions:
    """Everything `modelcar verify` takes. With ``deep``, the expected files come from
    ``report_file`` (a build report) or else from the Hub at the image's revision, read
    with the selection the image was built with (include, exclude, all_files)."""

    image: str
    labels: Mapping[str, str] = field(default_factory=dict)
    deep: bool = False
    report_file: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_files: bool = False
    hf_token_file: str | None = None
    registry: RegistryAccess = field(default_factory=RegistryAccess)
    key: str | None = None  # public key: also check the signature and signed provenance


@dataclass(frozen=True)
class Verified:
    image_url: str  # oci://REGISTRY/REPO@sha256:… of what the image reference names now
    result: VerifyResult
    signed: list[str] = field(default_factory=list)  # what --key proved, one line each


def verify(options: VerifyOptions | str) -> Verified:
    """`modelcar verify`: read the image back and check what a runtime will trust;
    raises VerificationFailed (exit 60) or ImageNotFound (61) naming the broken part."""
    opts = options if isinstance(options, VerifyOptions) else VerifyOptions(options)
    target = parse_target(opts.image)
    registry = opts.registry.options(opts.image)
    deep = None
    if opts.deep:
        # The Hub is asked only when no report is given; hub_access reads no network.
        access = None if opts.report_file else hub_access(opts.hf_token_file)
        selection = Selection(tuple(opts.include), tuple(opts.exclude), opts.all_files)
        report = Path(opts.report_file) if opts.report_file else None
        deep = DeepOptions(report=report, access=access, selection=selection)
    result = verify_image(target, registry, dict(opts.labels), deep)
    signed = (
        verify_signed(target, registry, opts.key, result.digest, result.deep) if opts.key else []
    )
    return Verified(image_url(target, result.digest), result, signed)


def is_local_name(image: str) -> bool:
    """A name without a registry host (``NAME[:TAG]``, ``ORG/NAME[:TAG]``) or under
    ``localhost/``: with ``--load`` it names an image in the local store only."""
    if image.startswith(("oci:", "docker://")):
        return False
    first, sep, _rest = image.partition("/")
    if not sep:
        return True
    if first == "localhost":
        return True
    return not ("." in first or ":" in first)


def local_name(image: str) -> str:
    """``localhost/NAME:TAG``, the form podman gives local images (docker takes it too)."""
    name = image if image.startswith("localhost/") else f"localhost/{image}"
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else f"{name}:latest"


SOURCE_FIELDS = tuple(f.name for f in fields(SourceOptions) if f.name != "base_image")
