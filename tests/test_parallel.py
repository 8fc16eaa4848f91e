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


def test_a_background_download_that_breaks_unexpectedly_wakes_its_waiters(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    """Whatever the download thread raises, the layers waiting for it get an error:
    without an outcome they would wait forever (a hang, not a failure)."""
    from modelcar_builder import run
    from modelcar_builder.errors import ModelcarError
    from modelcar_builder.plan import LayerPlan
    from modelcar_builder.snapshot import FileEntry

    def broken(*_args, **_kwargs):
        raise RuntimeError("not a ModelcarError")

    monkeypatch.setattr(run, "fetch", broken)
    fetch = run.BackgroundFetch(None, None, None, run.FetchOptions(), None)  # type: ignore[arg-type]
    layer = LayerPlan(index=0, name="layer-000", files=(FileEntry("a.bin", 1),))
    done = threading.Event()
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            fetch.wait(layer)
        except ModelcarError as exc:
            caught.append(exc)
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    assert done.wait(60), "the waiter hangs"  # a bound on a hang, not a measure of speed
    assert caught and "not a ModelcarError" in caught[0].message
