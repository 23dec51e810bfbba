"""Our EM and VDAM runs on RELION 5's own input, side by side with RELION 5's results.

The fixture holds RELION 5.0.1's EM (25 iterations) and VDAM (100 mini-batches) Class2D
runs on 500 particles of four shapes, K = 4, with the GUI's sampling (in-plane 6°,
offsets 5 px range / 1 px step). We run the same settings and compare:

* class assignments against RELION's (adjusted Rand index; RELION separated the shapes
  perfectly in both runs);
* the final current resolution (RELION's updateCurrentResolution) within one Fourier shell;
* alignment quality, independently of either program's class averages: from each run's
  poses (rlnAnglePsi, rlnOriginX/YAngst, rlnClassNumber) we build least-squares class
  averages from one half of the particles and measure how well they predict the other
  half (CTF-modulated normalised correlation per frequency band), both ways. Worse poses
  blur the averages and lower the prediction; ours must do as well as RELION's.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile

from emclass2d.core.center import logical_grid, sample_bilinear
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid, irfft2_centered, rfft2_centered, shell_index
from emclass2d.core.metrics import adjusted_rand_index
from emclass2d.core.simulate import particle_positions
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.nodes.io.mrc import read_mrcs
from emclass2d.nodes.io.star import read_star
from class2d_runs import run_class2d_in
from fixture_paths import RELION5_CLASS2D

pytestmark = pytest.mark.skipif(not RELION5_CLASS2D.is_dir(), reason="RELION 5 fixtures not found")

#: The options of RELION's command lines (fixture README) in GUI terms.
GUI = dict(fn_img="particles.star", nr_classes=4, tau_fudge=2.0, particle_diameter=150.0, psi_sampling=6.0,
           offset_range=5.0, offset_step=1.0, do_ctf_correction=True, do_zero_mask=True, do_center=True,
           nr_threads=2, random_seed=1)
#: (low, high) Fourier shells (64-px box, 3 Å/px) of the bands compared: 48-24, 24-16, 16-12, 12-9.6 Å.
BANDS = ((1, 4), (5, 8), (9, 12), (13, 16))


def _project(tmp_path: Path) -> Path:
    for name in ("particles.star", "particles.mrcs"):
        shutil.copy(RELION5_CLASS2D / name, tmp_path / name)
    return tmp_path


def _particles(data_star: Path):
    d = read_star(data_star)
    p = d["particles"].sort_values("rlnImageName").reset_index(drop=True)
    return p, d["optics"]


def _current_resolution_A(model_star: Path) -> float:
    return float(read_star(model_star)["model_general"]["rlnCurrentResolution"])


def _shell(res_A: float, box: int = 64, px: float = 3.0) -> int:
    return int(round(box * px / res_A))


def _pose_prediction(data_star: Path, stack: np.ndarray, seed: int = 0) -> np.ndarray:
    """Mean cross-validated prediction of the particles by least-squares averages, per band."""
    p, optics = _particles(data_star)
    px = float(optics["rlnImagePixelSize"].iloc[0])
    idx = np.array([int(str(s).split("@")[0]) - 1 for s in p["rlnImageName"]])
    x_img = np.asarray(stack[idx], dtype=np.float64)
    n = x_img.shape[-1]
    fx, fy = frequency_grid(n, px)
    sh = shell_index(n)
    ctf = compute_ctf(fx, fy, p["rlnDefocusU"].to_numpy(float), p["rlnDefocusV"].to_numpy(float),
                      p["rlnDefocusAngle"].to_numpy(float), float(optics["rlnVoltage"].iloc[0]),
                      float(optics["rlnSphericalAberration"].iloc[0]),
                      float(optics["rlnAmplitudeContrast"].iloc[0])).astype(np.float64)
    fimg = rfft2_centered(x_img)
    psi = np.deg2rad(p["rlnAnglePsi"].to_numpy(float))
    origin = np.stack([p["rlnOriginXAngst"].to_numpy(float), p["rlnOriginYAngst"].to_numpy(float)], 1) / px
    cls = p["rlnClassNumber"].to_numpy(int) - 1
    gx, gy = logical_grid(n)
    c, s = np.cos(psi)[:, None, None], np.sin(psi)[:, None, None]
    # particle frame u = R(-psi)·v - o for class-frame v (RELION: image(u) = average(R(psi)(u + o)))
    ux = (c * gx + s * gy - origin[:, 0, None, None]).astype(np.float32)
    uy = (-s * gx + c * gy - origin[:, 1, None, None]).astype(np.float32)
    aligned = sample_bilinear(irfft2_centered(fimg * ctf, n).astype(np.float32), ux, uy).astype(np.float64)
    # forward: where each particle pixel u samples the class average, R(psi)(u + o)
    vx, vy = particle_positions(n, p["rlnAnglePsi"].to_numpy(float), origin)
    half = np.random.default_rng(seed).random(len(p)) < 0.5
    nsh = sh.max() + 1
    scores = []
    for train in (half, ~half):
        averages = np.zeros((cls.max() + 1, n, n))
        for k in range(cls.max() + 1):
            m = train & (cls == k)
            if not m.any():
                continue
            # shell-averaged Σ CTF² as the normaliser (astigmatism averaged out)
            c2 = (np.bincount(sh.ravel(), (ctf[m] ** 2).sum(0).ravel(), minlength=nsh)
                  / np.maximum(np.bincount(sh.ravel(), minlength=nsh), 1))
            averages[k] = irfft2_centered(rfft2_centered(aligned[m].sum(0)) / np.maximum(c2[sh], 1e-6), n)
        test = ~train
        model = sample_bilinear(averages[cls[test]].astype(np.float32), vx[test], vy[test]).astype(np.float64)
        pred = ctf[test] * rfft2_centered(model)
        band_scores = []
        for lo, hi in BANDS:
            band = (sh >= lo) & (sh <= hi)
            num = (fimg[test] * np.conj(pred)).real[:, band].sum(1)
            den = np.sqrt((np.abs(pred) ** 2)[:, band].sum(1) * (np.abs(fimg[test]) ** 2)[:, band].sum(1))
            band_scores.append(float(np.mean(num / np.maximum(den, 1e-30))))
        scores.append(band_scores)
    return np.mean(scores, axis=0)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return read_mrcs(RELION5_CLASS2D / "particles.mrcs")[0]


def test_pose_prediction_tells_good_poses_from_blurred_ones(tmp_path, stack):
    """The yardstick itself: RELION's poses beat the same poses jittered by ~1 px / 6°."""
    relion = RELION5_CLASS2D / "Class2D/job001/run_it025_data.star"
    d = read_star(relion)
    rng = np.random.default_rng(1)
    parts = d["particles"].copy()
    parts["rlnOriginXAngst"] = parts["rlnOriginXAngst"] + rng.normal(0, 3.0, len(parts))
    parts["rlnOriginYAngst"] = parts["rlnOriginYAngst"] + rng.normal(0, 3.0, len(parts))
    parts["rlnAnglePsi"] = parts["rlnAnglePsi"] + rng.normal(0, 6.0, len(parts))
    starfile.write({"optics": d["optics"], "particles": parts}, tmp_path / "jittered_data.star")
    good = _pose_prediction(relion, stack)
    jittered = _pose_prediction(tmp_path / "jittered_data.star", stack)
    assert np.all(good[1:] > jittered[1:] + 0.02), (good, jittered)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["em", "vdam"])
def test_same_classes_resolution_and_alignment_as_relion(tmp_path, stack, algo):
    """EM: 25 iterations (RELION job001); VDAM: 100 mini-batches (RELION job002)."""
    project = _project(tmp_path)
    if algo == "em":
        opts = Class2DOptions(do_em=True, do_grad=False, nr_iter_em=25, **GUI)
        ours, relion = "Class2D/job001/run_it025", RELION5_CLASS2D / "Class2D/job001/run_it025"
    else:
        opts = Class2DOptions(do_em=False, do_grad=True, nr_iter_grad=100, class_inactivity_threshold=0.1,
                              grad_write_iter=10, **GUI)
        ours, relion = "Class2D/job002/run_it100", RELION5_CLASS2D / "Class2D/job002/run_it100"
    run_class2d_in(project, ours.rsplit("/", 1)[0] + "/", opts)
    mine = project / ours
    p_ours, _ = _particles(Path(f"{mine}_data.star"))
    p_rel, _ = _particles(Path(f"{relion}_data.star"))
    assert adjusted_rand_index(p_ours["rlnClassNumber"], p_rel["rlnClassNumber"]) == 1.0
    res_ours = _current_resolution_A(Path(f"{mine}_model.star"))
    res_rel = _current_resolution_A(Path(f"{relion}_model.star"))
    assert abs(_shell(res_ours) - _shell(res_rel)) <= 1, (res_ours, res_rel)
    ours_pred = _pose_prediction(Path(f"{mine}_data.star"), stack)
    rel_pred = _pose_prediction(Path(f"{relion}_data.star"), stack)
    # when written: EM 0.815/0.694/0.302/0.170 vs RELION 0.814/0.695/0.302/0.172;
    # VDAM 0.816/0.697/0.305/0.174 vs RELION 0.815/0.692/0.300/0.173
    assert np.all(ours_pred >= rel_pred - 0.01), (ours_pred, rel_pred)


def test_continue_of_a_relion_em_run(tmp_path):
    """One more EM iteration from RELION's run_it025_optimiser.star, in RELION's job directory."""
    project = _project(tmp_path)
    shutil.copytree(RELION5_CLASS2D / "Class2D/job001", project / "Class2D/job001")
    opts = Class2DOptions(do_em=True, do_grad=False, nr_iter_em=26, fn_cont="Class2D/job001/run_it025_optimiser.star",
                          **GUI)
    run_class2d_in(project, "Class2D/job001/", opts, is_continue=True)
    job = project / "Class2D/job001"
    relion = read_star(job / "run_it025_model.star")["model_general"]
    rewritten = read_star(job / "run_ct25_it025_model.star")["model_general"]
    for label in ("rlnCurrentImageSize", "rlnCurrentResolution", "rlnPixelSize", "rlnNrClasses"):
        assert rewritten[label] == relion[label], label
    p_rel, _ = _particles(job / "run_it025_data.star")
    p_new, _ = _particles(job / "run_ct25_it026_data.star")
    assert adjusted_rand_index(p_rel["rlnClassNumber"], p_new["rlnClassNumber"]) == 1.0
    # RELION's converged poses stay put: offsets within about a pixel (the sampling grid moves)
    d = np.hypot(p_new["rlnOriginXAngst"] - p_rel["rlnOriginXAngst"], p_new["rlnOriginYAngst"] - p_rel["rlnOriginYAngst"])
    assert float(np.sqrt(np.mean(d ** 2))) < 3.0  # Å, one pixel (RELION between its own iterations: 1.5 Å)
