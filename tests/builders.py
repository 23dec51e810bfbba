"""Builders of the core's inputs for tests: a :class:`ParticleBatch` from images and the fields a test cares about.

Every field not given gets a neutral value (first particles of group 0 and optics group 0,
no offset, norm 1, a 1 µm defocus at 300 kV, Cs 2.7 mm, 10 % amplitude contrast, no phase
shift, B-factor 0, scale 1, not premultiplied), on the device of ``xp``.

Example::

    batch = particle_batch(images, xp=np, origin_px=np.array([[1.0, -0.5]]))
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from emclass2d.core.batch import ParticleBatch


def particle_batch(images: Any, xp: ModuleType = np, **fields: Any) -> ParticleBatch:
    """A :class:`ParticleBatch` of ``images`` (B, N, N); ``fields`` override the neutral defaults."""
    b = int(images.shape[0])

    def full(value: float, dtype: Any = np.float64) -> Any:
        return xp.asarray(np.full(b, value, dtype=dtype))

    defaults = dict(
        part_index=xp.asarray(np.arange(b, dtype=np.int64)), group=full(0, np.int32), optics_group=full(0, np.int32),
        origin_px=xp.asarray(np.zeros((b, 2))), norm_correction=full(1.0), defocus_u_A=full(1e4),
        defocus_v_A=full(1e4), defocus_angle_deg=full(0.0), phase_shift_deg=full(0.0), ctf_bfactor_A2=full(0.0),
        ctf_scale=full(1.0), voltage_kV=full(300.0), cs_mm=full(2.7), amplitude_contrast=full(0.1),
        ctf_premultiplied=full(False, bool))
    unknown = set(fields) - set(defaults)
    if unknown:
        raise TypeError(f"particle_batch: unknown fields {sorted(unknown)}")
    return ParticleBatch(images=images, **{**defaults, **fields})
