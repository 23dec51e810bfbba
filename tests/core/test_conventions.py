"""RELION's psi and origin conventions (RELION's ``Euler_angles2matrix``, ``Projector::rotate2D``, ``shiftImageInFourierTransform``): image(u) ≈ class(R(psi)·(u + o))."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emclass2d.core.backend import to_host
from emclass2d.core.estep import expectation_batch, prepare_iteration
from emclass2d.core.model import Model, Settings
from emclass2d.core.sampling import make_sampling

N = 32


def _class(x, y):
    """Asymmetric smooth class: no rotational or mirror symmetry."""
    return (np.exp(-((x - 4) ** 2 / 10 + (y - 1) ** 2 / 4)) + 0.7 * np.exp(-((x + 2) ** 2 + (y + 5) ** 2) / 5)
            - 0.4 * np.exp(-((x + 5) ** 2 + (y - 5) ** 2) / 3))


@pytest.mark.parametrize("psi,origin,old", [(42.5, (1.25, -0.75), (0.0, 0.0)), (-117.5, (-2.25, 1.75), (-1.6, 1.2))])
def test_particle_gets_relion_psi_and_origin(xp, particle_batch, psi, origin, old):
    c = np.arange(N) - N // 2
    y, x = np.meshgrid(c, c, indexing="ij")  # x = column, y = row, origin at the box centre
    a = np.deg2rad(psi)
    ux, uy = x + origin[0], y + origin[1]
    img = _class(np.cos(a) * ux - np.sin(a) * uy, np.sin(a) * ux + np.cos(a) * uy)  # class(R(psi)(u + o))
    ref = _class(x, y)
    other = _class(-x, y)  # mirrored decoy class
    model = Model.empty(2, N, 1.5, xp=xp)
    model = dataclasses.replace(model, references=xp.asarray(np.stack([other, ref]).astype(np.float32)),
                                sigma2_noise=xp.full((1, N // 2 + 1), 1e-5), current_size=N, coarse_size=N,
                                sigma2_offset_A2=400.0)
    settings = Settings(do_ctf=False, zero_mask=True, particle_diameter_A=44.0)
    samp = make_sampling(10.0, 3.0, 1.0, oversampling=1)  # fine psi 2.5 + 5i, fine offsets ±0.25
    batch = particle_batch(xp.asarray(img[None].astype(np.float32)), xp=xp, origin_px=xp.asarray(np.array([old])))
    setup = prepare_iteration(model, settings, samp, iteration=1)
    _, res = expectation_batch(batch, model, settings, setup)
    assert int(res.class_index[0]) == 1
    assert float(res.psi_deg[0]) == pytest.approx(psi)
    assert np.allclose(to_host(res.origin_px[0]), origin)
    assert float(res.pmax[0]) > 0.99
