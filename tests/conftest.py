"""Shared fixtures. Real components only: each support module starts its service on
127.0.0.1 and stops it by pid."""

import os

# Nothing in the tests may reach the real Hub: set before huggingface_hub is imported.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)

pytest_plugins = [
    "tests.support.hub_fixtures",
    "tests.support.registry",
    "tests.support.proxy",
]
