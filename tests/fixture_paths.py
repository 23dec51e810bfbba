"""Where the tests find RELION 5's own Class2D outputs: ``shared/`` beside the checkout.

Without them the tests that need them are skipped, except under CI (``CI`` set), where a
missing fixture folder is an error: CI must not pass by skipping.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: RELION 5.0.1 EM (job001) and VDAM (job002) runs on 500 simulated particles.
RELION5_CLASS2D = REPO.parent / "shared" / "fixtures" / "relion5-class2d"

if os.environ.get("CI", "").lower() in ("1", "true", "yes") and not RELION5_CLASS2D.is_dir():
    raise RuntimeError(f"RELION 5 fixtures not found at {RELION5_CLASS2D} (expected shared/ beside the checkout)")
