"""The contenders: each way of getting the model from its source to a pushed, verified image
(modelcar native / --stream / buildah engine, stock buildah, olot + skopeo, raw curl -T)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
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

from .common import (
    HUB_REPO,
    MODELPACK,
    MULTIARCH,
    NATIVE,
    OLOT,
    OUR_BUILDAH,
    RAW,
    STOCK_BUILDAH,
    STREAM,
)
from .model import Model
from .options import importable
from .services import HubServer, Registry

OCI_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


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


def run_multiarch(ctx: RunContext) -> None:
    """Two manifests (scratch base for both) and an index over the same model layers."""
    modelcar(ctx, str(ctx.model.root), "--engine", "native", "--platform",
             "linux/amd64,linux/arm64")  # fmt: skip


def run_modelpack(ctx: RunContext) -> None:
    modelcar(ctx, str(ctx.model.root), "--engine", "native", "--modelpack")


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
    if not importable("olot"):
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


def all_contenders(raw_jobs: int) -> dict[str, Contender]:
    """Every contender by name; ``raw_jobs`` is how many curl uploads the raw limit runs at
    once (native's --jobs default is 2, and the ceiling must get the same parallelism)."""
    return {
        NATIVE: Contender(NATIVE, run_native),
        STREAM: Contender(STREAM, run_stream),
        OUR_BUILDAH: Contender(OUR_BUILDAH, run_our_buildah),
        STOCK_BUILDAH: Contender(STOCK_BUILDAH, run_stock_buildah, cleanup_stock_buildah),
        OLOT: Contender(OLOT, run_olot),
        RAW: Contender(RAW, lambda ctx: run_raw(ctx, raw_jobs)),
        MULTIARCH: Contender(MULTIARCH, run_multiarch),
        MODELPACK: Contender(MODELPACK, run_modelpack),
    }
