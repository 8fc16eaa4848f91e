"""Run a function over items on a few worker threads, interruptibly.

concurrent.futures joins its workers on the way out, so a Ctrl-C or a pod's SIGTERM
waits for the slowest download or upload to finish (or time out). These workers are
daemon threads: on an interrupt the main thread leaves at once; partial files and upload
sessions stay behind for the rerun to resume.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


def run_parallel(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``jobs`` threads; results in input order.
    The first exception a worker raises is re-raised here once the others are done."""
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(items)):
        todo.put(i)
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []

    def worker() -> None:
        while not errors:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:
                errors.append(exc)

    threads = [
        threading.Thread(target=worker, daemon=True, name=f"modelcar-worker-{n}")
        for n in range(max(1, min(jobs, len(items))))
    ]
    for t in threads:
        t.start()
    _join(threads)
    if errors:
        raise errors[0]
    return cast(list[R], results)  # no error: every item ran and filled its slot


def _join(threads: Iterable[threading.Thread]) -> None:
    # A join with a timeout lets the main thread take signals (SIGTERM, SIGINT) promptly.
    for t in threads:
        while t.is_alive():
            t.join(0.2)
