"""Class splitting in a Class2D run: which class to re-seed, from which particles, and the model update.

With ``do_split_classes Yes`` an inactive class (pdf_class below
``class_inactivity_threshold`` / number of active classes, RELION's VDAM test) is
re-seeded from the particles of the most heterogeneous class instead of by RELION's copy
of the class with the largest gradient (VDAM) or not at all (EM, where RELION leaves an
empty class empty). The pure steps live in :mod:`emclass2d.core.class_split`; this module
reads the particles (their latest class, pose and CTF from the particle table, their
images from the stacks) and writes the two new classes into the model.

When: VDAM in RELION's replacement window (in-between phase); EM from iteration 2 to
60 % of the iterations, so the split classes have iterations left to settle. At most one
split per iteration, as RELION's one replacement per mini-batch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from emclass2d.core.backend import to_host
from emclass2d.core.center import translate_images
from emclass2d.core.class_split import (MIN_SUBSET, class_frame_images, match_power, split_features, split_gain,
                                        subset_averages, subset_sums, two_way_split)
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid
from emclass2d.core.initial import rotated_defocus_angle
from emclass2d.core.mask import solvent_flatten
from emclass2d.core.model import Model
from emclass2d.jobtypes.base import RunContext
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.particle_stream import ParticleStream
from emclass2d.jobtypes.class2d.step import RunState
from emclass2d.nodes.io.particles import ParticleTable

#: Most particles of a class read to decide and make a split (the most recently assigned first).
MAX_SPLIT_PARTICLES = 800
#: Smallest split gain (leading eigenvalue over the pure-noise edge) that counts as heterogeneous.
MIN_SPLIT_GAIN = 1.5
#: Classes examined as split candidates: the largest ones by pdf_class.
NR_SPLIT_CANDIDATES = 4
#: Fraction of the EM iterations during which classes may be split.
EM_SPLIT_FRACTION = 0.6
#: EM iterations after a split before either half may be split again (one E-step re-assigns every particle).
EM_SPLIT_SETTLE = 2
#: Soft-edge width (px) of the particle mask used for the split features and averages.
EDGE_PX = 5.0


@dataclass(frozen=True)
class ClassSplit:
    """A split of class ``expand`` whose second half re-seeds class ``drop``.

    references: (2, N, N) float32 new averages for (expand, drop); fraction: share of the
    expand class's particles in the first subset; gain: the split gain; nr_particles: used.
    """

    drop: int
    expand: int
    references: np.ndarray
    fraction: float
    gain: float
    nr_particles: int


def em_split_window(it: int, nr_iter: int) -> bool:
    """Whether EM iteration ``it`` of ``nr_iter`` may split a class."""
    return 2 <= it <= int(EM_SPLIT_FRACTION * nr_iter)


def inactive_class(pdf_class: Any, threshold: float) -> int | None:
    """The class with the smallest pdf_class if below threshold / (classes with pdf > 0), else None."""
    pdf = np.asarray(to_host(pdf_class), dtype=np.float64)
    active = int(np.count_nonzero(pdf > 0))
    if threshold <= 0 or pdf.size < 2 or active == 0:
        return None
    drop = int(np.argmin(pdf))
    return drop if pdf[drop] < threshold / active else None


def class_members(table: ParticleTable, cls: int, last_seen: np.ndarray | None, limit: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Rows of particles whose latest class is ``cls`` (0-based), most recently assigned first, at most ``limit``."""
    current = table.particles["rlnClassNumber"].to_numpy().astype(np.int64) - 1
    rows = np.flatnonzero(current == cls)
    if rows.size <= limit:
        return rows
    if last_seen is None:
        return np.sort(rng.choice(rows, size=limit, replace=False))
    seen = last_seen[rows] + rng.random(rows.size)  # random order among equally recent
    return np.sort(rows[np.argsort(-seen)[:limit]])


def _particle_arrays(table: ParticleTable, rows: np.ndarray, model: Model,
                     with_ctf: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(origin px (B, 2), psi deg (B,), CTF in the class frame (B, N, N//2+1) or None) of ``rows``."""
    parts = table.particles
    px = model.pixel_size_A
    origin = np.stack([parts["rlnOriginXAngst"].to_numpy(dtype=np.float64)[rows],
                       parts["rlnOriginYAngst"].to_numpy(dtype=np.float64)[rows]], axis=1) / px
    psi = parts["rlnAnglePsi"].to_numpy(dtype=np.float64)[rows]
    if not with_ctf:
        return origin, psi, None
    c = table.ctf_parameters(rows)
    fx, fy = frequency_grid(model.box, px)
    ctf_rot = compute_ctf(fx, fy, c["defocus_u_A"], c["defocus_v_A"],
                          rotated_defocus_angle(c["defocus_angle_deg"], psi), c["voltage_kV"], c["cs_mm"],
                          c["amplitude_contrast"], c["phase_shift_deg"], c["ctf_bfactor_A2"], c["ctf_scale"])
    return origin, psi, ctf_rot


def propose_split(model: Model, table: ParticleTable, read_images: Any, drop: int, last_seen: np.ndarray | None,
                  diameter_A: float, with_ctf: bool, seed: int, exclude: Any = ()) -> ClassSplit | None:
    """The best split of one of the largest classes into (expand, drop), or None if none is heterogeneous.

    ``read_images(rows)`` returns the particles' images (B, N, N) on the model grid;
    classes in ``exclude`` (e.g. split too recently to have been re-estimated) are not split.
    """
    pdf = np.asarray(to_host(model.pdf_class), dtype=np.float64)
    rng = np.random.default_rng(seed)
    n, px = model.box, model.pixel_size_A
    radius = diameter_A / (2.0 * px)
    max_shell = int(max(3, min(n // 2, round(model.current_resolution * n * px))))
    best: tuple[float, int, np.ndarray, np.ndarray, tuple] | None = None
    for k in np.argsort(-pdf)[:NR_SPLIT_CANDIDATES]:
        k = int(k)
        if k == drop or pdf[k] <= 0 or k in exclude:
            continue
        rows = class_members(table, k, last_seen, MAX_SPLIT_PARTICLES, rng)
        if rows.size < 2 * MIN_SUBSET:
            continue
        imgs = np.asarray(read_images(rows), dtype=np.float32)
        if imgs.shape[-1] != n:
            return None  # particles on another grid than the model: no split
        origin, psi, ctf_rot = _particle_arrays(table, rows, model, with_ctf)
        aligned = class_frame_images(imgs, origin, psi)
        feats, null = split_features(aligned, ctf_rot, np.asarray(to_host(model.references))[k], radius, max_shell,
                                     EDGE_PX, seed=seed)
        gain = split_gain(feats, null)
        score = pdf[k] * (gain - 1.0)
        if gain >= MIN_SPLIT_GAIN and (best is None or score > best[0]):
            best = (score, k, rows, feats, (imgs, origin, psi, ctf_rot, gain))
    if best is None:
        return None
    _, expand, rows, feats, (imgs, origin, psi, ctf_rot, gain) = best
    group = two_way_split(feats, seed=seed)
    if min(group.sum(), (~group).sum()) < MIN_SUBSET:
        return None
    sums = subset_sums(translate_images(imgs, origin), ctf_rot, psi, group)
    refs = subset_averages(sums, max_shell)
    refs = solvent_flatten(refs, radius, EDGE_PX)
    refs = match_power(refs, np.asarray(to_host(model.references))[expand], radius)
    return ClassSplit(drop=drop, expand=expand, references=np.asarray(refs, dtype=np.float32),
                      fraction=float(group.mean()), gain=float(gain), nr_particles=int(rows.size))


def apply_split(model: Model, split: ClassSplit) -> Model:
    """The model with class ``expand`` and ``drop`` holding the two halves of the split.

    Both get the expand class's tau2, SSNR, resolution arrays and offset prior; pdf_class
    and pdf_direction of the expand class are shared in proportion to the subsets.
    """
    e, d, f = split.expand, split.drop, split.fraction
    refs = np.array(to_host(model.references), dtype=np.float32, copy=True)
    refs[e], refs[d] = split.references[0], split.references[1]
    out: dict[str, Any] = {"references": refs}
    for name in ("tau2", "data_vs_prior", "sigma2_ref", "fourier_completeness", "prior_offset_A"):
        arr = np.array(to_host(getattr(model, name)), copy=True)
        arr[d] = arr[e]
        out[name] = arr
    for name in ("pdf_class", "pdf_direction"):
        arr = np.array(to_host(getattr(model, name)), dtype=np.float64, copy=True)
        total = arr[e] + arr[d]
        arr[e], arr[d] = f * total, (1.0 - f) * total
        out[name] = arr
    for name in ("estimated_resolution_A", "accuracy_rot_deg", "accuracy_trans_A", "overall_completeness"):
        arr = np.array(to_host(getattr(model, name)), copy=True)
        arr[d] = arr[e]
        out[name] = arr
    return replace(model, **out)


def describe(split: ClassSplit) -> str:
    """One run.out line about a split (1-based class numbers as RELION prints them)."""
    return (f"class {split.drop + 1} (inactive) re-seeded by splitting class {split.expand + 1} "
            f"({split.nr_particles} particles, gain {split.gain:.2f}, {100 * split.fraction:.0f} % / "
            f"{100 * (1 - split.fraction):.0f} %)")


def mark_seen(state: RunState, index: np.ndarray, it: int) -> None:
    """Remember that particles ``index`` were assigned in iteration ``it``."""
    if state.last_seen is None:
        state.last_seen = np.zeros(state.table.n_particles, dtype=np.int64)
    state.last_seen[np.asarray(index, dtype=np.int64)] = it


def split_inactive_class(ctx: RunContext, opts: Class2DOptions, state: RunState, model: Model, stream: ParticleStream,
                         it: int, settle_iterations: int) -> tuple[Model, ClassSplit | None]:
    """Re-seed the inactive class, if any, by splitting a heterogeneous class (``do_split_classes``).

    A class made by a split within the last ``settle_iterations`` iterations (the time its
    particles need to be assigned again) is not split again. Returns the model
    (unchanged when nothing was split) and the split made, if any.
    """
    drop = inactive_class(model.pdf_class, float(opts.class_inactivity_threshold))
    if drop is None:
        return model, None
    recent = {k for k, at in state.split_at.items() if it - at < settle_iterations}
    split = propose_split(model, state.table, stream.read, drop, state.last_seen,
                          state.settings.diameter_A(model.box, model.pixel_size_A), bool(opts.do_ctf_correction),
                          seed=state.random_seed + it, exclude=recent)
    if split is None:
        ctx.log(f"Iteration {it}: class {drop + 1} is inactive; no class is heterogeneous enough to split")
        return model, None
    ctx.log(f"Iteration {it}: {describe(split)}")
    state.split_at.update({split.expand: it, split.drop: it})
    return apply_split(model, split), split


def vdam_split_settle(nr_particles: int, subset_size: int) -> int:
    """VDAM mini-batches after a split before either half may be split again: one pass over the data."""
    return int(np.ceil(nr_particles / max(subset_size, 1))) if subset_size > 0 else 1


__all__ = ["ClassSplit", "vdam_split_settle", "EM_SPLIT_SETTLE", "mark_seen", "split_inactive_class", "propose_split", "apply_split", "inactive_class", "em_split_window", "class_members",
           "describe", "MAX_SPLIT_PARTICLES", "MIN_SPLIT_GAIN"]
