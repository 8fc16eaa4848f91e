"""The Python API: ``plan``, ``build``, ``verify`` and ``assemble`` (the image of a model
built in parts), with the CLI's checks, errors and results; the CLI's commands call
these. Every failure is a :class:`~modelcar_builder.errors.ModelcarError` whose
``exit_code`` and ``hint`` are what the CLI exits with and prints.

    from modelcar_builder import api

    built = api.build(api.BuildOptions("hf://org/name@main", "quay.io/org/name:v1"))
    print(built.image_url)  # oci://quay.io/org/name@sha256:…

The options are frozen dataclasses, one per command, whose fields are the CLI's options
(``--read-timeout`` is ``FetchOptions.read_timeout``); defaults are the CLI's. Numbers are
checked by the CLI's own rule (finite, in range), choices against the CLI's choices.
``SourceOptions``, ``BuildOptions`` and ``RegistryAccess`` live in ``buildopts`` (the one
carrier the run hands the engines) and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelcar_builder.assembly import WAIT, Assembled
from modelcar_builder.assembly import assemble as assemble_parts
from modelcar_builder.buildopts import BuildOptions, RegistryAccess, SourceOptions
from modelcar_builder.engines.modelpack import check_modelpack
from modelcar_builder.engines.modelpack import publish as publish_modelpack
from modelcar_builder.engines.part import prepare_part, start_part
from modelcar_builder.errors import UsageError
from modelcar_builder.oci.consumers import consumers_check
from modelcar_builder.pipeline import Resolved, count_base_layers, resolve_source
from modelcar_builder.plan import Plan
from modelcar_builder.preflight import Request, before_download, build_target, results_dir
from modelcar_builder.reference import names_host
from modelcar_builder.report import build_document, dumps
from modelcar_builder.run import (
    BuildOutcome,
    image_url,
    run_build,
    verify_image,
    write_results,
)
from modelcar_builder.selection import Selection
from modelcar_builder.settings import RegistryOptions, environment
from modelcar_builder.signed_build import check_signing, sign_build
from modelcar_builder.signing.flow import verify_signed
from modelcar_builder.source.download import FetchOptions
from modelcar_builder.source.hub import hub_access
from modelcar_builder.target import RegistryTarget, Target, parse_target
from modelcar_builder.verify import DeepOptions, VerifyResult
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.api")

__all__ = [
    "AssembleOptions",
    "Assembled",
    "BuildOptions",
    "Built",
    "FetchOptions",
    "RegistryAccess",
    "SourceOptions",
    "VerifyOptions",
    "assemble",
    "build",
    "plan",
    "verify",
]


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
        return resolve_source(opts, base).plan
    return resolve_source(opts).plan


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
    part = start_part(options.part, environment(), engine=options.engine, platforms=platforms,
                      load=options.load, target=target, sign_key=options.sign_key,
                      modelpack=options.modelpack) if options.part else None  # fmt: skip
    registry = options.registry.options(image)
    # The base image's depth counts against --max-layers, and its platform must be the
    # one asked for: read its manifest and config (no layer) before the Hub plan.
    base_layers = max(count_base_layers(options.base_image, p, registry) for p in platforms)
    source = options.source_options
    resolved = resolve_source(source, base_layers, hub_timeout=options.fetch.read_timeout)
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
        mount_from = mount_sources(options.mount_from, target)
        key = None
        if options.sign_key:  # refused before the download when it could not sign
            key = check_signing(options.sign_key, options.sign_key_password_file, options,
                                target)  # fmt: skip
        started = datetime.datetime.now(datetime.UTC)
        outcome = run_build(resolved, ws, target, options, registry=registry,
                            platforms=platforms, mount_from=mount_from, part=job)  # fmt: skip
        if key is not None and isinstance(target, RegistryTarget):
            # after the verified push: model.sig layer, image signature, provenance
            outcome = sign_build(outcome, resolved, ws, target, options, registry, wanted, key,
                                 started)  # fmt: skip
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
    results = results_dir(options.results_dir)
    if push and job is None and results is not None:  # a part: no image
        write_results(outcome, target, results)
    return built


def _check_before_download(options: BuildOptions, resolved: Resolved, ws: Workspace) -> None:
    """What `modelcar doctor` checks that the build's start has not: WARN lines are
    logged, the first FAIL is raised (its own exit code and hint)."""
    report = before_download(Request(options), resolved, ws)
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
        elif sep and names_host(first):
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


@dataclass(frozen=True)
class AssembleOptions:
    """Everything `modelcar assemble` takes: the --image every part was built with, how
    many parts, how long to wait for their records, registry access, Tekton results."""

    image: str
    parts: int
    wait: float = float(WAIT.example)  # seconds
    registry: RegistryAccess = field(default_factory=RegistryAccess)
    results_dir: str | None = None


def assemble(options: AssembleOptions) -> Assembled:
    """`modelcar assemble`: the image of a model built by N parts (`build --part K/N`),
    with the digest a one-pod build gives; raises PartsMissing (62) or PartsDisagree (63)."""
    registry = options.registry.options(options.image)
    return assemble_parts(options.image, options.parts, registry, options.wait,
                          options.results_dir)  # fmt: skip
