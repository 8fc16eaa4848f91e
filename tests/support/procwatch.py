"""Watching the processes a build starts, from /proc, while it runs: a thread that visits
every /proc/<pid> directory over and over until the ``with`` block ends."""

from __future__ import annotations

import threading
from pathlib import Path


class ProcPoller:
    """Subclasses say what to read from each process in ``visit``."""

    interval = 0.005  # short-lived children (buildah runs for milliseconds) must be caught

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def visit(self, proc: Path) -> None:
        raise NotImplementedError

    def _poll(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    self.visit(entry)
            self._stop.wait(self.interval)


class CmdlineWatcher(ProcPoller):
    """Reads every /proc/*/cmdline while a build runs: a secret on any child's argv
    would be world-readable there."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret.encode()
        self.seen: list[str] = []
        self.subcommands: set[str] = set()  # buildah subcommands seen running

    def visit(self, proc: Path) -> None:
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return
        argv = cmdline.decode(errors="replace").split("\0")
        if argv and argv[0].endswith("buildah"):
            self.subcommands.update(a for a in argv[1:] if not a.startswith("-"))
        if self.secret in cmdline:
            self.seen.append(cmdline.decode(errors="replace"))
