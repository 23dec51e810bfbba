"""The Class2D EM job end to end on simulated particles with known truth.

One project is simulated per session and one Class2D job is run through the real command
line (``emclass2d run emclass2d.class2d ...`` in a subprocess); most tests inspect its
files. Continue, abort, overwrite and bad-input flows run further (small) jobs. How well the
classes follow the views, over several random seeds, is ``test_class_quality.py``'s.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from emclass2d.core.backend import cupy_or_none
from emclass2d.core.center import center_of_mass_positive
from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.project import Project
from emclass2d.nodes.io.star import read_star, write_star

# Data set and job: small enough for CI (2 cores), large enough to show the views.
N_PARTICLES = 1200
N_VIEWS = 4
SNR = 0.1
BOX = 64
PIXEL_A = 3.0
JUNK = 0.05
N_CLASSES = 6
N_ITER = 6
DIAMETER_A = 130.0
SEED = 2
#: Simulation seed whose views differ clearly (largest view-to-view correlation 0.88).
SIM_SEED = 3
#: Iteration the continue test restarts from (the job runs N_ITER = 2 × this).
HALF = N_ITER // 2


def _cli(root: Path, *argv: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", *argv], cwd=root, capture_output=True,
                          text=True, timeout=timeout, env=env or os.environ.copy())


def _class2d_args(fn_img: str, n_iter: int, k: int = N_CLASSES, seed: int = SEED) -> list[str]:
    return ["--fn_img", fn_img, "--do_em", "Yes", "--do_grad", "No", "--nr_classes", str(k),
            "--nr_iter_em", str(n_iter), "--particle_diameter", f"{DIAMETER_A:g}", "--random_seed", str(seed),
            "--nr_threads", "2"]


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("class2d_project")
    assert _cli(root, "init").returncode == 0
    simulate_project_files("Simulated", n=N_PARTICLES, box=BOX, pixel_size_A=PIXEL_A, n_views=N_VIEWS, snr=SNR,
                           junk_fraction=JUNK, n_micrographs=8, seed=SIM_SEED, project_dir=root,
                           view_weights=[1.0] * N_VIEWS)
    return root


@pytest.fixture(scope="session")
def job(project) -> dict:
    """The main job, run through the command line: Class2D/job001/."""
    args = ["run", "emclass2d.class2d", *_class2d_args("Simulated/particles.star", N_ITER)]
    t0 = time.monotonic()
    res = _cli(project, *args)
    seconds = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    job_dir = project / "Class2D/job001"
    data = read_star(job_dir / f"run_it{N_ITER:03d}_data.star")["particles"]
    truth = read_star(project / "Simulated/truth.star")["particles"].set_index("rlnImageName")
    truth = truth.loc[data["rlnImageName"].astype(str)].reset_index()
    classes = mrcfile.read(job_dir / f"run_it{N_ITER:03d}_classes.mrcs")
    print(f"Class2D job: {N_PARTICLES} particles, K={N_CLASSES}, {N_ITER} iterations: {seconds:.0f} s")
    return dict(dir=job_dir, data=data, truth=truth, classes=classes, seconds=seconds,
                command=shlex.join(["emclass2d", *args]))


def _good(job: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask of good particles in a class dominated by their view, true view, class)."""
    view = job["truth"]["rlnClassNumber"].to_numpy().astype(int)
    cls = job["data"]["rlnClassNumber"].to_numpy().astype(int)
    table = pd.crosstab(cls, view)
    table = table.drop(columns=[0], errors="ignore")
    major = table.idxmax(axis=1)
    good = (view > 0) & (major.reindex(cls).to_numpy() == view)
    return good, view, cls


# ----------------------------------------------------------------------------- results
def test_class_averages_white_and_centred(job):
    classes = job["classes"].astype(np.float64)
    pdf = job["data"]["rlnClassNumber"].value_counts(normalize=True).reindex(range(1, N_CLASSES + 1), fill_value=0)
    c = np.arange(BOX) - BOX // 2
    r = np.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    inside = r < DIAMETER_A / (2 * PIXEL_A) - 3
    outside = r > DIAMETER_A / (2 * PIXEL_A) + 3
    com = np.asarray(center_of_mass_positive(classes))
    for k in np.flatnonzero(pdf.to_numpy() > 0.1):
        img = classes[k]
        assert img[inside].mean() > img[outside].mean() + 0.1 * img[inside].std(), f"class {k + 1} not white on black"
        assert np.hypot(*com[k]) < 2.0, f"class {k + 1} centre of mass {com[k]} px from the box centre"


def test_psi_and_origins_agree_with_truth(job):
    """Up to the class's own rotation α and centre c: psi_t = psi_e + α, R(psi_t)(o_t − o_e) = c."""
    good, view, cls = _good(job)
    d, t = job["data"], job["truth"]
    psi_e = np.deg2rad(d["rlnAnglePsi"].to_numpy(dtype=float))
    psi_t = np.deg2rad(t["rlnAnglePsi"].to_numpy(dtype=float))
    o_e = d[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=float) / PIXEL_A
    o_t = t[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=float) / PIXEL_A
    dpsi = psi_t - psi_e
    delta = o_t - o_e
    cos, sin = np.cos(psi_t), np.sin(psi_t)
    rotated = np.stack([cos * delta[:, 0] - sin * delta[:, 1], sin * delta[:, 0] + cos * delta[:, 1]], axis=1)
    psi_ok = origin_ok = total = 0
    for k in np.unique(cls[good]):
        sel = good & (cls == k)
        alpha = np.angle(np.exp(1j * dpsi[sel]).mean())
        err_deg = np.rad2deg(np.abs(np.angle(np.exp(1j * (dpsi[sel] - alpha)))))
        centre = np.median(rotated[sel], axis=0)
        psi_ok += int((err_deg < 9.0).sum())
        origin_ok += int((np.hypot(*(rotated[sel] - centre).T) < 1.5).sum())
        total += int(sel.sum())
    print(f"psi within 9°: {psi_ok / total:.3f}; origin within 1.5 px: {origin_ok / total:.3f} of {total}")
    assert total > 0.7 * N_PARTICLES * (1 - JUNK)
    assert psi_ok / total > 0.85
    assert origin_ok / total > 0.85


def test_accuracies_estimated(job):
    model = starfile.read(job["dir"] / f"run_it{N_ITER:03d}_model.star", always_dict=True)
    classes = model["model_classes"]
    pdf = classes["rlnClassDistribution"].to_numpy()
    rot = classes["rlnAccuracyRotations"].to_numpy()
    trans = classes["rlnAccuracyTranslationsAngst"].to_numpy()
    assert np.all(rot[pdf < 0.01] == 999) and np.all(trans[pdf < 0.01] == 999)
    big = pdf > 0.1
    assert np.all((rot[big] > 0) & (rot[big] < 30)), rot
    assert np.all((trans[big] > 0) & (trans[big] < 10 * PIXEL_A)), trans
    opt = starfile.read(job["dir"] / f"run_it{N_ITER:03d}_optimiser.star", always_dict=True)["optimiser_general"]
    assert float(opt["rlnOverallAccuracyRotations"]) == pytest.approx(rot.min(), abs=1e-5)


# ----------------------------------------------------------------------------- files
DATA_LABELS = ["rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnLogLikeliContribution",
               "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples", "rlnNormCorrection", "rlnGroupNumber"]
MODEL_GENERAL = ["rlnReferenceDimensionality", "rlnDataDimensionality", "rlnOriginalImageSize", "rlnCurrentResolution",
                 "rlnCurrentImageSize", "rlnPaddingFactor", "rlnIsHelix", "rlnFourierSpaceInterpolator",
                 "rlnMinRadiusNnInterpolation", "rlnPixelSize", "rlnNrClasses", "rlnNrBodies", "rlnNrGroups",
                 "rlnNrOpticsGroups", "rlnTau2FudgeFactor", "rlnNormCorrectionAverage", "rlnSigmaOffsetsAngst",
                 "rlnOrientationalPriorMode", "rlnSigmaPriorRotAngle", "rlnSigmaPriorTiltAngle",
                 "rlnSigmaPriorPsiAngle", "rlnLogLikelihood", "rlnAveragePmax"]
MODEL_CLASSES = ["rlnReferenceImage", "rlnClassDistribution", "rlnAccuracyRotations", "rlnAccuracyTranslationsAngst",
                 "rlnEstimatedResolution", "rlnOverallFourierCompleteness", "rlnClassPriorOffsetX",
                 "rlnClassPriorOffsetY"]
CLASS_SPECTRUM = ["rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution", "rlnSsnrMap", "rlnGoldStandardFsc",
                  "rlnFourierCompleteness", "rlnReferenceSigma2", "rlnReferenceTau2"]
SAMPLING = ["rlnIs3DSampling", "rlnIs3DTranslationalSampling", "rlnPsiStep", "rlnOffsetRange", "rlnOffsetStep",
            "rlnHelicalOffsetStep", "rlnSamplingPerturbInstance", "rlnSamplingPerturbFactor", "rlnPsiStepOriginal",
            "rlnOffsetRangeOriginal", "rlnOffsetStepOriginal"]


def test_star_outputs_have_relion_labels(job):
    d = job["dir"]
    stem = d / f"run_it{N_ITER:03d}"
    data = starfile.read(f"{stem}_data.star", always_dict=True)
    assert list(data) == ["optics", "particles"]
    assert set(DATA_LABELS) <= set(data["particles"].columns)
    assert len(data["particles"]) == N_PARTICLES
    assert data["particles"]["rlnClassNumber"].between(1, N_CLASSES).all()
    model = starfile.read(f"{stem}_model.star", always_dict=True)
    expected = (["model_general", "model_classes"] + [f"model_class_{k}" for k in range(1, N_CLASSES + 1)]
                + ["model_groups", "model_optics_group_1"])
    assert list(model) == expected
    assert set(MODEL_GENERAL) <= set(model["model_general"])
    assert list(model["model_classes"].columns) == MODEL_CLASSES
    assert model["model_classes"]["rlnClassDistribution"].sum() == pytest.approx(1.0, abs=1e-4)
    for k in range(1, N_CLASSES + 1):
        spec = model[f"model_class_{k}"]
        assert set(CLASS_SPECTRUM) <= set(spec.columns) and len(spec) == BOX // 2 + 1
    assert {"rlnGroupNumber", "rlnGroupName", "rlnGroupNrParticles", "rlnGroupScaleCorrection"} <= set(model["model_groups"].columns)
    assert {"rlnSpectralIndex", "rlnResolution", "rlnSigma2Noise"} <= set(model["model_optics_group_1"].columns)
    assert int(model["model_general"]["rlnOriginalImageSize"]) == BOX
    assert float(model["model_general"]["rlnPixelSize"]) == pytest.approx(PIXEL_A)
    sampling = starfile.read(f"{stem}_sampling.star", always_dict=True)["sampling_general"]
    assert set(SAMPLING) <= set(sampling)
    lines = Path(f"{stem}_optimiser.star").read_text().splitlines()
    assert lines[0].startswith("# ") and "optimiser; version" in lines[0]
    assert lines[1].strip() == "# " + job["command"].split(" ", 1)[1] or lines[1].strip() == "# " + job["command"]
    opt = starfile.read(f"{stem}_optimiser.star", always_dict=True)["optimiser_general"]
    assert int(opt["rlnCurrentIteration"]) == N_ITER and int(opt["rlnRandomSeed"]) == SEED
    assert opt["rlnModelStarFile"] == f"Class2D/job001/run_it{N_ITER:03d}_model.star"
    assert opt["rlnExperimentalDataStarFile"] == f"Class2D/job001/run_it{N_ITER:03d}_data.star"


def test_iteration_zero_and_mrc_headers(job):
    d = job["dir"]
    for suffix in ("optimiser.star", "model.star", "data.star", "classes.mrcs"):
        assert (d / f"run_it000_{suffix}").is_file()
    for it in range(N_ITER + 1):
        with mrcfile.open(d / f"run_it{it:03d}_classes.mrcs", permissive=False) as m:
            assert m.data.shape == (N_CLASSES, BOX, BOX) and m.data.dtype == np.float32
            assert float(m.voxel_size.x) == pytest.approx(PIXEL_A, rel=1e-5)
            assert float(m.voxel_size.y) == pytest.approx(PIXEL_A, rel=1e-5)
    assert (d / "run_unmasked_classes.mrcs").is_file()
    assert (d / L.EXIT_SUCCESS).is_file()


# ----------------------------------------------------------------------------- continue, abort, overwrite
def _compare_iterations(a_stem: Path, b_stem: Path) -> tuple[float, float]:
    """(fraction of equal class labels, smallest class-average correlation) of two iterations."""
    ca = read_star(f"{a_stem}_data.star")["particles"]["rlnClassNumber"].to_numpy()
    cb = read_star(f"{b_stem}_data.star")["particles"]["rlnClassNumber"].to_numpy()
    ra = mrcfile.read(f"{a_stem}_classes.mrcs").astype(np.float64)
    rb = mrcfile.read(f"{b_stem}_classes.mrcs").astype(np.float64)
    corr = min(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(ra, rb) if x.std() > 0)
    return float(np.mean(ca == cb)), corr


@pytest.mark.slow
def test_continue_reproduces_uninterrupted_run(project, job):
    """Continue job001 from iteration HALF to N_ITER (CLI) and compare with its own run_itN_."""
    fn = f"Class2D/job001/run_it{HALF:03d}_optimiser.star"
    res = _cli(project, "continue", "Class2D/job001/", "--fn_cont", fn, "--nr_iter_em", str(N_ITER))
    assert res.returncode == 0, res.stderr[-2000:]
    d = job["dir"]
    cont = d / f"run_ct{HALF}_it{N_ITER:03d}"
    assert (d / f"run_ct{HALF}_it{HALF:03d}_optimiser.star").is_file()  # the continued iteration is rewritten
    same, corr = _compare_iterations(d / f"run_it{N_ITER:03d}", cont)
    print(f"continue vs uninterrupted: {100 * same:.2f}% same class, min class correlation {corr:.5f}")
    assert same >= 0.99
    assert corr > 0.999


def _small_particles(project: Path, n: int = 300) -> str:
    blocks = read_star(project / "Simulated/particles.star")
    name = "Simulated/particles_small.star"
    if not (project / name).exists():
        write_star(project / name, {"optics": blocks["optics"], "particles": blocks["particles"].iloc[:n]})
    return name


def _status(project: Path, job_dir: str) -> str:
    return Project.open(project).read().process(job_dir).status


@pytest.mark.slow
def test_abort_continue_and_overwrite(project, job):
    small = _small_particles(project)
    env = {**os.environ}
    res = _cli(project, "run", "emclass2d.class2d", *_class2d_args(small, 6, k=3), "--detach", env=env)
    assert res.returncode == 0, res.stderr
    job_dir = res.stdout.strip().splitlines()[-1]
    path = project / job_dir
    deadline = time.monotonic() + 300
    while not (path / "run_it001_optimiser.star").exists():
        assert time.monotonic() < deadline and not (path / L.EXIT_FAILURE).exists(), (path / "run.err").read_text()
        time.sleep(0.2)
    assert _cli(project, "abort", job_dir).returncode == 0
    while not (path / L.EXIT_ABORTED).exists():
        assert time.monotonic() < deadline, "job did not stop after RELION_JOB_ABORT_NOW"
        time.sleep(0.2)
    time.sleep(0.5)
    assert _status(project, job_dir) == L.STATUS_ABORTED
    done = sorted(int(p.name[6:9]) for p in path.glob("run_it???_optimiser.star"))
    last = done[-1]
    assert last < 6
    # every written iteration is complete (optimiser.star is written last)
    for it in done:
        for suffix in ("model.star", "data.star", "classes.mrcs"):
            assert (path / f"run_it{it:03d}_{suffix}").is_file()
    # continue from the last written iteration, in-process through the runner
    from emclass2d.jobtypes.registry import get_registry
    from emclass2d.jobtypes.running import execute, prepare_continue

    prepared = prepare_continue(Project.open(project), get_registry(), job_dir,
                                {"fn_cont": f"{job_dir}run_it{last:03d}_optimiser.star", "nr_iter_em": "6"},
                                "emclass2d continue (test)")
    cwd = os.getcwd()
    try:
        assert execute(prepared, foreground=False) == L.STATUS_SUCCEEDED
    finally:
        os.chdir(cwd)
    assert (path / f"run_ct{last}_it006_optimiser.star").is_file()
    assert _status(project, job_dir) == L.STATUS_SUCCEEDED
    # overwrite: same job directory, emptied, run again with new options
    res = _cli(project, "overwrite", job_dir, "--nr_iter_em", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (path / "run_it001_optimiser.star").is_file()
    assert not list(path.glob("run_ct*")) and not (path / "run_it002_optimiser.star").exists()
    assert _status(project, job_dir) == L.STATUS_SUCCEEDED


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(project: Path) -> dict[str, str]:
    blocks = read_star(project / "Simulated/particles.star")
    opt, parts = blocks["optics"], blocks["particles"].iloc[:50].copy()
    write_star(project / "bad_no_optics.star", {"particles": parts})
    missing = parts.copy()
    missing.loc[missing.index[-1], "rlnImageName"] = "000001@Simulated/Particles/absent.mrcs"
    write_star(project / "bad_missing_stack.star", {"optics": opt, "particles": missing})
    opt2 = opt.copy()
    opt2["rlnOpticsGroup"] = [2]
    opt2["rlnOpticsGroupName"] = ["opticsGroup2"]
    opt2["rlnImageSize"] = [BOX // 2]
    mixed = parts.copy()
    mixed.loc[mixed.index[25:], "rlnOpticsGroup"] = 2
    write_star(project / "bad_mixed_boxes.star", {"optics": pd.concat([opt, opt2]), "particles": mixed})
    return {"bad_no_optics.star": "data_optics", "bad_missing_stack.star": "absent.mrcs",
            "bad_mixed_boxes.star": "box"}


def test_bad_inputs_fail_cleanly(project):
    for name, needle in _bad_inputs(project).items():
        res = _cli(project, "run", "emclass2d.class2d", *_class2d_args(name, 1, k=2))
        assert res.returncode != 0
        errors = [ln for ln in res.stderr.splitlines() if "FAILED" in ln]
        assert len(errors) == 1 and needle in errors[0] and name in errors[0], res.stderr
        job_dir = res.stdout.splitlines()[0].split(":")[0]
        path = project / job_dir
        assert (path / L.EXIT_FAILURE).is_file()
        assert _status(project, job_dir) == L.STATUS_FAILED
        assert not list(path.glob("run_it*")), sorted(p.name for p in path.iterdir())


# ----------------------------------------------------------------------------- devices
@pytest.mark.gpu
def test_numpy_and_cupy_estep_agree(project):
    cp = cupy_or_none()
    from emclass2d.core.estep import expectation_batch, prepare_iteration
    from emclass2d.jobtypes.class2d.particle_stream import move_to
    from emclass2d.nodes.files import class2d as c2f
    from emclass2d.nodes.io.particles import image_source_for
    from emclass2d.jobtypes.class2d.start import continue_state
    from emclass2d.jobtypes.class2d.step import iteration_setup as _iteration_setup
    from emclass2d.jobtypes.base import RunContext
    from emclass2d.jobtypes.class2d.options import Class2DOptions

    del c2f
    opts = Class2DOptions(fn_img="Simulated/particles.star", fn_cont=str(project / "Class2D/job001/run_it001_optimiser.star"),
                          do_em=True, do_grad=False, nr_classes=N_CLASSES, particle_diameter=DIAMETER_A)
    scratch = "Class2D/job999/"
    (project / scratch).mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        ctx = RunContext(project_dir=project, job_dir=scratch, options=opts, is_continue=True, log=lambda s: None)
        state = continue_state(ctx, opts)
        model, sampling = _iteration_setup(state, opts, 2)
        idx = np.arange(64)
        imgs = image_source_for(state.table, project).read(idx)
        batch = state.table.make_batch(idx, imgs, with_ctf=True)
        out = {}
        for dev in ("cpu", "gpu:0"):
            m = move_to(model, dev)
            setup = prepare_iteration(m, state.settings, sampling, 2)
            stats, res = expectation_batch(move_to(batch, dev), m, state.settings, setup)
            out[dev] = (move_to(stats, "cpu"), move_to(res, "cpu"))
    finally:
        os.chdir(cwd)
    (s0, r0), (s1, r1) = out["cpu"], out["gpu:0"]
    assert np.mean(np.asarray(r0.class_index) == np.asarray(r1.class_index)) >= 0.98
    np.testing.assert_allclose(np.asarray(r1.dll), np.asarray(r0.dll), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(np.asarray(r1.norm_correction), np.asarray(r0.norm_correction), rtol=1e-3)
    for name in ("wsum_pdf_class", "wsum_sigma2_noise", "sumw_optics"):
        np.testing.assert_allclose(np.asarray(getattr(s1, name)), np.asarray(getattr(s0, name)), rtol=2e-3, atol=1e-9)
    scale = float(np.abs(np.asarray(s0.bp_data)).max())
    assert float(np.abs(np.asarray(s1.bp_data) - np.asarray(s0.bp_data)).max()) < 2e-3 * scale
