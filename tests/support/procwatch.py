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
