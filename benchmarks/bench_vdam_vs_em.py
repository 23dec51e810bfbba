"""VDAM versus EM 2D classification on one simulated data set: time, throughput, accuracy, memory.

Simulates a particle set with known views (``emclass2d simulate``), then runs the Class2D
job twice on it, each in its own process so that peak memory (``ru_maxrss``) is per
algorithm: EM (``--iter-em`` iterations over all particles) and VDAM (``--iter``
mini-batches). Reports wall time and its ratio, coarse-pass hypotheses per second
(particles processed × classes × coarse psis × coarse translations, summed over
iterations, per wall second), adjusted Rand index of the final class assignments against
the true views (good particles only), class purity (share of good particles whose class's
majority view is their own: splitting a view over classes keeps it at 1, merging views
lowers it), views found (views that are the majority of a class at least 90 % pure),
classes holding at least 1 % of the particles, the class-average resolution
(rlnEstimatedResolution of classes above 1 % with an estimate, class-fraction weighted, and
the best class) and peak resident memory.

Full size (the figures in RESULTS.md; about 45 minutes on 2 cores)::

    python benchmarks/bench_vdam_vs_em.py --n 20000 --classes 50 --iter 200 --iter-em 25

Smaller, to run here::

    python benchmarks/bench_vdam_vs_em.py --n 4000 --classes 20 --iter 100 --iter-em 15 --box 48
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _options(args: argparse.Namespace, algo: str):
    from emclass2d.jobtypes.class2d.options import Class2DOptions

    common = dict(fn_img="Sim/particles.star", nr_classes=args.classes, particle_diameter=args.diameter,
                  random_seed=1, psi_sampling=args.psi_step, offset_range=args.offset_range,
                  offset_step=args.offset_step, nr_threads=args.threads)
    if algo == "em":
        return Class2DOptions(do_em=True, do_grad=False, nr_iter_em=args.iter_em, **common)
    return Class2DOptions(do_em=False, do_grad=True, nr_iter_grad=args.iter, **common)


def run_one(args: argparse.Namespace) -> dict:
    """Run one algorithm in this process (cwd = project); return its figures as a dict."""
    from emclass2d.jobtypes.base import RunContext
    from emclass2d.jobtypes.class2d.run import run_class2d
    from emclass2d.jobtypes.class2d.start import make_base_sampling

    project = Path(args.project)
    os.chdir(project)
    opts = _options(args, args.algo)
    job = "Class2D/job001/" if args.algo == "em" else "Class2D/job002/"
    processed: list[int] = []

    def done(it: int, summary: dict) -> None:
        processed.append(int(summary.get("n_particles", args.n)))

    t0 = time.perf_counter()
    run_class2d(RunContext(project_dir=project, job_dir=job, options=opts, log=lambda s: None,
                           warn=lambda s: print(s, file=sys.stderr), iteration_done=done))
    wall = time.perf_counter() - t0
    smp = make_base_sampling(opts)
    hypotheses = float(sum(processed)) * args.classes * smp.n_psi_coarse * smp.n_trans_coarse
    last = args.iter_em if args.algo == "em" else args.iter
    stem = project / f"{job}run_it{last:03d}"
    truth = pd.read_csv(project / "Sim/truth.csv")
    parts = pd.DataFrame(__import__("emclass2d.nodes.io.star", fromlist=["read_star"]).read_star(
        f"{stem}_data.star")["particles"])
    cls = dict(zip(parts["rlnImageName"].astype(str), parts["rlnClassNumber"].to_numpy()))
    labels = np.array([cls[n] for n in truth["rlnImageName"].astype(str)])
    good = ~truth["is_junk"].to_numpy()
    from emclass2d.core.metrics import adjusted_rand_index, class_purity, views_found
    from emclass2d.nodes.files.class2d import read_model_star

    model = read_model_star(f"{stem}_model.star")
    pdf = model.pdf_class
    res = model.classes["rlnEstimatedResolution"].to_numpy(dtype=np.float64)
    used = (pdf > 0.01) & (res < 999.0)  # 999 = no resolution estimate (e.g. a class of empty images)
    view = truth["view"].to_numpy()
    return dict(algo=args.algo, wall_s=wall, iterations=len(processed), particles_processed=int(sum(processed)),
                hypotheses_per_s=hypotheses / wall,
                ari_good=adjusted_rand_index(view[good], labels[good]),
                purity_good=class_purity(view[good], labels[good]),
                views_found=views_found(view[good], labels[good]),
                classes_used=int(np.count_nonzero(np.bincount(labels, minlength=args.classes + 1)[1:]
                                                  >= 0.01 * len(labels))),
                resolution_weighted_A=float((res[used] * pdf[used]).sum() / pdf[used].sum()),
                resolution_best_A=float(res[used].min()),
                current_resolution_A=float(model.general["rlnCurrentResolution"]),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="particles (default 20000)")
    ap.add_argument("--classes", type=int, default=50, help="classes K (default 50)")
    ap.add_argument("--iter", type=int, default=200, help="VDAM mini-batches (default 200)")
    ap.add_argument("--iter-em", type=int, default=25, help="EM iterations (default 25)")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--pixel-size", type=float, default=3.0)
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--junk", type=float, default=0.15)
    ap.add_argument("--diameter", type=float, default=-1.0, help="mask diameter Å (default 0.75 of the box)")
    ap.add_argument("--psi-step", type=float, default=6.0)
    ap.add_argument("--offset-range", type=float, default=5.0)
    ap.add_argument("--offset-step", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--project", default="", help="project directory (default: a new temporary one)")
    ap.add_argument("--algo", choices=["em", "vdam"], help=argparse.SUPPRESS)
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.diameter <= 0:
        args.diameter = 0.75 * args.box * args.pixel_size
    if args.algo:  # child process: one algorithm
        print(json.dumps(run_one(args)))
        return 0
    project = Path(args.project or tempfile.mkdtemp(prefix="bench_vdam_"))
    project.mkdir(parents=True, exist_ok=True)
    if not (project / "Sim/particles.star").is_file():
        from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files

        t0 = time.perf_counter()
        simulate_project_files("Sim", n=args.n, box=args.box, pixel_size_A=args.pixel_size, n_views=args.views,
                               snr=args.snr, junk_fraction=args.junk, n_micrographs=max(10, args.n // 200), seed=0,
                               project_dir=project)
        print(f"simulated {args.n} particles in {time.perf_counter() - t0:.0f} s ({project})", file=sys.stderr)
    base = [sys.executable, os.path.abspath(__file__)] + [a for a in (argv or sys.argv[1:])]
    out = {}
    for algo in ("vdam", "em"):
        cmd = base + ["--project", str(project.resolve()), "--algo", algo]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        out[algo] = json.loads(proc.stdout.strip().splitlines()[-1])
    em, vd = out["em"], out["vdam"]
    out["wall_ratio_em_over_vdam"] = em["wall_s"] / vd["wall_s"]
    out["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    out["settings"] = {k: v for k, v in vars(args).items() if k not in ("algo", "json", "project")}
    print(f"{'':24s}{'EM':>14s}{'VDAM':>14s}")
    for key in ("wall_s", "iterations", "particles_processed", "hypotheses_per_s", "ari_good", "purity_good",
                "views_found", "classes_used",
                "resolution_weighted_A", "resolution_best_A", "current_resolution_A", "peak_rss_mb"):
        print(f"{key:24s}{em[key]:14.4g}{vd[key]:14.4g}")
    print(f"EM / VDAM wall time: {out['wall_ratio_em_over_vdam']:.2f}  ({out['machine']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
