"""Class splits in a Class2D run: choosing and making a split from the particle table and stacks."""
from __future__ import annotations

import numpy as np

from emclass2d.core.center import translate_images
from emclass2d.core.class_split import subset_averages, subset_sums
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid
from emclass2d.core.initial import rotated_defocus_angle
from emclass2d.core.simulate import simulate_particles

BOX, PX, SHELL = 64, 3.0, 12


def test_apply_split_shares_the_class_and_restarts_its_moments():
    from emclass2d.core.model import Model
    from emclass2d.core.vdam import VdamState, restart_split_moments
    from emclass2d.jobtypes.class2d.split import ClassSplit, apply_split

    rng = np.random.default_rng(0)
    k, n, p = 3, 8, 16
    base = Model.empty(n_classes=k, box=n, pixel_size_A=2.0)
    model = Model(**{**base.__dict__, "references": rng.normal(size=(k, n, n)).astype(np.float32),
                     "pdf_class": np.array([0.6, 0.399, 0.001]), "pdf_direction": np.array([0.6, 0.399, 0.001]),
                     "tau2": rng.random((k, n // 2 + 1)), "prior_offset_A": rng.normal(size=(k, 2))})
    halves = rng.normal(size=(2, n, n)).astype(np.float32)
    split = ClassSplit(drop=2, expand=0, references=halves, fraction=0.25, gain=3.0, nr_particles=100)
    new = apply_split(model, split)
    np.testing.assert_array_equal(new.references[0], halves[0])
    np.testing.assert_array_equal(new.references[2], halves[1])
    np.testing.assert_array_equal(new.references[1], model.references[1])
    np.testing.assert_allclose(new.pdf_class, [0.25 * 0.601, 0.399, 0.75 * 0.601])
    np.testing.assert_allclose(new.pdf_direction, new.pdf_class)
    np.testing.assert_array_equal(new.tau2[2], model.tau2[0])
    np.testing.assert_array_equal(new.prior_offset_A[2], model.prior_offset_A[0])

    shape = (k, p, p // 2 + 1)
    vstate = VdamState(m1_half1=np.ones(shape, np.complex64), m1_half2=np.ones(shape, np.complex64),
                       m2=rng.random(shape).astype(np.float32), m2_updated_r2=np.array([10, 20, 30]))
    restarted = restart_split_moments(vstate, expand=0, drop=2)
    assert not restarted.m1_half1[[0, 2]].any() and not restarted.m1_half2[[0, 2]].any()
    np.testing.assert_array_equal(restarted.m1_half1[1], vstate.m1_half1[1])
    np.testing.assert_array_equal(restarted.m2[2], vstate.m2[0])
    assert restarted.m2_updated_r2[2] == 10


def test_propose_split_reseeds_the_inactive_class_from_a_two_view_class(tmp_path):
    """From the particle table and stacks: class 0 holds two views with their true poses, class 1 is empty."""
    import pandas as pd

    from emclass2d.core.model import Model
    from emclass2d.jobtypes.class2d.split import propose_split
    from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
    from emclass2d.nodes.io.particles import ParticleTable, image_source_for

    star = simulate_project_files("Sim", n=300, box=BOX, pixel_size_A=PX, n_views=2, snr=0.1, junk_fraction=0.0,
                                  n_micrographs=5, seed=4, project_dir=tmp_path, view_weights=[1.0, 0.6])
    table = ParticleTable.read(star)
    truth = pd.read_csv(tmp_path / "Sim/truth.csv")  # true view, psi and origin per particle
    assert list(truth["rlnImageName"]) == table.image_names
    table.set_column("rlnAnglePsi", truth["psi_deg"].to_numpy())
    table.set_column("rlnOriginXAngst", truth["origin_x_px"].to_numpy() * PX)
    table.set_column("rlnOriginYAngst", truth["origin_y_px"].to_numpy() * PX)
    table.set_column("rlnClassNumber", np.ones(len(truth), dtype=np.int64), dtype=np.int64)
    images = image_source_for(table, tmp_path)
    # the class average of everyone: what an attractor class looks like
    rows = np.arange(len(truth))
    fx, fy = frequency_grid(BOX, PX)
    t = truth
    ctf_rot = compute_ctf(fx, fy, t.defocus_u_A.to_numpy(), t.defocus_v_A.to_numpy(),
                          rotated_defocus_angle(t.defocus_angle_deg.to_numpy(), t.psi_deg.to_numpy()), 300.0, 2.7, 0.1)
    origin = t[["origin_x_px", "origin_y_px"]].to_numpy()
    mixed = subset_averages(subset_sums(translate_images(images.read(rows), origin), ctf_rot, t.psi_deg.to_numpy(),
                                        np.ones(len(t), dtype=bool)), SHELL)[0]
    base = Model.empty(n_classes=2, box=BOX, pixel_size_A=PX)
    model = Model(**{**base.__dict__, "references": np.stack([mixed, np.zeros_like(mixed)]).astype(np.float32),
                     "pdf_class": np.array([1.0, 0.0]), "current_resolution": SHELL / (BOX * PX)})
    split = propose_split(model, table, images.read, drop=1, last_seen=None, diameter_A=BOX * PX * 0.7,
                          with_ctf=True, seed=0)
    assert split is not None and (split.expand, split.drop) == (0, 1)
    # the same simulation's clean views (the views depend on the seed only)
    proj = simulate_particles(n=10, box=BOX, pixel_size_A=PX, n_views=2, snr=None, junk_fraction=0.0, seed=4,
                              n_micrographs=1, normalise=False).view_projections
    corr = np.array([[np.corrcoef(r.ravel(), v.ravel())[0, 1] for v in proj] for r in split.references])
    assert corr[0].argmax() != corr[1].argmax()  # one new class per view
    assert min(corr.max(axis=1)) > 0.5
