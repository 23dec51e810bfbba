"""Throughput of one E-step (expectation_batch) on synthetic particles, CPU or GPU.

Reports hypotheses per second (particles × classes × psis × translations / s, for the
coarse search space and for the equivalent fully oversampled one), particles per second
and peak temporary memory (tracemalloc on the CPU, CuPy's memory pool on a GPU).

Example::

    python benchmarks/bench_estep.py --device cpu --box 64 --classes 50 --particles 200
    python benchmarks/bench_estep.py --device gpu --box 128 --classes 50 --particles 2000
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
from emclass2d.core.model import Model, Settings
from emclass2d.core.resolution import image_sizes
from emclass2d.core.sampling import make_sampling, perturbation_for_iteration, with_perturbation


def synthetic(box: int, n_classes: int, n_particles: int, px: float, seed: int = 0):
    """Blob classes and particles = rotated, shifted classes + white noise (SNR ~ 0.1)."""
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
    noise_sd = float(refs.std() / np.sqrt(0.1))
    imgs += rng.normal(0, noise_sd, imgs.shape).astype(np.float32)
    return refs.astype(np.float32), imgs, noise_sd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or gpu[:N]")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--particles", type=int, default=200)
    ap.add_argument("--pixel-size", type=float, default=2.0)
    ap.add_argument("--psi-step", type=float, default=12.0, help="coarse psi step (GUI 6 deg -> 12)")
    ap.add_argument("--offset-range", type=float, default=5.0)
    ap.add_argument("--offset-step", type=float, default=2.0)
    ap.add_argument("--oversampling", type=int, default=1)
    ap.add_argument("--current-size", type=int, default=0, help="0: the full box")
    ap.add_argument("--budget-mb", type=float, default=512.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)

    xp = get_xp(args.device)
    n, k, b, px = args.box, args.classes, args.particles, args.pixel_size
    refs, imgs, noise_sd = synthetic(n, k, b, px)
    diameter = 0.8 * n * px
    cur = args.current_size or n
    _, coarse = image_sizes(cur / (2 * n * px) - 10 / (n * px), n, px, 10, args.psi_step, diameter, args.oversampling)
    model = Model.empty(k, n, px, xp=xp)
    model = dataclasses.replace(
        model, references=xp.asarray(refs), current_size=cur, coarse_size=coarse,
        sigma2_noise=xp.full((1, n // 2 + 1), noise_sd ** 2 / (2 * n * n)))
    settings = Settings(do_ctf=True, zero_mask=True, particle_diameter_A=diameter, random_seed=1)
    samp = make_sampling(args.psi_step, args.offset_range, args.offset_step, args.oversampling,
                         round_psi_to_32=args.device != "cpu")
    samp = with_perturbation(samp, perturbation_for_iteration(1, 1))
    bsz = b
    batch = ParticleBatch(
        images=xp.asarray(imgs), part_index=xp.arange(bsz), group=xp.zeros(bsz, dtype=xp.int32),
        optics_group=xp.zeros(bsz, dtype=xp.int32), origin_px=xp.zeros((bsz, 2)), norm_correction=xp.ones(bsz),
        defocus_u_A=xp.full(bsz, 15000.0), defocus_v_A=xp.full(bsz, 14000.0), defocus_angle_deg=xp.zeros(bsz),
        phase_shift_deg=xp.zeros(bsz), ctf_bfactor_A2=xp.zeros(bsz), ctf_scale=xp.ones(bsz),
        voltage_kV=xp.full(bsz, 300.0), cs_mm=xp.full(bsz, 2.7), amplitude_contrast=xp.full(bsz, 0.1),
        ctf_premultiplied=xp.zeros(bsz, dtype=bool))
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
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        stats, res = expectation_batch(batch, model, settings, setup, memory_budget_bytes=budget)
        if gpu:
            xp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    peak = pool.total_bytes() if gpu else tracemalloc.get_traced_memory()[1]
    if not gpu:
        tracemalloc.stop()
    dt = min(times)
    coarse_h = b * k * samp.n_psi_coarse * samp.n_trans_coarse
    fine_h = b * k * samp.n_psi_fine * samp.n_trans_fine
    nsig = to_host(res.n_significant)
    print(f"device={args.device} box={n} K={k} particles={b} psi_coarse={samp.n_psi_coarse} "
          f"trans_coarse={samp.n_trans_coarse} oversampling={samp.oversampling} current_size={cur} coarse_size={coarse}")
    print(f"time per E-step: {dt:.3f} s   particles/s: {b / dt:.1f}")
    print(f"hypotheses/s: coarse {coarse_h / dt:.3e}   oversampled-equivalent {fine_h / dt:.3e}")
    print(f"mean significant samples: {nsig.mean():.1f}   mean Pmax: {float(to_host(res.pmax).mean()):.3f}")
    print(f"peak memory: {peak / 2 ** 20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
