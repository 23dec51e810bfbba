"""Throughput of one E-step (expectation_batch) on synthetic particles, CPU or GPU.

Two regimes, because the cost of the fine pass depends on how many coarse samples are
significant:

* ``flat``: references are averages of random particle subsets (as after RELION's
  initialisation) at a first-iteration image size, so posteriors are flat and thousands of
  coarse samples are significant;
* ``peaked``: references are the true classes at the full box, so only a few samples are
  significant (a converged run).

For each regime it reports the median time over ``--repeat`` runs, particles per second,
hypotheses per second (particles × classes × psis × translations / s, for the coarse
search space and for the equivalent fully oversampled one), the mean number of
significant samples and peak temporary memory (tracemalloc on the CPU, CuPy's memory
pool on a GPU).

Example::

    python benchmarks/bench_estep.py --device cpu --box 64 --classes 12 --particles 300
    python benchmarks/bench_estep.py --device gpu --box 128 --classes 50 --particles 2000 --regime peaked
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import tracemalloc

import numpy as np
from scipy.ndimage import map_coordinates

from emclass2d.core.backend import get_xp, to_host
from emclass2d.core.batch import ParticleBatch
from emclass2d.core.estep import expectation_batch, prepare_iteration
from emclass2d.core.initial import NoiseSums, add_noise_sums, lowpass_raised_cosine, sigma2_noise_from_sums
from emclass2d.core.model import Model, Settings
from emclass2d.core.resolution import image_sizes
from emclass2d.core.sampling import make_sampling, perturbation_for_iteration, with_perturbation


def synthetic(box: int, n_classes: int, n_particles: int, px: float, seed: int = 0, snr: float = 0.1):
    """Blob classes and particles = rotated, shifted classes + white noise of the given SNR."""
    rng = np.random.default_rng(seed)
    c = np.arange(box) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    refs = np.zeros((n_classes, box, box))
    for k in range(n_classes):
        for _ in range(6):
            cx, cy = rng.normal(0, box / 8, 2)
            refs[k] += rng.uniform(0.3, 1) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (box / 20) ** 2))
    cls = rng.integers(0, n_classes, n_particles)
    psi = rng.uniform(0, 360, n_particles)
    off = rng.uniform(-2, 2, (n_particles, 2))
    imgs = np.empty((n_particles, box, box), dtype=np.float32)
    for i in range(n_particles):
        a = np.deg2rad(psi[i])
        ux, uy = x + off[i, 0], y + off[i, 1]
        sx = np.cos(a) * ux - np.sin(a) * uy + box // 2
        sy = np.sin(a) * ux + np.cos(a) * uy + box // 2
        imgs[i] = map_coordinates(refs[cls[i]], [sy, sx], order=1)
    noise_sd = float(refs.std() / np.sqrt(snr))
    imgs += rng.normal(0, noise_sd, imgs.shape).astype(np.float32)
    return refs.astype(np.float32), imgs, noise_sd


def random_subset_averages(imgs: np.ndarray, n_classes: int, seed: int = 1) -> np.ndarray:
    """First-iteration-like references: averages of random subsets of (other) particles."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n_classes, imgs.shape[0])
    return np.stack([imgs[lab == k].mean(axis=0) if np.any(lab == k) else imgs.mean(axis=0)
                     for k in range(n_classes)]).astype(np.float32)


def run_regime(args, xp, regime: str) -> dict:
    """Time expectation_batch in one regime; returns the figures printed by :func:`main`."""
    n, k, b, px = args.box, args.classes, args.particles, args.pixel_size
    refs, imgs, noise_sd = synthetic(n, k, b, px, snr=args.snr)
    diameter = 0.8 * n * px
    sigma2 = np.full((1, n // 2 + 1), noise_sd ** 2 / (2 * n * n))
    if regime == "flat":
        # iteration 1: references from random subsets, noise estimated from the particles
        # (signal included), current size from ini_high (RELION's ``MlOptimiser::updateCurrentResolution``, ``MlOptimiser::initialise``)
        # (from particles other than the timed ones: no self-correlation peak), low-passed
        # at ini_high as RELION's initial references
        refs = random_subset_averages(synthetic(n, k, 25 * k, px, seed=1, snr=args.snr)[1], k)
        refs = lowpass_raised_cosine(refs, args.ini_high, px)
        sums = add_noise_sums(NoiseSums.zeros(n), imgs, np.zeros(b, dtype=np.int64), radius_px=diameter / (2 * px))
        sigma2 = np.asarray(sigma2_noise_from_sums(sums))
        maxres = int(round(n * px / args.ini_high))
        cur = min(n, 2 * (maxres + 10))
    else:
        cur = args.current_size or n
    _, coarse = image_sizes(cur / (2 * n * px) - 10 / (n * px), n, px, 10, args.psi_step, diameter, args.oversampling)
    model = Model.empty(k, n, px, xp=xp)
    model = dataclasses.replace(
        model, references=xp.asarray(refs), current_size=cur, coarse_size=coarse,
        sigma2_noise=xp.asarray(sigma2 * args.sigma2_scale),
        data_vs_prior=xp.asarray(np.where(np.arange(n // 2 + 1) < cur // 4, 5.0, 0.5)[None].repeat(k, 0)))
    # GUI defaults: --ctf --norm --scale --zero_mask (RELION's ``RelionJob::initialiseClass2DJob``)
    settings = Settings(do_ctf=True, do_norm=True, do_scale=True, zero_mask=not args.noise_mask,
                        particle_diameter_A=diameter, random_seed=1)
    samp = make_sampling(args.psi_step, args.offset_range, args.offset_step, args.oversampling,
                         round_psi_to_32=args.device != "cpu")
    samp = with_perturbation(samp, perturbation_for_iteration(1, 1))
    batch = ParticleBatch(
        images=xp.asarray(imgs), part_index=xp.arange(b), group=xp.zeros(b, dtype=xp.int32),
        optics_group=xp.zeros(b, dtype=xp.int32), origin_px=xp.zeros((b, 2)), norm_correction=xp.ones(b),
        defocus_u_A=xp.full(b, 15000.0), defocus_v_A=xp.full(b, 14000.0), defocus_angle_deg=xp.zeros(b),
        phase_shift_deg=xp.zeros(b), ctf_bfactor_A2=xp.zeros(b), ctf_scale=xp.ones(b),
        voltage_kV=xp.full(b, 300.0), cs_mm=xp.full(b, 2.7), amplitude_contrast=xp.full(b, 0.1),
        ctf_premultiplied=xp.zeros(b, dtype=bool))
    setup = prepare_iteration(model, settings, samp, iteration=1)
    budget = int(args.budget_mb * 2 ** 20)
    gpu = xp is not np
    expectation_batch(batch, model, settings, setup, memory_budget_bytes=budget)  # warm-up
    if gpu:
        xp.cuda.Device().synchronize()
        pool = xp.get_default_memory_pool()
        pool.free_all_blocks()
    else:
        tracemalloc.start()
    times, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        _, res = expectation_batch(batch, model, settings, setup, memory_budget_bytes=budget)
        if gpu:
            xp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = pool.total_bytes() if gpu else tracemalloc.get_traced_memory()[1]
    if not gpu:
        tracemalloc.stop()
    dt = float(np.median(times))
    return dict(regime=regime, cur=cur, coarse=coarse, samp=samp, times=times, dt=dt, cpu=float(np.median(cpu)),
                coarse_h=b * k * samp.n_psi_coarse * samp.n_trans_coarse,
                fine_h=b * k * samp.n_psi_fine * samp.n_trans_fine,
                nsig=float(to_host(res.n_significant).mean()), pmax=float(to_host(res.pmax).mean()), peak=peak)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or gpu[:N]")
    ap.add_argument("--regime", default="both", choices=["flat", "peaked", "both"])
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--particles", type=int, default=300)
    ap.add_argument("--pixel-size", type=float, default=2.0)
    ap.add_argument("--psi-step", type=float, default=12.0, help="coarse psi step (GUI 6 deg -> 12)")
    ap.add_argument("--offset-range", type=float, default=5.0)
    ap.add_argument("--offset-step", type=float, default=2.0)
    ap.add_argument("--oversampling", type=int, default=1)
    ap.add_argument("--current-size", type=int, default=0, help="peaked regime; 0: the full box")
    ap.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio of the particles")
    ap.add_argument("--ini-high", type=float, default=25.0, help="flat regime: iteration-1 resolution (A)")
    ap.add_argument("--sigma2-scale", type=float, default=1.0,
                    help="multiply sigma2_noise (> 1 flattens the posteriors: intermediate regimes)")
    ap.add_argument("--noise-mask", action="store_true", help="noise-filled mask (zero_mask off)")
    ap.add_argument("--budget-mb", type=float, default=512.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    xp = get_xp(args.device)
    regimes = ["flat", "peaked"] if args.regime == "both" else [args.regime]
    print(f"device={args.device} box={args.box} K={args.classes} particles={args.particles} "
          f"budget={args.budget_mb:g} MiB repeat={args.repeat}")
    for regime in regimes:
        r = run_regime(args, xp, regime)
        s = r["samp"]
        print(f"[{regime}] psi_coarse={s.n_psi_coarse} trans_coarse={s.n_trans_coarse} oversampling={s.oversampling} "
              f"current_size={r['cur']} coarse_size={r['coarse']}")
        print(f"[{regime}] time per E-step: median {r['dt']:.3f} s (runs {', '.join(f'{t:.3f}' for t in r['times'])})"
              f"   particles/s: {args.particles / r['dt']:.1f}   CPU time (all threads): median {r['cpu']:.3f} s")
        print(f"[{regime}] hypotheses/s: coarse {r['coarse_h'] / r['dt']:.3e}   "
              f"oversampled-equivalent {r['fine_h'] / r['dt']:.3e}")
        print(f"[{regime}] mean significant samples: {r['nsig']:.1f} of {args.classes * s.n_psi_coarse * s.n_trans_coarse}"
              f"   mean Pmax: {r['pmax']:.3f}   peak memory: {r['peak'] / 2 ** 20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
