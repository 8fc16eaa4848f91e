import threading
import time

import pytest

from modelcar_builder.parallel import run_parallel


def test_results_in_input_order_and_really_parallel():
    seen: set[str] = set()

    def work(x: int) -> int:
        seen.add(threading.current_thread().name)
        time.sleep(0.05 * (5 - x))  # later items finish first
        return x * x

    assert run_parallel(work, list(range(5)), jobs=3) == [0, 1, 4, 9, 16]
    assert len(seen) == 3


def test_first_error_is_raised_and_no_new_items_start():
    started: list[int] = []

    def work(x: int) -> int:
        started.append(x)
        if x == 0:
            raise ValueError("boom")
        time.sleep(0.01)
        return x

    with pytest.raises(ValueError, match="boom"):
        run_parallel(work, list(range(50)), jobs=1)
    assert started == [0]


def test_empty_input():
    assert run_parallel(lambda x: x, [], jobs=4) == []
