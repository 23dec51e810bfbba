"""Class-ranker features against hand-computed values on small synthetic images."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from emclass2d.core import ranker_features as rf
from emclass2d.core.accuracy import class_average_accuracies
from emclass2d.core.mask import radius_map


def _disc(n: int, radius: float, value: float = 1.0) -> np.ndarray:
    return np.where(radius_map(n, dtype=np.float64) <= radius, value, 0.0)


def test_moments_match_population_formulas():
    x = np.random.default_rng(0).gamma(2.0, size=500)
    m = rf.moments(x)
    assert m["sum"] == pytest.approx(x.sum())
    assert m["mean"] == pytest.approx(x.mean())
    assert m["stddev"] == pytest.approx(x.std(ddof=0))
    assert m["skew"] == pytest.approx(stats.skew(x, bias=True))
    assert m["kurt"] == pytest.approx(stats.kurtosis(x, fisher=False, bias=True))
    assert rf.moments(np.array([])) == {"sum": 0.0, "mean": 0.0, "stddev": 0.0, "skew": 0.0, "kurt": 0.0}


def test_feature_box_and_fourier_resize_keep_values():
    assert rf.feature_box_size(64, 3.0) == 48
    assert rf.feature_box_size(100, 1.06) == 26   # round(26.5) = 26, already even
    assert rf.feature_box_size(90, 2.0) == 46     # 45 made even
    const = np.full((64, 64), 2.5)
    np.testing.assert_allclose(rf.fourier_resize(const, 48), 2.5, atol=1e-5)
    # A band-limited image survives a round trip 64 -> 96 -> 64.
    y, x = np.mgrid[0:64, 0:64]
    img = np.cos(2 * np.pi * 3 * x / 64) + np.sin(2 * np.pi * 5 * y / 64)
    back = rf.fourier_resize(rf.fourier_resize(img, 96), 64)
    np.testing.assert_allclose(back, img, atol=1e-4)


def test_protein_mask_disc_scattered_and_ignored_islands():
    n, R = 48, 20.0
    lp = _disc(n, 6.0)
    # island A: 2x2 block inside the 0.6R disc (r ~ 10 < 12) but far from the disc -> scattered
    lp[24 + 9:24 + 11, 24:26] = 1.0
    # island B: 2x2 block at r ~ 16 (outside 0.6R, inside R) -> never seeded, ignored
    lp[24 - 17:24 - 15, 24:26] = 1.0
    protein, solvent, n_scattered = rf.protein_solvent_masks(lp, R)
    assert protein.sum() == int((radius_map(n, dtype=np.float64) <= 6.0).sum())
    assert n_scattered == 4
    disc = radius_map(n, dtype=np.float64) <= R
    assert solvent.sum() == disc.sum() - protein.sum()
    assert not (protein & solvent).any()


def test_small_central_island_is_scattered_not_protein():
    n, R = 48, 20.0
    # 10 % of the 0.6R disc is 0.1*pi*144 = 45.2 px; a disc of radius 3 (29 px) is too small.
    protein, _, n_scattered = rf.protein_solvent_masks(_disc(n, 3.0), R)
    assert protein.sum() == 0 and n_scattered == int((radius_map(n, dtype=np.float64) <= 3.0).sum())


def test_granulometry_hand_values():
    img = np.zeros((15, 15))
    img[6:9, 6:9] = 1.0                       # 3x3 square
    g = rf.granulometry(img, radii_px=(1, 2))
    assert g[0] == pytest.approx(5.0)         # only the plus-shaped disc of radius 1 fits
    assert g[1] == pytest.approx(0.0)
    disc3 = _disc(21, 3.0)                    # 29 pixels
    g = rf.granulometry(disc3, radii_px=(3, 4))
    assert g[0] == pytest.approx(29.0) and g[1] == pytest.approx(0.0)
    # Border pixels are ignored: a constant image stays constant under opening.
    np.testing.assert_allclose(rf.granulometry(np.full((12, 12), 2.0), radii_px=(1, 6)), 288.0)


def test_class_image_features_of_a_disc():
    # 4 A/px already: no resize. Mask diameter 160 A -> R = 20 px.
    img = _disc(48, 10.0, 3.0) + np.random.default_rng(1).normal(0, 0.01, (48, 48))
    f = rf.class_image_features(img, pixel_size_A=4.0, particle_diameter_A=160.0)
    assert f["box_px"] == 48 and f["radius_px"] == pytest.approx(20.0)
    # The 25 A low-pass spreads the edge by ~2 px and the threshold is 0.05 sd: radius 10..13 px.
    assert math.pi * 10**2 < f["protein_area"] < math.pi * 13**2
    assert f["edge_signal"] == 0.0 and f["scattered_signal"] == 0.0
    assert f["ring_mean"] == pytest.approx(0.0, abs=0.05)
    assert f["protein_mean"] > 1.5 and abs(f["solvent_mean"]) < 0.5
    assert f["relative_signal_intensity"] == pytest.approx(
        f["protein_sum"] - f["solvent_mean"] * f["protein_area"])
    # A disc filling the mask: protein covers every pixel of the edge ring inside the disc R.
    f2 = rf.class_image_features(_disc(48, 22.0, 3.0), 4.0, 160.0)
    r = radius_map(48, dtype=np.float64)
    ring = np.rint(r) == 20
    assert f2["edge_signal"] == pytest.approx((ring & (r <= 20)).sum() / ring.sum())


def test_resolution_from_ssnr_and_metadata_features():
    ssnr = np.array([100.0, 50.0, 5.0, 0.5, 2.0, 0.1])
    assert rf.resolution_from_ssnr(ssnr, 64, 3.0) == pytest.approx(64 * 3.0 / 2)
    assert rf.resolution_from_ssnr(np.full(10, 5.0), 64, 3.0) == pytest.approx(6.0)
    m = rf.class_metadata_features(0.2, 150, 10.0, 1.5, 0.9, 64, 3.0)
    assert m["weighted_resolution"] == pytest.approx((1 / 100.0) / math.log(150))
    assert m["relative_resolution"] == pytest.approx(10.0 / 192.0)
    small = rf.class_metadata_features(0.01, 50, 20.0, 999.0, 999.0, 64, 3.0)
    assert (small["accuracy_rotation_deg"], small["accuracy_translation_A"]) == (5.0, 8.0)


def test_class_average_accuracies_worsen_with_noise():
    rng = np.random.default_rng(2)
    img = np.zeros((48, 48))
    img[18:30, 20:26] = 1.0
    img += rng.normal(0, 0.01, img.shape)
    ctf2 = np.full((48, 25), 0.5)
    good = class_average_accuracies(img, ctf2, np.full(25, 1e-5), 2.0)
    bad = class_average_accuracies(img, ctf2, np.full(25, 1e-3), 2.0)
    assert 0 < good[0] < bad[0] <= 30 and 0 < good[1] < bad[1] <= 20


def test_normalized_vector_fixed_and_local_parts():
    keys = rf.VECTOR_FEATURES
    feats = [{k: float(i + j) for j, k in enumerate(keys)} for i in range(3)]
    v = rf.normalized_vectors(feats)
    assert v.shape == (3, 24)
    assert v[0, 0] == pytest.approx((0.0 - 4.352) / 4.759)
    assert v[1, 15] == pytest.approx((16.0 - 837.576) / 1958.823)
    local = np.array([f["protein_sum"] for f in feats])
    np.testing.assert_allclose(v[:, 21], (local - local.mean()) / local.std())
    same = [dict(feats[0]) for _ in range(3)]
    assert np.all(rf.normalized_vectors(same)[:, 21:] == 0.0)
