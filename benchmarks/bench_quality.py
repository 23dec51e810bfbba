"""Class quality on simulated data with known truth, over a grid of cells and several seeds.

Each cell is a simulated data set family (particles, views with one or two rare ones, junk,
SNR) and a Class2D setting (K, EM iterations, VDAM mini-batches). For every cell and seed
the script simulates the data (data seed = run seed), runs the methods asked for, scores
each run's last ``_data.star`` against the truth and keeps the scores as JSON; the report
is mean ± sd per cell and method, never one run against one run.

Methods: ``em`` and ``vdam`` (RELION's behaviour), ``em+split`` and ``vdam+split``
(``--do_split_classes Yes``), and ``relion-em`` / ``relion-vdam`` when ``RELION_BIN`` names
a ``relion_refine`` (their scores go to ``benchmarks/baselines/`` so later runs compare
against them without rerunning RELION). All runs use the GUI's settings of RELION's
tutorial: T = 2, zero mask, centring, CTF, in-plane step 6° (RELION's CLI: 12° at
oversampling 1), offsets 5 / 1 px (CLI step 2), mask diameter from the cell.

Scores (good particles = not junk):
  ari                 adjusted Rand index of good particles' classes vs their true views
  purity              share of good particles whose class's majority view is their own
  views_found         views that are the majority of a class at least 60 % pure (junk counts
                      as impurity) with at least 10 particles
  rare_found          of the cell's rare views, how many are found that way
  pure_classes        classes at least 60 % pure in one view with at least 10 particles
  classes_20_good     classes holding at least 20 good particles
  junk_removed        share of junk in classes whose majority is junk
  wall_s              wall time of the Class2D run
  cpu_s               CPU time (user + system) of the Class2D run: steadier than wall time
                      on a shared machine

Usage::

    python benchmarks/bench_quality.py --out /tmp/bq --cells A B --seeds 1 2 3 4 5 \
        --methods em em+split vdam vdam+split
    python benchmarks/bench_quality.py --out /tmp/bq --report-only   # table from kept scores
    RELION_BIN=/path/relion_refine python benchmarks/bench_quality.py --out /tmp/bq \
        --methods relion-em --cells A --seeds 1 2 3 4 5
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "baselines"


@dataclass(frozen=True)
class Cell:
    """One simulated data set family and the Class2D setting run on it."""

    name: str
    n: int
    n_views: int
    rare_shares: tuple[float, ...]   # shares of all particles for the rare views
    junk_fraction: float
    snr: float
    classes: int
    iter_em: int = 25
    iter_grad: int = 200
    box: int = 64
    pixel_size_A: float = 3.0
    mask_A: float = 140.0
    description: str = field(default="", compare=False)

    def view_weights(self) -> np.ndarray:
        """Relative view frequencies: the common views span 3x, the rare ones take their shares."""
        n_common = self.n_views - len(self.rare_shares)
        good = 1.0 - self.junk_fraction
        common = np.geomspace(1.0, 1.0 / 3.0, n_common)
        common *= (good - sum(self.rare_shares)) / common.sum()
        return np.concatenate([common, np.asarray(self.rare_shares)]) / good

    def rare_views(self) -> list[int]:
        return list(range(self.n_views - len(self.rare_shares), self.n_views))


CELLS = {
    "A": Cell("A", 3000, 8, (0.02, 0.02), 0.20, 0.20, 12,
              description="3,000 particles, 8 views (2 rare at 2 %), 20 % junk, SNR 0.2, K = 12"),
    "B": Cell("B", 3000, 6, (0.03,), 0.30, 0.10, 12,
              description="3,000 particles, 6 views (1 rare at 3 %), 30 % junk, SNR 0.1, K = 12"),
    "C": Cell("C", 4000, 12, (0.015, 0.015), 0.10, 0.15, 24,
              description="4,000 particles, 12 views (2 rare at 1.5 %), 10 % junk, SNR 0.15, K = 24"),
    "D": Cell("D", 3000, 8, (0.02,), 0.0, 0.30, 12,
              description="3,000 particles, 8 views (1 rare at 2 %), no junk, SNR 0.3, K = 12"),
    "E": Cell("E", 10000, 12, (0.01, 0.02), 0.25, 0.15, 12,
              description="10,000 particles, 12 views (rare at 1 and 2 %), 25 % junk, SNR 0.15, K = 12"),
}

METHODS = ("em", "em+split", "vdam", "vdam+split", "relion-em", "relion-vdam")


def simulate(cell: Cell, seed: int, project: Path) -> Path:
    """Write the cell's data set for ``seed`` into ``project/Simulated`` (once); returns particles.star."""
    from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files

    star = project / "Simulated" / "particles.star"
    if star.exists():
        return star
    project.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", "init", "--project", str(project)],
                   check=True, capture_output=True)
    simulate_project_files("Simulated", n=cell.n, box=cell.box, pixel_size_A=cell.pixel_size_A,
                           n_views=cell.n_views, snr=cell.snr, junk_fraction=cell.junk_fraction,
                           seed=seed, project_dir=project, view_weights=list(cell.view_weights()))
    return star


def _class2d_args(cell: Cell, method: str, seed: int, threads: int) -> list[str]:
    args = ["--fn_img", "Simulated/particles.star", "--nr_classes", str(cell.classes), "--tau_fudge", "2",
            "--particle_diameter", str(cell.mask_A), "--do_zero_mask", "Yes", "--do_center", "Yes",
            "--do_ctf_correction", "Yes", "--psi_sampling", "6", "--offset_range", "5", "--offset_step", "1",
            "--random_seed", str(seed), "--nr_threads", str(threads)]
    if method.startswith("em"):
        args += ["--do_em", "Yes", "--do_grad", "No", "--nr_iter_em", str(cell.iter_em)]
    else:
        args += ["--do_em", "No", "--do_grad", "Yes", "--nr_iter_grad", str(cell.iter_grad)]
    args += ["--do_split_classes", "Yes" if method.endswith("+split") else "No"]
    return args


def run_ours(cell: Cell, method: str, seed: int, project: Path, threads: int) -> tuple[Path, float, float]:
    """Run our Class2D job for ``method``; returns (last data.star, wall seconds, CPU seconds)."""
    cmd = [sys.executable, "-m", "emclass2d.jobtypes.cli", "run", "emclass2d.class2d", "--project", str(project),
           *_class2d_args(cell, method, seed, threads)]
    done, wall, cpu = _timed(cmd, cwd=None)
    if done.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    job = _last_job(project, "Class2D")
    return _last_data_star(job), wall, cpu


def run_relion(cell: Cell, method: str, seed: int, project: Path, threads: int) -> tuple[Path, float, float]:
    """Run ``relion_refine`` (RELION_BIN) with the GUI's settings as its CLI spells them."""
    binary = os.environ["RELION_BIN"]
    out = project / "Relion" / f"{method}_s{seed}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [binary, "--i", "Simulated/particles.star", "--o", f"{out.relative_to(project)}/run",
           "--dont_combine_weights_via_disc", "--pool", "30", "--pad", "2", "--ctf", "--tau2_fudge", "2",
           "--particle_diameter", str(cell.mask_A), "--K", str(cell.classes), "--flatten_solvent", "--zero_mask",
           "--center_classes", "--oversampling", "1", "--psi_step", "12", "--offset_range", "5",
           "--offset_step", "2", "--norm", "--scale", "--j", str(threads), "--random_seed", str(seed)]
    if method == "relion-em":
        cmd += ["--iter", str(cell.iter_em)]
    else:
        cmd += ["--grad", "--class_inactivity_threshold", "0.1", "--grad_write_iter", "10",
                "--iter", str(cell.iter_grad)]
    done, wall, cpu = _timed(cmd, cwd=project)
    if done.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed:\n{done.stderr[-2000:]}")
    return _last_data_star(out), wall, cpu


def _timed(cmd: list[str], cwd: Path | None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; returns (result, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, wall, cpu


def _last_job(project: Path, kind: str) -> Path:
    jobs = sorted((project / kind).glob("job*"))
    if not jobs:
        raise RuntimeError(f"no {kind} job in {project}")
    return jobs[-1]


def _last_data_star(folder: Path) -> Path:
    stars = sorted(folder.glob("run_it*_data.star"))
    if not stars:
        raise RuntimeError(f"no run_it*_data.star in {folder}")
    return stars[-1]


def score(cell: Cell, data_star: Path, truth_csv: Path) -> dict[str, float]:
    """Scores of one run (see the module docstring) from its data.star and the truth table."""
    from emclass2d.core.metrics import adjusted_rand_index, class_purity, contingency_table

    truth = pd.read_csv(truth_csv)
    view_of = dict(zip(truth["rlnImageName"], truth["view"]))
    data = starfile.read(data_star, always_dict=True)["particles"]
    view = np.array([view_of[n] for n in data["rlnImageName"].astype(str)])
    klass = data["rlnClassNumber"].to_numpy()
    good = view >= 0
    table = contingency_table(klass, view)            # rows: classes, columns: sorted labels (-1 = junk first)
    labels = np.unique(view)
    size = table.sum(axis=1)
    majority = labels[table.argmax(axis=1)]
    purity_of_class = table.max(axis=1) / np.maximum(size, 1)
    pure = (purity_of_class >= 0.6) & (size >= 10) & (majority >= 0)
    found = set(int(v) for v in majority[pure])
    good_per_class = table[:, labels >= 0].sum(axis=1)
    junk_col = np.nonzero(labels == -1)[0]
    if junk_col.size and (~good).any():
        junk_classes = np.nonzero(majority == -1)[0]
        junk_removed = float(table[junk_classes, junk_col[0]].sum() / (~good).sum())
    else:
        junk_removed = float("nan")
    return {
        "ari": float(adjusted_rand_index(view[good], klass[good])),
        "purity": float(class_purity(view[good], klass[good])),
        "views_found": len(found),
        "rare_found": len(found & set(cell.rare_views())),
        "pure_classes": int(pure.sum()),
        "classes_20_good": int((good_per_class >= 20).sum()),
        "junk_removed": junk_removed,
    }


def results_path(out: Path, cell: str, method: str, seed: int) -> Path:
    if method.startswith("relion"):
        return BASELINES / f"relion5_{method.split('-')[1]}_cell{cell}_s{seed}.json"
    return out / "scores" / f"{method}_cell{cell}_s{seed}.json"


def run_grid(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    for name in args.cells:
        cell = CELLS[name]
        for seed in args.seeds:
            project = out / f"cell{name}_s{seed}"
            for method in args.methods:
                dest = results_path(out, name, method, seed)
                if dest.exists() and not args.rerun:
                    continue
                simulate(cell, seed, project)
                print(f"[{time.strftime('%H:%M:%S')}] cell {name} seed {seed} {method} ...", flush=True)
                runner = run_relion if method.startswith("relion") else run_ours
                data_star, wall, cpu = runner(cell, method, seed, project, args.threads)
                result = {"cell": name, "method": method, "seed": seed, "wall_s": round(wall, 1),
                          "cpu_s": round(cpu, 1),
                          "data_star": str(data_star), "cell_setting": asdict(cell),
                          **score(cell, data_star, project / "Simulated" / "truth.csv")}
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(json.dumps(result, indent=1) + "\n")
                print(f"    ARI {result['ari']:.3f}  views {result['views_found']}  rare {result['rare_found']}  "
                      f"pure classes {result['pure_classes']}  junk removed {result['junk_removed']:.2f}  "
                      f"{wall:.0f} s", flush=True)


FIGURES = ("ari", "purity", "views_found", "rare_found", "pure_classes", "classes_20_good", "junk_removed", "wall_s",
           "cpu_s")


def report(out: Path, cells: list[str]) -> str:
    """Markdown table: per cell and method, mean ± sd of every figure and the number of seeds."""
    rows = []
    for path in sorted((out / "scores").glob("*.json")) + sorted(BASELINES.glob("relion5_*.json")):
        rows.append(json.loads(path.read_text()))
    if not rows:
        return "no scores yet"
    table = pd.DataFrame(rows)
    table = table[table["cell"].isin(cells)]
    lines = ["| cell | method | seeds | " + " | ".join(FIGURES) + " | rare found in runs |",
             "|---" * (len(FIGURES) + 4) + "|"]
    order = {m: i for i, m in enumerate(METHODS)}
    for (cell, method), group in sorted(table.groupby(["cell", "method"]), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        cells_txt = []
        for figure in FIGURES:
            values = group[figure].astype(float) if figure in group else pd.Series([np.nan])
            fmt = "{:.0f}" if figure.endswith("_s") else ("{:.2f}" if figure in ("ari", "purity", "junk_removed") else "{:.1f}")
            cells_txt.append(f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1) if len(values) > 1 else 0)}")
        rare_runs = f"{int((group['rare_found'] > 0).sum())} / {len(group)}"
        lines.append(f"| {cell} | {method} | {len(group)} | " + " | ".join(cells_txt) + f" | {rare_runs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="working folder (projects and scores)")
    parser.add_argument("--cells", nargs="+", default=["A"], choices=sorted(CELLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--methods", nargs="+", default=["em", "em+split"], choices=METHODS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rerun", action="store_true", help="run again even where scores exist")
    parser.add_argument("--report-only", action="store_true", help="print the table from the kept scores")
    args = parser.parse_args()
    if not args.report_only:
        if any(m.startswith("relion") for m in args.methods) and "RELION_BIN" not in os.environ:
            parser.error("relion-* methods need RELION_BIN=/path/to/relion_refine")
        run_grid(args)
    for name in args.cells:
        print(f"\ncell {name}: {CELLS[name].description}")
    print(report(Path(args.out).resolve(), args.cells))


if __name__ == "__main__":
    main()
