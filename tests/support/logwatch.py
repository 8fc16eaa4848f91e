"""Acting on what the tool logs, at the moment it logs it: a test restarts a server on the
client's Nth retry line, so it proves the retry window (not the quick attempts) kept the
client going, with no clock involved."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def on_nth_warning(
    logger_name: str, needle: str, n: int, action: Callable[[], object]
) -> Iterator[list[str]]:
    """Collect the lines of ``logger_name`` (WARNING and up) that contain ``needle``;
    run ``action`` when the ``n``-th arrives. Yields the collected lines."""
    lines: list[str] = []

    class OnNth(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if needle in message:
                lines.append(message)
                if len(lines) == n:
                    action()

    handler = OnNth(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
