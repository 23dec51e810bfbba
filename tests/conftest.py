"""Shared fixtures: ``xp`` runs a core test on numpy and, when a GPU is present, on cupy."""
from __future__ import annotations

import numpy as np
import pytest

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
