"""The Select job's run: score the classes of a Class2D iteration, select, write RELION's files.

Everything is read and decided before the first output is written, so a bad input leaves
the job directory without outputs (the runner then writes the failure marker).

Outputs (RELION's ``ClassRanker`` output files, in the job directory): particles.star, class_averages.star +
class_averages.mrcs, rank_model.star, rank_optimiser.star, rank_data.star,
backup_selection.star, features.csv, features.npy, class_averages.png, report.html.

Example::

    ctx = RunContext(project_dir=Path("."), job_dir="Select/job014/", options=SelectOptions(
        fn_model="Class2D/job013/run_it100_optimiser.star"))
    run_select(ctx)        # logs "4598 particles from 34 selected classes"

See also: :mod:`emclass2d.jobtypes.select.scoring`, :mod:`emclass2d.core.selection`.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.core import selection as sel
from emclass2d.jobtypes.base import JobFailed, RunContext
from emclass2d.jobtypes.reports.gallery import write_gallery, write_html_report
from emclass2d.jobtypes.select.inputs import Class2DInputError, SelectionInput, read_selection_input
from emclass2d.jobtypes.select.model import RankerModel, WeightsError, model_inputs
from emclass2d.jobtypes.select.options import SelectOptions
from emclass2d.jobtypes.select.scoring import features_and_scores
from emclass2d.nodes.io.atomic import atomic_path, write_text_atomic
from emclass2d.nodes.io.mrc import write_mrcs
from emclass2d.nodes.io.star import write_star

#: Columns of the per-class features file, before the feature names.
_FEATURE_HEAD = ("class", "particles", "class_distribution", "score", "selected")


@dataclass
class SelectionResult:
    """Per-class arrays (index k = class k+1) and the selected particle rows."""

    scores: np.ndarray
    counts: np.ndarray
    resolution_A: np.ndarray
    selected: np.ndarray
    particle_rows: np.ndarray


def decide(it: SelectionInput, opts: SelectOptions, scores: np.ndarray,
           features: list[dict[str, Any] | None]) -> SelectionResult:
    """Apply the score, value and top-up rules; raise :class:`JobFailed` on impossible requests."""
    counts = it.particle_counts
    k = it.nr_classes
    res = np.array([f["estimated_resolution_A"] if f else _model_value(it, "rlnEstimatedResolution", i, 999.0)
                    for i, f in enumerate(features)], dtype=np.float64)
    try:
        if opts.select_classes.strip():
            keep = sel.parse_class_numbers(opts.select_classes, k)
        else:
            keep = sel.select_by_score(scores, opts.rank_threshold, opts.max_score) if opts.do_class_ranker \
                else np.ones(k, dtype=bool)
            if opts.min_class_distribution > 0:
                keep &= sel.select_by_range(it.class_distribution, opts.min_class_distribution)
            if opts.min_class_particles > 0:
                keep &= sel.select_by_range(counts, opts.min_class_particles)
            if opts.max_resolution > 0:
                keep &= sel.select_by_range(res, None, opts.max_resolution)
            keep = sel.top_up(keep, scores, counts, opts.select_nr_parts, opts.select_nr_classes)
    except sel.SelectionError as exc:
        raise JobFailed(f"select_classes: {exc}") from exc
    class_col = it.particles["rlnClassNumber"].to_numpy()
    rows = np.nonzero(np.isin(class_col, np.nonzero(keep)[0] + 1))[0]
    return SelectionResult(scores, counts, res, keep, rows)


def _model_value(it: SelectionInput, label: str, k: int, default: float) -> float:
    return float(it.classes[label].iloc[k]) if label in it.classes else default


def selected_particles(it: SelectionInput, result: SelectionResult, opts: SelectOptions) -> pd.DataFrame:
    """Selected rows, all columns, input order; groups renumbered compactly (or regrouped)."""
    parts = it.particles.iloc[result.particle_rows].reset_index(drop=True).copy()
    if len(parts) == 0:
        return parts
    if opts.do_regroup:
        groups_tab = it.groups
        scale: dict[int, float] = {}
        if isinstance(groups_tab, pd.DataFrame) and "rlnGroupScaleCorrection" in groups_tab:
            scale = dict(zip(groups_tab["rlnGroupNumber"].astype(int), groups_tab["rlnGroupScaleCorrection"].astype(float)))
        old = parts["rlnGroupNumber"].to_numpy(dtype=int) if "rlnGroupNumber" in parts else np.ones(len(parts), int)
        optics = parts["rlnOpticsGroup"].to_numpy(dtype=int) if "rlnOpticsGroup" in parts else np.ones(len(parts), int)
        try:
            new = sel.regroup(old, optics, scale, opts.nr_groups)
        except sel.SelectionError as exc:
            raise JobFailed(f"nr_groups: {exc}") from exc
        parts["rlnGroupName"] = sel.group_names(new, int(new.max()))
        parts["rlnGroupNumber"] = new.astype(np.int64)
    elif "rlnGroupNumber" in parts:
        parts["rlnGroupNumber"] = sel.compact_group_numbers(parts["rlnGroupNumber"].to_numpy()).astype(np.int64)
    return parts


def _class_rows(it: SelectionInput, result: SelectionResult, images: list[str], idx: np.ndarray,
                score_label: str) -> pd.DataFrame:
    def col(label: str, default: float) -> list[float]:
        return [_model_value(it, label, int(k), default) for k in idx]

    return pd.DataFrame({
        "rlnReferenceImage": images,
        score_label: result.scores[idx].astype(np.float64),
        "rlnClassDistribution": it.class_distribution[idx],
        "rlnAccuracyRotations": col("rlnAccuracyRotations", 999.0),
        "rlnAccuracyTranslationsAngst": col("rlnAccuracyTranslationsAngst", 999.0),
        "rlnEstimatedResolution": result.resolution_A[idx],
    })


def write_outputs(ctx: RunContext, it: SelectionInput, result: SelectionResult,
                  features: list[dict[str, Any] | None], particles: pd.DataFrame) -> None:
    """Write every output file of the job (each atomically)."""
    job = ctx.project_dir / ctx.job_dir
    jd = ctx.job_dir
    k_sel = np.nonzero(result.selected)[0]
    all_k = np.arange(it.nr_classes)

    write_star(job / "particles.star", {"optics": it.optics, "particles": particles})
    write_star(job / "rank_data.star", {"optics": it.optics, "particles": it.particles})
    if k_sel.size:
        write_mrcs(job / "class_averages.mrcs", it.averages[k_sel], it.pixel_size_A)
    refs = [f"{i:06d}@{jd}class_averages.mrcs" for i in range(1, k_sel.size + 1)]
    write_star(job / "class_averages.star", {"": _class_rows(it, result, refs, k_sel, "rlnPredictedClassScore")})

    model = _class_rows(it, result, it.classes["rlnReferenceImage"].astype(str).tolist(), all_k, "rlnClassScore")
    for label in ("rlnOverallFourierCompleteness", "rlnClassPriorOffsetX", "rlnClassPriorOffsetY"):
        model[label] = [_model_value(it, label, int(k), 0.0) for k in all_k]
    write_star(job / "rank_model.star", {"model_classes": model})

    general = dict(it.optimiser_general)
    general["rlnModelStarFile"] = f"{jd}rank_model.star"
    general["rlnExperimentalDataStarFile"] = f"{jd}rank_data.star"
    write_star(job / "rank_optimiser.star", {"optimiser_general": general})
    write_star(job / "backup_selection.star", {"": pd.DataFrame({"rlnSelected": result.selected.astype(np.int64)})})

    _write_features(job, it, result, features)
    write_gallery(job / "class_averages.png", it.averages, all_k + 1, it.class_distribution, result.resolution_A,
                  scores=result.scores, selected=result.selected)


def _write_features(job: Path, it: SelectionInput, result: SelectionResult, features: list[dict[str, Any] | None]) -> None:
    names = sorted({key for f in features if f for key in f})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(_FEATURE_HEAD) + names)
    for k, f in enumerate(features):
        head = [k + 1, int(result.counts[k]), f"{it.class_distribution[k]:.6f}", f"{result.scores[k]:.6f}",
                int(result.selected[k])]
        w.writerow(head + ([f"{f[n]:.6g}" if isinstance(f.get(n), (int, float)) else f.get(n, "") for n in names]
                           if f else [""] * len(names)))
    write_text_atomic(job / "features.csv", buf.getvalue())
    scored = [f for f in features if f]
    with atomic_path(job / "features.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, model_inputs(scored).astype(np.float32))


def summary_lines(it: SelectionInput, result: SelectionResult, n_particles: int) -> list[str]:
    """The lines users read first: totals, smallest selected, best rejected."""
    k_sel = np.nonzero(result.selected)[0]
    lines = [f"{n_particles} particles from {k_sel.size} selected classes "
             f"(of {len(it.particles)} particles in {it.nr_classes} classes)"]
    if k_sel.size:
        small = k_sel[np.argsort(result.counts[k_sel], kind="stable")[:3]]
        lines.append("Smallest selected classes: " + ", ".join(
            f"class {k + 1} ({result.counts[k]} particles, score {_fmt(result.scores[k])})" for k in small))
    rejected = np.nonzero(~result.selected & (result.scores != sel.UNSCORED))[0]
    if rejected.size:
        best = rejected[np.argsort(-result.scores[rejected], kind="stable")[:3]]
        lines.append("Best-scoring rejected classes: " + ", ".join(
            f"class {k + 1} (score {_fmt(result.scores[k])}, {result.counts[k]} particles)" for k in best))
    return lines


def _fmt(score: float) -> str:
    return "–" if score == sel.UNSCORED else f"{score:.2f}"


def class_table_rows(it: SelectionInput, result: SelectionResult) -> list[list[str]]:
    """Rows (class, particles, %, resolution Å, score, selected) sorted by class distribution."""
    order = np.argsort(-it.class_distribution, kind="stable")
    return [[str(k + 1), str(int(result.counts[k])), f"{100 * it.class_distribution[k]:.2f}",
             f"{result.resolution_A[k]:.1f}" if result.resolution_A[k] < 900 else "–", _fmt(result.scores[k]),
             "yes" if result.selected[k] else "no"] for k in order]


TABLE_HEADER = ("class", "particles", "%", "resolution (Å)", "score", "selected")


def run_select(ctx: RunContext) -> None:
    """Run the job in ``ctx`` (see module docstring). Raises :class:`JobFailed` on bad input."""
    opts: SelectOptions = ctx.options  # type: ignore[assignment]
    if not opts.fn_model:
        raise JobFailed("fn_model: give the run_itNNN_optimiser.star of a Class2D job")
    try:
        it = read_selection_input(opts.fn_model, ctx.project_dir)
    except Class2DInputError as exc:
        raise JobFailed(str(exc)) from exc
    ctx.log(f"Read {it.optimiser_path}: {it.nr_classes} classes, {len(it.particles)} particles, "
            f"{it.box_px} px at {it.pixel_size_A:g} Å/px")
    if not it.do_correct_ctf and opts.do_class_ranker:
        raise JobFailed(
            f"{it.optimiser_path}: the Class2D run was made without CTF correction (_rlnDoCorrectCtf 0); class "
            "scores need CTF-corrected averages. Re-run Class2D with 'Do CTF-correction?' Yes, or select "
            "without scores (do_class_ranker No with select_classes, min_class_distribution, "
            "min_class_particles or max_resolution)")
    if it.do_correct_ctf:
        try:
            model = RankerModel.load(opts.fn_weights or None)
        except WeightsError as exc:
            raise JobFailed(f"fn_weights: {exc}") from exc
        ctx.log(f"Class scores from {model.source}")
        features, scores = features_and_scores(it, model, opts.fn_weights or None, ctx.project_dir, ctx.log)
    else:
        from emclass2d.jobtypes.select.scoring import class_features
        features = class_features(it)
        scores = np.full(it.nr_classes, sel.UNSCORED)
    ctx.check_abort()
    result = decide(it, opts, scores, features)
    particles = selected_particles(it, result, opts)
    ctx.check_abort()

    write_outputs(ctx, it, result, features, particles)
    lines = summary_lines(it, result, len(particles))
    if opts.do_regroup and len(particles):
        lines.append(f"Regrouped into {int(particles['rlnGroupNumber'].max())} groups "
                     f"(asked for about {opts.nr_groups})")
    job = ctx.project_dir / ctx.job_dir
    write_html_report(job / "report.html", job / "class_averages.png", title=f"{ctx.job_dir} class selection",
                      summary_lines=lines, scores=scores if it.do_correct_ctf else None,
                      threshold=opts.rank_threshold if opts.do_class_ranker else None,
                      table_rows=class_table_rows(it, result), table_header=TABLE_HEADER)
    if len(particles) == 0:
        ctx.warn("No class was selected: lower rank_threshold, or set select_nr_parts / select_nr_classes")
    for line in lines:
        ctx.log(line)
