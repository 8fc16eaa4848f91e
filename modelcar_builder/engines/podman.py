"""The podman engine, for workstations: ``podman build --layers`` of the generated context
(one COPY per planned layer) into podman's own image store, then ``podman push
--digestfile``. Credentials reach podman only in a 0600 authfile in a private temp dir
(never argv); the shared verification reads the pushed image back by digest.

podman's store is the user's (rootful or rootless, whatever ``podman`` here uses;
``CONTAINERS_STORAGE_CONF``/``CONTAINERS_CONF`` select another), so after a build
``podman run`` can start the image; ``--load`` with a short name skips the push."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from modelcar_builder.auth import private_authfile
from modelcar_builder.context import prepare_context
from modelcar_builder.engines import BuildRequest, BuildResult, Readiness, fetched_bytes
from modelcar_builder.engines.archive import PodmanStore, base_archive
from modelcar_builder.engines.buildah.credentials import cert_dir, resolve_for_build, tls_args
from modelcar_builder.engines.buildah.failures import scrub, scrubbed, secret_forms
from modelcar_builder.engines.buildah.runner import epoch_seconds
from modelcar_builder.engines.secretdir import secret_dir, sweep_stale
from modelcar_builder.engines.workstation import (
    local_name,
    local_result,
    open_layout_base,
    previous_blobs,
    pushed_result,
    require_files,
    resolve_base,
)
from modelcar_builder.errors import BuildFailed, EngineUnavailable, UsageError
from modelcar_builder.plan import Plan
from modelcar_builder.target import RegistryTarget
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.engines.podman")


def find_podman() -> str:
    exe = shutil.which("podman")
    if exe is None:
        raise EngineUnavailable(
            "podman is not installed", hint="install podman, or use --engine native"
        )
    return exe


class PodmanEngine:
    name = "podman"
    pushes_while_fetching = False  # its build context links every file up front
    builds_locally = True  # the image is in podman's store after a build

    def check_compression(self, compression: str) -> None:
        if compression not in ("gzip", "zstd"):
            raise UsageError(
                f"--compression {compression}: podman pushes gzip or zstd layers",
                hint="drop --compression (gzip), or --engine native for uncompressed layers",
            )

    def preflight(self, workspace: Workspace) -> Readiness:
        return Readiness(f"podman {find_podman()}: builds in its own store, pushes with its client")

    def disk_needed(self, plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
        """The fetched files, plus podman's store holding every layer once more (the
        context is hard links; the push compresses on the fly)."""
        return {self.name: fetched_bytes(plan) + plan.total_bytes}

    def build(self, request: BuildRequest) -> BuildResult:
        started = time.monotonic()
        exe = find_podman()
        files_dir = require_files(request, self.name)
        self.check_compression(request.compression)
        target_creds, base_creds = resolve_for_build(request)
        secrets = secret_forms(target_creds) + secret_forms(base_creds)
        run = _Runner(exe, secrets)
        base = resolve_base(request)
        tmp = request.workspace.tmp_dir
        name = local_name(request)
        timings: dict[str, float] = {}
        sweep_stale()  # authfiles a killed run left in memory-backed storage
        with scrubbed(secrets), contextlib.ExitStack() as stack:
            private = Path(tempfile.mkdtemp(prefix="modelcar-podman-", dir=tmp))
            # Authfiles live in memory-backed storage that dies with the pod, never on
            # the workspace volume (a SIGKILL would leave them on the PVC).
            secrets_dir = stack.enter_context(secret_dir(request.workspace.root))
            stack.callback(shutil.rmtree, private, ignore_errors=True)
            certs = stack.enter_context(cert_dir(request.registry.ca_file, tmp))
            tls = tls_args(request.registry.tls_verify, certs)
            pull = ["--pull=missing"]
            if base.layout is not None:
                self._load_base(run, request, base.from_ref)
                pull = ["--pull=never"]
            base_auth: list[str] = []
            if base.registry is not None:
                host = base.registry.ref.registry
                authfile = stack.enter_context(private_authfile(host, base_creds, secrets_dir))
                base_auth = [f"--authfile={authfile}", *tls]
            context = prepare_context(request.plan, files_dir, request.workspace, base.from_ref)
            iidfile = private / "iid"
            run(
                "build", "--layers", f"--timestamp={epoch_seconds(request.created)}",
                "--format=oci", *pull, *base_auth, f"--iidfile={iidfile}",
                "-f", str(context.containerfile), "-t", name, str(context.directory),
            )  # fmt: skip
            timings["build"] = time.monotonic() - started
            if not request.push:
                inspected = PodmanStore().inspect(name)
                return local_result(
                    request, self.name, inspected["id"], inspected["diff_ids"], base.layers
                )
            before = previous_blobs(request)
            target = request.target
            if not isinstance(target, RegistryTarget):
                raise UsageError(f"{target}: podman pushes to a registry only")
            host = target.ref.registry
            authfile = stack.enter_context(private_authfile(host, target_creds, secrets_dir))
            digestfile = private / "digest"
            run(
                "push", f"--authfile={authfile}", *tls, f"--digestfile={digestfile}",
                f"--compression-format={request.compression}",
                name, f"docker://{request.target}",
            )  # fmt: skip
            digest = digestfile.read_text().strip()
        result = pushed_result(request, self.name, digest, base.layers, before)
        timings["total"] = time.monotonic() - started
        result.timings.update(timings)
        return result

    @staticmethod
    def _load_base(run: _Runner, request: BuildRequest, name: str) -> None:
        """An oci: layout base reaches podman's store as an archive on stdin."""
        if run.quiet("image", "exists", name).returncode == 0:
            return
        base = open_layout_base(request)
        try:
            PodmanStore().load(base_archive(base, name))
        finally:
            base.close()


class _Runner:
    def __init__(self, exe: str, secrets: tuple[str, ...]) -> None:
        self.exe, self.secrets = exe, secrets

    def quiet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.exe, *args], capture_output=True, text=True)

    def __call__(self, *args: str) -> None:
        argv = [self.exe, *args]
        log.debug("running %s", " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            text = scrub(proc.stderr or proc.stdout, self.secrets)
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.lower().startswith("error")]
            line = (errors or lines or [f"exit {proc.returncode}"])[0 if errors else -1]
            raise BuildFailed(
                f"podman {args[0]} failed: {line}",
                hint="rerun with --debug for podman's full output",
            )
        log.debug("%s", scrub(proc.stderr, self.secrets).strip())
