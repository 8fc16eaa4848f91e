"""What a run costs, read from /proc and the file system: CPU seconds, peak RSS of a process
tree, peak extra disk, and how busy the rest of the machine is."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

SAMPLE_INTERVAL = 0.1
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) * 1024
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0
