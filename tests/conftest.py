"""Shared fixtures: ``xp`` runs a core test on numpy and, when a GPU is present, on cupy;
``particle_batch`` builds a :class:`~emclass2d.core.batch.ParticleBatch` (:mod:`builders`).

The tests are grouped by package: ``core/``, ``nodes/``, ``jobtypes/``, and ``e2e/`` for
whole jobs run as a user runs them. Helpers shared by several folders (``builders``,
``fixture_paths``, ``echo_plugin``, ``ccpem_env``) live here, on ``sys.path``.

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


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """Array module under test; the cupy case is skipped without a CUDA device."""
    if request.param == "numpy":
        return np
    cp = cupy_or_none()
    if cp is None:
        pytest.skip("no GPU: CuPy backend not tested here")
    return cp


@pytest.fixture
def particle_batch():
    """``particle_batch(images, xp=np, **fields)``: a ParticleBatch with neutral defaults (see :mod:`builders`)."""
    return _particle_batch
