"""Run the built-in demo: a new project, simulated particles, Class2D, then automatic Select.

The particles are simulated with known truth (several views of a pseudo-atomic molecule,
some rare, plus junk: empty, ice, carbon edge, aggregates, broken particles), so the demo
ends by saying how many good particles were kept and how much junk was removed. With the
defaults it takes a few minutes on 2 CPU cores.

Example:
  emclass2d demo --dir demo_project
  emclass2d demo --dir demo_project --n 8000 --classes 20 --iter 20 --use-gpu
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
from emclass2d.jobtypes.registry import get_registry
from emclass2d.jobtypes.running import run_new
from emclass2d.nodes.graph.project import Project


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="demo_project", help="project directory to create (default demo_project)")
    parser.add_argument("--n", type=int, default=4000, help="number of simulated particles (default 4000)")
    parser.add_argument("--classes", type=int, default=12, help="number of classes (default 12)")
    parser.add_argument("--iter", type=int, default=12, help="EM iterations (default 12)")
    parser.add_argument("--vdam", action="store_true", help="use the VDAM algorithm instead of EM (--iter mini-batches)")
    parser.add_argument("--snr", type=float, default=0.08, help="signal-to-noise ratio of the particles (default 0.08)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum class score for selection (default 0.5)")
    parser.add_argument("--use-gpu", action="store_true", help="run Class2D on the GPU(s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the simulation and the classification")


def main(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if root.exists() and any(root.iterdir()):
        print(f"emclass2d demo: {root} exists and is not empty; choose another --dir", file=sys.stderr)
        return 1
    project = Project.init(root)
    print(f"Project: {project.root}")
    star = simulate_project_files("Simulated", n=args.n, box=64, pixel_size_A=3.0, n_views=6, snr=args.snr,
                                  junk_fraction=0.15, n_micrographs=max(10, args.n // 80), seed=args.seed,
                                  project_dir=project.root)
    star_rel = Path(star).resolve().relative_to(project.root.resolve()).as_posix()
    print(f"Simulated {args.n} particles: {star_rel} (truth in Simulated/truth.csv)")
    registry = get_registry()
    values = {"fn_img": star_rel, "nr_classes": args.classes, "tau_fudge": 2, "particle_diameter": 150,
              "do_em": "No" if args.vdam else "Yes", "do_grad": "Yes" if args.vdam else "No",
              "nr_iter_em": args.iter, "nr_iter_grad": max(args.iter, 10), "random_seed": args.seed,
              "use_gpu": "Yes" if args.use_gpu else "No"}
    class2d_dir = _run_job(project, registry, "emclass2d.class2d", "Class2D", values)
    if class2d_dir is None:
        return 1
    from emclass2d.nodes.files.class2d import find_latest_optimiser  # noqa: PLC0415

    opt = find_latest_optimiser(project.root / class2d_dir)
    opt_rel = opt.resolve().relative_to(project.root.resolve()).as_posix()
    sel_values = {"fn_model": opt_rel, "do_class_ranker": "Yes", "rank_threshold": args.threshold}
    select_dir = _run_job(project, registry, "emclass2d.select.class2dauto", "Select", sel_values)
    if select_dir is None:
        return 1
    _truth_summary(project.root, select_dir)
    print(f"\nClass averages: {class2d_dir}{opt.name.replace('_optimiser.star', '_classes.mrcs')}")
    print(f"Class2D gallery: {class2d_dir}class_gallery.png")
    for what, name in (("Select gallery", "class_averages.png"), ("Select report", "report.html")):
        if (project.root / select_dir / name).exists():
            print(f"{what}: {select_dir}{name}")
    print(f"Selected particles: {select_dir}particles.star")
    return 0


def _run_job(project: Project, registry: Any, process_type: str, directory: str, values: dict[str, Any]) -> str | None:
    """Run one job in the foreground as ``emclass2d run`` would; its directory, or None if it failed."""
    cmd = f"emclass2d run {process_type} " + " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in values.items())
    print(f"\n$ {cmd}", flush=True)
    status = run_new(project, process_type, values, command_line=cmd, registry=registry)
    job_dir = _last_job(project, directory)
    print(f"{job_dir}: {status}")
    return job_dir if status == "Succeeded" else None


def _last_job(project: Project, directory: str) -> str:
    procs = [p.name for p in project.read().processes if p.name.startswith(directory + "/")]
    return procs[-1]


def _truth_summary(root: Path, select_dir: str) -> None:
    """Kept good particles and removed junk, from the simulator's truth."""
    from emclass2d.nodes.io.star import read_star  # noqa: PLC0415

    truth = read_star(root / "Simulated" / "truth.star")
    t = truth.get("particles", next(iter(truth.values())))
    junk = dict(zip(t["rlnImageName"], np.asarray(t["rlnClassNumber"]) == 0))
    kept = set(read_star(root / select_dir / "particles.star")["particles"]["rlnImageName"])
    is_junk = np.array([junk[n] for n in t["rlnImageName"]])
    in_kept = np.array([n in kept for n in t["rlnImageName"]])
    good = ~is_junk
    print(f"\nAgainst the simulated truth: kept {100 * in_kept[good].mean():.1f}% of the good particles, "
          f"removed {100 * (~in_kept[is_junk]).mean():.1f}% of the junk")
