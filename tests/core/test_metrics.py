"""Adjusted Rand index and class-to-view matching."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core.center import rotate_images, translate_images
from emclass2d.core.metrics import adjusted_rand_index, class_view_scores, contingency_table


def test_identical_partitions_give_one_whatever_the_labels() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 2])
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)
    assert adjusted_rand_index(a, np.array([5, 5, 9, 9, 1, 1, 1])) == pytest.approx(1.0)
    assert adjusted_rand_index(["x", "x", "y"], [2, 2, 7]) == pytest.approx(1.0)


def test_hand_computed_example() -> None:
    # Contingency [[2, 1, 0], [0, 1, 2]]: sum C(nij,2) = 2, rows 6, columns 3, C(6,2) = 15,
    # expected = 6*3/15 = 1.2, max = 4.5 -> ARI = 0.8/3.3.
    a = [0, 0, 0, 1, 1, 1]
    b = [0, 0, 1, 1, 2, 2]
    assert contingency_table(a, b).tolist() == [[2, 1, 0], [0, 1, 2]]
    assert adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(b, a) == pytest.approx(0.8 / 3.3)


def test_random_labels_score_near_zero_and_lengths_checked() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, 20000)
    b = rng.integers(0, 10, 20000)
    assert abs(adjusted_rand_index(a, b)) < 0.01
    with pytest.raises(ValueError):
        adjusted_rand_index([0, 1], [0])


def test_class_view_scores_find_rotated_shifted_view() -> None:
    n = 32
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    views = np.stack([
        np.exp(-((x - 5) ** 2 / 8 + y**2 / 30)) + 0.5 * np.exp(-((x + 4) ** 2 + (y - 4) ** 2) / 6),
        np.exp(-(x**2 + y**2) / 40),
        np.exp(-((x + 3) ** 2 + (y + 6) ** 2) / 5) + np.exp(-((x - 6) ** 2 + (y - 1) ** 2) / 9),
    ]).astype(np.float32)
    classes = translate_images(rotate_images(views[[2, 0]], np.array([40.0, -115.0])), np.array([[2.0, -1.0], [0.0, 3.0]]))
    scores = class_view_scores(classes, views, angle_step_deg=5.0)
    assert scores.shape == (2, 3)
    assert scores[0].argmax() == 2 and scores[1].argmax() == 0
    assert scores[0, 2] > 0.97 and scores[1, 0] > 0.97


def test_purity_and_views_found_tell_a_split_from_a_merge() -> None:
    from emclass2d.core.metrics import class_purity, views_found

    truth = np.array([0] * 6 + [1] * 4 + [2] * 2)
    split = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4])  # view 0 over two classes
    merge = np.array([1] * 6 + [2] * 4 + [2] * 2)  # views 1 and 2 share class 2
    assert class_purity(truth, split) == 1.0
    assert views_found(truth, split) == 3
    assert class_purity(truth, merge) == 10 / 12  # class 2 holds 4 of view 1 and 2 of view 2
    assert views_found(truth, merge) == 1  # class 2 is 4/6 pure
    assert views_found(truth, merge, min_purity=0.6) == 2
    # the adjusted Rand index penalises the harmless split more than the merge here
    assert adjusted_rand_index(truth, split) < adjusted_rand_index(truth, merge) < 1.0
