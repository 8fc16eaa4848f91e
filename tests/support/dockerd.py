"""A private dockerd (Debian's docker.io) for the tests that need a Docker Engine API:
its own data root, exec root, pidfile and socket under tmp, stopped by its pid. A session
fixture, registered in tests/conftest.py, so any test module can take it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.waiting import wait_until


def wait_socket(sock: Path, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {log.read_text()[-2000:]}")
        if sock.exists():
            with contextlib.suppress(Exception):
                client = docker.DockerClient(base_url=f"unix://{sock}")
                client.ping()
                client.close()
                return True
        return False

    wait_until(answers, lambda: f"no answer on {sock}: {log.read_text()[-2000:]}", seconds, 0.2)


def stop_pid(pid: int, proc: subprocess.Popen | None = None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if proc is not None:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private dockerd (Debian's docker.io): data root, exec root, pidfile and socket
    under tmp; stopped by its pid. Yields its DOCKER_HOST."""
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("dockerd (Debian docker.io) and root are needed")
    # Short paths: a unix socket path is limited to 107 bytes.
    top = Path(tmp_path_factory.mktemp("dockerd"))
    sock = top / "d.sock"
    log = top / "dockerd.log"
    argv = [
        "dockerd", "--data-root", str(top / "data"), "--exec-root", str(top / "exec"),
        "--pidfile", str(top / "d.pid"), "--host", f"unix://{sock}",
        "--iptables=false", "--ip6tables=false", "--bridge=none",
        "--storage-driver=overlay2",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_socket(sock, proc, log)
        yield f"unix://{sock}"
    finally:
        stop_pid(proc.pid, proc)
