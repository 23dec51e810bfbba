"""Shared fixtures: ``xp`` runs a core test on numpy and, when a GPU is present, on cupy;
``particle_batch`` builds a :class:`~emclass2d.core.batch.ParticleBatch` (:mod:`builders`).

The tests are grouped by package: ``core/``, ``nodes/``, ``jobtypes/``, and ``e2e/`` for
whole jobs run as a user runs them. Helpers shared by several folders (``builders``,
``class2d_runs``, ``fixture_paths``, ``echo_plugin``, ``ccpem_env``) live here, on ``sys.path``.

``tools/`` (developer tools, not installed) is put on ``sys.path`` so that tests import
``train_ranker`` as the tool runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
TOOLS = TESTS.parent / "tools"
for _path in (TESTS, TOOLS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from builders import particle_batch as _particle_batch  # noqa: E402  (needs TESTS on sys.path)

from emclass2d.core.backend import cupy_or_none


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``gpu`` are skipped, with the reason shown, where CuPy sees no CUDA device."""
    if item.get_closest_marker("gpu") is not None and cupy_or_none() is None:
        pytest.skip("gpu: needs CuPy and a CUDA device (none visible here)")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Array module under test; the cupy case is marked ``gpu`` (skipped without a CUDA device)."""
    return np if request.param == "numpy" else cupy_or_none()


@pytest.fixture
def particle_batch():
    """``particle_batch(images, xp=np, **fields)``: a ParticleBatch with neutral defaults (see :mod:`builders`)."""
    return _particle_batch
