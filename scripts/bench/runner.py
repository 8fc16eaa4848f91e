"""The benchmark's phases (main rounds, re-push, scaling) and the measurement of one run."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .common import GIB, MB, NATIVE, REPO_ROOT, STREAM
from .contenders import NotAvailable, RunContext, StepFailed, all_contenders
from .measurement import Sampler, machine_busy_seconds, meminfo, wait_for_quiet
from .model import Model, generate_model
from .options import Options
from .results import RunResult
from .services import HubServer, Registry


class Bench:
    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.started = time.monotonic()
        self.results: list[RunResult] = []
        self.notes: list[str] = []
        self.hub: HubServer | None = None
        self.waited = 0.0  # seconds spent waiting for other work on the machine to stop
        self._runs = 0
        self.contenders = all_contenders(opts.raw_jobs)

    def elapsed_min(self) -> float:
        return (time.monotonic() - self.started) / 60

    def base_env(self, tmpdir: Path) -> dict[str, str]:
        drop = ("REGISTRY_", "MODELCAR_", "HF_TOKEN", "BUILDAH_", "CONTAINERS_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            TMPDIR=str(tmpdir),
            PYTHONPATH=str(REPO_ROOT),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            HF_ENDPOINT="http://127.0.0.1:9",  # nothing may reach the real Hub
            MODELCAR_PROGRESS_INTERVAL="3600",
        )
        return env

    def service_pids(self, registry: Registry) -> set[int]:
        pids = {registry.proc.pid}
        if self.hub is not None:
            pids.add(self.hub.proc.pid)
        return pids

    def new_dir(self, kind: str) -> Path:
        self._runs += 1
        path = self.workdir / "runs" / f"{self._runs:03d}-{kind.replace(' ', '_')}"
        path.mkdir(parents=True)
        return path

    def measure(
        self,
        name: str,
        model: Model,
        label: str,
        registry: Registry | None = None,
        run_dir: Path | None = None,
        repo: str | None = None,
    ) -> RunResult:
        """One run of contender ``name``: a fresh registry and run dir unless given (the
        re-push phase shares them on purpose), both removed afterwards."""
        contender = self.contenders[name]
        own_registry = registry is None
        reg = registry or Registry.start(self.new_dir("registry"))
        own_dir = run_dir is None
        rdir = run_dir or self.new_dir(name)
        ctx = self.context(name, model, reg, rdir, repo)
        result = RunResult(name, model.total_bytes, label, "ok")
        self.timed_run(contender.body, ctx, result)
        contender.cleanup(ctx)
        if own_registry:
            reg.stop()
            shutil.rmtree(reg.workdir, ignore_errors=True)
        if own_dir and not self.opts.keep:
            shutil.rmtree(rdir, ignore_errors=True)
        self.results.append(result)
        print(f"bench: {format_progress(result)}", file=sys.stderr, flush=True)
        return result

    def context(
        self, name: str, model: Model, reg: Registry, rdir: Path, repo: str | None
    ) -> RunContext:
        (rdir / "tmp").mkdir(exist_ok=True)
        return RunContext(
            model=model,
            registry=reg,
            run_dir=rdir,
            env=self.base_env(rdir / "tmp"),
            log=rdir / "log.txt",
            repo=repo or f"bench/{re.sub(r'[^a-z0-9]+', '-', name)}-{self._runs}",
            hub=self.hub,
        )

    def timed_run(
        self, body: Callable[[RunContext], None], ctx: RunContext, result: RunResult
    ) -> None:
        """Run ``body`` under the clock and the sampler and fill ``result`` in. A contender
        that cannot run or fails is a row in the report, not the end of the benchmark."""
        reg = ctx.registry
        os.sync()  # every run starts with no dirty pages from the previous one
        self.waited += wait_for_quiet(self.opts.quiet_wait)
        sampler = Sampler([ctx.run_dir, Path("/var/tmp")], ctx.model.inodes, self.service_pids(reg))
        reg_cpu0, hub_cpu0 = reg.cpu_seconds(), self.hub.cpu_seconds() if self.hub else 0.0
        busy0, own0 = machine_busy_seconds(), time.process_time()
        sampler.start()
        t0 = time.monotonic()
        try:
            body(ctx)
        except NotAvailable as exc:
            result.status, result.note = "not available", str(exc)
        except (StepFailed, OSError, ValueError, KeyError) as exc:
            result.status, result.note = "failed", str(exc)
        result.wall = time.monotonic() - t0
        sampler.finish()
        result.cpu, result.peak_rss = ctx.cpu, sampler.peak_rss
        result.peak_disk = sampler.peak_disk
        result.registry_cpu = reg.cpu_seconds() - reg_cpu0
        result.hub_cpu = (self.hub.cpu_seconds() - hub_cpu0) if self.hub else 0.0
        ours = ctx.cpu + result.registry_cpu + result.hub_cpu + time.process_time() - own0
        result.foreign_cpu = max(0.0, machine_busy_seconds() - busy0 - ours)
        result.bytes_uploaded, result.timings, result.marks = (
            ctx.bytes_uploaded,
            ctx.timings,
            ctx.marks,
        )
        result.registry_bytes = reg.storage_bytes()

    # phases

    def model(self, size_gib: float, seed: int = 1) -> Model:
        size = int(size_gib * GIB)
        context = self.workdir / "models" / f"{size}"
        print(f"bench: generating {size / GIB:.3g} GiB model", file=sys.stderr, flush=True)
        return generate_model(context, size, seed)

    def drop_model(self, model: Model) -> None:
        shutil.rmtree(model.context, ignore_errors=True)

    def main_rounds(self, model: Model) -> None:
        names = list(self.opts.contenders)
        if STREAM in names and self.stream_allowed(model.total_bytes):
            self.hub = HubServer("--serve-hub", str(model.root))
        elif STREAM in names:
            self.notes.append(
                f"`{STREAM}` skipped at {model.total_bytes / GIB:.3g} GiB: the Hub imitation "
                f"holds the model in RAM (limit {self.opts.stream_max_gib:g} GiB, "
                "`--stream-max-gib`)."
            )
        try:
            for r in range(self.opts.rounds):
                # Rotate the order so no contender always runs first (cold) or last.
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    self.measure(name, model, f"round {r + 1}")
        finally:
            if self.hub is not None:
                self.hub.stop()
                self.hub = None

    def stream_allowed(self, size: int) -> bool:
        available = meminfo().get("MemAvailable", 0)
        return size <= self.opts.stream_max_gib * GIB and size * 4 <= available

    def repush(self, model: Model) -> None:
        """Push once, then push the unchanged model again to the same repo and tag: with
        the same workspace (layer digests cached) and with a fresh one (digests recomputed
        by reading the files, blobs then found by HEAD)."""
        reg = Registry.start(self.new_dir("registry"))
        ws_dir = self.new_dir("repush")
        try:
            for label, run_dir in (
                ("first push", ws_dir),
                ("re-push, same workspace", ws_dir),
                ("re-push, fresh workspace", self.new_dir("repush-fresh")),
            ):
                self.measure(NATIVE, model, label, reg, run_dir, repo="bench/repush")
        finally:
            reg.stop()
            if not self.opts.keep:
                shutil.rmtree(reg.workdir, ignore_errors=True)
                shutil.rmtree(self.workdir / "runs", ignore_errors=True)

    def scaling(self, main: Model) -> None:
        for size_gib in self.opts.scaling:
            if self.elapsed_min() > self.opts.budget_min:
                self.notes.append(
                    f"Scaling point {size_gib:g} GiB skipped: the {self.opts.budget_min:g}-min "
                    "budget was used up."
                )
                continue
            size = int(size_gib * GIB)
            need = 3 * size + GIB  # model + registry copy + slack
            if shutil.disk_usage(self.workdir).free < need:
                self.notes.append(f"Scaling point {size_gib:g} GiB skipped: not enough disk.")
                continue
            same = abs(size - main.total_bytes) < main.total_bytes // 100
            model = main if same else self.model(size_gib, seed=2)
            self.measure(NATIVE, model, "scaling")
            if model is not main:
                self.drop_model(model)


def format_progress(r: RunResult) -> str:
    head = f"{r.contender:17s} {r.size_bytes / GIB:6.3g} GiB  {r.label:26s} {r.status}"
    if not r.ok:
        return f"{head}: {r.note}"
    up = "" if r.bytes_uploaded is None else f"  up {r.bytes_uploaded / MB:.0f} MB"
    return (
        f"{head}  {r.wall:6.1f} s  {r.mb_s:6.0f} MB/s  rss {r.peak_rss / MB:5.0f} MB  "
        f"disk {r.peak_disk / MB:6.0f} MB  cpu {r.cpu:5.1f} s{up}"
    )
