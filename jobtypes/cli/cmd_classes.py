"""Print the classes of a Class2D or Select job, sorted by class distribution.

Columns: class, particles, %, resolution (Å), score, selected. For a Class2D job the newest
run_*_optimiser.star is scored (scores are cached, so this is quick the second time); for
a Select job its rank_model.star and backup_selection.star are read.

Example::

    emclass2d classes Class2D/job013
    emclass2d classes Select/job014 --project-dir /data/myproject
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from emclass2d.core.selection import UNSCORED, count_particles
from emclass2d.nodes.files.class2d import find_latest_optimiser
from emclass2d.nodes.io.star import StarFileError, read_star


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_dir", metavar="JOBDIR", help="a Class2D or Select job directory, e.g. Class2D/job013")
    parser.add_argument("--project-dir", default=".", help="project directory (default: current)")
    parser.add_argument("--weights", default="", help="class score weights file (default: the shipped weights)")


def _print(rows: list[list[str]], header: tuple[str, ...]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def _select_rows(project: Path, job: Path) -> list[list[str]]:
    model = read_star(job / "rank_model.star")["model_classes"]
    backup = read_star(job / "backup_selection.star")[""]
    counts = None
    opt = read_star(job / "rank_optimiser.star").get("optimiser_general", {})
    data_path = project / str(opt.get("rlnExperimentalDataStarFile", ""))
    if data_path.is_file():
        parts = read_star(data_path).get("particles")
        if isinstance(parts, pd.DataFrame) and "rlnClassNumber" in parts:
            counts = count_particles(parts["rlnClassNumber"].to_numpy(), len(model))
    dist = model["rlnClassDistribution"].to_numpy(dtype=float)
    res = model["rlnEstimatedResolution"].to_numpy(dtype=float)
    score = model["rlnClassScore"].to_numpy(dtype=float)
    selected = backup["rlnSelected"].to_numpy(dtype=int)
    rows = []
    for k in np.argsort(-dist, kind="stable"):
        rows.append([str(k + 1), str(int(counts[k])) if counts is not None else "?", f"{100 * dist[k]:.2f}",
                     f"{res[k]:.1f}" if res[k] < 900 else "–", "–" if score[k] == UNSCORED else f"{score[k]:.2f}",
                     "yes" if selected[k] else "no"])
    return rows


def main(args: argparse.Namespace) -> int:
    from emclass2d.jobtypes.select.inputs import Class2DInputError, read_selection_input
    from emclass2d.jobtypes.select.model import RankerModel, WeightsError
    from emclass2d.jobtypes.select.run import TABLE_HEADER, SelectionResult, class_table_rows
    from emclass2d.jobtypes.select.scoring import features_and_scores

    project = Path(args.project_dir)
    job = project / args.job_dir
    if not job.is_dir():
        print(f"emclass2d classes: {args.job_dir}: no such job directory")
        return 1
    try:
        if (job / "rank_model.star").is_file():
            _print(_select_rows(project, job), TABLE_HEADER)
            return 0
        opt = find_latest_optimiser(job)
        if opt is None:
            print(f"emclass2d classes: {args.job_dir}: neither a Select job nor a Class2D job with a run_itNNN_optimiser.star")
            return 1
        it = read_selection_input(opt.relative_to(project), project)
        if it.do_correct_ctf:
            model = RankerModel.load(args.weights or None)
            features, scores = features_and_scores(it, model, args.weights or None, project)
        else:
            features, scores = [None] * it.nr_classes, np.full(it.nr_classes, UNSCORED)
        res = np.array([f["estimated_resolution_A"] if f else
                        (float(it.classes["rlnEstimatedResolution"].iloc[k]) if "rlnEstimatedResolution" in it.classes else 999.0)
                        for k, f in enumerate(features)])
        result = SelectionResult(scores, it.particle_counts, res, np.zeros(it.nr_classes, dtype=bool), np.zeros(0, int))
        rows = class_table_rows(it, result)
        for r in rows:
            r[-1] = "–"
        print(f"{opt.relative_to(project)}")
        _print(rows, TABLE_HEADER)
        return 0
    except (Class2DInputError, WeightsError, StarFileError) as exc:
        print(f"emclass2d classes: {exc}")
        return 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(p)
    raise SystemExit(main(p.parse_args()))
