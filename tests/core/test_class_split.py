"""Class splitting: aligned particles of a class mixing two views split along the views."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core.center import translate_images
from emclass2d.core.class_split import (class_frame_images, split_features, split_gain, subset_averages, subset_sums,
                                        two_way_split)
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid
from emclass2d.core.initial import rotated_defocus_angle
from emclass2d.core.metrics import adjusted_rand_index
from emclass2d.core.simulate import simulate_particles

BOX, PX, SHELL = 64, 3.0, 12


def _class_of(views: int, weights, seed: int, n: int = 400, snr: float = 0.1):
    sim = simulate_particles(n=n, box=BOX, pixel_size_A=PX, n_views=views, view_weights=weights, snr=snr,
                             junk_fraction=0.0, seed=seed, n_micrographs=10)
    t = sim.truth
    origin = t[["origin_x_px", "origin_y_px"]].to_numpy()
    psi = t["psi_deg"].to_numpy()
    fx, fy = frequency_grid(BOX, PX)
    o = sim.optics
    args = (o["voltage_kV"], o["cs_mm"], o["amplitude_contrast"])
    ctf = compute_ctf(fx, fy, t.defocus_u_A.to_numpy(), t.defocus_v_A.to_numpy(), t.defocus_angle_deg.to_numpy(), *args)
    ctf_rot = compute_ctf(fx, fy, t.defocus_u_A.to_numpy(), t.defocus_v_A.to_numpy(),
                          rotated_defocus_angle(t.defocus_angle_deg.to_numpy(), psi), *args)
    aligned = class_frame_images(sim.images, origin, psi)
    everyone = np.ones(len(t), dtype=bool)
    reference = subset_averages(subset_sums(translate_images(sim.images, origin), ctf_rot, psi, everyone), SHELL)[0]
    feats = split_features(aligned, ctf_rot, reference, radius_px=BOX * 0.35, max_shell=SHELL, seed=seed)
    return sim, feats, origin, psi, ctf_rot


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_class_of_two_views_splits_along_the_views(seed):
    sim, feats, origin, psi, ctf_rot = _class_of(2, [1.0, 0.5], seed)
    assert split_gain(*feats) > 1.5
    group = two_way_split(feats[0], seed=seed)
    ari = adjusted_rand_index(sim.truth["view"].to_numpy(), group)
    assert ari > 0.8
    # each subset's CTF-corrected average looks like its own view, not the other
    refs = subset_averages(subset_sums(translate_images(sim.images, origin), ctf_rot, psi, group), SHELL)
    views = sim.view_projections
    first = int(np.bincount(sim.truth["view"].to_numpy()[group]).argmax())
    corr = lambda a, b: float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert corr(refs[0], views[first]) > corr(refs[0], views[1 - first])
    assert corr(refs[1], views[1 - first]) > corr(refs[1], views[first])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_class_of_one_view_is_not_heterogeneous(seed):
    _, feats, *_ = _class_of(1, [1.0], seed)
    assert split_gain(*feats) < 1.5


def test_pure_noise_gain_is_one():
    rng = np.random.default_rng(0)
    gains = [split_gain(rng.normal(size=(400, 600)), rng.normal(size=(400, 600))) for _ in range(5)]
    assert 0.9 < np.mean(gains) < 1.1
