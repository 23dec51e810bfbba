"""VDAM schedule (RELION's ``MlOptimiser::iterate`` with ``--grad``, ``MlOptimiser::write`` with ``--grad_write_iter``) against values worked out by hand from the formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from emclass2d.core.vdam_schedule import (
    decimal_sigmoid,
    default_subset_sizes,
    make_vdam_schedule,
    minibatch_indices,
    phase_lengths,
)


def hand_sigmoid(x: float, b: float, a: float) -> float:
    # written out independently: 1 / (10^((x - b - a/2) / (a/4)) + 1)
    return 1.0 / (math.pow(10.0, (x - b - 0.5 * a) * 4.0 / a) + 1.0)


def hand_step(it: int) -> float:
    # 200 mini-batches: b = 60, a = int(100/2) = 50; s = 0.3, inflate = 3
    sig = hand_sigmoid(it, 60, 50)
    return 0.9 * sig + 0.3 * (1 - sig)


def hand_tau(it: int) -> float:
    # T = 2, deflate = 2: b = 60, a = int(100/4) = 25
    sig = hand_sigmoid(it, 60, 25)
    return 1.0 * sig + 2.0 * (1 - sig)


@pytest.fixture
def sched20k():
    return make_vdam_schedule(200, 20_000, 50, tau2_fudge=2.0)


def test_phase_lengths_default_and_rescale():
    assert phase_lengths(200)[:3] == (60, 100, 40)
    ini, mid, fin, fi, ff = phase_lengths(200, 0.7, 0.4)  # sum 1.1 > 0.9 -> divide by 1.2
    assert fi == pytest.approx(0.7 / 1.2) and ff == pytest.approx(0.4 / 1.2)
    assert (ini, mid, fin) == (116, 18, 66)  # int(116.67), 200-116-66, int(66.67)
    with pytest.raises(ValueError, match="--grad_ini_frac"):
        phase_lengths(200, 0.0, 0.2)
    with pytest.raises(ValueError, match="--grad_fin_frac"):
        phase_lengths(200, 0.3, 1.0)


def test_default_subset_sizes():
    assert default_subset_sizes(20_000) == (200, 1000)
    assert default_subset_sizes(1_000_000) == (5000, 50000)
    assert default_subset_sizes(50_101) == (250, 2505)  # 250.505 and 2505.05 truncated
    assert default_subset_sizes(10_000_000) == (10000, 100000)
    assert default_subset_sizes(500, 300, 400) == (300, 400)


def test_subset_sizes_20k(sched20k):
    s = sched20k
    assert s.phase_lengths == (60, 100, 40)
    assert [s.subset_size(it) for it in (1, 30, 59, 60)] == [200, 200, 200, 200]
    assert s.subset_size(85) == 200 + round(25 / 100 * 800)  # 400
    assert s.subset_size(100) == 520
    assert s.subset_size(159) == 200 + round(99 / 100 * 800)  # 992
    assert s.subset_size(160) == 1000 and s.subset_size(199) == 1000
    assert s.subset_size(200) == -1  # last iteration: all particles


def test_subset_sizes_1m_and_small_sets():
    s = make_vdam_schedule(200, 1_000_000, 100)
    assert s.subset_size(10) == 5000
    assert s.subset_size(110) == 5000 + 22500
    assert s.subset_size(170) == 50000
    tiny = make_vdam_schedule(100, 500, 4)  # like the RELION fixture: fin 1000 >= 500
    assert (tiny.ini_subset, tiny.fin_subset) == (200, 1000)
    assert tiny.subset_size(10) == 200 and tiny.subset_size(90) == -1
    single = make_vdam_schedule(200, 20_000, 1)
    assert single.subset_size(200) == 1000  # K = 1 keeps the mini-batch at the end


def test_grad_em_iters():
    s = make_vdam_schedule(200, 20_000, 10, grad_em_iters=5)
    assert s.do_grad(195) and s.subset_size(195) == 1000
    assert not s.do_grad(196) and s.subset_size(196) == -1
    assert s.mu_at(196) == 0.0 and s.mu_at(195) == 0.9
    assert s.maximum_significants(195) == 50 and s.maximum_significants(196) == -1
    assert s.writes_files(196) and not s.writes_files(191)
    cc = make_vdam_schedule(200, 20_000, 10, firstiter_cc=True)
    assert not cc.do_grad(1) and cc.subset_size(1) == -1 and cc.do_grad(2)


def test_step_size_3_step(sched20k):
    for it in (0, 10, 30, 55, 60, 70, 85, 90, 100, 110, 120, 160, 200):
        assert sched20k.step_size(it) == pytest.approx(hand_step(it), rel=1e-12)
    assert sched20k.step_size(30) == pytest.approx(0.9, abs=1e-3)
    assert sched20k.step_size(60) == pytest.approx(0.9, abs=0.01)
    assert sched20k.step_size(85) == pytest.approx(0.6, abs=1e-12)
    assert sched20k.step_size(100) == pytest.approx(0.34, abs=0.005)
    assert sched20k.step_size(110) == pytest.approx(0.3, abs=0.01)
    assert sched20k.step_size(150) == pytest.approx(0.3, abs=1e-5)


def test_tau2_fudge_ramp(sched20k):
    for it in (0, 30, 60, 65, 72, 75, 80, 90, 150):
        assert sched20k.tau2_fudge_at(it) == pytest.approx(hand_tau(it), rel=1e-12)
    assert sched20k.tau2_fudge_at(40) == pytest.approx(1.0, abs=1e-3)
    assert sched20k.tau2_fudge_at(72) == pytest.approx(1.45, abs=0.01)
    assert sched20k.tau2_fudge_at(80) == pytest.approx(1.94, abs=0.01)
    assert sched20k.tau2_fudge_at(90) == pytest.approx(2.0, abs=0.01)
    assert sched20k.tau2_fudge_at(72.5) == pytest.approx(1.5)


def test_schemes_plain_custom_and_bad():
    plain = make_vdam_schedule(200, 20_000, 10, stepsize=0.5, stepsize_scheme="plain",
                               tau2_fudge=3, tau2_fudge_scheme="plain")
    assert plain.step_size(1) == 0.5 and plain.tau2_fudge_at(1) == 3
    custom = make_vdam_schedule(200, 20_000, 10, stepsize=0.5, tau2_fudge_scheme="2-step")
    assert custom.step_size(0) == pytest.approx(0.9, abs=1e-3)  # inflate 0.9/0.5
    assert custom.tau2_fudge_at(0) == pytest.approx(2.0, abs=1e-3)  # T=4 default / 2
    assert custom.tau2_fudge_at(200) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="--grad_stepsize_scheme"):
        make_vdam_schedule(200, 20_000, 10, stepsize_scheme="fast")


def test_short_runs_have_no_division_by_zero():
    assert decimal_sigmoid(4, 5, 0) == 1.0
    assert decimal_sigmoid(5, 5, 0) == 0.5
    assert decimal_sigmoid(6, 5, 0) == 0.0
    for nr_iter in range(1, 12):
        s = make_vdam_schedule(nr_iter, 20_000, 5, tau2_fudge=2)
        for it in range(0, nr_iter + 1):
            assert math.isfinite(s.step_size(it)) and math.isfinite(s.tau2_fudge_at(it))
            assert 0.3 - 1e-12 <= s.step_size(it) <= 0.9 + 1e-12
    s = make_vdam_schedule(3, 20_000, 5, tau2_fudge=2)  # ini 0, inbetween 3: a = 0 for T
    assert s.tau2_fudge_at(0) == 1.5 and s.tau2_fudge_at(1) == 2.0


def test_write_centre_replacement_mu(sched20k):
    s = sched20k
    assert [it for it in range(0, 201) if s.writes_files(it)] == list(range(0, 201, 10))
    assert s.writes_files(200)
    every = make_vdam_schedule(25, 20_000, 5, write_every=1)
    assert all(every.writes_files(it) for it in range(26))
    assert s.center_classes_at(1) and s.center_classes_at(159)
    assert not s.center_classes_at(160) and not s.center_classes_at(199)
    assert s.center_classes_at(200) and not s.center_classes_at(100, center_classes=False)
    assert not s.class_replacement_at(100)  # threshold 0: off
    r = make_vdam_schedule(200, 20_000, 50, class_inactivity_threshold=0.1)
    assert [it for it in (60, 61, 159, 160) if r.class_replacement_at(it)] == [61, 159]
    assert s.mu_at(100) == 0.9 and s.mu_at(200) == 0.0
    assert s.maximum_significants(100) == 250
    assert make_vdam_schedule(200, 20_000, 50, maxsig=7).maximum_significants(100) == 7


def test_minibatch_reproducible_sorted_by_optics_group():
    groups = np.random.default_rng(3).integers(1, 4, size=1000)
    a = minibatch_indices(1000, 100, random_seed=42, iteration=7, optics_group=groups)
    b = minibatch_indices(1000, 100, random_seed=42, iteration=7, optics_group=groups)
    c = minibatch_indices(1000, 100, random_seed=42, iteration=8, optics_group=groups)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(a), np.sort(c))
    assert a.size == 100 and np.unique(a).size == 100
    assert np.all(np.diff(groups[a]) >= 0)
    # same members as the first 100 of the permutation, order within a group kept
    perm = np.random.default_rng(49).permutation(1000)[:100]
    np.testing.assert_array_equal(np.sort(a), np.sort(perm))
    np.testing.assert_array_equal(a[groups[a] == 2], perm[groups[perm] == 2])
    full = minibatch_indices(1000, -1, random_seed=42, iteration=7)
    np.testing.assert_array_equal(np.sort(full), np.arange(1000))
    np.testing.assert_array_equal(minibatch_indices(10, 4, random_seed=0, iteration=3), np.arange(4))
    with pytest.raises(ValueError, match="optics_group"):
        minibatch_indices(10, 4, 1, 1, optics_group=np.zeros(3))
