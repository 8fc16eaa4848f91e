"""The connections to the Hub that every download of a run shares (``--connections``),
handed out in plan order: the earliest file that wants one gets it."""

from __future__ import annotations

import heapq
import threading


class ConnectionBudget:
    """The connections to the Hub all downloads share (``--connections``): every file in
    flight holds one, a multi-connection download takes more while any are free.

    A free connection goes to the earliest file in plan order (its ``rank``) that wants
    one, whether it waits to start or has segments waiting (``want``): layer 0's files
    finish first instead of every shard finishing together at the end, so an engine that
    pushes while the download runs can start on layer 0 early."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self._free = self.total
        self._waiting: list[int] = []  # ranks blocked in acquire(), a heap
        self._wants: set[int] = set()  # ranks with segments waiting for a connection
        self._cond = threading.Condition()

    def _first_in_line(self, rank: int) -> bool:
        if self._waiting and self._waiting[0] < rank:
            return False
        return not any(r < rank for r in self._wants)

    def acquire(self, rank: int = 0) -> None:
        with self._cond:
            heapq.heappush(self._waiting, rank)
            while not (self._free and self._waiting[0] == rank and self._first_in_line(rank)):
                self._cond.wait(0.5)  # a wanting file takes its share by try_acquire
            heapq.heappop(self._waiting)
            self._free -= 1
            self._cond.notify_all()  # the next rank may take the next free one

    def try_acquire(self, rank: int = 0) -> bool:
        """One more connection, unless none is free or an earlier file wants one."""
        with self._cond:
            if not self._free or not self._first_in_line(rank):
                return False
            self._free -= 1
            return True

    def preempted(self, rank: int) -> bool:
        """Should file ``rank`` hand back an extra connection (at a segment's end)?"""
        with self._cond:
            return not self._first_in_line(rank)

    def want(self, rank: int, segments: int) -> None:
        """File ``rank`` has this many segments waiting for a connection (0: none, or
        it is done): later files leave free connections to it."""
        with self._cond:
            if (segments > 0) == (rank in self._wants):
                return  # no change (this runs at every block a file writes)
            if segments > 0:
                self._wants.add(rank)
            else:
                self._wants.discard(rank)
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            if self._free >= self.total:
                raise ValueError("connection released more often than taken")
            self._free += 1
            self._cond.notify_all()
