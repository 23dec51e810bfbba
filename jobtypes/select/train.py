"""Train the class-score model on labelled class averages and write its weights.

Two sources of labelled classes, each grouped by "job" (the last three ranker inputs are
normalised per job):

* idealised classes from :func:`emclass2d.core.simulate.simulate_particles` data sets
  (random box, pixel size, particle size, SNR, class sizes): CTF-corrected Wiener
  averages of the particles of one view (good) or one junk type, mixed views, and
  contaminated classes (junk), with small misalignments, solvent-flattened as Class2D's
  output, with SSNR-based resolution and accuracies as Class2D estimates them;
* Class2D runs on simulated data: ``--class2d OPTIMISER.star:TRUTH.csv`` (repeatable). The
  truth CSV (the simulator's truth table, ``Simulation.truth.to_csv``) has one row per
  image of the particle stack in stack order with an ``is_junk`` column; particles are
  matched to it by the image index of rlnImageName and each class is labelled by the
  majority of its particles.

The model (:class:`emclass2d.jobtypes.select.model.RankerModel`) is trained on 60 % of
the jobs, Platt-calibrated on 20 % and evaluated on the last 20 % (held-out jobs).

Example::

    python -m emclass2d.jobtypes.select.train --out weights.npz
    python -m emclass2d.jobtypes.select.train --out weights.npz --jobs 80 \\
        --class2d Class2D/job003/run_it025_optimiser.star:sim_truth.csv --project-dir proj
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid, irfft2_centered, radial_average, rfft2_centered, shell_index
from emclass2d.core.mask import solvent_flatten
from emclass2d.core.ranker_features import MIN_PARTICLES_SCORED, expected_accuracies, resolution_from_ssnr
from emclass2d.core.simulate import JUNK_TYPES, simulate_particles
from emclass2d.jobtypes.select.model import INPUT_NAMES, RankerModel, model_inputs
from emclass2d.jobtypes.select.scoring import class_features, features_for_class

#: Regularisation parameter T used for the idealised Wiener averages (Class2D default 2).
TAU2_FUDGE = 2.0


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
    rot, trans = expected_accuracies(avg, s_ctf2 / len(images), sigma2, pixel_size_A)
    return {"average": avg, "resolution_A": res, "accuracy_rotation_deg": rot, "accuracy_translation_A": trans}


def idealised_job(seed: int, fast: bool = False) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Features, labels (1 good, 0 junk) and kinds of the classes of one simulated data set."""
    rng = np.random.default_rng(seed)
    box = int(rng.choice([48, 64, 64, 80, 96])) if not fast else 48
    px = float(rng.uniform(1.5, 4.5))
    diameter = float(rng.uniform(0.45, 0.7)) * box * px
    mask_diameter = min(diameter * rng.uniform(1.1, 1.4), box * px * 0.95)
    n_views = int(rng.integers(3, 9))
    snr = float(np.exp(rng.uniform(np.log(0.008), np.log(0.3))))
    n = int(rng.integers(1500, 4000)) if not fast else 600
    sim = simulate_particles(n=n, box=box, pixel_size_A=px, n_views=n_views, snr=snr,
                             junk_fraction=float(rng.uniform(0.15, 0.45)), n_micrographs=20, seed=seed,
                             particle_diameter_A=diameter, molecule_seed=int(rng.integers(0, 1000)))
    t = sim.truth
    fx, fy = frequency_grid(box, px)
    o = sim.optics

    def make(rows: np.ndarray, psi_sd: float, shift_sd: float) -> dict[str, Any]:
        psi = t["psi_deg"].to_numpy()[rows] + rng.normal(0, psi_sd, rows.size)
        orig = t[["origin_x_px", "origin_y_px"]].to_numpy()[rows] + rng.normal(0, shift_sd, (rows.size, 2))
        junk = t["is_junk"].to_numpy()[rows]
        # Junk is not aligned to anything consistent: random in-plane angles and small shifts.
        psi = np.where(junk, rng.uniform(-180, 180, rows.size), psi)
        aligned = align_images(sim.images[rows], psi, orig)
        ctf = compute_ctf(fx, fy, t["defocus_u_A"].to_numpy()[rows], t["defocus_v_A"].to_numpy()[rows],
                          t["defocus_angle_deg"].to_numpy()[rows] - psi, o["voltage_kV"], o["cs_mm"],
                          o["amplitude_contrast"])
        return wiener_class(aligned, ctf, px, mask_diameter)

    classes: list[tuple[np.ndarray, int, str, float, float]] = []
    view = t["view"].to_numpy()
    kind = t["kind"].to_numpy()
    for v in range(n_views):
        rows = rng.permutation(np.nonzero(view == v)[0])
        n_split = int(rng.integers(1, 4))
        for part in np.array_split(rows, n_split):
            if part.size > MIN_PARTICLES_SCORED:
                psi_sd = float(rng.choice([0.5, 2.0, 4.0]))
                contaminate = rng.random() < 0.3
                if contaminate:  # a good class with a few junk particles in it
                    junk_rows = rng.choice(np.nonzero(t["is_junk"].to_numpy())[0], size=max(1, part.size // 8))
                    part = np.concatenate([part, junk_rows])
                classes.append((part, 1, "view", psi_sd, 0.5))
    for jt in JUNK_TYPES:
        rows = rng.permutation(np.nonzero(kind == jt)[0])
        for part in np.array_split(rows, int(rng.integers(1, 3))):
            if part.size > MIN_PARTICLES_SCORED:
                classes.append((part, 0, jt, 0.0, 1.0))
    good = np.nonzero(view >= 0)[0]
    for _ in range(int(rng.integers(1, 3))):  # blurred mixtures of views, and badly aligned views
        rows = rng.choice(good, size=int(rng.integers(30, 200)), replace=False)
        classes.append((rows, 0, "mixed", 0.0, 0.5))
    v = int(rng.integers(0, n_views))
    rows = rng.permutation(np.nonzero(view == v)[0])[: int(rng.integers(30, 200))]
    if rows.size > MIN_PARTICLES_SCORED:
        classes.append((rows, 0, "misaligned", 25.0, 3.0))

    total = sum(c[0].size for c in classes)
    feats, labels, kinds = [], [], []
    for rows, label, what, psi_sd, shift_sd in classes:
        cls = make(rows, psi_sd, shift_sd)
        if what == "misaligned":
            label = 0
        feats.append(features_for_class(cls["average"], px, mask_diameter, rows.size / total, rows.size, len(classes),
                                        cls["resolution_A"], cls["accuracy_rotation_deg"], cls["accuracy_translation_A"]))
        labels.append(label)
        kinds.append(what)
    return feats, labels, kinds


# ----------------------------------------------------------------------------- Class2D outputs


def class2d_job(optimiser_star: str, truth_csv: str, project_dir: str = ".") -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Features and majority-vote labels of the scored classes of a Class2D run on simulated data."""
    from emclass2d.jobtypes.select.inputs import read_class2d_iteration

    it = read_class2d_iteration(optimiser_star, project_dir)
    truth = pd.read_csv(truth_csv)
    index = it.particles["rlnImageName"].astype(str).str.split("@").str[0].astype(int).to_numpy() - 1
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


# ----------------------------------------------------------------------------- fitting


def fit_mlp(X: np.ndarray, y: np.ndarray, hidden: int = 12, l2: float = 1e-3, epochs: int = 1500,
            lr: float = 0.01, seed: int = 0) -> RankerModel:
    """One-hidden-layer tanh network with logistic output, full-batch Adam on cross-entropy."""
    rng = np.random.default_rng(seed)
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    Z = (X - mean) / std
    d = Z.shape[1]
    params = [rng.normal(0, 1 / math.sqrt(d), (d, hidden)), np.zeros(hidden), rng.normal(0, 1 / math.sqrt(hidden), hidden), np.zeros(1)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    pos = y.mean()
    wts = np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))  # balanced classes
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
    """Platt scaling ``sigmoid(a·logit + b)`` by Newton's method (with Platt's target smoothing)."""
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (a * logits + b)))
        g = np.array([np.sum((p - target) * logits), np.sum(p - target)])
        w = p * (1 - p) + 1e-9
        H = np.array([[np.sum(w * logits * logits), np.sum(w * logits)], [np.sum(w * logits), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(H, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def calibration_table(scores: np.ndarray, y: np.ndarray, bins: int = 5) -> list[tuple[float, float, float, int]]:
    """(bin low, bin high, fraction good, count) per score bin."""
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (scores >= lo) & ((scores < hi) if hi < 1 else (scores <= hi))
        out.append((float(lo), float(hi), float(y[sel].mean()) if sel.any() else float("nan"), int(sel.sum())))
    return out


def _stack(jobs: Sequence[tuple[list[dict[str, Any]], list[int], list[str]]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    xs = [model_inputs(f) for f, _, _ in jobs if f]
    ys = [np.asarray(lab) for f, lab, _ in jobs if f]
    kinds = [k for f, _, ks in jobs if f for k in ks]
    return np.vstack(xs), np.concatenate(ys).astype(float), kinds


def train(jobs: list[tuple[list[dict[str, Any]], list[int], list[str]]], seed: int = 0, log: Any = print) -> tuple[RankerModel, dict[str, Any]]:
    """Fit on 60 % of the jobs, calibrate on 20 %, report on the held-out 20 %."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(jobs))
    n_tr, n_cal = int(0.6 * len(jobs)), int(0.2 * len(jobs))
    tr = [jobs[i] for i in order[:n_tr]]
    cal = [jobs[i] for i in order[n_tr:n_tr + n_cal]]
    te = [jobs[i] for i in order[n_tr + n_cal:]]
    Xtr, ytr, _ = _stack(tr)
    Xcal, ycal, _ = _stack(cal)
    Xte, yte, kte = _stack(te)
    model = fit_mlp(Xtr, ytr, seed=seed)
    model.platt_a, model.platt_b = fit_platt(model.logit(Xcal), ycal)
    s = model.predict(Xte)
    acc = float(np.mean((s >= 0.5) == (yte == 1)))
    brier = float(np.mean((s - yte) ** 2))
    table = calibration_table(s, yte)
    per_kind = {k: float(np.mean((s[np.array(kte) == k] >= 0.5) == (yte[np.array(kte) == k] == 1)))
                for k in sorted(set(kte))}
    report = {"n_train": len(ytr), "n_calibrate": len(ycal), "n_test": len(yte), "accuracy": acc, "brier": brier,
              "calibration": table, "accuracy_by_kind": per_kind}
    log(f"held-out classes: {len(yte)} ({int(yte.sum())} good); accuracy at 0.5: {acc:.3f}; Brier {brier:.3f}")
    for lo, hi, frac, cnt in table:
        log(f"  score {lo:.1f}-{hi:.1f}: {cnt:4d} classes, fraction good {frac:.2f}")
    log("  accuracy by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in per_kind.items()))
    return model, report


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="weights file to write (.npz)")
    parser.add_argument("--jobs", type=int, default=60, help="simulated data sets of idealised classes (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class2d", action="append", default=[], metavar="OPTIMISER:TRUTH",
                        help="a Class2D run on simulated data and the simulator's truth CSV (repeatable)")
    parser.add_argument("--project-dir", default=".", help="project directory of the --class2d runs")
    parser.add_argument("--fast", action="store_true", help="small boxes and data sets (smoke test)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args(argv)
    t0 = time.time()
    jobs = []
    for j in range(args.jobs):
        jobs.append(idealised_job(1000 * args.seed + j + 1, fast=args.fast))
        print(f"data set {j + 1}/{args.jobs}: {len(jobs[-1][0])} classes ({time.time() - t0:.0f} s)", flush=True)
    for spec in args.class2d:
        opt, _, truth = spec.rpartition(":")
        jobs.append(class2d_job(opt, truth, args.project_dir))
        print(f"{opt}: {len(jobs[-1][0])} scored classes", flush=True)
    model, _ = train(jobs, seed=args.seed)
    model.save(args.out)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
