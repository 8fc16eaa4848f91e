"""Shared fixtures. Real components only: each support module starts its service on
127.0.0.1 and stops it by pid."""

import logging
import os

import pytest

# Nothing in the tests may reach the real Hub: set before huggingface_hub is imported.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)
# The tool trusts the CAs OpenSSL's variables name (settings.env_ca_bundle); a machine's
# own (this image sets both to Debian's bundle) would change what every TLS test trusts.
# tests/test_trust.py sets them where it means to.
os.environ.pop("SSL_CERT_FILE", None)
os.environ.pop("SSL_CERT_DIR", None)

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.hub_fixtures",
    "tests.support.registry",
    "tests.support.proxy",
    "tests.support.dockerd",
    "tests.support.podman_store",
    "tests.support.deploy_builder",
]


@pytest.fixture(autouse=True)
def _short_registry_outage_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that answered once is retried for 120 s by default (a rolling restart):
    tests that leave it down on purpose would each wait that long. 5 s keeps the
    behaviour (retried past the quick attempts) at test speed; the window itself is
    tested with explicit RetryPolicy values in test_registry_client.py."""
    monkeypatch.setenv("MODELCAR_REGISTRY_RETRY_WINDOW", "5")


@pytest.fixture(autouse=True)
def _modelcar_logger_restored():
    """Each in-process CLI run gives the "modelcar" logger a handler and stops its
    propagation; undo that after the test so caplog sees the tool's lines in later tests."""
    logger = logging.getLogger("modelcar")
    handlers, propagate, level = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate
    logger.setLevel(level)  # setLevel, not .level =: it also clears the loggers' level cache


# The inner loop (`pytest -m "not slow"`, ~5 min) leaves out every test that runs a daemon
# or builds an image. Marked by what a test uses, not by hand, so a new test that takes a
# registry (every registry fixture starts one through registry_launcher) is slow at once.
_DAEMON_FIXTURES = {"registry_launcher", "base_image", "dockerd"}
_IMAGE_MODULES = {  # build images or start daemons of their own (buildah, podman, dockerd)
    "test_engine_buildah", "test_buildah_overlap", "test_buildah_privilege",
    "test_engine_workstation", "test_deploy_run", "test_deploy_parts", "test_bench_smoke",
    "test_parity", "test_context_buildah",
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if fixtures & _DAEMON_FIXTURES or module in _IMAGE_MODULES:
            item.add_marker(pytest.mark.slow)
