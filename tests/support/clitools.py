"""Run the real `modelcar` CLI in-process and capture what a user would see."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from huggingface_hub import close_session

from modelcar_builder.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        # A process starts with a new huggingface_hub client; so does each in-process
        # run. A run cut off mid-request (a test's timeout) must not leave its pooled
        # connections to a Hub imitation that is gone to the next test.
        close_session()
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_refused(res: Result, code: int) -> None:
    """A refusal as the house prints it: exactly one ``error:`` and one ``hint:`` line on
    stderr, no traceback, the documented exit code."""
    lines = res.err.splitlines()
    assert res.code == code, res.out + res.err
    assert sum(line.startswith("error: ") for line in lines) == 1, res.err
    assert sum(line.startswith("hint: ") for line in lines) == 1, res.err
    assert "Traceback" not in res.err, res.err
