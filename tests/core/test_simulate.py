"""Particle simulator: conventions (psi, origin, CTF), normalisation, junk mix, project files."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core.center import logical_grid, rotate_images, translate_images
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid, rfft2_centered
from emclass2d.core.mask import radius_map
from emclass2d.core.simulate import (
    JUNK_TYPES,
    atom_sigma_px,
    euler_matrix,
    evaluate_projection,
    project_atoms,
    simulate_particles,
)
from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
from emclass2d.nodes.io.mrc import read_mrcs
from emclass2d.nodes.io.star import read_star

CLEAN = dict(snr=None, apply_ctf=False, normalise=False)


@pytest.fixture(scope="module")
def noisy():
    return simulate_particles(n=600, box=48, pixel_size_A=3.0, n_views=5, snr=0.05, junk_fraction=0.2,
                              n_micrographs=6, seed=3, n_atoms=800)


def test_background_normalised_like_extract(noisy) -> None:
    imgs = noisy.images
    assert imgs.dtype == np.float32 and imgs.shape == (600, 48, 48)
    bg = radius_map(48) > 0.375 * 48
    assert np.abs(imgs[:, bg].mean(axis=1)).max() < 1e-4
    assert imgs[:, bg].std(axis=1) == pytest.approx(np.ones(600), abs=1e-4)
    # noise dominates: whole-image sd close to 1
    assert 0.9 < imgs.std() < 1.3


def test_particles_are_white() -> None:
    sim = simulate_particles(n=50, box=48, n_views=4, junk_fraction=0.0, seed=1, n_atoms=800, **CLEAN)
    assert sim.view_projections.min() > -1e-6
    disc = radius_map(48) < 0.3 * 48
    assert (sim.images[:, disc].mean(axis=1) > 0.05).all()
    assert (sim.images[:, ~disc].mean(axis=1) < sim.images[:, disc].mean(axis=1)).all()


def test_particle_matches_direct_evaluation_at_psi_and_origin() -> None:
    px, box = 3.0, 40
    sim = simulate_particles(n=6, box=box, pixel_size_A=px, n_views=3, junk_fraction=0.0, seed=2, n_atoms=300,
                             shift_sd_px=2.0, **CLEAN)
    gx, gy = logical_grid(box)
    fits = []
    for i in range(3):
        row = sim.truth.iloc[i]
        rot = euler_matrix(*sim.view_euler_deg[int(row["view"])])
        xy = project_atoms(sim.molecule.coords_A, rot, px)
        a = np.deg2rad(row["psi_deg"])
        ux, uy = gx + row["origin_x_px"], gy + row["origin_y_px"]
        x, y = np.cos(a) * ux - np.sin(a) * uy, np.sin(a) * ux + np.cos(a) * uy  # R(psi)(u + o)
        ref = evaluate_projection(xy, sim.molecule.weights, atom_sigma_px(px), x, y)
        img = sim.images[i].astype(np.float64)
        scale = (img * ref).sum() / (ref * ref).sum()
        assert np.abs(img - scale * ref).max() < 0.03 * img.max()
        fits.append(scale / row["scale"])
    # one global normalisation: the fitted factor is the micrograph scale times a constant
    assert np.ptp(fits) < 0.01 * np.mean(fits)


def test_truth_psi_and_origin_align_particle_onto_its_view() -> None:
    # RELION's ``Euler_angles2matrix``, ``Projector::rotate2D``: translate by +o, then rotate counter-clockwise by psi -> the class image
    sim = simulate_particles(n=8, box=48, n_views=3, junk_fraction=0.0, seed=4, n_atoms=800, **CLEAN)
    t = sim.truth
    o = t[["origin_x_px", "origin_y_px"]].to_numpy()
    aligned = rotate_images(translate_images(sim.images, o), t["psi_deg"].to_numpy())
    aligned /= t["scale"].to_numpy()[:, None, None]
    for i in range(8):
        v = sim.view_projections[int(t["view"].iloc[i])]
        cc = (aligned[i] * v).sum() / np.sqrt((aligned[i] ** 2).sum() * (v**2).sum())
        assert cc > 0.99


def test_ctf_applied_with_relion_convention() -> None:
    kw = dict(n=20, box=48, pixel_size_A=3.0, n_views=3, junk_fraction=0.0, seed=5, n_atoms=800,
              snr=None, normalise=False, envelope_bfactor_A2=40.0)
    with_ctf = simulate_particles(apply_ctf=True, **kw)
    without = simulate_particles(apply_ctf=False, **kw)
    t = with_ctf.truth
    fx, fy = frequency_grid(48, 3.0)
    ctf = compute_ctf(fx, fy, t["defocus_u_A"].to_numpy(), t["defocus_v_A"].to_numpy(),
                      t["defocus_angle_deg"].to_numpy(), 300.0, 2.7, 0.1, bfactor_A2=40.0)
    fa, fb = rfft2_centered(with_ctf.images), rfft2_centered(without.images)
    strong = np.abs(fb) > 0.05 * np.abs(fb).max()
    assert np.abs(fa - ctf * fb)[strong].max() < 1e-3 * np.abs(fb).max()
    assert not np.allclose(t["defocus_u_A"], t["defocus_v_A"])  # astigmatic


def test_junk_types_in_requested_fractions(noisy) -> None:
    counts = noisy.truth["kind"].value_counts()
    assert counts["particle"] == 480
    for k in JUNK_TYPES:
        assert counts[k] == 24
    assert (noisy.truth["is_junk"] == (noisy.truth["kind"] != "particle")).all()
    assert (noisy.truth.loc[noisy.truth["is_junk"], "view"] == -1).all()
    sim = simulate_particles(n=200, box=32, junk_fraction=0.5, junk_mix={"ice": 1, "carbon": 3}, seed=0,
                             n_atoms=300, n_micrographs=3)
    c = sim.truth["kind"].value_counts()
    assert c["ice"] == 25 and c["carbon"] == 75 and c["particle"] == 100
    with pytest.raises(ValueError, match="unknown junk"):
        simulate_particles(n=10, box=32, junk_mix={"dust": 1.0})


def test_view_frequencies_micrograph_order_and_reproducibility(noisy) -> None:
    views = noisy.truth.loc[~noisy.truth["is_junk"], "view"].value_counts().sort_index().to_numpy()
    expected = 480 * np.geomspace(1, 0.1, 5) / np.geomspace(1, 0.1, 5).sum()
    assert views == pytest.approx(expected, abs=1)
    assert np.all(np.diff(noisy.truth["micrograph"].to_numpy()) >= 0)
    again = simulate_particles(n=600, box=48, pixel_size_A=3.0, n_views=5, snr=0.05, junk_fraction=0.2,
                               n_micrographs=6, seed=3, n_atoms=800)
    assert np.array_equal(again.images, noisy.images)
    other = simulate_particles(n=600, box=48, pixel_size_A=3.0, n_views=5, snr=0.05, junk_fraction=0.2,
                               n_micrographs=6, seed=4, n_atoms=800)
    assert not np.allclose(other.images, noisy.images)


def test_views_differ_clearly(noisy) -> None:
    v = noisy.view_projections.reshape(5, -1).astype(np.float64)
    v -= v.mean(axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cc = v @ v.T
    assert cc[~np.eye(5, dtype=bool)].max() < 0.95


def test_project_files_written_with_ctf_columns(tmp_path) -> None:
    star = simulate_project_files("Sim", n=90, box=32, pixel_size_A=4.0, n_views=3, n_micrographs=4, seed=1,
                                  project_dir=tmp_path, n_atoms=300)
    assert star == tmp_path / "Sim" / "particles.star"
    blocks = read_star(star)
    optics, parts = blocks["optics"], blocks["particles"]
    for label in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration",
                  "rlnVoltage", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"):
        assert label in optics.columns
    assert float(optics["rlnImagePixelSize"].iloc[0]) == 4.0 and int(optics["rlnImageSize"].iloc[0]) == 32
    for label in ("rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName", "rlnDefocusU",
                  "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift",
                  "rlnOpticsGroup"):
        assert label in parts.columns
    assert len(parts) == 90
    first = str(parts["rlnImageName"].iloc[0])
    index, path = first.split("@")
    assert index == "000001" and path.startswith("Sim/Particles/mic")
    stack, px = read_mrcs(tmp_path / path)
    assert stack.shape[1:] == (32, 32) and px == pytest.approx(4.0)
    truth = read_star(tmp_path / "Sim" / "truth.star")["particles"]
    assert {"rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnClassNumber"} <= set(truth.columns)
    assert (tmp_path / "Sim" / "truth.csv").is_file()
