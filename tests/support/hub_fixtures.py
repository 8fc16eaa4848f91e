"""pytest fixtures of the Hub imitation. They live apart from hubsim.py so that the
benchmark can import HubSim without pytest installed; conftest.py registers this module
in pytest_plugins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hubsim import HubSim
from tests.support.models import REPO, model_files


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSim]:
    """A running HubSim; HF_ENDPOINT points at it (pass `endpoint=hub.endpoint` explicitly too,
    huggingface_hub reads HF_ENDPOINT only at import time)."""
    sim = HubSim().start()
    monkeypatch.setenv("HF_ENDPOINT", sim.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def hub_repo(hub: HubSim) -> HubSim:
    """The Hub imitation holding ``REPO`` with ``model_files()`` (tests.support.models)."""
    hub.add_repo(REPO, model_files())
    return hub
