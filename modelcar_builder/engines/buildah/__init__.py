"""The buildah engine: the planned layers committed with real buildah (1.28+), one
``buildah copy`` per layer, reproducible (``--timestamp``: the same model gives the same
digest on any machine and storage driver).

One mode (:mod:`.per_layer`, docs/decisions.md): each layer committed alone, from scratch,
to an OCI layout in the workspace and sent by our own client while the next layer builds;
a few copies of the largest layer on disk. It starts while the download runs and builds
each layer once its own files are verified. Buildah's storage and temp files live in the
workspace (:mod:`.storage` picks the driver); buildah never talks to a registry, so it
never receives credentials, and its environment is an allowlist
(:func:`.runner.buildah_env`: no HF_TOKEN); its errors become one line with every secret
scrubbed (:mod:`.failures`). Layers are gzip (the default) or uncompressed; zstd is
refused up front (:func:`.settings.check_compression`). How it was measured:
BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import replace

from modelcar_builder.context import prepare_context
from modelcar_builder.engines import BuildRequest, BuildResult, Readiness, fetched_bytes
from modelcar_builder.engines.buildah.choices import (
    DEFAULT_OVERLAP,
    ENGINE_NAME,
    ENV_OVERLAP,
    ENV_STORAGE_DRIVER,
    BuildahSettings,
    check_compression,
)
from modelcar_builder.engines.buildah.credentials import connect_target, resolve_for_build
from modelcar_builder.engines.buildah.failures import (
    classify_failure,
    meaningful_line,
    scrub,
    scrubbed,
    secret_forms,
)
from modelcar_builder.engines.buildah.per_layer import PerLayerBuilder
from modelcar_builder.engines.buildah.probe import BUILDAH_NEEDS, probe
from modelcar_builder.engines.buildah.runner import (
    Buildah,
    buildah_env,
    epoch_seconds,
    find_buildah,
)
from modelcar_builder.engines.buildah.session import BuildRun, check_request
from modelcar_builder.engines.buildah.storage import (
    buildah_mounts_here,
    check_forced_driver,
    check_space,
    choose_driver,
    estimate_per_layer_peak,
    has_cap_sys_admin,
    overlay_unusable,
    overlay_verdict,
    pending_download,
)
from modelcar_builder.plan import Plan
from modelcar_builder.settings import buildah_settings, environment
from modelcar_builder.workspace import DIR_MODE, Workspace, make_dir

__all__ = [
    "BUILDAH_NEEDS",
    "DEFAULT_OVERLAP",
    "ENV_OVERLAP",
    "ENV_STORAGE_DRIVER",
    "BuildahEngine",
    "BuildahSettings",
    "buildah_mounts_here",
    "check_compression",
    "classify_failure",
    "estimate_per_layer_peak",
    "has_cap_sys_admin",
    "meaningful_line",
    "overlay_unusable",
    "overlay_verdict",
    "scrub",
]


class BuildahEngine:
    name = ENGINE_NAME
    # Each layer is linked and committed once its own files are verified, while later
    # ones download.
    pushes_while_fetching = True
    builds_locally = False  # it writes to the target only: --load reads the pushed image

    def check_compression(self, compression: str) -> None:
        check_compression(compression)  # gzip or none; zstd: a usage error, up front

    def preflight(self, workspace: Workspace) -> Readiness:
        """Checks that need no model files, run before the download: a forced overlay
        driver that cannot mount here fails now, not after hours of fetching. Says the
        privileges it needs here: rootless needs a user namespace (a warning)."""
        settings = buildah_settings()
        exe = find_buildah(environment())
        problem = probe(workspace)  # installed, and allowed to run here (UID, capabilities)
        if problem is not None:
            raise problem
        check_forced_driver(settings, make_dir(workspace.storage_dir, DIR_MODE))
        what = f"buildah {exe}, {settings.storage_driver} storage"
        if os.geteuid() != 0:
            return Readiness(
                what,
                warning=f"{what}, uid {os.geteuid()}: buildah runs rootless and needs a user "
                "namespace (SETFCAP and /etc/subuid; OpenShift: the pipelines-scc SCC)",
                fix="run the step as root (securityContext runAsUser: 0; OpenShift: anyuid "
                "SCC) or use --engine native, which needs no privilege",
            )
        needs = (
            "as root it needs no SETFCAP (securityContext runAsUser: 0; OpenShift: the anyuid SCC)"
        )
        if settings.storage_driver == "overlay":
            needs += "; overlay mounts: SYS_ADMIN (OpenShift: the privileged SCC), probe passed"
        return Readiness(f"{what}: {needs}")

    def disk_needed(self, plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
        """The fetched files plus buildah's own peak: a few copies of the largest layer,
        on any driver."""
        BuildahSettings.from_env(env)  # a malformed setting fails `plan` and doctor too
        peak = estimate_per_layer_peak([layer.size for layer in plan.layers])
        return {ENGINE_NAME: fetched_bytes(plan) + peak}

    def build(self, request: BuildRequest) -> BuildResult:
        started = time.monotonic()
        settings = buildah_settings()
        exe = find_buildah(environment())
        files_dir = check_request(request)
        workspace = request.workspace
        root = make_dir(workspace.storage_dir, DIR_MODE)
        settings = replace(settings, storage_driver=choose_driver(settings, root))
        pending = pending_download(request.plan, workspace)
        check_space(request, settings, root / settings.storage_driver, pending)
        # each layer's files are linked once verified (PerLayerBuilder)
        context = prepare_context(
            request.plan, files_dir, workspace, request.options.base_image, link=False
        )
        target_creds, base_creds = resolve_for_build(request)
        secrets = secret_forms(target_creds) + secret_forms(base_creds)
        buildah = Buildah(
            prefix=(
                exe,
                f"--root={root / settings.storage_driver}",
                f"--runroot={root / 'run' / settings.storage_driver}",
                f"--storage-driver={settings.storage_driver}",
            ),
            env=buildah_env(workspace.tmp_dir, root / "containers-state", settings),
            secrets=secrets,
        )
        run = BuildRun(
            request=request,
            settings=settings,
            buildah=buildah,
            files_dir=files_dir,
            context_dirs=context.layer_dirs,
            state=request.build_state(),
            timestamp=epoch_seconds(request.created),
            base_creds=base_creds,
        )
        with scrubbed(secrets), contextlib.ExitStack() as stack:
            connect_target(run, stack)
            result = PerLayerBuilder(run).build()
        result.timings["total"] = time.monotonic() - started
        return result
