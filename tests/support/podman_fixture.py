"""A function-scoped private podman (tests/support/podman.py's ``make_podman``) under a
short temporary directory: podman refuses a runroot longer than 50 characters, which
pytest's tmp_path often is. Import the fixture by name: ``from
tests.support.podman_fixture import podman``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.podman import Podman, make_podman, podman_available


@pytest.fixture
def podman() -> Iterator[Podman]:
    why = podman_available()
    if why:
        pytest.skip(why)
    top = Path(tempfile.mkdtemp(prefix="mc-pm-"))
    pm = make_podman(top)
    yield pm
    pm.close()
    shutil.rmtree(top, ignore_errors=True)
