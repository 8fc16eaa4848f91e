"""How a download from the Hub is run: the options every road of bytes takes (the disk
path, ``--stream``), with their defaults."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TextIO

CHUNK = 1024 * 1024
SEGMENT_SIZE = 64 * CHUNK  # a file of at least two segments is fetched over several connections
MIN_SEGMENT = 8 * CHUNK  # smaller segments for mid-size files, so each gets every connection
DEFAULT_CONNECTIONS = 16
READ_TIMEOUT = 60.0  # seconds without a byte before a request is given up


@dataclass(frozen=True)
class FetchOptions:
    attempts: int = 5
    jobs: int = 4  # files downloaded in parallel
    connect_timeout: float = 10.0
    read_timeout: float = READ_TIMEOUT
    backoff_max: float = 30.0
    progress_stream: TextIO | None = None
    progress_interval: float | None = None
    connections: int = DEFAULT_CONNECTIONS  # HTTP connections to the Hub, all files together
    segment_size: int = SEGMENT_SIZE  # Range segment of a multi-connection download
    # Set by whoever runs the download in the background and no longer needs it (the
    # engine failed): workers stop at the next chunk; what is on disk stays for a rerun.
    cancel: threading.Event | None = None

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()
