"""RELION's "Allow coarser sampling?" rule (RELION's ``MlOptimiser::calculateExpectedAngularErrors``), checked with hand-computed steps."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from emclass2d.core.model import Model, Settings
from emclass2d.core.sampling import make_sampling
from emclass2d.jobtypes.class2d.step import RunState, current_sampling


def _state(acc_rot, acc_trans_A, allow=True, k=3, px=2.0):
    model = Model.empty(n_classes=k, box=32, pixel_size_A=px)
    model = replace(model, accuracy_rot_deg=np.asarray(acc_rot, float), accuracy_trans_A=np.asarray(acc_trans_A, float))
    base = make_sampling(12.0, 5.0, 2.0, oversampling=1)  # GUI: psi 6 -> coarse 12 deg, step 1 -> coarse 2 px
    return RunState(model=model, table=None, sampling=base, settings=Settings(), root="r", start_iteration=1,
                    random_seed=0, allow_coarser=allow)


def test_coarser_steps_follow_the_best_accuracies():
    # best psi accuracy 10 deg -> 0.8*10*2 = 16 deg -> 360/ceil(360/16) = 360/23
    # best translation 3 Å = 1.5 px -> 0.8*1.5*2 = 2.4 px (between 2 and 0.95*5)
    s = current_sampling(_state([10.0, 25.0, 999.0], [3.0, 6.0, 999.0]))
    assert np.isclose(s.psi_step_deg, 360.0 / 23)
    assert np.isclose(s.offset_step_px, 2.4)
    assert s.offset_range_px == 5.0 and s.oversampling == 1


def test_never_finer_than_requested_nor_beyond_the_range():
    s = current_sampling(_state([1.0, 2.0, 3.0], [0.5, 1.0, 1.0]))  # accurate: keep the requested grid
    assert np.isclose(s.psi_step_deg, 12.0) and np.isclose(s.offset_step_px, 2.0)
    s = current_sampling(_state([5.0, 5.0, 5.0], [20.0, 20.0, 20.0]))  # 0.8*10*2 = 16 px -> capped at 4.75
    assert np.isclose(s.offset_step_px, 0.95 * 5.0)


def test_off_unknown_accuracies_or_one_class_keep_the_requested_grid():
    base = make_sampling(12.0, 5.0, 2.0, oversampling=1)
    for state in (_state([10.0] * 3, [3.0] * 3, allow=False), _state([999.0] * 3, [999.0] * 3),
                  _state([10.0], [3.0], k=1)):
        assert current_sampling(state) == base
