"""The services a run talks to: a loopback docker-registry per run and the Hub imitation
(in a child process), both started here and stopped by pid."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port

from .common import HUB_REPO, REPO_ROOT
from .measurement import proc_cpu_seconds, tree_bytes

HTTP_SECRET = "modelcar-bench-http-secret"  # fixed, as the issue asks (resumable uploads)


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
            port = free_port()
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

    def __init__(self, *mode: str) -> None:
        """``mode``: the hidden CLI mode of scripts.bench the child runs (and its
        argument), e.g. ``--serve-hub DIR``; it prints the endpoint, then serves."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __package__, *mode],
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
