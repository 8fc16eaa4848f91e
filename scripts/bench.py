#!/usr/bin/env python3
"""Side-by-side benchmark: modelcar vs the shell pipelines it replaces.

One command generates an incompressible safetensors-like model, starts its own loopback
registry (Debian ``docker-registry``) and, for the streaming contender, a Hub imitation;
then runs every contender end to end (source -> pushed and verified image), in
alternation, and writes a Markdown report plus PNG charts.

    python3 scripts/bench.py --size-gib 2 --rounds 3 --scaling 0.5,1,2,4 --out BENCHMARKS.md
    python3 scripts/bench.py --quick --out /tmp/b/BENCHMARKS.md      # CI smoke, ~20 s

Contenders (each run gets a fresh registry, so no contender can skip a blob another
one already uploaded):
  native            modelcar build DIR --engine native (local directory source)
  native --stream   modelcar build hf://... --engine native --stream (Hub imitation source)
  modelcar buildah  modelcar build DIR --engine buildah
  stock buildah     Containerfile FROM scratch + COPY model/ /models/, buildah bud + push
  olot + skopeo     umoci new (scratch) + olot layers + skopeo copy oci: -> docker://
  raw curl -T       hash the files (openssl), then POST + PUT each one with curl -T: the ceiling

Measured per run: wall time, peak RSS of the whole process tree (sampled from /proc),
peak extra disk (sampled: workspace, TMPDIR, buildah storage, /var/tmp), CPU seconds
(wait4 rusage), registry CPU and storage (reported apart).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.client
import importlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
MIB = 1 << 20
MB = 1e6  # throughput and sizes in the report are decimal MB, like curl and the registry
SHARD_MAX = 512 * MIB  # what a Hub uploader typically cuts weights into
HUB_REPO = "bench/model"
HTTP_SECRET = "modelcar-bench-http-secret"  # fixed, as the issue asks (resumable uploads)
SAMPLE_INTERVAL = 0.1
OCI_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")

NATIVE = "native"
STREAM = "native --stream"
OUR_BUILDAH = "modelcar buildah"
STOCK_BUILDAH = "stock buildah"
OLOT = "olot + skopeo"
RAW = "raw curl -T"
CONTENDERS = (NATIVE, STREAM, OUR_BUILDAH, STOCK_BUILDAH, OLOT, RAW)


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    size_gib: float
    rounds: int
    scaling: tuple[float, ...]
    out: Path
    charts_dir: Path
    workdir: Path | None
    quick: bool
    contenders: tuple[str, ...]
    stream_max_gib: float
    raw_jobs: int
    budget_min: float
    install: bool
    keep: bool
    quiet_wait: float
    argv: tuple[str, ...]


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-gib", type=float, default=2.0, help="model size of the main table")
    p.add_argument("--rounds", type=int, default=3, help="rounds of all contenders (>= 3)")
    p.add_argument("--scaling", default="0.5,1,2,4", help="sizes (GiB) for native; '' = none")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    p.add_argument("--charts-dir", type=Path, help="default: benchmarks/ beside --out")
    p.add_argument("--workdir", type=Path, help="scratch dir (default: a temp dir in $TMPDIR)")
    p.add_argument("--quick", action="store_true", help="CI smoke: 16 MiB, 1 round, tiny scaling")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    p.add_argument(
        "--stream-max-gib", type=float, default=4.0, help="Hub imitation holds it in RAM"
    )
    p.add_argument("--raw-jobs", type=int, default=2, help="parallel curl uploads (native: 2)")
    p.add_argument("--budget-min", type=float, default=25.0, help="skip scaling points past it")
    p.add_argument("--no-install", action="store_true", help="never pip install matplotlib/olot")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir")
    p.add_argument(
        "--quiet-wait", type=float, default=30.0, help="max s to wait for an idle machine per run"
    )
    p.add_argument("--serve-hub", type=Path, help=argparse.SUPPRESS)  # internal: Hub child
    a = p.parse_args(argv)
    if a.serve_hub:
        serve_hub(a.serve_hub)
        sys.exit(0)
    size, rounds, scaling = a.size_gib, a.rounds, _floats(a.scaling)
    if a.quick:
        size, rounds, scaling = 1 / 64, 1, (1 / 128, 1 / 64)
    wanted = tuple(c.strip() for c in a.contenders.split(",") if c.strip())
    unknown = [c for c in wanted if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {unknown}; choose from {list(CONTENDERS)}")
    out = a.out.resolve()
    return Options(
        size_gib=size,
        rounds=max(1, rounds),
        scaling=scaling,
        out=out,
        charts_dir=(a.charts_dir or out.parent / "benchmarks").resolve(),
        workdir=a.workdir,
        quick=a.quick,
        contenders=wanted,
        stream_max_gib=a.stream_max_gib,
        raw_jobs=max(1, a.raw_jobs),
        budget_min=a.budget_min,
        install=not a.no_install,
        keep=a.keep,
        quiet_wait=0.0 if a.quick else a.quiet_wait,
        argv=tuple(argv),
    )


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


# -- requirements -------------------------------------------------------------------------------


def ensure_python_packages(names: tuple[str, ...], install: bool) -> dict[str, str]:
    """Import each package, pip-installing it once if missing. Returns {name: problem}
    for what is still missing, so the report can say why a chart or contender is absent."""
    problems: dict[str, str] = {}
    missing = [n for n in names if not _importable(n)]
    if missing and install:
        print(f"bench: pip install {' '.join(missing)}", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *missing],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            problems.update({n: f"pip install failed: {tail}" for n in missing})
        importlib.invalidate_caches()
    for name in missing:
        if not _importable(name):
            problems.setdefault(name, "not installed (--no-install)")
    return problems


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# -- model ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    context: Path  # holds only model/: the Containerfile's build context
    files: tuple[str, ...]  # relative to root
    total_bytes: int
    inodes: frozenset[tuple[int, int]]  # hard links to these are not "extra" disk

    @property
    def root(self) -> Path:
        return self.context / "model"

    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]


def generate_model(context: Path, size_bytes: int, seed: int = 1) -> Model:
    """Config/tokenizer files plus safetensors-like shards of random bytes (incompressible,
    deterministic per seed) that add up to ``size_bytes``."""
    root = context / "model"
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    small = _small_files(rng)
    n_shards = max(2, -(-size_bytes // SHARD_MAX))
    weight_bytes = max(n_shards * 1024, size_bytes - sum(len(b) for b in small.values()))
    names = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    index = {"metadata": {"total_size": weight_bytes}, "weight_map": {}}
    for i, name in enumerate(names):
        size = weight_bytes // n_shards + (weight_bytes % n_shards if i == 0 else 0)
        _write_shard(root / name, size, rng, i)
        index["weight_map"][f"layers.{i}.weight"] = name
    small["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    for rel, data in small.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    files = tuple(sorted([*small, *names]))
    os.sync()  # no writeback of the model may overlap the first timed run
    stats = [(root / f).stat() for f in files]
    return Model(
        context=context,
        files=files,
        total_bytes=sum(s.st_size for s in stats),
        inodes=frozenset((s.st_dev, s.st_ino) for s in stats),
    )


def _small_files(rng: random.Random) -> dict[str, bytes]:
    vocab = {f"tok{rng.getrandbits(40):x}": i for i in range(32000)}  # ~1 MB, like Llama's
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 4096}).encode(),
        "generation_config.json": b'{"do_sample": true, "temperature": 0.6}',
        "tokenizer.json": json.dumps({"model": {"type": "BPE", "vocab": vocab}}).encode(),
        "tokenizer_config.json": b'{"bos_token": "<s>", "eos_token": "</s>"}',
        "special_tokens_map.json": b'{"bos_token": "<s>", "eos_token": "</s>"}',
        "README.md": b"# bench model\n\nRandom weights for benchmarks.\n",
    }


def _write_shard(path: Path, size: int, rng: random.Random, index: int) -> None:
    header = json.dumps({"__metadata__": {"format": "pt"}, f"layers.{index}.weight": {}}).encode()
    header += b" " * (-len(header) % 8)
    head = len(header).to_bytes(8, "little") + header
    with open(path, "wb") as fh:
        fh.write(head[:size])
        left = size - min(size, len(head))
        while left:
            n = min(left, 8 * MIB)
            fh.write(rng.randbytes(n))
            left -= n


# -- services ---------------------------------------------------------------------------------


@dataclass
class Registry:
    """One docker-registry process; stopped by pid."""

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @classmethod
    def start(cls, workdir: Path) -> Registry:
        (workdir / "storage").mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            config = {
                "version": "0.1",
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(workdir / "storage")},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": f"127.0.0.1:{port}", "secret": HTTP_SECRET},
                "health": {"storagedriver": {"enabled": False}},
            }
            cfg = workdir / "config.yml"
            cfg.write_text(json.dumps(config))  # YAML is a superset of JSON
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            with open(workdir / "registry.log", "ab") as log:
                proc = subprocess.Popen(
                    ["docker-registry", "serve", str(cfg)],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            reg = cls(workdir, port, proc)
            if reg._wait_ready():
                return reg
            reg.stop()
        raise RuntimeError(f"docker-registry did not start; see {workdir / 'registry.log'}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                time.sleep(0.02)
        return False

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def storage_bytes(self) -> int:
        return tree_bytes(self.storage)

    def stop(self) -> None:
        stop_process(self.proc)


class HubServer:
    """The Hub imitation (tests/support/hubsim.py) in a child process, so its GIL, CPU and
    memory stay out of both the sampler's way and the contender's process tree."""

    def __init__(self, model: Model) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-hub", str(model.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            stop_process(self.proc)
            raise RuntimeError("the Hub imitation did not start")
        self.endpoint: str = json.loads(line)["endpoint"]

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the child exits when its stdin closes
        stop_process(self.proc)


def serve_hub(model_root: Path) -> None:
    """Child side of HubServer: load the files into a HubSim, print the endpoint, serve
    until stdin closes."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.hubsim import HubSim

    files = {
        p.relative_to(model_root).as_posix(): p.read_bytes()
        for p in sorted(model_root.rglob("*"))
        if p.is_file()
    }
    hub = HubSim().start()
    hub.add_repo(HUB_REPO, files)
    print(json.dumps({"endpoint": hub.endpoint}), flush=True)
    sys.stdin.read()
    hub.stop()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- sampling -----------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to tell how much CPU
    processes outside the benchmark took during a run (another test suite, say)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until the machine is idle: on a shared machine another
    test suite would otherwise take cores from the run. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        busy0 = machine_busy_seconds()
        time.sleep(0.5)
        if (machine_busy_seconds() - busy0) / 0.5 < threshold:
            break
        time.sleep(1.5)
    return time.monotonic() - t0


def descendants(pid: int, exclude: set[int]) -> list[int]:
    """All live descendants of ``pid``, not descending into ``exclude`` (our services)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    kids = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
                    for kid in map(int, kids):
                        if kid not in exclude:
                            out.append(kid)
                            stack.append(kid)
    return out


def tree_rss(pid: int, exclude: set[int]) -> int:
    total = 0
    for kid in descendants(pid, exclude):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{kid}/statm").read_text().split()[1]) * PAGE
    return total


def tree_bytes(root: Path, skip: frozenset[tuple[int, int]] = frozenset()) -> int:
    """Allocated bytes under ``root``: each inode once, no other mounts (a mounted
    overlay would show the same bytes twice), hard links to ``skip`` inodes not counted."""
    try:
        dev = os.lstat(root).st_dev
    except OSError:
        return 0
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(root)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    key = (st.st_dev, st.st_ino)
                    if st.st_dev != dev or key in seen or key in skip:
                        continue
                    seen.add(key)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return total


class Sampler(threading.Thread):
    """Peak RSS of our process tree and peak growth of the scratch dirs, every 0.1 s.
    Runs while the main thread waits in wait4 (GIL released), so it costs the contender
    only what the /proc and directory reads cost."""

    def __init__(
        self, disk_roots: list[Path], skip: frozenset[tuple[int, int]], exclude: set[int]
    ) -> None:
        super().__init__(daemon=True)
        self.roots, self.skip, self.exclude = disk_roots, skip, exclude
        self.baseline = {r: tree_bytes(r, skip) for r in disk_roots}
        self.peak_rss = 0
        self.peak_disk = 0
        self._done = threading.Event()

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss(os.getpid(), self.exclude))
        extra = sum(max(0, tree_bytes(r, self.skip) - self.baseline[r]) for r in self.roots)
        self.peak_disk = max(self.peak_disk, extra)

    def run(self) -> None:
        while not self._done.wait(SAMPLE_INTERVAL):
            self.sample()

    def finish(self) -> None:
        self._done.set()
        self.join()
        self.sample()  # what is left behind counts too


# -- running contenders -------------------------------------------------------------------------


class NotAvailable(Exception):
    """The contender cannot run here (tool missing, engine not written yet)."""


class StepFailed(Exception):
    pass


@dataclass
class RunContext:
    model: Model
    registry: Registry
    run_dir: Path
    env: dict[str, str]
    log: Path
    repo: str
    hub: HubServer | None = None
    tag: str = "v1"
    cpu: float = 0.0
    bytes_uploaded: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def image(self) -> str:
        return f"{self.registry.host}/{self.repo}:{self.tag}"

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        """Run one step; CPU comes from wait4, so reaped grandchildren count too. (Not
        ru_maxrss: Linux carries the forking parent's peak RSS into it.)"""
        out_fd, out_name = tempfile.mkstemp(dir=self.run_dir, prefix=".out-")
        with open(self.log, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv, stdout=out_fd, stderr=log, stdin=subprocess.DEVNULL, env=env or self.env
            )
            os.close(out_fd)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = Path(out_name).read_text(errors="replace")
        os.unlink(out_name)
        with self._lock:
            self.cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise StepFailed(f"{Path(argv[0]).name} exited {proc.returncode}: {self.last_error()}")
        return stdout

    def last_error(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        errors = [ln for ln in lines if ln.startswith(("error:", "Error", "time=")) or "rror" in ln]
        return (errors or lines or ["?"])[-1][-300:]


@dataclass
class RunResult:
    contender: str
    size_bytes: int
    label: str  # "round 2", "scaling", "re-push", ...
    status: str  # ok | not available | failed
    note: str = ""
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    peak_disk: int = 0
    registry_cpu: float = 0.0
    hub_cpu: float = 0.0
    foreign_cpu: float = 0.0  # CPU used by processes that are not part of the benchmark
    registry_bytes: int = 0
    bytes_uploaded: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def mb_s(self) -> float:
        return self.size_bytes / MB / self.wall if self.wall else 0.0


@dataclass(frozen=True)
class Contender:
    name: str
    body: Callable[[RunContext], None]
    cleanup: Callable[[RunContext], None] = lambda ctx: None


def modelcar(ctx: RunContext, source: str, *extra: str) -> None:
    report = ctx.run_dir / "report.json"
    argv = [sys.executable, "-m", "modelcar_builder", "build", source, "--image", ctx.image]
    argv += ["--no-tls-verify", "--base-image", "scratch", "--workspace", str(ctx.run_dir / "ws")]
    argv += ["--report", str(report), *extra]
    t0 = time.monotonic()
    try:
        ctx.run(argv)
    except StepFailed as exc:
        if " exited 40:" in str(exc):  # EngineUnavailable
            raise NotAvailable(str(exc).split(": ", 1)[-1]) from None
        raise
    doc = json.loads(report.read_text())
    ctx.bytes_uploaded = doc["bytes_uploaded"]
    ctx.timings = {k: float(v) for k, v in doc.get("timings", {}).items()}
    # Interpreter start, imports, planning and exit: what the report's own clock misses.
    ctx.marks["outside report"] = time.monotonic() - t0 - ctx.timings.get("total", 0.0)


def run_native(ctx: RunContext) -> None:
    modelcar(ctx, str(ctx.model.root), "--engine", "native")


def run_stream(ctx: RunContext) -> None:
    if ctx.hub is None:
        raise NotAvailable("Hub imitation not started at this size (it holds the model in RAM)")
    env = {**ctx.env, "HF_ENDPOINT": ctx.hub.endpoint}
    ctx.env = env
    modelcar(ctx, f"hf://{HUB_REPO}@main", "--engine", "native", "--stream")


def run_our_buildah(ctx: RunContext) -> None:
    if not shutil.which("buildah"):
        raise NotAvailable("buildah not installed")
    modelcar(ctx, str(ctx.model.root), "--engine", "buildah")


def _buildah(ctx: RunContext) -> list[str]:
    # vfs: the OpenShift Pipelines buildah task's default STORAGE_DRIVER, and no mounts
    # are left behind to clean up.
    return [
        "buildah",
        "--root", str(ctx.run_dir / "storage"),
        "--runroot", str(ctx.run_dir / "runroot"),
        "--storage-driver", "vfs",
    ]  # fmt: skip


def run_stock_buildah(ctx: RunContext) -> None:
    if not shutil.which("buildah"):
        raise NotAvailable("buildah not installed")
    containerfile = ctx.run_dir / "Containerfile"
    containerfile.write_text("FROM scratch\nCOPY model/ /models/\n")
    local = "localhost/bench-model:latest"
    t0 = time.monotonic()
    ctx.run([*_buildah(ctx), "bud", "--quiet", "-f", str(containerfile), "-t", local,
             str(ctx.model.context)])  # fmt: skip
    ctx.marks["bud"] = time.monotonic() - t0
    digest_file = ctx.run_dir / "digest"
    ctx.run([*_buildah(ctx), "push", "--quiet", "--tls-verify=false", "--digestfile",
             str(digest_file), local, f"docker://{ctx.image}"])  # fmt: skip
    ctx.marks["push"] = time.monotonic() - t0 - ctx.marks["bud"]
    verify_image(ctx, digest_file.read_text().strip())


def cleanup_stock_buildah(ctx: RunContext) -> None:
    with contextlib.suppress(StepFailed, OSError):
        ctx.run([*_buildah(ctx), "rmi", "--all", "--force"])


def run_olot(ctx: RunContext) -> None:
    if not _importable("olot"):
        raise NotAvailable("olot is not installed (pip install olot)")
    for tool in ("umoci", "skopeo"):
        if not shutil.which(tool):
            raise NotAvailable(f"{tool} not installed")
    layout = ctx.run_dir / "layout"
    t0 = time.monotonic()
    # A scratch-like base: olot refuses a manifest with no layers, so one empty layer.
    empty_tar = ctx.run_dir / "empty.tar"
    empty_tar.write_bytes(b"\0" * 1024)
    ctx.run(["umoci", "init", "--layout", str(layout)])
    ctx.run(["umoci", "new", "--image", f"{layout}:latest"])
    ctx.run(["umoci", "raw", "add-layer", "--image", f"{layout}:latest", str(empty_tar)])
    olot_cli = "import sys; from olot.cli import cli; sys.exit(cli())"
    ctx.run([sys.executable, "-c", olot_cli, "--root-dir", str(ctx.model.root), str(layout),
             *map(str, ctx.model.paths())])  # fmt: skip
    ctx.marks["olot"] = time.monotonic() - t0
    digest_file = ctx.run_dir / "digest"
    ctx.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--digestfile", str(digest_file),
             f"oci:{layout}:latest", f"docker://{ctx.image}"])  # fmt: skip
    ctx.marks["skopeo"] = time.monotonic() - t0 - ctx.marks["olot"]
    verify_image(ctx, digest_file.read_text().strip())


def run_raw(ctx: RunContext, jobs: int = 1) -> None:
    """The ceiling: read + hash every file once, then upload each as a blob with curl -T,
    as many at a time as native uploads layers. No tar, no manifest."""
    paths = ctx.model.paths()
    t0 = time.monotonic()
    out = ctx.run([*hash_command(), *map(str, paths)])
    digests = ["sha256:" + line.split()[0] for line in out.splitlines()]
    ctx.marks["read+sha256"] = time.monotonic() - t0

    def upload(item: tuple[Path, str]) -> None:
        path, digest = item
        head = ctx.run(["curl", "-sS", "-f", "-X", "POST", "-D", "-", "-o", "/dev/null",
                        f"{ctx.registry.url}/v2/{ctx.repo}/blobs/uploads/"])  # fmt: skip
        location = re.search(r"(?im)^location:\s*(\S+)", head)
        if not location:
            raise StepFailed("no Location in the upload POST answer")
        url = urllib.parse.urljoin(ctx.registry.url, location.group(1))
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        ctx.run(["curl", "-sS", "-f", "-T", str(path), "-H", "Expect:", "-H",
                 "Content-Type: application/octet-stream", "-o", "/dev/null", url])  # fmt: skip

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(upload, zip(paths, digests, strict=True)))
    ctx.marks["upload"] = time.monotonic() - t0 - ctx.marks["read+sha256"]
    ctx.bytes_uploaded = ctx.model.total_bytes
    for path, digest in zip(paths, digests, strict=True):
        if head_blob(ctx, digest) != path.stat().st_size:
            raise StepFailed(f"blob {digest} missing after upload")


def hash_command() -> list[str]:
    """The fastest sha256 at hand: OpenSSL uses the CPU's SHA extensions, Debian's
    coreutils sha256sum does not (~4x slower here), and a ceiling must not be handicapped."""
    if shutil.which("openssl"):
        return ["openssl", "dgst", "-sha256", "-r"]
    return ["sha256sum"]


def head_blob(ctx: RunContext, digest: str) -> int | None:
    conn = http.client.HTTPConnection(ctx.registry.host, timeout=30)
    try:
        conn.request("HEAD", f"/v2/{ctx.repo}/blobs/{digest}")
        resp = conn.getresponse()
        return int(resp.getheader("Content-Length") or -1) if resp.status == 200 else None
    finally:
        conn.close()


def verify_image(ctx: RunContext, digest: str) -> None:
    """What the stock pipelines lack and modelcar does: the tag resolves to the digest the
    push reported, and every blob is there with its size."""
    req = urllib.request.Request(
        f"{ctx.registry.url}/v2/{ctx.repo}/manifests/{ctx.tag}", headers={"Accept": OCI_ACCEPT}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    got = "sha256:" + hashlib.sha256(body).hexdigest()
    if got != digest:
        raise StepFailed(f"tag resolves to {got}, push reported {digest}")
    manifest = json.loads(body)
    for blob in [manifest["config"], *manifest["layers"]]:
        if head_blob(ctx, blob["digest"]) != blob["size"]:
            raise StepFailed(f"blob {blob['digest']} missing or wrong size")


# -- the bench ---------------------------------------------------------------------------------


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
        self.contenders = {
            NATIVE: Contender(NATIVE, run_native),
            STREAM: Contender(STREAM, run_stream),
            OUR_BUILDAH: Contender(OUR_BUILDAH, run_our_buildah),
            STOCK_BUILDAH: Contender(STOCK_BUILDAH, run_stock_buildah, cleanup_stock_buildah),
            OLOT: Contender(OLOT, run_olot),
            RAW: Contender(RAW, lambda ctx: run_raw(ctx, opts.raw_jobs)),
        }

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
        contender = self.contenders[name]
        own_registry = registry is None
        reg = registry or Registry.start(self.new_dir("registry"))
        own_dir = run_dir is None
        rdir = run_dir or self.new_dir(name)
        (rdir / "tmp").mkdir(exist_ok=True)
        ctx = RunContext(
            model=model,
            registry=reg,
            run_dir=rdir,
            env=self.base_env(rdir / "tmp"),
            log=rdir / "log.txt",
            repo=repo or f"bench/{re.sub(r'[^a-z0-9]+', '-', name)}-{self._runs}",
            hub=self.hub,
        )
        os.sync()  # every run starts with no dirty pages from the previous one
        self.waited += wait_for_quiet(self.opts.quiet_wait)
        result = RunResult(name, model.total_bytes, label, "ok")
        sampler = Sampler([rdir, Path("/var/tmp")], model.inodes, self.service_pids(reg))
        reg_cpu0, hub_cpu0 = reg.cpu_seconds(), self.hub.cpu_seconds() if self.hub else 0.0
        busy0, own0 = machine_busy_seconds(), time.process_time()
        sampler.start()
        t0 = time.monotonic()
        try:
            contender.body(ctx)
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
        contender.cleanup(ctx)
        if own_registry:
            reg.stop()
            shutil.rmtree(reg.workdir, ignore_errors=True)
        if own_dir and not self.opts.keep:
            shutil.rmtree(rdir, ignore_errors=True)
        self.results.append(result)
        print(f"bench: {format_progress(result)}", file=sys.stderr, flush=True)
        return result

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
            self.hub = HubServer(model)
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
        available = _meminfo().get("MemAvailable", 0)
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


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) * 1024
    return out


def format_progress(r: RunResult) -> str:
    head = f"{r.contender:17s} {r.size_bytes / GIB:6.3g} GiB  {r.label:26s} {r.status}"
    if not r.ok:
        return f"{head}: {r.note}"
    up = "" if r.bytes_uploaded is None else f"  up {r.bytes_uploaded / MB:.0f} MB"
    return (
        f"{head}  {r.wall:6.1f} s  {r.mb_s:6.0f} MB/s  rss {r.peak_rss / MB:5.0f} MB  "
        f"disk {r.peak_disk / MB:6.0f} MB  cpu {r.cpu:5.1f} s{up}"
    )


# -- profile of native's parts -------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRow:
    what: str
    seconds: float
    size_bytes: int
    note: str = ""

    @property
    def mb_s(self) -> float:
        return self.size_bytes / MB / self.seconds if self.seconds else 0.0


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def run_profile(bench: Bench, model: Model) -> list[ProfileRow]:
    """Each stage of native's path alone, single-threaded, on the same bytes (warm page
    cache): where the end-to-end time goes."""
    sys.path.insert(0, str(REPO_ROOT))
    from modelcar_builder.oci.layer import TarLayer
    from modelcar_builder.plan import make_plan
    from modelcar_builder.selection import Selection
    from modelcar_builder.source.local import local_snapshot

    size = model.total_bytes
    paths = list(map(str, model.paths()))
    plan = make_plan(local_snapshot(str(model.root), Selection((), (), False)))
    tars = [TarLayer.from_files(layer.files, model.root) for layer in plan.layers]
    quiet = {"stdout": subprocess.DEVNULL, "check": True}
    rows = [
        ProfileRow(
            "read: cat > /dev/null", timed(lambda: subprocess.run(["cat", *paths], **quiet)), size
        ),
        ProfileRow(
            "read + sha256: sha256sum",
            timed(lambda: subprocess.run(["sha256sum", *paths], **quiet)),
            size,
        ),
        ProfileRow(
            "read + sha256: " + " ".join(hash_command()[:2]),
            timed(lambda: subprocess.run([*hash_command(), *paths], **quiet)),
            size,
            "the raw limit's hash step",
        ),
        ProfileRow(
            "tar stream only (TarLayer.chunks)",
            timed(lambda: [sum(map(len, t.chunks())) for t in tars]),
            size,
        ),
    ]
    digests: list[str] = []
    rows.append(
        ProfileRow(
            "tar + sha256 (TarLayer.digest)",
            timed(lambda: digests.extend(t.digest() for t in tars)),
            size,
            "native's first pass",
        )
    )
    startup = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "modelcar_builder", "--version"],
            env=bench.base_env(Path(tempfile.gettempdir())),
            **quiet,
        )
    )
    rows.append(
        ProfileRow("python -m modelcar_builder --version", startup, 0, "interpreter + imports")
    )
    for jobs in (1, 2):
        rows.append(profile_upload(bench, tars, digests, size, jobs))
    return rows


def profile_upload(
    bench: Bench, tars: list, digests: list[str], size: int, jobs: int
) -> ProfileRow:
    """modelcar's own upload path (RegistryClient.upload_blob of the tar stream) alone,
    into a fresh registry, ``jobs`` layers at a time; the registry's CPU tells its share."""
    from modelcar_builder.registry import RegistryClient

    reg = Registry.start(bench.new_dir("registry"))
    try:
        cpu0, self_cpu0 = reg.cpu_seconds(), time.process_time()
        with RegistryClient(reg.host, None, tls_verify=False) as client:

            def one(item: tuple) -> None:
                tar, digest = item
                client.upload_blob("bench/profile", digest, tar.size, tar.chunks)

            def upload() -> None:
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    list(pool.map(one, zip(tars, digests, strict=True)))

            seconds = timed(upload)
        reg_cpu, own_cpu = reg.cpu_seconds() - cpu0, time.process_time() - self_cpu0
    finally:
        reg.stop()
        shutil.rmtree(reg.workdir, ignore_errors=True)
    return ProfileRow(
        f"upload tar stream (RegistryClient.upload_blob), {jobs} at a time",
        seconds,
        size,
        f"client CPU {own_cpu:.1f} s, registry CPU {reg_cpu:.1f} s "
        f"({size / MB / max(reg_cpu, 1e-3):.0f} MB per registry CPU-s)",
    )


# -- summary --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One contender at the main size: medians of time and CPU, worst case of the peaks."""

    name: str
    status: str
    note: str
    runs: int
    wall: float = 0.0
    wall_min: float = 0.0
    wall_max: float = 0.0
    mb_s: float = 0.0
    peak_rss: int = 0
    peak_disk: int = 0
    cpu: float = 0.0
    registry_cpu: float = 0.0
    registry_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def summarize(name: str, runs: list[RunResult]) -> Summary:
    good = [r for r in runs if r.ok]
    if not good:
        bad = runs[-1] if runs else None
        status = bad.status if bad else "not run"
        return Summary(name, status, bad.note if bad else "not selected (--contenders)", len(runs))
    walls = [r.wall for r in good]
    wall = statistics.median(walls)
    note = "" if len(good) == len(runs) else f"{len(runs) - len(good)} run(s) failed"
    return Summary(
        name=name,
        status="ok",
        note=note,
        runs=len(good),
        wall=wall,
        wall_min=min(walls),
        wall_max=max(walls),
        mb_s=good[0].size_bytes / MB / wall,
        peak_rss=max(r.peak_rss for r in good),
        peak_disk=max(r.peak_disk for r in good),
        cpu=statistics.median(r.cpu for r in good),
        registry_cpu=statistics.median(r.registry_cpu for r in good),
        registry_bytes=max(r.registry_bytes for r in good),
    )


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    met: bool | None  # None: could not be measured


def targets(
    summaries: dict[str, Summary], results: list[RunResult], model_bytes: int
) -> list[Target]:
    native, raw = summaries[NATIVE], summaries[RAW]
    stock, ours, stream = summaries[STOCK_BUILDAH], summaries[OUR_BUILDAH], summaries[STREAM]
    out = []

    def ratio(a: Summary, b: Summary) -> float | None:
        return b.wall / a.wall if a.ok and b.ok else None

    vs_raw, vs_stock = ratio(native, raw), ratio(native, stock)
    out.append(_target("`native` ≥ 0.8× the raw limit", vs_raw, lambda x: x >= 0.8, "{:.2f}×"))
    out.append(_target("`native` ≥ 4× stock buildah", vs_stock, lambda x: x >= 4, "{:.2f}×"))
    share = stream.peak_disk / model_bytes if stream.ok else None
    out.append(_target("`--stream` peak extra disk ≤ 1 % of the model", share,
                       lambda x: x <= 0.01, "{:.2%}"))  # fmt: skip
    native_runs = [r for r in results if r.ok and r.contender in (NATIVE, STREAM)]
    rss = max((r.peak_rss for r in native_runs), default=None)
    sizes = sorted({r.size_bytes for r in native_runs})
    where = ", ".join(f"{s / GIB:.3g}" for s in sizes)
    out.append(_target(f"peak RSS ≤ 200 MB at every size (native, stream; {where} GiB)",
                       rss / MB if rss else None, lambda x: x <= 200, "max {:.0f} MB"))  # fmt: skip
    speed = ratio(ours, stock)
    disk = ours.peak_disk / model_bytes if ours.ok else None
    measured = (
        f"{speed:.2f}× faster, disk {disk:.2f}× the model"
        if speed is not None and disk is not None
        else f"{ours.status}: {ours.note}"
    )
    met = None if speed is None or disk is None else speed >= 1.5 and disk <= 2
    out.append(Target("our `buildah` engine ≥ 1.5× stock buildah, ≤ 2× model disk", measured, met))
    again = [r for r in results if r.label.startswith("re-push") and r.ok]
    if again:
        worst = max(again, key=lambda r: (r.bytes_uploaded or 0, r.wall))
        text = ", ".join(f"{r.label.split(', ')[1]}: {r.bytes_uploaded} B in {r.wall:.1f} s"
                         for r in again)  # fmt: skip
        out.append(Target("re-push unchanged: 0 bytes, < 5 s", text,
                          (worst.bytes_uploaded == 0) and worst.wall < 5))  # fmt: skip
    else:
        out.append(Target("re-push unchanged: 0 bytes, < 5 s", "not measured", None))
    return out


def linear_fit(runs: list[RunResult]) -> tuple[float, float] | None:
    """(seconds per GiB, intercept) of wall time over size, or None with < 2 sizes."""
    if len({r.size_bytes for r in runs}) < 2:
        return None
    slope, intercept = statistics.linear_regression(
        [r.size_bytes / GIB for r in runs], [r.wall for r in runs]
    )
    return slope, intercept


def _target(what: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> Target:
    if value is None:
        return Target(what, "not measured", None)
    return Target(what, fmt.format(value), ok(value))


# -- report ---------------------------------------------------------------------------------------


def tool_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "not installed"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_info() -> dict[str, str]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor() or "?",
    )  # fmt: skip
    sys.path.insert(0, str(REPO_ROOT))
    from modelcar_builder import __version__

    olot = "not installed"
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        olot = version("olot")
    disk = shutil.disk_usage(tempfile.gettempdir())
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{_meminfo()['MemTotal'] / GIB:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "modelcar": __version__,
        "buildah": tool_version(["buildah", "--version"]),
        "skopeo": tool_version(["skopeo", "--version"]),
        "docker-registry": tool_version(["docker-registry", "--version"]),
        "umoci": tool_version(["umoci", "--version"]),
        "olot": olot,
        "curl": tool_version(["curl", "--version"]).split(" (")[0],
        "disk": f"{disk.free / GIB:.0f} GiB free of {disk.total / GIB:.0f} GiB (one disk)",
    }


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def results_table(summaries: dict[str, Summary], model_bytes: int) -> list[str]:
    raw, stock = summaries[RAW], summaries[STOCK_BUILDAH]
    lines = [
        "| contender | status | wall s (median) | wall s (min–max) | MB/s | × raw limit "
        "| × stock buildah | peak RSS MB | peak extra disk MB | disk × model | CPU s "
        "| registry CPU s | registry storage MB |",
        "|---|---|" + "---:|" * 11,
    ]
    for s in summaries.values():
        if not s.ok:
            lines.append(f"| {s.name} | {s.status}: {s.note} |" + " — |" * 11)
            continue
        vs_raw = _num(raw.wall / s.wall, 2) if raw.ok else "—"
        vs_stock = _num(stock.wall / s.wall, 2) if stock.ok else "—"
        status = "ok" + (f" ({s.note})" if s.note else "")
        lines.append(
            f"| {s.name} | {status} | {_num(s.wall)} | {_num(s.wall_min)}–{_num(s.wall_max)} "
            f"| {s.mb_s:.0f} | {vs_raw} | {vs_stock} | {s.peak_rss / MB:.0f} "
            f"| {s.peak_disk / MB:.1f} | {s.peak_disk / model_bytes:.2f} | {_num(s.cpu)} "
            f"| {_num(s.registry_cpu)} | {s.registry_bytes / MB:.0f} |"
        )
    return lines


def runs_table(results: list[RunResult]) -> list[str]:
    lines = [
        "| contender | size GiB | run | status | wall s | MB/s | peak RSS MB | peak disk MB "
        "| CPU s | registry CPU s | other CPU s | bytes uploaded | parts |",
        "|---|---:|---|---|" + "---:|" * 8 + "---|",
    ]
    for r in results:
        shown = ("build_push", "layers", "push", "verify")
        parts = {**{k: v for k, v in r.timings.items() if k in shown}, **r.marks}
        detail = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
        if r.hub_cpu and r.contender == STREAM:
            detail += f", Hub imitation CPU {r.hub_cpu:.1f} s"
        if not r.ok:
            lines.append(f"| {r.contender} | {r.size_bytes / GIB:.3g} | {r.label} | {r.status} |"
                         + " — |" * 8 + f" {r.note} |")  # fmt: skip
            continue
        up = "—" if r.bytes_uploaded is None else str(r.bytes_uploaded)
        lines.append(
            f"| {r.contender} | {r.size_bytes / GIB:.3g} | {r.label} | {r.status} | {_num(r.wall)} "
            f"| {r.mb_s:.0f} | {r.peak_rss / MB:.0f} | {r.peak_disk / MB:.1f} | {_num(r.cpu)} "
            f"| {_num(r.registry_cpu)} | {_num(r.foreign_cpu)} | {up} | {detail} |"
        )
    return lines


def write_markdown(
    opts: Options,
    info: dict[str, str],
    model: Model,
    summaries: dict[str, Summary],
    results: list[RunResult],
    profile: list[ProfileRow],
    charts: list[Path],
    notes: list[str],
    minutes: float,
) -> None:
    cmd = shlex.join(["python3", "scripts/bench.py", *opts.argv])
    size = model.total_bytes
    out = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench.py`; do not edit by hand. Re-run with:",
        "",
        f"    {cmd}",
        "",
        f"Run on {datetime.date.today().isoformat()}, {minutes:.1f} min of machine time.",
        "",
        "## Machine",
        "",
        "| " + " | ".join(info) + " |",
        "|" + "---|" * len(info),
        "| " + " | ".join(info.values()) + " |",
        "",
        f"## End to end: {size / GIB:.3g} GiB model ({size / MB:.0f} MB), "
        f"{opts.rounds} round(s), medians",
        "",
        f"Model: {len(model.files)} files — {sum(f.endswith('.safetensors') for f in model.files)} "
        "safetensors shards of random (incompressible) bytes plus config/tokenizer files — "
        "read from a local directory (warm page cache). Every contender goes from the source "
        "to a pushed image whose tag is read back and whose blobs are checked (the raw limit "
        "pushes blobs only, checked by HEAD). Each run gets a fresh loopback `docker-registry` "
        "(storage on the same disk), so nothing is ever skipped; contenders alternate, the "
        "order rotating each round. `× raw limit` and `× stock buildah` are speed ratios "
        "(their wall time / this one's): > 1 is faster. Peaks are the worst round.",
        "",
        *results_table(summaries, size),
        "",
    ]
    if charts:
        out += [f"![{c.stem}]({os.path.relpath(c, opts.out.parent)})" for c in charts] + [""]
    out += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in targets(summaries, results, size):
        met = {True: "yes", False: "**no**", None: "n/a"}[t.met]
        out.append(f"| {t.what} | {t.measured} | {met} |")
    scaling = [r for r in results if r.label == "scaling"]
    if scaling:
        out += ["", "## Scaling of `native` (one run per size)", "",
                "| size GiB | wall s | MB/s | peak RSS MB | peak extra disk MB | CPU s "
                "| other CPU s |",
                "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in sorted(scaling, key=lambda r: r.size_bytes):
            out.append(
                f"| {r.size_bytes / GIB:.3g} | {_num(r.wall)} | {r.mb_s:.0f} "
                f"| {r.peak_rss / MB:.0f} | {r.peak_disk / MB:.1f} | {_num(r.cpu)} "
                f"| {_num(r.foreign_cpu)} |"
            )
        fit = linear_fit([r for r in scaling if r.ok])
        if fit:
            slope, intercept = fit
            out += ["", f"Least-squares line: wall ≈ {intercept:.2f} s + {slope:.2f} s/GiB "
                        f"({GIB / MB / slope:.0f} MB/s marginal)."]  # fmt: skip
    if profile:
        out += ["", f"## Where `native`'s time goes ({size / GIB:.3g} GiB, each part alone)", "",
                "| part | s | MB/s | note |", "|---|---:|---:|---|"]  # fmt: skip
        for p in profile:
            rate = f"{p.mb_s:.0f}" if p.size_bytes else "—"
            out.append(f"| {p.what} | {p.seconds:.2f} | {rate} | {p.note} |")
    out += ["", "## Every run", "", *runs_table(results), "", "## How it is measured", ""]
    out += [f"- {line}" for line in METHOD + notes]
    # Fixed text: the buildah engine's design measurements (this script does not re-run them).
    out += ["", (REPO_ROOT / "benchmarks" / "buildah-engine.md").read_text().rstrip("\n")]
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(out) + "\n")


METHOD = [
    "wall: from the first command of a contender to its verified image (or its last blob "
    "checked, for the raw limit); model generation and registry start/stop are outside it.",
    "peak RSS: the sum of VmRSS over the whole process tree under the benchmark (registry "
    "and Hub imitation excluded), sampled from /proc every 0.1 s.",
    "peak extra disk: growth over the run's start of the run's scratch dir (workspace, "
    "TMPDIR, buildah --root/--runroot, OCI layout) and of /var/tmp, sampled every 0.1 s; "
    "hard links to the model files do not count. The registry's storage is reported apart.",
    "CPU s: user + system of every command the contender ran (wait4 rusage, children "
    "included); registry CPU s from /proc/PID/stat of the registry over the run.",
    "`native` / `modelcar buildah`: `python -m modelcar_builder build DIR --engine E --image "
    "HOST/REPO:TAG --no-tls-verify --base-image scratch --workspace W --report R`.",
    "`native --stream`: the same from `hf://bench/model@main` served by "
    "`tests/support/hubsim.py` in a child process (it keeps files in memory, so it runs only "
    "at sizes ≤ `--stream-max-gib` and ≤ 1/4 of available memory); the Hub imitation's CPU "
    "is in the per-run table.",
    "`stock buildah`: `Containerfile` `FROM scratch` + `COPY model/ /models/`; `buildah "
    "--root R --runroot RR --storage-driver vfs bud`, then `buildah push --tls-verify=false` "
    "(default compression: gzip), TMPDIR in the run dir, as the seed pipeline did "
    "(vfs is the OpenShift Pipelines buildah task default).",
    "`olot + skopeo`: `umoci init` + `umoci new` + one empty layer (olot refuses a base "
    "without layers), `olot --root-dir MODEL "
    "LAYOUT FILES…` (one tar layer per file, written into the layout), `skopeo copy "
    "oci:LAYOUT:latest docker://…` (which gzips uncompressed layers for a docker:// "
    "destination).",
    "`raw curl -T`: `openssl dgst -sha256` of all files (read + hash; coreutils `sha256sum` "
    "is ~4× slower here, see the profile), then per file `curl -X POST "
    "/v2/<repo>/blobs/uploads/` and `curl -T FILE` to `<location>&digest=sha256:…` "
    "(`--raw-jobs` at a time, default 2 like native's `--jobs`), then HEAD of every blob.",
    "re-push: `native` to the same repo and tag right after a first push, with the same "
    "workspace and with a fresh one; bytes from the report's `bytes_uploaded`.",
    "The profile runs each stage alone in the benchmark process on the same files.",
    "other CPU s (per run): busy CPU of the whole machine (/proc/stat) minus the contender's, "
    "the registry's, the Hub imitation's and the benchmark's own: how much something else "
    "running on the machine competed with that run (kernel writeback counts here too).",
]


# -- charts -------------------------------------------------------------------------------------


def write_charts(
    opts: Options, summaries: dict[str, Summary], results: list[RunResult], model_bytes: int
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts.charts_dir.mkdir(parents=True, exist_ok=True)
    charts = []
    ok = [s for s in summaries.values() if s.ok]
    if ok:
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
        names = [s.name for s in ok][::-1]
        speeds = [s.mb_s for s in ok][::-1]
        colors = ["tab:green" if n.startswith("native") else "tab:gray" for n in names]
        bars = ax.barh(names, speeds, color=colors)
        ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
        ax.set_xlabel("MB/s end to end (median)")
        ax.set_title(f"End to end, {model_bytes / GIB:.3g} GiB model")
        ax.margins(x=0.15)
        fig.tight_layout()
        path = opts.charts_dir / "throughput.png"
        fig.savefig(path)
        plt.close(fig)
        charts.append(path)
    scaling = sorted(
        (r for r in results if r.label == "scaling" and r.ok), key=lambda r: r.size_bytes
    )
    if scaling:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3), dpi=90)
        sizes = [r.size_bytes / GIB for r in scaling]
        ax1.plot(sizes, [r.wall for r in scaling], "o-", color="tab:green", label="measured")
        fit = linear_fit(scaling)
        if fit:
            ends = [0, max(sizes)]
            ax1.plot(
                ends, [fit[1] + fit[0] * x for x in ends], ":", color="gray", label="linear fit"
            )
            ax1.legend(fontsize=8)
        ax1.set_xlabel("model GiB")
        ax1.set_ylabel("wall s")
        ax1.set_title("native: time vs size")
        ax1.set_ylim(bottom=0)
        ax1.set_xlim(left=0)
        ax2.plot(sizes, [r.peak_rss / MB for r in scaling], "o-", color="tab:blue")
        ax2.axhline(200, color="tab:red", linestyle="--", linewidth=1, label="200 MB target")
        ax2.set_xlabel("model GiB")
        ax2.set_ylabel("peak RSS MB")
        ax2.set_title("native: memory vs size")
        ax2.set_ylim(0, 250)
        ax2.set_xlim(left=0)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        path = opts.charts_dir / "scaling.png"
        fig.savefig(path)
        plt.close(fig)
        charts.append(path)
    return charts


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    for tool in ("docker-registry", "curl"):
        if not shutil.which(tool):
            print(f"bench: {tool} is required", file=sys.stderr)
            return 2
    problems = ensure_python_packages(("matplotlib", "olot"), opts.install)
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="modelcar-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(opts, workdir.resolve())
    profile: list[ProfileRow] = []
    try:
        model = bench.model(opts.size_gib)
        bench.main_rounds(model)
        if NATIVE in opts.contenders:
            bench.repush(model)
            profile = run_profile(bench, model)
            bench.scaling(model)
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    main_runs = [r for r in bench.results if r.label.startswith("round")]
    summaries = {n: summarize(n, [r for r in main_runs if r.contender == n]) for n in CONTENDERS}
    charts: list[Path] = []
    if "matplotlib" in problems:
        bench.notes.append(f"No charts: matplotlib {problems['matplotlib']}.")
    else:
        charts = write_charts(opts, summaries, bench.results, model.total_bytes)
    if bench.waited > 5:
        bench.notes.append(
            f"The machine was shared: {bench.waited:.0f} s were spent waiting for other work "
            "to go idle before runs (`--quiet-wait`)."
        )
    busy = [r for r in bench.results if r.foreign_cpu > 1.0]
    if busy:
        bench.notes.append(
            f"{len(busy)} of {len(bench.results)} runs shared the machine with other work "
            f"(> 1 CPU-s of other processes, up to {max(r.foreign_cpu for r in busy):.1f} s): "
            "see `other CPU s` in the per-run table."
        )
    if opts.rounds < 3:
        bench.notes.append(f"Only {opts.rounds} round(s): medians are single runs.")
    minutes = bench.elapsed_min()
    write_markdown(
        opts, machine_info(), model, summaries, bench.results, profile, charts, bench.notes,
        minutes,
    )  # fmt: skip
    print(f"bench: wrote {opts.out} in {minutes:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
