"""Benchmark of a whole Class2D EM run on simulated particles: throughput and peak memory.

Simulates a particle set in a temporary project (or reuses ``--project``), runs the
Class2D job in-process (as ``emclass2d run emclass2d.class2d`` does) and reports, per
iteration and overall:

* particles per second (all particles through E-step + M-step + writing),
* hypotheses per second, counted two ways: *coarse* = particles × classes × coarse psis ×
  coarse translations (what a full search of the coarse grid evaluates), and *fine* =
  particles × classes × fine psis × fine translations (the exhaustive oversampled grid
  that the two-pass adaptive search stands for),
* peak resident memory (``ru_maxrss``) and, on a GPU, the CuPy memory pool's peak.

Example::

    python benchmarks/bench_class2d.py --n 5000 --box 64 --classes 20 --iterations 5 --device cpu
    python benchmarks/bench_class2d.py --n 20000 --classes 50 --device gpu
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="particles (default 5000)")
    ap.add_argument("--box", type=int, default=64, help="box size, px (default 64)")
    ap.add_argument("--pixel-size", type=float, default=3.0, help="Å/px (default 3.0)")
    ap.add_argument("--views", type=int, default=8, help="simulated views (default 8)")
    ap.add_argument("--snr", type=float, default=0.05, help="simulated SNR (default 0.05)")
    ap.add_argument("--classes", type=int, default=20, help="K (default 20)")
    ap.add_argument("--iterations", type=int, default=5, help="EM iterations (default 5)")
    ap.add_argument("--diameter", type=float, default=0.0, help="mask diameter Å (default 0.7·box·px)")
    ap.add_argument("--psi-step", type=float, default=6.0, help="fine psi step, deg (default 6, RELION GUI)")
    ap.add_argument("--offset-range", type=float, default=5.0, help="offset range, px (default 5)")
    ap.add_argument("--offset-step", type=float, default=1.0, help="fine offset step, px (default 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: all cores)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--batch-size", type=int, default=0, help="particles per batch (0 = from the memory budget)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--project", default="", help="project directory to use (default: a temporary one)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from emclass2d.core.sampling import perturbation_for_iteration, with_perturbation
    from emclass2d.jobtypes.base import RunContext
    from emclass2d.jobtypes.class2d.options import Class2DOptions
    from emclass2d.jobtypes.class2d.run import run_class2d
    from emclass2d.jobtypes.class2d.start import make_base_sampling
    from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files

    tmp = None
    if args.project:
        root = Path(args.project).resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_class2d_")
        root = Path(tmp.name)
    star = root / "Simulated/particles.star"
    t0 = time.monotonic()
    if not star.exists():
        simulate_project_files("Simulated", n=args.n, box=args.box, pixel_size_A=args.pixel_size, n_views=args.views,
                               snr=args.snr, junk_fraction=0.1, n_micrographs=max(1, args.n // 100), seed=args.seed,
                               project_dir=root)
    t_sim = time.monotonic() - t0
    diameter = args.diameter or 0.7 * args.box * args.pixel_size
    opts = Class2DOptions(fn_img="Simulated/particles.star", do_em=True, do_grad=False, nr_classes=args.classes,
                          nr_iter_em=args.iterations, particle_diameter=diameter, random_seed=args.seed,
                          nr_threads=args.threads, use_gpu=args.device == "gpu", psi_sampling=args.psi_step,
                          offset_range=args.offset_range, offset_step=args.offset_step, batch_size=args.batch_size)
    job_dir = f"Class2D/bench{int(time.time())}/"
    (root / job_dir).mkdir(parents=True, exist_ok=True)
    per_iter: list[dict] = []
    marks = {"start": 0.0}

    def iteration_done(it: int, summary: dict) -> None:
        per_iter.append({"iteration": it, "seconds": float(summary.get("seconds", 0.0))})

    ctx = RunContext(project_dir=root, job_dir=job_dir, options=opts, command_line="bench_class2d",
                     log=lambda s: None, warn=lambda s: print(s, file=sys.stderr), iteration_done=iteration_done)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        marks["start"] = time.monotonic()
        run_class2d(ctx)
        total = time.monotonic() - marks["start"]
    finally:
        os.chdir(cwd)

    s = with_perturbation(make_base_sampling(opts), perturbation_for_iteration(args.seed, 1))
    coarse = s.n_psi_coarse * s.n_trans_coarse
    fine = s.n_psi_fine * s.n_trans_fine
    iter_seconds = [p["seconds"] for p in per_iter]
    em_seconds = sum(iter_seconds)
    n_k = args.n * args.classes
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu_peak_mb = None
    if args.device == "gpu":
        try:
            import cupy  # noqa: PLC0415

            pool = cupy.get_default_memory_pool()
            gpu_peak_mb = pool.total_bytes() / 2**20  # pool size at the end = its high-water mark (it never shrinks)
        except Exception:
            pass
    result = dict(
        machine=f"{_cpu_name()}, {os.cpu_count()} logical cores" + (", GPU" if args.device == "gpu" else ""),
        device=args.device, threads=args.threads, particles=args.n, box=args.box, classes=args.classes,
        iterations=args.iterations, coarse_samples_per_class=coarse, fine_samples_per_class=fine,
        simulate_s=round(t_sim, 1), total_s=round(total, 1), em_iterations_s=round(em_seconds, 1),
        seconds_per_iteration=[round(x, 1) for x in iter_seconds],
        particles_per_s=round(args.n * len(iter_seconds) / em_seconds, 1) if em_seconds else None,
        coarse_hypotheses_per_s=round(n_k * coarse * len(iter_seconds) / em_seconds) if em_seconds else None,
        fine_hypotheses_per_s=round(n_k * fine * len(iter_seconds) / em_seconds) if em_seconds else None,
        peak_rss_MB=round(peak_rss_mb), gpu_pool_peak_MB=None if gpu_peak_mb is None else round(gpu_peak_mb),
    )
    print(f"Class2D EM benchmark on {result['machine']} ({args.device}, {args.threads} threads)")
    print(f"  data: {args.n} particles, {args.box} px, K={args.classes}, {args.iterations} iterations; "
          f"per class {coarse} coarse / {fine} fine (psi × translation) samples")
    print(f"  seconds per iteration: {result['seconds_per_iteration']} (total {result['total_s']} s incl. "
          f"initialisation and writing; simulation {result['simulate_s']} s)")
    print(f"  particles/s (per iteration): {result['particles_per_s']}")
    print(f"  hypotheses/s: coarse {result['coarse_hypotheses_per_s']:.3g}, fine-equivalent "
          f"{result['fine_hypotheses_per_s']:.3g} (particles × classes × psi × translations / s)")
    print(f"  peak RSS: {result['peak_rss_MB']} MB" + (f"; CuPy pool peak: {result['gpu_pool_peak_MB']} MB"
                                                       if gpu_peak_mb is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
