"""Training data of the class score: symmetric and round molecules, truth matching, honest splits."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from emclass2d.core.simulate import make_round_molecule, make_symmetric_molecule, simulate_particles
from emclass2d.jobtypes.select.model import ROTATION_ACCURACY_CAP_DEG, RankerModel, model_inputs
from train_ranker import class2d_job, fit_platt, idealised_job, source_of, split_jobs
from emclass2d.nodes.io.star import read_star
from fixture_paths import RELION5_CLASS2D

FIXTURES = RELION5_CLASS2D
CLEAN = dict(snr=None, apply_ctf=False, normalise=False, junk_fraction=0.0)


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _rotated(img: np.ndarray, deg: float) -> np.ndarray:
    return ndimage.rotate(img.astype(np.float64), deg, reshape=False, order=1)


@pytest.mark.parametrize("order", [3, 6])
def test_symmetric_molecule_top_view_has_cn_symmetry(order):
    mol = make_symmetric_molecule(120.0, order, n_atoms=1200, seed=2)
    views = np.array([[0.0, 0.0], [30.0, 90.0]])
    sim = simulate_particles(n=4, box=48, pixel_size_A=4.0, n_views=2, seed=1, molecule=mol, view_euler_deg=views,
                             **CLEAN)
    top, side = sim.view_projections
    step = 360.0 / order
    assert _cc(_rotated(top, step), top) > 0.93                       # invariant under 360/n (up to interpolation)
    assert _cc(_rotated(top, step / 2), top) < _cc(_rotated(top, step), top) - 0.05  # but not under half of it
    assert _cc(_rotated(side, step), side) < 0.9                      # a side view is not symmetric
    assert sim.molecule is mol and np.allclose(sim.view_euler_deg, views)
    with pytest.raises(ValueError, match="view_euler_deg"):
        simulate_particles(n=4, box=48, n_views=3, seed=1, molecule=mol, view_euler_deg=views, **CLEAN)
    with pytest.raises(ValueError, match="order"):
        make_symmetric_molecule(120.0, 1)


def test_round_molecule_is_a_featureless_disc():
    mol = make_round_molecule(100.0, (1.0, 1.0), n_atoms=3000, seed=0)
    assert np.linalg.norm(mol.coords_A, axis=1).max() <= 50.0 + 1e-9
    sim = simulate_particles(n=4, box=48, pixel_size_A=4.0, n_views=3, seed=1, molecule=mol, **CLEAN)
    for v in sim.view_projections:
        assert _cc(_rotated(v, 37.0), v) > 0.97                       # any in-plane angle looks the same
    # an elongated body seen along z is an ellipse (axes 1 : 0.6): not invariant under 90°
    flat = simulate_particles(n=4, box=48, pixel_size_A=4.0, n_views=1, seed=1, view_euler_deg=np.zeros((1, 2)),
                              molecule=make_round_molecule(100.0, (0.6, 0.6), n_atoms=3000), **CLEAN)
    assert _cc(_rotated(flat.view_projections[0], 90.0), flat.view_projections[0]) < 0.9


def test_default_molecule_unchanged_by_new_options():
    a = simulate_particles(n=20, box=32, n_views=2, seed=3, n_atoms=300, n_micrographs=2)
    b = simulate_particles(n=20, box=32, n_views=2, seed=3, n_atoms=300, n_micrographs=2, molecule=None,
                           view_euler_deg=None)
    assert np.array_equal(a.images, b.images)


def test_idealised_job_has_symmetric_good_views():
    kinds = []
    for seed in (2, 7):  # seeds whose molecule is a Cn ring and a round body (fast data sets)
        feats, labels, ks = idealised_job(seed, fast=True)
        assert len(feats) == len(labels) == len(ks) and set(labels) <= {0, 1}
        assert all(lab == (k in ("view", "sym_view", "mixed", "misaligned")) for lab, k in zip(labels, ks))
        kinds += ks
    assert "sym_view" in kinds


def test_capped_rotation_accuracy_does_not_change_the_score():
    feats, _, _ = idealised_job(2, fast=True)
    model = RankerModel.load()
    poor = [{**f, "accuracy_rotation_deg": ROTATION_ACCURACY_CAP_DEG + 5.0} for f in feats]
    poorer = [{**f, "accuracy_rotation_deg": 30.0} for f in feats]
    np.testing.assert_array_equal(model.predict(model_inputs(poor)), model.predict(model_inputs(poorer)))


def test_class2d_job_labels_classes_by_majority_truth(tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(FIXTURES, proj)
    parts = read_star(proj / "Class2D/job001/run_it025_data.star")["particles"]
    truth = pd.DataFrame({"rlnImageName": parts["rlnImageName"].astype(str),
                          "is_junk": parts["rlnClassNumber"].to_numpy() == 3})
    truth = truth.sample(frac=1.0, random_state=0)       # order must not matter: matched by name
    truth.to_csv(proj / "truth.csv", index=False)
    feats, labels, kinds = class2d_job("Class2D/job001/run_it025_optimiser.star", str(proj / "truth.csv"), str(proj))
    assert labels == [1, 1, 0, 1] and kinds == ["class2d"] * 4 and len(feats) == 4
    truth.iloc[:-1].to_csv(proj / "short.csv", index=False)
    with pytest.raises(ValueError, match="no truth row"):
        class2d_job("Class2D/job001/run_it025_optimiser.star", str(proj / "short.csv"), str(proj))


def test_split_holds_out_whole_jobs_of_each_source():
    jobs = [([{"j": i}], [1], ["view"]) for i in range(10)] + [([{"j": 100 + i}], [0], ["class2d"]) for i in range(5)]
    tr, cal, te = split_jobs(jobs, seed=0)
    ids = [[f[0]["j"] for f, _, _ in part] for part in (tr, cal, te)]
    assert sorted(sum(ids, [])) == sorted([f[0]["j"] for f, _, _ in jobs])     # each job in exactly one part
    for part in (tr, cal, te):
        assert {source_of(j) for j in part} == {"idealised", "class2d"}
    assert sum(source_of(j) == "class2d" for j in te) == 1 and sum(source_of(j) == "idealised" for j in te) == 2


def test_platt_calibration_recovers_a_known_logistic_and_stays_finite_when_separable():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.7 * z - 0.5)))).astype(float)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.7, abs=0.05) and b == pytest.approx(-0.5, abs=0.08)
    sep = np.r_[rng.normal(-8, 1, 50), rng.normal(8, 1, 50)]
    a, b = fit_platt(sep, np.r_[np.zeros(50), np.ones(50)])
    assert 0 < a < 5 and abs(b) < 1      # Platt's smoothed targets (1/52, 51/52) bound the slope
