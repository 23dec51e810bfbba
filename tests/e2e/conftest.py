"""End-to-end tests: whole jobs run as a user runs them (subprocesses, real projects).

Every test here is marked ``slow`` (``-m "not slow"`` leaves them out of a quick run);
the session fixtures that run a Class2D job once are shared by the tests of a file.
"""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
