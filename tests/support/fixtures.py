"""General pytest fixtures shared by test modules (conftest.py registers this module in
pytest_plugins); the Hub's are in hub_fixtures.py, the registry's in registry.py."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace path for the run (not created: the tool makes it)."""
    return tmp_path / "ws"
