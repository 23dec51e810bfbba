"""The particles STAR file (RELION 3.1+: ``data_optics`` + ``data_particles``) as Class2D sees it.

:class:`ParticleTable` reads and validates the file, then does what RELION's
``Experiment::read`` does before refinement:

* stable-sorts the particles by ``rlnMicrographName`` (the original row of every particle
  is kept in :attr:`ParticleTable.original_row`);
* makes scale groups from ``rlnGroupName`` if present, else one per micrograph, named by
  the micrograph path after its ``<JobType>/jobNNN/`` prefix; group ids follow first
  appearance after the sort (0-based here, ``rlnGroupNumber`` 1-based in files);
* appends missing columns in RELION's order: rlnGroupNumber, rlnAngleRot, rlnAngleTilt,
  rlnAnglePsi, rlnOriginXAngst, rlnOriginYAngst (0), rlnClassNumber (0),
  rlnNormCorrection (1).

Every input column is kept (strings as ``str``) and written back by :meth:`to_blocks`.

Pixel size: only ``rlnImagePixelSize`` in ``data_optics`` is accepted. RELION's refine
reads particle pixel sizes from that label, and a data.star we write must carry it for
RELION to continue from it, so legacy labels (``rlnPixelSize``, ``rlnDetectorPixelSize``
with ``rlnMagnification``) are refused with a message saying what to add.

Example::

    table = ParticleTable.read("Extract/job007/particles.star")
    table.n_particles, table.box_size, table.pixel_size_A     # 500, 64, 3.0
    table.group_index                                          # (500,) int32, 0-based
    ctf = table.ctf_parameters()                               # dict of (500,) float64
    write_star("run_it000_data.star", table.to_blocks())

Longer than most modules because it is one class, :class:`ParticleTable`, and the rules of
one file (reading, label checks, units, CTF parameters, batches, writing back); split, its
halves would share every private column helper.

See also: :mod:`emclass2d.nodes.io.images` (the images), :mod:`emclass2d.core.batch`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.core.batch import ParticleBatch
from emclass2d.nodes.io.star import DataBlock, StarFileError, read_star

#: Optics labels Class2D needs (``ObservationModel`` and ``CTF::setValuesByGroup``).
REQUIRED_OPTICS_LABELS: tuple[str, ...] = (
    "rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize",
    "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
)
#: Per-particle CTF labels needed when CTF correction is on (rlnDefocusV/Angle optional).
CTF_LABELS: tuple[str, ...] = ("rlnDefocusU",)

#: Columns RELION appends when absent, in its order, with their initial values.
DEFAULT_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("rlnAngleRot", 0.0), ("rlnAngleTilt", 0.0), ("rlnAnglePsi", 0.0),
    ("rlnOriginXAngst", 0.0), ("rlnOriginYAngst", 0.0),
    ("rlnClassNumber", 0), ("rlnNormCorrection", 1.0),
)

#: Labels RELION types INT; read back as int64 whatever the file's formatting.
INT_LABELS = frozenset({
    "rlnOpticsGroup", "rlnGroupNumber", "rlnClassNumber", "rlnNrOfSignificantSamples",
    "rlnRandomSubset", "rlnImageSize", "rlnImageDimensionality", "rlnHelicalTubeID", "rlnNrOfFrames",
})
#: Labels RELION types DOUBLE; integer-looking input ("1024") is read back as float64.
DOUBLE_LABELS = frozenset({
    "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior", "rlnOriginXAngst", "rlnOriginYAngst",
    "rlnOriginZAngst", "rlnOriginXPriorAngst", "rlnOriginYPriorAngst", "rlnNormCorrection",
    "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift",
    "rlnCtfMaxResolution", "rlnCtfFigureOfMerit", "rlnAutopickFigureOfMerit", "rlnLogLikeliContribution",
    "rlnMaxValueProbDistribution", "rlnAmplitudeContrast", "rlnSphericalAberration", "rlnVoltage",
    "rlnImagePixelSize", "rlnMicrographOriginalPixelSize", "rlnMicrographPixelSize",
    "rlnBeamTiltX", "rlnBeamTiltY",
})

_JOB_PREFIX_RE = re.compile(r"(?:^|/)job\d{3,}/")


def group_name_from_micrograph(micrograph: str) -> str:
    """``"MotionCorr/job002/Movies/mic1.mrc" -> "Movies/mic1.mrc"`` (RELION ``decomposePipelineFileName``).

    Names without a ``jobNNN/`` component are returned unchanged.
    """
    match = _JOB_PREFIX_RE.search(micrograph)
    return micrograph[match.end():] if match else micrograph


class ParticleTable:
    """Optics and particle tables of one particle set, in RELION's refine order.

    Build with :meth:`read` (a file) or :meth:`from_blocks` (already-parsed blocks). The
    row order of :attr:`particles` is the micrograph-sorted order; every per-particle
    array (group_index, optics_index, CTF parameters) follows it.
    """

    def __init__(self, optics: pd.DataFrame, particles: pd.DataFrame, group_names: list[str],
                 group_index: np.ndarray, optics_index: np.ndarray, original_row: np.ndarray,
                 source: str) -> None:
        self._optics = optics
        self._particles = particles
        self._group_names = group_names
        self._group_index = group_index
        self._optics_index = optics_index
        self.original_row = original_row  #: (n,) int64: 0-based row in the input file
        self.source = source  #: the file the table came from (for messages)

    # ------------------------------------------------------------------ construction
    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "ParticleTable":
        """Read and validate a RELION 3.1+ particles STAR file (see module docstring)."""
        return cls.from_blocks(read_star(path), source=str(path))

    @classmethod
    def from_blocks(cls, blocks: Mapping[str, DataBlock], source: str = "<particles>") -> "ParticleTable":
        """Validate parsed blocks (``{"optics": df, "particles": df}``) and prepare them."""
        optics = _optics_table(blocks, source)
        parts = _particles_table(blocks, source)
        n = len(parts)

        # Optics group of every particle (0-based row in the optics table).
        group_numbers = [int(g) for g in optics["rlnOpticsGroup"]]
        if "rlnOpticsGroup" not in parts.columns:
            if len(optics) > 1:
                raise StarFileError(
                    f"{source}: data_particles lacks _rlnOpticsGroup but data_optics has {len(optics)} "
                    "optics groups; every particle must say which group it belongs to"
                )
            parts["rlnOpticsGroup"] = np.full(n, group_numbers[0], dtype=np.int64)
        lookup = {g: i for i, g in enumerate(group_numbers)}
        optics_index = np.empty(n, dtype=np.int32)
        for row, g in enumerate(parts["rlnOpticsGroup"].to_numpy()):
            i = lookup.get(int(g))
            if i is None:
                raise StarFileError(
                    f"{source}: data_particles row {row + 1}: _rlnOpticsGroup {int(g)} is not in data_optics "
                    f"(groups defined: {', '.join(map(str, group_numbers))})"
                )
            optics_index[row] = i

        # RELION's Experiment::read sorts by micrograph name (stable) before anything else.
        original_row = np.arange(n, dtype=np.int64)
        if "rlnMicrographName" in parts.columns:
            mics = [str(m) for m in parts["rlnMicrographName"]]
            original_row = np.asarray(sorted(range(n), key=mics.__getitem__), dtype=np.int64)
            parts = parts.iloc[original_row].reset_index(drop=True)
            optics_index = optics_index[original_row]

        # Scale groups: rlnGroupName, else micrograph, ids by first appearance.
        if "rlnGroupName" in parts.columns:
            keys = [str(g) for g in parts["rlnGroupName"]]
        elif "rlnMicrographName" in parts.columns:
            keys = [group_name_from_micrograph(str(m)) for m in parts["rlnMicrographName"]]
        else:
            keys = ["group_1"] * n  # no micrograph information: one scale group
        ids: dict[str, int] = {}
        group_index = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int32, count=n)

        parts["rlnGroupNumber"] = group_index.astype(np.int64) + 1
        for label, value in DEFAULT_COLUMNS:
            if label not in parts.columns:
                parts[label] = np.full(n, value, dtype=np.int64 if isinstance(value, int) else np.float64)
        return cls(optics, parts, list(ids), group_index, optics_index, original_row, source)

    # ------------------------------------------------------------------ properties
    @property
    def n_particles(self) -> int:
        return len(self._particles)

    @property
    def optics(self) -> pd.DataFrame:
        """The data_optics table, all input columns kept."""
        return self._optics

    @property
    def particles(self) -> pd.DataFrame:
        """The data_particles table in refine order (micrograph-sorted), defaults added."""
        return self._particles

    @property
    def box_size(self) -> int:
        """Image size N in pixels (rlnImageSize; equal for all optics groups)."""
        return int(self._optics["rlnImageSize"].iloc[0])

    @property
    def pixel_size_A(self) -> float:
        """Pixel size in Å (rlnImagePixelSize; equal for all optics groups)."""
        return float(self._optics["rlnImagePixelSize"].iloc[0])

    @property
    def group_names(self) -> list[str]:
        """Scale-group names; group g (0-based) is rlnGroupNumber g+1."""
        return list(self._group_names)

    @property
    def n_groups(self) -> int:
        return len(self._group_names)

    @property
    def n_optics_groups(self) -> int:
        return len(self._optics)

    @property
    def group_index(self) -> np.ndarray:
        """(n,) int32 scale group of every particle, 0-based."""
        return self._group_index

    @property
    def optics_index(self) -> np.ndarray:
        """(n,) int32 optics group of every particle: 0-based row of data_optics."""
        return self._optics_index

    @property
    def image_names(self) -> list[str]:
        return [str(v) for v in self._particles["rlnImageName"]]

    def group_counts(self) -> np.ndarray:
        """(n_groups,) int64 number of particles per scale group."""
        return np.bincount(self._group_index, minlength=self.n_groups).astype(np.int64)

    def row_labels(self) -> list[str]:
        """How to name each particle in messages: its row in the input file."""
        return [f"row {r + 1} of {self.source} data_particles" for r in self.original_row]

    # ------------------------------------------------------------------ checks
    def check_ctf_labels(self) -> None:
        """Raise StarFileError if CTF correction is impossible (rlnDefocusU absent).

        rlnDefocusV (= U), rlnDefocusAngle, rlnCtfBfactor, rlnPhaseShift (0) and
        rlnCtfScalefactor (1) have defaults, as in RELION.
        """
        missing = [lab for lab in CTF_LABELS if lab not in self._particles.columns]
        if missing:
            raise StarFileError(
                f"{self.source}: data_particles lacks {', '.join('_' + m for m in missing)}, needed for CTF "
                "correction (run CTF estimation before extraction, or switch CTF correction off)"
            )

    def warn_small_groups(self, min_count: int = 10) -> list[str]:
        """Messages for scale groups with fewer than ``min_count`` particles.

        Small groups give noisy intensity-scale estimates; RELION suggests regrouping
        (Select job, "Regroup particles").
        """
        counts = self.group_counts()
        return [
            f"scale group {g + 1} ({self._group_names[g]}) has only {int(c)} particle(s) (< {min_count}); "
            "its intensity scale will be poorly estimated; consider regrouping particles"
            for g, c in enumerate(counts) if c < min_count
        ]

    # ------------------------------------------------------------------ per-particle values
    def _column(self, label: str, default: float | None = None, index: np.ndarray | None = None) -> np.ndarray:
        parts = self._particles
        if label in parts.columns:
            values = parts[label].to_numpy(dtype=np.float64)
        elif default is not None:
            values = np.full(len(parts), default, dtype=np.float64)
        else:
            raise StarFileError(f"{self.source}: data_particles lacks _{label}")
        return values if index is None else values[index]

    def _optics_column(self, label: str, default: float, index: np.ndarray | None = None) -> np.ndarray:
        if label in self._optics.columns:
            per_group = self._optics[label].to_numpy(dtype=np.float64)
        else:
            per_group = np.full(len(self._optics), default, dtype=np.float64)
        oi = self._optics_index if index is None else self._optics_index[index]
        return per_group[oi]

    def ctf_parameters(self, index: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-particle CTF parameters (float64, RELION's defaults where labels are absent).

        Keys: defocus_u_A, defocus_v_A (= U if absent), defocus_angle_deg, ctf_bfactor_A2,
        phase_shift_deg (0 if absent), ctf_scale (rlnCtfScalefactor, 1), voltage_kV, cs_mm,
        amplitude_contrast (from each particle's optics group), ctf_premultiplied (bool,
        rlnCtfDataAreCtfPremultiplied of the optics group, False if absent).
        Raises StarFileError if rlnDefocusU is absent.
        """
        idx = None if index is None else np.asarray(index, dtype=np.int64)
        self.check_ctf_labels()
        u = self._column("rlnDefocusU", index=idx)
        v = self._column("rlnDefocusV", index=idx) if "rlnDefocusV" in self._particles.columns else u.copy()
        return {
            "defocus_u_A": u,
            "defocus_v_A": v,
            "defocus_angle_deg": self._column("rlnDefocusAngle", 0.0, idx),
            "ctf_bfactor_A2": self._column("rlnCtfBfactor", 0.0, idx),
            "phase_shift_deg": self._column("rlnPhaseShift", 0.0, idx),
            "ctf_scale": self._column("rlnCtfScalefactor", 1.0, idx),
            "voltage_kV": self._optics_column("rlnVoltage", 300.0, idx),
            "cs_mm": self._optics_column("rlnSphericalAberration", 2.7, idx),
            "amplitude_contrast": self._optics_column("rlnAmplitudeContrast", 0.1, idx),
            "ctf_premultiplied": self._optics_column("rlnCtfDataAreCtfPremultiplied", 0.0, idx) != 0,
        }

    def make_batch(self, index: Sequence[int] | np.ndarray, images: Any, with_ctf: bool = True) -> ParticleBatch:
        """A :class:`ParticleBatch` for particle rows ``index`` (table order) and their images.

        images: (B, N, N) float32 in the same order as ``index`` (host or device array).
        Without ``with_ctf`` the CTF fields are neutral (defocus 0, scale 1), for runs
        without CTF correction on data that have no CTF labels.
        Origins are converted from Å to pixels (rlnOriginX/YAngst / rlnImagePixelSize).
        """
        idx = np.asarray(index, dtype=np.int64)
        b = idx.size
        if with_ctf:
            ctf = self.ctf_parameters(idx)
        else:
            zero = np.zeros(b, dtype=np.float64)
            ctf = {
                "defocus_u_A": zero, "defocus_v_A": zero.copy(), "defocus_angle_deg": zero.copy(),
                "ctf_bfactor_A2": zero.copy(), "phase_shift_deg": zero.copy(), "ctf_scale": np.ones(b),
                "voltage_kV": self._optics_column("rlnVoltage", 300.0, idx),
                "cs_mm": self._optics_column("rlnSphericalAberration", 2.7, idx),
                "amplitude_contrast": self._optics_column("rlnAmplitudeContrast", 0.1, idx),
                "ctf_premultiplied": np.zeros(b, dtype=bool),
            }
        px = self._optics_column("rlnImagePixelSize", 1.0, idx)
        origin_px = np.stack([self._column("rlnOriginXAngst", 0.0, idx) / px,
                              self._column("rlnOriginYAngst", 0.0, idx) / px], axis=1).astype(np.float32)
        return ParticleBatch(
            images=images,
            part_index=idx,
            group=self._group_index[idx],
            optics_group=self._optics_index[idx],
            origin_px=origin_px,
            norm_correction=self._column("rlnNormCorrection", 1.0, idx).astype(np.float32),
            **ctf,
        )

    # ------------------------------------------------------------------ updating and writing
    def set_column(self, label: str, values: Any, index: Sequence[int] | np.ndarray | None = None,
                   dtype: Any = np.float64) -> None:
        """Set ``label`` for rows ``index`` (all rows if None); a new column is appended.

        New columns are initialised to 0 in ``dtype`` (use np.int64 for RELION INT labels,
        e.g. rlnClassNumber, rlnNrOfSignificantSamples).
        """
        parts = self._particles
        if label not in parts.columns:
            parts[label] = np.zeros(len(parts), dtype=dtype)
        if index is None:
            parts[label] = np.asarray(values, dtype=parts[label].dtype) if not np.isscalar(values) else values
        else:
            col = parts.columns.get_loc(label)
            parts.iloc[np.asarray(index, dtype=np.int64), col] = np.asarray(values, dtype=parts[label].dtype)

    def to_blocks(self) -> dict[str, pd.DataFrame]:
        """``{"optics": ..., "particles": ...}`` for :func:`write_star` (a run's data.star).

        rlnGroupNumber is rewritten (1-based) from the current grouping, as RELION does.
        """
        parts = self._particles.copy()
        parts["rlnGroupNumber"] = self._group_index.astype(np.int64) + 1
        return {"optics": self._optics.copy(), "particles": parts}

    def subset(self, index: Sequence[int] | np.ndarray) -> pd.DataFrame:
        """Particle rows ``index`` (table order) as a new DataFrame (for Select outputs)."""
        return self._particles.iloc[np.asarray(index, dtype=np.int64)].reset_index(drop=True)


# ---------------------------------------------------------------------- validation helpers


def _coerce_types(table: pd.DataFrame, source: str, block: str) -> pd.DataFrame:
    for label in table.columns:
        target = np.int64 if label in INT_LABELS else np.float64 if label in DOUBLE_LABELS else None
        if target is None or table[label].dtype == target:
            continue
        try:
            numeric = pd.to_numeric(table[label], errors="raise")
        except (ValueError, TypeError):
            bad = next(i for i, v in enumerate(table[label]) if _not_number(v))
            raise StarFileError(
                f"{source}: data_{block} row {bad + 1}: _{label} is {table[label].iloc[bad]!r}, expected a number"
            ) from None
        if target is np.int64 and not np.all(np.asarray(numeric, dtype=np.float64) % 1 == 0):
            bad = int(np.flatnonzero(np.asarray(numeric, dtype=np.float64) % 1 != 0)[0])
            raise StarFileError(f"{source}: data_{block} row {bad + 1}: _{label} is {numeric.iloc[bad]}, expected an integer")
        table[label] = np.asarray(numeric, dtype=np.float64).astype(target)
    return table


def _not_number(value: Any) -> bool:
    try:
        float(value)
        return False
    except (TypeError, ValueError):
        return True


def _optics_table(blocks: Mapping[str, DataBlock], source: str) -> pd.DataFrame:
    if "optics" not in blocks:
        found = ", ".join(f"data_{b}" for b in blocks) or "none"
        raise StarFileError(
            f"{source}: no data_optics block (blocks present: {found}). This looks like a particles file "
            "from RELION 3.0 or older; convert it to the RELION 3.1+ format first, e.g. "
            f"`relion_convert_star --i {source} --o particles_converted.star`"
        )
    optics = blocks["optics"]
    if isinstance(optics, dict):  # a one-group optics table written as a list
        optics = pd.DataFrame({k: [v] for k, v in optics.items()})
    optics = optics.copy().reset_index(drop=True)
    if len(optics) == 0:
        raise StarFileError(f"{source}: data_optics is empty")
    missing = [lab for lab in REQUIRED_OPTICS_LABELS if lab not in optics.columns]
    if missing:
        hint = ""
        if "rlnImagePixelSize" in missing:
            legacy = [lab for lab in ("rlnPixelSize", "rlnMicrographPixelSize", "rlnDetectorPixelSize")
                      if lab in optics.columns]
            hint = (" (particle images need _rlnImagePixelSize in data_optics"
                    + (f"; found {', '.join('_' + x for x in legacy)}, which RELION does not use for particles" if legacy else "")
                    + ")")
        raise StarFileError(f"{source}: data_optics lacks required label(s) "
                            + ", ".join(f"_{m}" for m in missing) + hint)
    optics = _coerce_types(optics, source, "optics")
    numbers = optics["rlnOpticsGroup"].tolist()
    if len(set(numbers)) != len(numbers):
        raise StarFileError(f"{source}: data_optics lists an _rlnOpticsGroup number twice ({numbers})")
    if "rlnImageDimensionality" in optics.columns:
        bad = optics.index[optics["rlnImageDimensionality"] != 2].tolist()
        if bad:
            raise StarFileError(f"{source}: data_optics row {bad[0] + 1}: _rlnImageDimensionality is "
                                f"{optics['rlnImageDimensionality'].iloc[bad[0]]}; Class2D needs 2-D particle images")
    for label, what, unit in (("rlnImageSize", "box sizes", " px"), ("rlnImagePixelSize", "pixel sizes", " Å")):
        values = optics[label].to_numpy()
        if np.any(values != values[0]):
            listing = ", ".join(f"group {g}: {v}{unit}" for g, v in zip(numbers, values))
            raise StarFileError(
                f"{source}: data_optics has different {what} across optics groups ({listing}); "
                "Class2D needs one box and pixel size: re-extract or rescale the particles to a common size"
            )
    if optics["rlnImagePixelSize"].iloc[0] <= 0 or optics["rlnImageSize"].iloc[0] <= 0:
        raise StarFileError(f"{source}: data_optics _rlnImagePixelSize and _rlnImageSize must be positive")
    return optics


def _particles_table(blocks: Mapping[str, DataBlock], source: str) -> pd.DataFrame:
    if "particles" not in blocks:
        found = ", ".join(f"data_{b}" for b in blocks) or "none"
        raise StarFileError(f"{source}: no data_particles block (blocks present: {found})")
    parts = blocks["particles"]
    if isinstance(parts, dict):
        parts = pd.DataFrame({k: [v] for k, v in parts.items()})
    parts = parts.copy().reset_index(drop=True)
    if len(parts) == 0:
        raise StarFileError(f"{source}: data_particles has no rows")
    if "rlnImageName" not in parts.columns:
        raise StarFileError(f"{source}: data_particles lacks required label _rlnImageName")
    for label in ("rlnImageName", "rlnMicrographName", "rlnGroupName"):
        if label in parts.columns:
            parts[label] = parts[label].astype(str).astype(object)
    return _coerce_types(parts, source, "particles")


def resolve_in_project(path: str | os.PathLike[str], project_dir: str | os.PathLike[str]) -> Path:
    """A project-relative path (as written in STAR files) resolved against ``project_dir``."""
    p = Path(path)
    return p if p.is_absolute() else Path(project_dir) / p


def image_source_for(table: ParticleTable, project_dir: str | os.PathLike[str], max_open: int = 256):
    """An :class:`~emclass2d.nodes.io.images.ImageSource` over ``table``'s images (table order).

    Errors name the particle's row in the input file; images must be rlnImageSize square.
    """
    from emclass2d.nodes.io.images import ImageSource

    return ImageSource(table.image_names, project_dir=project_dir, box_size=table.box_size,
                       row_labels=table.row_labels(), max_open=max_open)
