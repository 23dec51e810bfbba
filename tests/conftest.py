"""Shared fixtures: ``xp`` runs a core test on numpy and, when a GPU is present, on cupy.

``tools/`` (developer tools, not installed) is put on ``sys.path`` so that tests import
``train_ranker`` as the tool runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

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
