"""In-plane sampling grids, oversampling and perturbation (RELION's ``HealpixSampling``)."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core.sampling import (
    coarse_sample_index, fine_sample_index, make_sampling, n_psi_samples, perturbation_for_iteration,
    with_perturbation,
)


def test_gui_counts():
    # GUI psi 6 deg with oversampling 1 -> --psi_step 12 -> 30 coarse, 60 fine psis
    s = make_sampling(12.0, offset_range_px=5, offset_step_px=2, oversampling=1)
    assert s.n_psi_coarse == 30 and s.n_psi_fine == 60
    assert s.n_trans_coarse == 21 and s.n_trans_fine == 84
    assert s.fine_psi_deg().shape == (30, 2)
    assert s.fine_translations_px().shape == (21, 4, 2)


def test_psi_rounding_to_32():
    assert n_psi_samples(12.0) == 30
    assert n_psi_samples(12.0, round_to_32=True) == 32
    assert n_psi_samples(7.0) == 52
    s = make_sampling(12.0, 5, 2, round_psi_to_32=True)
    assert s.n_psi_coarse == 32 and s.psi_step_deg == pytest.approx(360 / 32)


def test_fine_positions_and_wrap():
    s = make_sampling(12.0, 5, 2, oversampling=1)
    fine = s.fine_psi_deg()
    assert np.allclose(fine[0], [-3.0, 3.0])      # 0 -> 0 - 6 + 3 = -3, +3
    assert np.allclose(fine[1], [9.0, 15.0])
    assert np.allclose(fine[15], [177.0, -177.0])  # 183 wraps to -177
    assert fine.max() <= 180.0 and fine.min() > -180.0
    t = s.fine_translations_px()
    coarse = s.coarse_translations_px()
    centre = int(np.flatnonzero((coarse == 0).all(axis=1))[0])
    # x outer, y inner; children at t - step/2 + (i + 0.5) step/2
    assert np.allclose(t[centre], [[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    assert np.allclose(t.mean(axis=1), coarse)


def test_translation_disc():
    s = make_sampling(10.0, 5, 2, oversampling=0)
    c = s.coarse_translations_px()
    assert len(c) == 21
    assert np.all((c ** 2).sum(1) < 25 + 0.001)
    assert len(np.unique(c, axis=0)) == 21
    assert make_sampling(10.0, 6, 2).n_trans_coarse == 29  # CLI default range 6, step 2


def test_perturbation_shifts_everything():
    s = make_sampling(12.0, 5, 2, oversampling=1)
    p = with_perturbation(s, 0.3)
    assert np.allclose(p.coarse_psi_deg() - s.coarse_psi_deg(), 0.3 * 12.0)
    assert np.allclose(p.fine_psi_deg() - s.fine_psi_deg(), 0.3 * 12.0)
    assert np.allclose(p.fine_translations_px() - s.fine_translations_px(), 0.3 * 2.0)


def test_perturbation_reproducible_and_bounded():
    vals = [perturbation_for_iteration(7, it, 0.5) for it in range(1, 30)]
    assert all(-0.5 <= v <= 0.5 for v in vals)
    assert len(set(np.round(vals, 12))) > 20
    assert perturbation_for_iteration(7, 12, 0.5) == vals[11]
    assert perturbation_for_iteration(7, 0, 0.5) == 0.0
    assert perturbation_for_iteration(8, 12, 0.5) != vals[11]
    # each step moves by U(0.25, 0.5) modulo the wrap
    d = np.diff([0.0] + vals)
    d = np.where(d < 0, d + 1.0, d)
    assert np.all((d >= 0.25 - 1e-12) & (d <= 0.5 + 1e-12))


def test_flat_ordering():
    s = make_sampling(60.0, 1, 1, oversampling=1)  # 6 psis, 5 translations
    assert coarse_sample_index(1, 2, 3, s) == (1 * 6 + 2) * 5 + 3
    assert fine_sample_index(7, 1, 2, s) == 7 * 8 + 4 * 1 + 2
