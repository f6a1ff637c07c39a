"""The compose deployment test runs in its own CI step (scripts/test-deploy, 3-5 minutes on the
vfs storage driver), not in the unit suite."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PNP_DEPLOY_TEST") == "1":
        return
    skip = pytest.mark.skip(reason="the compose deployment runs in its own CI step: scripts/test-deploy")
    for item in items:
        if "tests/deploy/" in item.nodeid.replace("\\", "/"):
            item.add_marker(skip)
