"""Train the class-score model on labelled class averages and write its weights.

A developer tool, not installed with the package: run it from a checkout with emclass2d installed.

Two sources of labelled classes, each grouped by "job" (one simulated data set or one
Class2D run; the last three ranker inputs are normalised per job):

* idealised classes of :func:`emclass2d.core.simulate.simulate_particles` data sets
  (random box, pixel size, particle size, SNR, class sizes; the molecule is the default
  asymmetric body, a Cn ring with a top view among its views, or a round or elliptical
  featureless body, so that good classes whose in-plane angle is poorly defined are
  represented): CTF-corrected Wiener averages of the particles of one view (good, also
  with a few junk particles in it) or of one junk type (junk, aligned on their own
  features as a 2D classification does, see :func:`junk_alignment`, or not at all),
  even mixtures of 3+ views and badly aligned views (good: blurred, but of good
  particles, as a Class2D class is labelled by its particles); solvent-flattened as
  Class2D's output, with SSNR-based resolution and accuracies re-estimated from the
  average (classes of ≤ 100 particles get RELION's fixed 5°/8 Å half of the time, as for
  runs that write no accuracies);
* Class2D runs on simulated data: ``--class2d OPTIMISER.star:TRUTH.csv`` (repeatable;
  ``PROJECT=OPTIMISER.star:TRUTH.csv`` for a run in a project of its own). The truth CSV
  is the simulator's truth table (``emclass2d simulate`` writes ``truth.csv`` with an
  rlnImageName column: particles are matched by image name; without that column, rows
  are the images of one stack in order). Each class is labelled by the majority of its
  particles (good if fewer than half are junk).

Fit and evaluation: whole jobs are split per source into fit (60 %), calibration (20 %)
and test (20 %) sets, so no test class shares a data set or run with a fitted one. A
one-hidden-layer network (:class:`emclass2d.jobtypes.select.model.RankerModel`) is fitted
with good and junk classes balanced and a Class2D-run class weighing
:data:`CLASS2D_WEIGHT` idealised ones, then Platt-calibrated on the calibration jobs. The
rotational accuracy enters capped (:data:`~emclass2d.jobtypes.select.model.ROTATION_ACCURACY_CAP_DEG`):
a precise in-plane angle is evidence of a good class, a poor one is not evidence of junk.

What the score means: it is calibrated on the calibration jobs' mix of classes, so among
classes that score about ``s``, a fraction of about ``s`` has a majority of good
particles, for data like the training data (simulated particles and junk, Class2D runs
of 8-10 EM iterations). It is a probability that the class is worth keeping, not a
resolution or quality grade: a rare but clean view and a large one both score near 1.
RELION's network regresses human grades instead, so the two scores agree on the
ordering of clear cases but are not interchangeable numerically; the default threshold
0.5 keeps classes more likely good than junk. Most classes score near 0 or 1; the
intermediate bins hold few classes, so their fractions are rough.

Shipped weights, held-out jobs (16 idealised data sets, 3 Class2D runs): accuracy at 0.5
0.976 / 1.000, Brier 0.020 / 0.009 (idealised / Class2D-run classes); this command prints
the calibration table per source.

Example (the shipped weights: 80 idealised data sets and the 14 runs of
:data:`CLASS2D_RUNS`, made in ``runs/`` or reused from there)::

    python tools/train_ranker.py --out jobtypes/select/ranker_weights.npz \\
        --jobs 80 --seed 0 --class2d-runs runs
    python tools/train_ranker.py --out weights.npz --fast --jobs 10 \\
        --class2d proj=Class2D/job001/run_it025_optimiser.star:Sim/truth.csv
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from emclass2d.core.accuracy import class_average_accuracies
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid, irfft2_centered, radial_average, rfft2_centered, shell_index
from emclass2d.core.mask import solvent_flatten
from emclass2d.core.ranker_features import MIN_PARTICLES_SCORED, SMALL_CLASS_ACCURACY, resolution_from_ssnr
from emclass2d.core.simulate import (JUNK_TYPES, Molecule, choose_views, make_round_molecule,
                                     make_symmetric_molecule, simulate_particles)
from emclass2d.jobtypes.select.model import INPUT_NAMES, RankerModel, model_inputs
from emclass2d.jobtypes.select.scoring import class_features, features_for_class

#: Regularisation parameter T used for the idealised Wiener averages (Class2D default 2).
TAU2_FUDGE = 2.0
#: Weight of a class of a Class2D run relative to an idealised class in the fit.
CLASS2D_WEIGHT = 3.0


# ----------------------------------------------------------------------------- idealised classes


def align_images(images: np.ndarray, psi_deg: np.ndarray, origin_px: np.ndarray) -> np.ndarray:
    """Undo the simulator's rotation and shift: ``aligned(v) = image(Rᵀ(psi)·v − o)``."""
    n = images.shape[-1]
    c = n // 2
    out = np.empty_like(images, dtype=np.float64)
    for i, (img, psi, o) in enumerate(zip(images, psi_deg, origin_px)):
        cs, sn = math.cos(math.radians(psi)), math.sin(math.radians(psi))
        m = np.array([[cs, -sn], [sn, cs]])  # (y, x) order of Rᵀ
        offset = np.array([c, c]) - m @ np.array([c, c]) - np.array([o[1], o[0]])
        out[i] = ndimage.affine_transform(img, m, offset=offset, order=1, mode="constant", cval=0.0)
    return out


def wiener_class(images: np.ndarray, ctf: np.ndarray, pixel_size_A: float, diameter_A: float) -> dict[str, Any]:
    """Class average as Class2D's M-step makes it, with its SSNR resolution and accuracies.

    ``images`` aligned ``(P, N, N)``, ``ctf`` ``(P, N, N//2+1)``. τ² = T·(signal power of a
    first average), σ² from the residuals; the average is solvent-flattened at the mask.
    """
    n = images.shape[-1]
    X = rfft2_centered(images.astype(np.float64))
    ctf = ctf.astype(np.float64)
    s_ctf2 = np.sum(ctf * ctf, axis=0)
    a0 = np.sum(ctf * X, axis=0) / (s_ctf2 + 1e-3 * len(images))
    resid = X - ctf * a0
    sigma2 = np.maximum(radial_average(np.mean(np.abs(resid) ** 2, axis=0) / 2, n), 1e-12)
    ctf2_shell = np.maximum(radial_average(s_ctf2, n), 1e-12)
    power = radial_average(np.abs(a0) ** 2, n) - 2 * sigma2 / ctf2_shell
    tau2 = TAU2_FUDGE * np.maximum(power, 1e-12) / 2
    shells = np.minimum(shell_index(n), n // 2)
    avg_ft = np.sum(ctf * X, axis=0) / (s_ctf2 + (sigma2 / tau2)[shells])
    avg = irfft2_centered(avg_ft, n)
    avg = solvent_flatten(avg[None].astype(np.float32), 0.5 * diameter_A / pixel_size_A, 5.0)[0]
    ssnr = tau2 * ctf2_shell / sigma2
    res = resolution_from_ssnr(ssnr, n, pixel_size_A)
    rot, trans = class_average_accuracies(avg, s_ctf2 / len(images), sigma2, pixel_size_A)
    return {"average": avg, "resolution_A": res, "accuracy_rotation_deg": rot, "accuracy_translation_A": trans}


def random_molecule(rng: np.random.Generator, diameter_A: float, n_views: int, seed: int
                    ) -> tuple[str, Molecule | None, np.ndarray | None]:
    """Kind, body and views of one data set: asymmetric (default), Cn ring with a top view, or round.

    Real data sets have good views whose in-plane angle is poorly defined: top views of
    symmetric complexes (view 0 looks along the symmetry axis) and round or elliptical,
    nearly featureless particles. Their rotational accuracy is poor although the class is good.
    """
    u = rng.random()
    if u < 0.5:
        return "asymmetric", None, None
    views = choose_views(n_views, seed)
    if u < 0.8:
        order = int(rng.integers(2, 13))
        views[0] = (0.0, 0.0)
        return f"c{order}", make_symmetric_molecule(diameter_A, order, seed=int(rng.integers(0, 10_000))), views
    ratio = (1.0, 1.0) if rng.random() < 0.4 else (float(rng.uniform(0.55, 1.0)), float(rng.uniform(0.55, 1.0)))
    return "round", make_round_molecule(diameter_A, ratio, seed=int(rng.integers(0, 10_000))), views


def junk_alignment(clean: np.ndarray, max_shift_px: float = 5.0) -> tuple[float, np.ndarray]:
    """psi (deg) and origin (px, x y) that align a noise-free junk image as a 2D classification would.

    A reference-free classification aligns junk too: ice balls and rings come centred,
    carbon edges parallel, fragments and aggregates on their mass. Here: shift the
    centroid of the positive signal to the centre (at most ``max_shift_px``, the offset
    search range) and turn the direction from the centre to the centroid (or, for a
    centred image, the signal's principal axis) onto +x. An image without signal
    (``empty``) gets psi 0 and no shift.
    """
    n = clean.shape[-1]
    w = np.maximum(np.asarray(clean, dtype=np.float64), 0.0)
    total = w.sum()
    if total <= 1e-9 * n * n:
        return 0.0, np.zeros(2)
    g = np.arange(n) - n // 2
    cx, cy = float((w.sum(axis=0) * g).sum() / total), float((w.sum(axis=1) * g).sum() / total)
    if math.hypot(cx, cy) > 2.0:
        angle = math.atan2(cy, cx)
    else:
        dx, dy = g[None, :] - cx, g[:, None] - cy
        cxx, cyy, cxy = (w * dx * dx).sum(), (w * dy * dy).sum(), (w * dx * dy).sum()
        angle = 0.5 * math.atan2(2 * cxy, cxx - cyy)
        along = dx * math.cos(angle) + dy * math.sin(angle)
        if (w * along**3).sum() < 0:  # the heavier tail along the axis points to +x
            angle += math.pi
    shift = np.array([cx, cy]) * min(1.0, max_shift_px / max(math.hypot(cx, cy), 1e-9))
    return -math.degrees(angle), -shift


def _split_sizes(rng: np.random.Generator, rows: np.ndarray, max_parts: int) -> list[np.ndarray]:
    """Random split of ``rows`` into 1..max_parts classes of uneven size (small ones included)."""
    k = int(rng.integers(1, max_parts + 1))
    if k == 1 or rows.size < 2 * k:
        return [rows]
    cuts = np.sort(rng.choice(np.arange(1, rows.size), size=k - 1, replace=False))
    return np.split(rows, cuts)


def idealised_job(seed: int, fast: bool = False) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Features, labels (1 good, 0 junk) and kinds of the classes of one simulated data set.

    Kinds: ``view``/``sym_view`` (good; sym_view = an in-plane symmetric or featureless view),
    ``mixed`` (even mixture of 3+ views) and ``misaligned`` (psi errors of 25°), both good
    (their particles are), or a junk type (junk).
    """
    rng = np.random.default_rng(seed)
    box = int(rng.choice([48, 64, 64, 80, 96])) if not fast else 48
    px = float(rng.uniform(1.5, 4.5))
    diameter = float(rng.uniform(0.45, 0.7)) * box * px
    mask_diameter = min(diameter * rng.uniform(1.1, 1.4), box * px * 0.95)
    n_views = int(rng.integers(3, 9))
    snr = float(np.exp(rng.uniform(np.log(0.008), np.log(0.3))))
    n = int(rng.integers(1000, 2500)) if not fast else 600
    mol_kind, molecule, views = random_molecule(rng, diameter, n_views, seed)
    sim_args = dict(n=n, box=box, pixel_size_A=px, n_views=n_views, junk_fraction=float(rng.uniform(0.15, 0.45)),
                    n_micrographs=20, seed=seed, particle_diameter_A=diameter,
                    molecule_seed=int(rng.integers(0, 1000)), molecule=molecule, view_euler_deg=views)
    sim = simulate_particles(snr=snr, **sim_args)
    t = sim.truth
    # The same particles without noise, CTF or normalisation: how a classification would align the junk.
    clean = simulate_particles(snr=None, apply_ctf=False, normalise=False, **sim_args).images
    junk_psi, junk_origin = np.zeros(n), np.zeros((n, 2))
    for i in np.nonzero(t["is_junk"].to_numpy())[0]:
        junk_psi[i], junk_origin[i] = junk_alignment(clean[i])
    del clean
    fx, fy = frequency_grid(box, px)
    o = sim.optics

    def make(rows: np.ndarray, psi_sd: float, shift_sd: float, align_junk: bool = True) -> dict[str, Any]:
        junk = t["is_junk"].to_numpy()[rows]
        psi = np.where(junk, junk_psi[rows], t["psi_deg"].to_numpy()[rows]) + rng.normal(0, psi_sd, rows.size)
        orig = np.where(junk[:, None], junk_origin[rows], t[["origin_x_px", "origin_y_px"]].to_numpy()[rows])
        orig = orig + rng.normal(0, shift_sd, (rows.size, 2))
        if not align_junk:  # junk that nothing aligns consistently: random in-plane angles
            psi = np.where(junk, rng.uniform(-180, 180, rows.size), psi)
        aligned = align_images(sim.images[rows], psi, orig)
        ctf = compute_ctf(fx, fy, t["defocus_u_A"].to_numpy()[rows], t["defocus_v_A"].to_numpy()[rows],
                          t["defocus_angle_deg"].to_numpy()[rows] - psi, o["voltage_kV"], o["cs_mm"],
                          o["amplitude_contrast"])
        return wiener_class(aligned, ctf, px, mask_diameter)

    def symmetric_view(v: int) -> bool:
        return mol_kind == "round" or (mol_kind != "asymmetric" and v == 0)

    classes: list[tuple[np.ndarray, int, str, float, float]] = []
    view = t["view"].to_numpy()
    kind = t["kind"].to_numpy()
    for v in range(n_views):
        rows = rng.permutation(np.nonzero(view == v)[0])
        for part in _split_sizes(rng, rows, 3):
            if part.size > MIN_PARTICLES_SCORED:
                psi_sd = float(rng.choice([0.5, 2.0, 4.0]))
                contaminate = rng.random() < 0.3
                if contaminate:  # a good class with a few junk particles in it
                    junk_rows = rng.choice(np.nonzero(t["is_junk"].to_numpy())[0], size=max(1, part.size // 8))
                    part = np.concatenate([part, junk_rows])
                classes.append((part, 1, "sym_view" if symmetric_view(v) else "view", psi_sd, 0.5))
    for jt in JUNK_TYPES:
        rows = rng.permutation(np.nonzero(kind == jt)[0])
        for part in _split_sizes(rng, rows, 4):  # junk often ends up in several small classes
            if part.size > MIN_PARTICLES_SCORED:
                classes.append((part, 0, jt, float(rng.choice([2.0, 5.0, 10.0])), 1.0))
    # Blurred even mixtures of 3+ views, and badly aligned views: blurred averages, but of good
    # particles. The score is about the particles (what a selection keeps), so they are good.
    for _ in range(int(rng.integers(1, 3))):
        mixed_views = rng.choice(n_views, size=int(rng.integers(3, n_views + 1)), replace=False)
        per_view = int(rng.integers(10, 60))
        rows = np.concatenate([rng.permutation(np.nonzero(view == v)[0])[:per_view] for v in mixed_views])
        classes.append((rows, 1, "mixed", 0.0, 0.5))
    if mol_kind != "round":  # a round particle misaligned in psi is the same as an aligned one
        v = int(rng.integers(1 if mol_kind != "asymmetric" else 0, n_views))  # not a symmetric top view either
        rows = rng.permutation(np.nonzero(view == v)[0])[: int(rng.integers(30, 200))]
        if rows.size > MIN_PARTICLES_SCORED:
            classes.append((rows, 1, "misaligned", 25.0, 3.0))

    total = sum(c[0].size for c in classes)
    feats, labels, kinds = [], [], []
    for rows, label, what, psi_sd, shift_sd in classes:
        cls = make(rows, psi_sd, shift_sd, align_junk=rng.random() < 0.75)
        rot, trans = cls["accuracy_rotation_deg"], cls["accuracy_translation_A"]
        if rows.size <= 100 and rng.random() < 0.5:
            # Runs that do not estimate accuracies (999): Select gives small classes fixed values.
            rot, trans = SMALL_CLASS_ACCURACY
        feats.append(features_for_class(cls["average"], px, mask_diameter, rows.size / total, rows.size, len(classes),
                                        cls["resolution_A"], rot, trans))
        labels.append(label)
        kinds.append(what)
    return feats, labels, kinds


# ----------------------------------------------------------------------------- Class2D outputs


def class2d_job(optimiser_star: str, truth_csv: str, project_dir: str = ".") -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Features and majority-vote labels of the scored classes of a Class2D run on simulated data."""
    from emclass2d.jobtypes.select.inputs import read_selection_input

    it = read_selection_input(optimiser_star, project_dir)
    truth = pd.read_csv(truth_csv)
    names = it.particles["rlnImageName"].astype(str)
    if "rlnImageName" in truth:  # the project files' truth: matched by image name
        junk = truth.set_index("rlnImageName")["is_junk"].astype(bool).reindex(names.to_numpy())
        if junk.isna().any():
            raise ValueError(f"{truth_csv}: no truth row for image {names[junk.isna().to_numpy()].iloc[0]}")
        junk = junk.to_numpy(dtype=bool)
    else:  # one stack in truth order: matched by image index
        index = names.str.split("@").str[0].astype(int).to_numpy() - 1
        junk = truth["is_junk"].astype(bool).to_numpy()[index]
    cls = it.particles["rlnClassNumber"].to_numpy(dtype=int)
    feats, labels, kinds = [], [], []
    for k, f in enumerate(class_features(it)):
        members = junk[cls == k + 1]
        if f is None or members.size == 0:
            continue
        feats.append(f)
        labels.append(int(members.mean() < 0.5))
        kinds.append("class2d")
    return feats, labels, kinds


#: The Class2D runs of the shipped weights: simulator seed (also the molecule's), particles,
#: box (px), pixel size (Å), views, SNR, junk fraction, classes K, EM iterations, mask
#: diameter (Å), junk types ("" = all five) and molecule ("" asymmetric, "cN" a Cn ring with
#: a top view, "round" a featureless ellipsoid). Small enough for minutes each on 2 cores.
CLASS2D_RUNS: tuple[tuple[Any, ...], ...] = (
    (101, 1000, 48, 4.0, 4, 0.10, 0.25, 10, 9, 150.0, "", ""),
    (102, 1200, 64, 3.0, 5, 0.05, 0.20, 12, 9, 150.0, "", ""),
    (103, 800, 48, 3.5, 3, 0.20, 0.30, 8, 8, 130.0, "", ""),
    (104, 1500, 48, 4.0, 6, 0.08, 0.15, 16, 9, 150.0, "", ""),
    (105, 1000, 64, 3.0, 4, 0.15, 0.35, 12, 8, 150.0, "empty,ice,carbon", ""),
    (106, 1200, 48, 4.5, 5, 0.03, 0.25, 10, 10, 170.0, "", ""),
    (107, 900, 56, 3.5, 4, 0.10, 0.30, 14, 9, 160.0, "aggregate,broken,empty", ""),
    (108, 1400, 64, 3.0, 6, 0.12, 0.20, 16, 8, 150.0, "", ""),
    (109, 1000, 48, 4.0, 4, 0.10, 0.25, 10, 9, 150.0, "", "c6"),
    (110, 1200, 48, 4.0, 4, 0.10, 0.25, 10, 10, 150.0, "empty,ice,carbon", ""),
    (111, 1000, 56, 3.5, 3, 0.08, 0.30, 8, 9, 160.0, "", "round"),
    (112, 1200, 48, 4.0, 5, 0.15, 0.20, 12, 9, 150.0, "", "c4"),
    (113, 800, 64, 3.0, 4, 0.06, 0.25, 10, 8, 150.0, "", ""),
    (114, 1300, 48, 4.0, 4, 0.12, 0.25, 12, 9, 150.0, "", "c9"),
)


def make_class2d_run(project_dir: str | Path, spec: Sequence[Any], log: Any = print) -> tuple[str, str]:
    """Simulate a particle set and classify it with our Class2D (EM) in ``project_dir``.

    Returns the last optimiser.star (relative to the project) and the truth CSV. A run whose
    last optimiser.star exists is reused.
    """
    import os

    from emclass2d.jobtypes.base import RunContext
    from emclass2d.jobtypes.class2d.options import Class2DOptions
    from emclass2d.jobtypes.class2d.run import run_class2d
    from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files

    seed, n, box, px, n_views, snr, junk, k, iters, diameter, junk_types, mol = spec
    project = Path(project_dir)
    opt = f"Class2D/job001/run_it{iters:03d}_optimiser.star"
    truth = str(project / "Sim" / "truth.csv")
    if (project / opt).is_file():
        return opt, truth
    options: dict[str, Any] = {"molecule_seed": seed}
    if junk_types:
        options["junk_mix"] = {name: 1.0 for name in junk_types.split(",")}
    if mol == "round":
        options["molecule"] = make_round_molecule(0.6 * box * px, (0.8, 0.9), seed=seed)
    elif mol:
        options["molecule"] = make_symmetric_molecule(0.6 * box * px, int(mol[1:]), seed=seed)
        views = choose_views(n_views, seed)
        views[0] = (0.0, 0.0)
        options["view_euler_deg"] = views
    project.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(project)  # a job runs in its project directory
    try:
        simulate_project_files("Sim", n=n, box=box, pixel_size_A=px, n_views=n_views, snr=snr, junk_fraction=junk,
                               n_micrographs=20, seed=seed, project_dir=".", **options)
        o = Class2DOptions(fn_img="Sim/particles.star", nr_classes=k, do_em=True, do_grad=False, nr_iter_em=iters,
                           particle_diameter=diameter, random_seed=1)
        Path("Class2D/job001").mkdir(parents=True, exist_ok=True)
        run_class2d(RunContext(project_dir=Path("."), job_dir="Class2D/job001/", options=o, log=log, warn=log))
    finally:
        os.chdir(cwd)
    return opt, truth


# ----------------------------------------------------------------------------- fitting


def fit_mlp(X: np.ndarray, y: np.ndarray, hidden: int = 8, l2: float = 1e-2, epochs: int = 1500,
            lr: float = 0.01, seed: int = 0, sample_weight: np.ndarray | None = None) -> RankerModel:
    """One-hidden-layer tanh network with logistic output, full-batch Adam on cross-entropy.

    Good and junk classes weigh the same in total; ``sample_weight`` multiplies that.
    """
    rng = np.random.default_rng(seed)
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    Z = (X - mean) / std
    d = Z.shape[1]
    params = [rng.normal(0, 1 / math.sqrt(d), (d, hidden)), np.zeros(hidden), rng.normal(0, 1 / math.sqrt(hidden), hidden), np.zeros(1)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    pos = y.mean()
    wts = np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))  # balanced classes
    if sample_weight is not None:
        wts = wts * sample_weight / np.mean(sample_weight)
    for step in range(1, epochs + 1):
        w1, b1, w2, b2 = params
        h = np.tanh(Z @ w1 + b1)
        p = 1 / (1 + np.exp(-(h @ w2 + b2[0])))
        g = wts * (p - y) / len(y)
        grads = [None, None, h.T @ g + l2 * w2, np.array([g.sum()])]
        gh = np.outer(g, w2) * (1 - h * h)
        grads[0] = Z.T @ gh + l2 * w1
        grads[1] = gh.sum(axis=0)
        for i, gr in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * gr
            v[i] = 0.999 * v[i] + 0.001 * gr * gr
            params[i] = params[i] - lr * (m[i] / (1 - 0.9**step)) / (np.sqrt(v[i] / (1 - 0.999**step)) + 1e-8)
    w1, b1, w2, b2 = params
    return RankerModel(INPUT_NAMES, mean, std, w1, b1, w2, float(b2[0]))


def fit_platt(logits: np.ndarray, y: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """Platt scaling ``sigmoid(a·logit + b)``: Newton's method with step halving (Platt's target smoothing).

    Step halving keeps the cross-entropy decreasing, so nearly separable calibration
    data cannot throw the slope off to a huge value.
    """
    z = np.asarray(logits, dtype=np.float64)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(a: float, b: float) -> float:
        t = a * z + b
        return float(np.sum(np.logaddexp(0.0, t) - target * t))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (a * z + b)))
        g = np.array([np.sum((p - target) * z), np.sum(p - target)])
        w = p * (1 - p) + 1e-9
        H = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(H, g)
        t = 1.0
        while t > 1e-6 and loss(a - t * step[0], b - t * step[1]) > current:
            t *= 0.5
        a, b = a - t * step[0], b - t * step[1]
        new = loss(a, b)
        if abs(current - new) < 1e-12 or np.abs(t * step).max() < 1e-10:
            break
        current = new
    return float(a), float(b)


def calibration_table(scores: np.ndarray, y: np.ndarray, bins: int = 5) -> list[tuple[float, float, float, int]]:
    """(bin low, bin high, fraction good, count) per score bin."""
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (scores >= lo) & ((scores < hi) if hi < 1 else (scores <= hi))
        out.append((float(lo), float(hi), float(y[sel].mean()) if sel.any() else float("nan"), int(sel.sum())))
    return out


Job = tuple[list[dict[str, Any]], list[int], list[str]]


def _stack(jobs: Sequence[Job]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    xs = [model_inputs(f) for f, _, _ in jobs if f]
    ys = [np.asarray(lab) for f, lab, _ in jobs if f]
    kinds = [k for f, _, ks in jobs if f for k in ks]
    if not xs:
        return np.zeros((0, len(INPUT_NAMES))), np.zeros(0), []
    return np.vstack(xs), np.concatenate(ys).astype(float), kinds


def source_of(job: Job) -> str:
    """``class2d`` for the classes of a Class2D run, ``idealised`` otherwise."""
    return "class2d" if job[2] and job[2][0] == "class2d" else "idealised"


def split_jobs(jobs: Sequence[Job], seed: int) -> tuple[list[Job], list[Job], list[Job]]:
    """Whole jobs (data sets, runs) into fit 60 % / calibrate 20 % / test 20 %, per source.

    Splitting by job, never by class, keeps the test honest: the classes of one data set
    share a molecule, noise and CTFs, and the last three inputs are normalised per job.
    """
    rng = np.random.default_rng(seed)
    tr, cal, te = [], [], []
    for source in ("idealised", "class2d"):
        group = [j for j in jobs if source_of(j) == source]
        order = rng.permutation(len(group))
        n_te = max(int(round(0.2 * len(group))), 1 if len(group) >= 3 else 0)
        n_cal = max(int(round(0.2 * len(group))), 1 if len(group) >= 3 else 0)
        te += [group[i] for i in order[:n_te]]
        cal += [group[i] for i in order[n_te:n_te + n_cal]]
        tr += [group[i] for i in order[n_te + n_cal:]]
    return tr, cal, te


def evaluate(scores: np.ndarray, y: np.ndarray, kinds: Sequence[str]) -> dict[str, Any]:
    """Accuracy at 0.5, Brier score, calibration table and accuracy per kind of class."""
    k = np.asarray(kinds)
    return {"n": int(len(y)), "n_good": int(y.sum()),
            "accuracy": float(np.mean((scores >= 0.5) == (y == 1))) if len(y) else float("nan"),
            "brier": float(np.mean((scores - y) ** 2)) if len(y) else float("nan"),
            "calibration": calibration_table(scores, y),
            "accuracy_by_kind": {kind: float(np.mean((scores[k == kind] >= 0.5) == (y[k == kind] == 1)))
                                 for kind in sorted(set(kinds))}}


def train(jobs: list[Job], seed: int = 0, log: Any = print, class2d_weight: float = CLASS2D_WEIGHT
          ) -> tuple[RankerModel, dict[str, Any]]:
    """Fit on 60 % of the jobs, calibrate on 20 %, report on the held-out 20 % (by source).

    A class of a Class2D run weighs ``class2d_weight`` times an idealised class in the fit
    (they are fewer and closer to what the score meets in use).
    """
    tr, cal, te = split_jobs(jobs, seed)
    Xtr, ytr, _ = _stack(tr)
    Xcal, ycal, _ = _stack(cal)
    weight = np.concatenate([np.full(len(j[1]), class2d_weight if source_of(j) == "class2d" else 1.0)
                             for j in tr if j[0]])
    model = fit_mlp(Xtr, ytr, seed=seed, sample_weight=weight)
    model.platt_a, model.platt_b = fit_platt(model.logit(Xcal), ycal)
    report: dict[str, Any] = {"n_train": len(ytr), "n_calibrate": len(ycal), "jobs_test": {}}
    for source in ("all", "idealised", "class2d"):
        part = [j for j in te if source in ("all", source_of(j))]
        X, y, kinds = _stack(part)
        if not len(y):
            continue
        r = evaluate(model.predict(X), y, kinds)
        report[source] = r
        log(f"held-out {source}: {len(part)} jobs, {r['n']} classes ({r['n_good']} good); "
            f"accuracy at 0.5: {r['accuracy']:.3f}; Brier {r['brier']:.3f}")
        for lo, hi, frac, cnt in r["calibration"]:
            log(f"  score {lo:.1f}-{hi:.1f}: {cnt:4d} classes, fraction good {frac:.2f}")
        log("  accuracy by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in r["accuracy_by_kind"].items()))
    return model, report


def save_jobs(path: str, jobs: Sequence[Job]) -> None:
    """Write labelled features of jobs as JSON (to refit without simulating again)."""
    from emclass2d.jobtypes.select.scoring import _jsonable

    with open(path, "w") as fh:
        json.dump([{"features": _jsonable(f), "labels": [int(v) for v in lab], "kinds": list(k)}
                   for f, lab, k in jobs], fh)


def load_jobs(path: str) -> list[Job]:
    """Jobs written by :func:`save_jobs`."""
    with open(path) as fh:
        return [(j["features"], j["labels"], j["kinds"]) for j in json.load(fh)]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="weights file to write (.npz)")
    parser.add_argument("--jobs", type=int, default=80, help="simulated data sets of idealised classes (default 80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class2d", action="append", default=[], metavar="OPTIMISER:TRUTH",
                        help="a Class2D run on simulated data and the simulator's truth CSV (repeatable; paths "
                             "relative to --project-dir, or PROJECT=OPTIMISER:TRUTH for a run of its own project)")
    parser.add_argument("--project-dir", default=".", help="project directory of the --class2d runs")
    parser.add_argument("--class2d-runs", metavar="DIR",
                        help="make (or reuse) the Class2D runs of CLASS2D_RUNS in DIR/run01, DIR/run02, ... "
                             "and train on them")
    parser.add_argument("--fast", action="store_true", help="small boxes and data sets (smoke test)")
    parser.add_argument("--class2d-weight", type=float, default=CLASS2D_WEIGHT,
                        help=f"weight of a Class2D-run class relative to an idealised one (default {CLASS2D_WEIGHT:g})")
    parser.add_argument("--save-features", metavar="JSON", help="also write the labelled features of all jobs")
    parser.add_argument("--load-features", metavar="JSON", action="append", default=[],
                        help="labelled features from --save-features instead of simulating (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args(argv)
    t0 = time.time()
    jobs: list[Job] = []
    for path in args.load_features:
        jobs += load_jobs(path)
        print(f"{path}: {len(jobs)} jobs so far", flush=True)
    if not args.load_features:
        for j in range(args.jobs):
            jobs.append(idealised_job(1000 * args.seed + j + 1, fast=args.fast))
            print(f"data set {j + 1}/{args.jobs}: {len(jobs[-1][0])} classes ({time.time() - t0:.0f} s)", flush=True)
    if args.class2d_runs:
        for i, run in enumerate(CLASS2D_RUNS, start=1):
            project = Path(args.class2d_runs) / f"run{i:02d}"
            opt, truth = make_class2d_run(project, run, log=lambda *a: None)
            jobs.append(class2d_job(opt, truth, str(project)))
            print(f"{project}: {len(jobs[-1][0])} scored classes ({time.time() - t0:.0f} s)", flush=True)
    for spec in args.class2d:
        project, sep, rest = spec.partition("=")
        project, rest = (project, rest) if sep else (args.project_dir, spec)
        opt, _, truth = rest.rpartition(":")
        truth_path = truth if Path(truth).is_absolute() else str(Path(project) / truth)
        jobs.append(class2d_job(opt, truth_path, project))
        print(f"{opt}: {len(jobs[-1][0])} scored classes", flush=True)
    if args.save_features:
        save_jobs(args.save_features, jobs)
    model, _ = train(jobs, seed=args.seed, class2d_weight=args.class2d_weight)
    model.save(args.out)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
