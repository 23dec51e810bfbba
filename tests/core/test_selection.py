"""Selection rules (score window, RELION's top-up, value rules) and regrouping."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core import selection as sel


def test_count_particles_from_class_numbers():
    np.testing.assert_array_equal(sel.count_particles(np.array([1, 3, 3, 0, 5, 3]), 4), [1, 0, 3, 0])


def test_select_by_score_window_and_unscored():
    scores = np.array([0.9, 0.5, 0.49, sel.UNSCORED, 0.95])
    np.testing.assert_array_equal(sel.select_by_score(scores, 0.5), [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(sel.select_by_score(scores, 0.5, 0.92), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(sel.select_by_score(scores, -1000.0), [1, 1, 1, 0, 1])


def test_top_up_particles_then_classes_by_decreasing_score():
    scores = np.array([0.9, 0.3, 0.45, sel.UNSCORED, 0.1, 0.44])
    counts = np.array([100, 50, 40, 500, 30, 20])
    keep = sel.select_by_score(scores, 0.5)                       # class 1 only: 100 particles
    # 130 particles needed: add class 3 (0.45, 40) -> 140; unscored class 4 is never added.
    np.testing.assert_array_equal(sel.top_up(keep, scores, counts, min_particles=130), [1, 0, 1, 0, 0, 0])
    # then at least 4 classes: add 0.44 (class 6) and 0.3 (class 2).
    np.testing.assert_array_equal(sel.top_up(keep, scores, counts, 130, 4), [1, 1, 1, 0, 0, 1])
    # minima already met or off: unchanged
    np.testing.assert_array_equal(sel.top_up(keep, scores, counts, 50, -1), keep)
    # cannot be met: everything scored is added, unscored never
    np.testing.assert_array_equal(sel.top_up(keep, scores, counts, 10**6), [1, 1, 1, 0, 1, 1])


def test_value_rules_and_class_numbers():
    np.testing.assert_array_equal(sel.select_by_range([0.1, 0.02, np.nan, 0.3], 0.05), [1, 0, 0, 1])
    np.testing.assert_array_equal(sel.select_by_range([8.0, 12.0, 25.0], None, 12.0), [1, 1, 0])
    np.testing.assert_array_equal(sel.parse_class_numbers("1, 3 5-6", 6), [1, 0, 1, 0, 1, 1])
    for bad in ("0", "7", "a", "4-2"):
        with pytest.raises(sel.SelectionError):
            sel.parse_class_numbers(bad, 6)


def test_compact_group_numbers_and_names():
    np.testing.assert_array_equal(sel.compact_group_numbers([7, 7, 3, 9, 3]), [1, 1, 2, 3, 2])
    assert sel.group_names(np.array([1, 12]), 20) == ["group_01", "group_12"]
    assert sel.group_names(np.array([3]), 5) == ["group_3"]


@pytest.mark.parametrize("nr_groups", [3, 10, 20, 45])
def test_regroup_counts_within_20_percent(nr_groups):
    rng = np.random.default_rng(nr_groups)
    old = rng.integers(1, 61, size=3000)
    optics = np.where(old > 45, 2, 1)
    scale = {g: float(rng.uniform(0.7, 1.3)) for g in range(1, 61)}
    new = sel.regroup(old, optics, scale, nr_groups)
    n_new = np.unique(new).size
    assert abs(n_new - nr_groups) <= 0.2 * nr_groups
    sizes = np.bincount(new)[1:]
    assert sizes.min() >= sel.MIN_GROUP_SIZE
    # Each new group lies within one optics group, and holds particles of similar scale.
    for g in np.unique(new):
        assert np.unique(optics[new == g]).size == 1
    g1 = np.array([scale[int(o)] for o in old[new == 1]])
    assert g1.max() - g1.min() < 0.6


def test_regroup_refuses_groups_under_10():
    old = np.arange(1, 51)
    with pytest.raises(sel.SelectionError, match="at most 5 groups"):
        sel.regroup(old, np.ones(50, int), {}, 6)
    assert np.unique(sel.regroup(old, np.ones(50, int), {}, 5)).size == 5
