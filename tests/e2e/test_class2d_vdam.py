"""Integration of the VDAM algorithm into the Class2D job (jobtypes/class2d/vdam.py).

The schedule and update numerics have their own tests; here: the files a VDAM run writes
(scheduled iterations only, moment stacks, RELION labels), class replacement, continue
from a written iteration, and agreement with the truth compared with EM.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emclass2d.core.metrics import adjusted_rand_index, class_purity
from emclass2d.core.model import Model
from emclass2d.core.vdam import VdamState
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.core.vdam_maximization import replace_inactive_class
from emclass2d.jobtypes.class2d.vdam import schedule_for
from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
from emclass2d.nodes.files import class2d as c2f
from emclass2d.nodes.io.mrc import read_complex_stack, read_mrcs
from emclass2d.nodes.io.star import read_star
from class2d_runs import run_class2d_in

SMALL = dict(nr_classes=4, particle_diameter=150.0, random_seed=3, psi_sampling=15.0, offset_range=3.0,
             offset_step=1.5, do_em=False, do_grad=True, nr_iter_grad=12, grad_write_iter=4,
             grad_ini_subset=80, grad_fin_subset=240)


@pytest.fixture(scope="module")
def vdam_run(tmp_path_factory):
    """A 12-mini-batch VDAM run on 500 simulated particles (32 px), then continued from it008."""
    project = tmp_path_factory.mktemp("vdam")
    simulate_project_files("Sim", n=500, box=32, pixel_size_A=6.0, n_views=3, snr=0.3, junk_fraction=0.0,
                           n_micrographs=5, seed=5, project_dir=project)
    opts = Class2DOptions(fn_img="Sim/particles.star", **SMALL)
    log = run_class2d_in(project, "Class2D/job001/", opts)
    cont = Class2DOptions(fn_img="Sim/particles.star", fn_cont="Class2D/job001/run_it008_optimiser.star", **SMALL)
    run_class2d_in(project, "Class2D/job001/", cont, is_continue=True)
    return project, project / "Class2D/job001", log


@pytest.mark.slow
def test_vdam_writes_only_scheduled_iterations_with_moments(vdam_run):
    project, job, log = vdam_run
    written = sorted(p.name for p in job.glob("run_it*_optimiser.star"))
    assert written == [f"run_it{i:03d}_optimiser.star" for i in (0, 4, 8, 12)]
    assert any("Mini-batch  12/12" in line for line in log)
    sched = schedule_for(Class2DOptions(fn_img="x", **SMALL), 500, 4)
    for it in (0, 4, 8, 12):
        stem = job / f"run_it{it:03d}"
        opt = c2f.read_optimiser_star(f"{stem}_optimiser.star").general
        assert opt["rlnDoGradientRefine"] is True or opt["rlnDoGradientRefine"] == 1
        assert opt["rlnSgdSubsetSize"] == sched.subset_size(it)
        assert opt["rlnSgdInitialSubsetSize"] == 80 and opt["rlnSgdFinalSubsetSize"] == 240
        assert opt["rlnSgdWriteEverySubset"] == 4
        assert opt["rlnSgdMuFactor"] == pytest.approx(0.9)
        assert opt["rlnSgdClassInactivityThreshold"] == pytest.approx(0.1)
        assert opt["rlnGradCurrentStepsize"] == pytest.approx(sched.step_size(it), abs=1e-6)
        assert opt["rlnMaximumSignificantPoses"] == -1 and opt["rlnTau2FudgeArg"] == pytest.approx(2.0)
        model = c2f.read_model_star(f"{stem}_model.star")
        assert model.moment_stacks == (f"Class2D/job001/run_it{it:03d}_1moment.mrcs",
                                       f"Class2D/job001/run_it{it:03d}_2moment.mrcs")
        assert model.classes["rlnGradMoment1"].iloc[1] == f"00000002@Class2D/job001/run_it{it:03d}_1moment.mrcs"
        assert model.general["rlnTau2FudgeFactor"] == pytest.approx(sched.tau2_fudge_at(it), abs=1e-6)
        m1 = read_complex_stack(f"{stem}_1moment.mrcs")
        m2 = read_complex_stack(f"{stem}_2moment.mrcs")
        assert m1.shape == (8, 64, 33) and m2.shape == (4, 64, 33)  # 2K and K images, pf*N rows
        if it == 0:
            assert not np.any(m1) and np.all(m2.real == 1.0)
        else:
            assert np.any(m1) and np.any(m2.real != 1.0)
    # the last mini-batch is the whole data set: every particle has a fresh assignment
    last = read_star(job / "run_it012_data.star")["particles"]
    assert (last["rlnClassNumber"].to_numpy() > 0).all()
    assert "rlnLogLikeliContribution" in last.columns


@pytest.mark.slow
def test_vdam_continue_reproduces_the_uninterrupted_run(vdam_run):
    project, job, _ = vdam_run
    assert (job / "run_ct8_it008_1moment.mrcs").is_file()
    assert sorted(p.name for p in job.glob("run_ct8_it*_optimiser.star")) == [
        "run_ct8_it008_optimiser.star", "run_ct8_it012_optimiser.star"]
    # the moments read back are those written (float32 round trip is exact)
    np.testing.assert_array_equal(read_complex_stack(job / "run_ct8_it008_1moment.mrcs"),
                                  read_complex_stack(job / "run_it008_1moment.mrcs"))
    a = read_star(job / "run_it012_data.star")["particles"]["rlnClassNumber"].to_numpy()
    b = read_star(job / "run_ct8_it012_data.star")["particles"]["rlnClassNumber"].to_numpy()
    assert np.mean(a == b) >= 0.99
    ca, _ = read_mrcs(job / "run_it012_classes.mrcs")
    cb, _ = read_mrcs(job / "run_ct8_it012_classes.mrcs")
    for k in range(ca.shape[0]):
        if ca[k].std() > 0:
            assert np.corrcoef(ca[k].ravel(), cb[k].ravel())[0, 1] > 0.999


def test_inactive_class_is_replaced_by_a_copy_of_the_largest_error_class():
    rng = np.random.default_rng(0)
    k, n, p = 3, 8, 16
    model = Model.empty(n_classes=k, box=n, pixel_size_A=2.0)
    model = Model(**{**model.__dict__, "references": rng.normal(size=(k, n, n)).astype(np.float32),
                     "pdf_class": np.array([0.6, 0.399, 0.001]), "pdf_direction": np.array([0.6, 0.399, 0.001]),
                     "tau2": rng.random((k, n // 2 + 1)), "data_vs_prior": rng.random((k, n // 2 + 1)),
                     "prior_offset_A": rng.normal(size=(k, 2))})
    shape = (k, p, p // 2 + 1)
    vstate = VdamState(m1_half1=(rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64),
                       m1_half2=(rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64),
                       m2=rng.random(shape).astype(np.float32), m2_updated_r2=np.array([10, 20, 30]))
    from emclass2d.core.vdam import choose_class_replacement

    pair = choose_class_replacement(model.pdf_class, np.array([0.1, 0.5, 0.0]), threshold=0.1)
    assert pair == (2, 1)
    new_model, new_state = replace_inactive_class(model, vstate, *pair)
    np.testing.assert_array_equal(new_model.references[2], model.references[1])
    np.testing.assert_array_equal(new_model.references[:2], model.references[:2])
    assert new_model.pdf_class[2] == pytest.approx(0.399) and new_model.pdf_direction[2] == pytest.approx(0.399)
    np.testing.assert_array_equal(new_model.tau2[2], model.tau2[1])
    np.testing.assert_array_equal(new_model.data_vs_prior[2], model.data_vs_prior[1])
    np.testing.assert_allclose(new_state.m1_half1[2], 0.9 * vstate.m1_half1[1], rtol=1e-6)
    np.testing.assert_array_equal(new_state.m1_half2[2], vstate.m1_half2[1])
    np.testing.assert_array_equal(new_state.m2[2], vstate.m2[1])
    assert new_state.m2_updated_r2[2] == 20
    # the E-step's offset-prior centre (mean offset x pdf_class, RELION's stored value) is kept
    np.testing.assert_allclose(new_model.prior_offset_A[2] * new_model.pdf_class[2],
                               model.prior_offset_A[2] * model.pdf_class[2])
    # an active class (above threshold/K_active) is never dropped
    assert choose_class_replacement(np.array([0.4, 0.3, 0.3]), np.array([0.1, 0.5, 0.0]), 0.1) is None


def _agreement(project: Path, data_star: Path) -> tuple[float, float]:
    """(adjusted Rand index, class purity) of the good particles' classes against their true views."""
    truth = pd.read_csv(project / "Sim/truth.csv")
    d = read_star(data_star)["particles"]
    cls = dict(zip(d["rlnImageName"].astype(str), d["rlnClassNumber"].to_numpy()))
    labels = np.array([cls[n] for n in truth["rlnImageName"].astype(str)])
    good = ~truth["is_junk"].to_numpy()
    views = truth["view"].to_numpy()
    return adjusted_rand_index(views[good], labels[good]), class_purity(views[good], labels[good])


#: Random seeds of the EM/VDAM comparison; the bounds hold for their mean.
COMPARISON_SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def em_and_vdam(tmp_path_factory) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(ARI, purity) of EM and of VDAM per random seed on one 10,000-particle data set.

    64-px particles at 3 Å/px, 6 equally frequent views (no two alike: best mutual
    correlation 0.93), SNR 0.2, 10 % junk; K = 8, EM 10 iterations against VDAM's default
    200 mini-batches (200 to 1,000 particles, then all 10,000), both with a sampling coarser
    than the GUI's (in-plane 12°, offsets 1.5 px) for CI time.
    """
    root = tmp_path_factory.mktemp("vdam_vs_em")
    simulate_project_files("Sim", n=10000, box=64, pixel_size_A=3.0, n_views=6, snr=0.2, junk_fraction=0.1,
                           n_micrographs=50, seed=1, view_weights=[1.0] * 6, project_dir=root)
    em, vdam = [], []
    for i, seed in enumerate(COMPARISON_SEEDS):
        common = dict(fn_img="Sim/particles.star", nr_classes=8, particle_diameter=144.0, random_seed=seed,
                      psi_sampling=12.0, offset_range=3.0, offset_step=1.5, nr_threads=2)
        em_job, vdam_job = f"Class2D/job{2 * i + 1:03d}/", f"Class2D/job{2 * i + 2:03d}/"
        run_class2d_in(root, em_job, Class2DOptions(do_em=True, do_grad=False, nr_iter_em=10, **common))
        run_class2d_in(root, vdam_job, Class2DOptions(do_em=False, do_grad=True, nr_iter_grad=200, **common))
        em.append(_agreement(root, root / em_job / "run_it010_data.star"))
        vdam.append(_agreement(root, root / vdam_job / "run_it200_data.star"))
    print(f"(ARI, purity) per seed: EM {em}, VDAM {vdam}")
    return em, vdam


@pytest.mark.slow
def test_vdam_recovers_views_as_well_as_em_on_10000_particles(em_and_vdam):
    """The VDAM criterion, on the mean over three seeds: ARI at most 0.05 below EM's, purity
    (merging views lowers it, splitting a view over classes does not) at most 0.02 below."""
    em, vdam = em_and_vdam
    ari_em, purity_em = np.mean(em, axis=0)
    ari_vdam, purity_vdam = np.mean(vdam, axis=0)
    assert ari_vdam >= ari_em - 0.05, (vdam, em)
    assert purity_vdam >= purity_em - 0.02, (vdam, em)


@pytest.mark.slow
@pytest.mark.xfail(reason="RELION-behaviour VDAM merges views on some seeds (when written: ARI 0.96 / 0.65 / 0.75, "
                          "purity 0.98 / 0.75 / 0.80 for seeds 1-3; issue: class quality)", strict=False)
def test_vdam_recovers_the_views_on_10000_particles(em_and_vdam):
    """Six clearly distinct, equally frequent views in eight classes: a user expects each view
    in classes of its own (mean purity > 0.9; mean ARI > 0.8 leaves room for one split view)."""
    _, vdam = em_and_vdam
    ari_vdam, purity_vdam = np.mean(vdam, axis=0)
    assert ari_vdam > 0.8 and purity_vdam > 0.9, vdam
