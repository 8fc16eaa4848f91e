"""The buildah engine: the planned layers committed with real buildah (1.28+), one
``buildah copy`` per layer, reproducible (``--timestamp``: the same model gives the same
digest on any machine and storage driver, and the same as the native engine).

Two modes, ``MODELCAR_BUILDAH_MODE``: ``per-layer`` (default, :mod:`.per_layer`: each
layer committed alone, sent by our client; a few copies of the largest layer on disk) and
``chain`` (:mod:`.chain`: image on image, the last commit straight to the target; always
used for zstd). The per-layer mode starts while the download runs and builds each layer
once its own files are verified; the chain waits for every file. Buildah's storage and
temp files live in the workspace (:mod:`.storage` picks the driver); credentials reach it
only in a 0600 authfile, only in the chain mode, in memory-backed storage
(:mod:`.secretdir`), and its environment is an allowlist (:func:`.runner.buildah_env`: no
HF_TOKEN); its errors become one line with every secret scrubbed (:mod:`.failures`). How
it was measured: BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import replace

from modelcar_builder.context import prepare_context
from modelcar_builder.engines import BuildRequest, BuildResult, fetched_bytes
from modelcar_builder.engines.buildah.chain import ChainBuilder
from modelcar_builder.engines.buildah.credentials import (
    buildah_pulls_base,
    buildah_pushes,
    cert_dir,
    connect_base,
    connect_target,
    resolve_for_build,
    tls_args,
)
from modelcar_builder.engines.buildah.failures import (
    Remote,
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
from modelcar_builder.engines.buildah.settings import (
    DEFAULT_MODE,
    DEFAULT_OVERLAP,
    ENGINE_NAME,
    ENV_MODE,
    ENV_OVERLAP,
    ENV_STORAGE_DRIVER,
    BuildahSettings,
    effective_mode,
)
from modelcar_builder.engines.buildah.storage import (
    buildah_mounts_here,
    check_forced_driver,
    check_space,
    choose_driver,
    estimate_layout_peak,
    estimate_peak_bytes,
    estimate_per_layer_peak,
    has_cap_sys_admin,
    overlay_unusable,
    overlay_verdict,
    pending_download,
    storage_needed,
)
from modelcar_builder.engines.secretdir import secret_dir, sweep_stale
from modelcar_builder.plan import Plan
from modelcar_builder.workspace import DIR_MODE, Workspace, make_dir

__all__ = [
    "BUILDAH_NEEDS",
    "DEFAULT_MODE",
    "DEFAULT_OVERLAP",
    "ENV_MODE",
    "ENV_OVERLAP",
    "ENV_STORAGE_DRIVER",
    "BuildahEngine",
    "BuildahSettings",
    "Remote",
    "buildah_mounts_here",
    "classify_failure",
    "estimate_layout_peak",
    "estimate_peak_bytes",
    "estimate_per_layer_peak",
    "has_cap_sys_admin",
    "meaningful_line",
    "overlay_unusable",
    "overlay_verdict",
    "scrub",
]


class BuildahEngine:
    name = ENGINE_NAME
    # The per-layer mode links and commits each layer once its own files are verified,
    # while later ones download; the chain mode waits for every file first (build()).
    pushes_while_fetching = True

    def preflight(self, workspace: Workspace) -> None:
        """Checks that need no model files, run before the download: a forced overlay
        driver that cannot mount here fails now, not after hours of fetching."""
        settings = BuildahSettings.from_env(os.environ)
        problem = probe(workspace)  # installed, and allowed to run here (UID, capabilities)
        if problem is not None:
            raise problem
        check_forced_driver(settings, make_dir(workspace.storage_dir, DIR_MODE))

    def disk_needed(self, plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
        """The fetched files plus buildah's own peak, which depends on the mode
        (per-layer: a few copies of the largest layer; chain: grows with the driver)."""
        settings = BuildahSettings.from_env(env)
        label, storage = storage_needed([layer.size for layer in plan.layers], settings)
        return {label: fetched_bytes(plan) + storage}

    def build(self, request: BuildRequest) -> BuildResult:
        started = time.monotonic()
        settings = BuildahSettings.from_env(os.environ)
        exe = find_buildah(os.environ)
        files_dir = check_request(request)
        settings = replace(settings, mode=effective_mode(request, settings.mode))
        workspace = request.workspace
        root = make_dir(workspace.storage_dir, DIR_MODE)
        sizes = [layer.size for layer in request.plan.layers]
        settings = replace(settings, storage_driver=choose_driver(settings, root, sizes))
        per_layer = settings.mode == "per-layer"
        if not per_layer:  # the chain links every layer up front: the whole download first
            for layer in request.plan.layers:
                request.wait_for(layer)
        pending = 0 if not per_layer else pending_download(request.plan, workspace)
        check_space(request, settings, root / settings.storage_driver, pending)
        # per-layer: each layer's files are linked once verified (PerLayerBuilder)
        context = prepare_context(
            request.plan, files_dir, workspace, request.base_image, link=not per_layer
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
        )
        sweep_stale()  # authfiles a killed run left in memory-backed storage
        with scrubbed(secrets), contextlib.ExitStack() as stack:
            certs = stack.enter_context(cert_dir(request.registry.ca_file, workspace.tmp_dir))
            tls = tls_args(request.registry.tls_verify, certs)
            # Authfiles only where buildah itself talks to a registry (the chain mode).
            needed = buildah_pushes(run) or buildah_pulls_base(run)
            where = stack.enter_context(secret_dir(workspace.root)) if needed else None
            connect_target(run, target_creds, tls, stack, where)
            connect_base(run, base_creds, tls, stack, where)
            run.base_creds = base_creds
            builder = PerLayerBuilder(run) if per_layer else ChainBuilder(run)
            result = builder.build()
        result.timings["total"] = time.monotonic() - started
        return result
