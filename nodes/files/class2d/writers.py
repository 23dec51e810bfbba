"""Write the files of one Class2D iteration: classes.mrcs, moments, model, data, optimiser, sampling.

The optimiser.star is written last, so a complete optimiser.star means a complete set.
Optimiser header: RELION's line 1 is ``# RELION optimiser; version <v>``; no reader
parses it (RELION, the CCP-EM pipeliner and starfile skip comments), so ours says
``# emclass2d optimiser; version <v>``. Line 2 is kept exactly as RELION writes it,
``# `` + the command-line arguments + a trailing space, because users' scripts read it.

Example::

    files = IterationFiles("Class2D/job013/run", 25)
    write_iteration(files, model, table, optimiser_values, sampling_values, command_line)
"""
from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.core.backend import to_host
from emclass2d.core.model import Model
from emclass2d.nodes.files.class2d.naming import IterationFiles
from emclass2d.nodes.files.class2d.model_tables import model_star_tables
from emclass2d.nodes.files.class2d.tables import model_star_blocks, optimiser_general_block, sampling_general_block
from emclass2d.nodes.io.mrc import write_complex_stack, write_mrcs
from emclass2d.nodes.io.particles import ParticleTable
from emclass2d.nodes.io.star import write_star


def package_version() -> str:
    try:
        return importlib.metadata.version("emclass2d")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def optimiser_header(command_line: str, version: str | None = None) -> list[str]:
    """The two comment lines of an optimiser.star (see module docstring)."""
    args = command_line.strip()
    return [f"# emclass2d optimiser; version {version or package_version()}", f"# {args} "]


def write_optimiser_star(path: str | os.PathLike[str], general: Mapping[str, Any], command_line: str,
                         version: str | None = None) -> None:
    """Write ``run_itNNN_optimiser.star``: two comment lines, then data_optimiser_general.

    general: labels for :func:`optimiser_general_block` (defaults fill the rest).
    command_line: the arguments after the program name (written on line 2).
    """
    block = optimiser_general_block(**general)
    write_star(path, {"optimiser_general": block}, comments=optimiser_header(command_line, version))


def write_model_star(path: str | os.PathLike[str], general: Mapping[str, Any], classes: pd.DataFrame,
                     class_spectra: Sequence[pd.DataFrame], groups: pd.DataFrame,
                     optics_noise: Sequence[pd.DataFrame]) -> None:
    """Write ``run_itNNN_model.star`` (see :func:`model_star_blocks`)."""
    write_star(path, model_star_blocks(general, classes, class_spectra, groups, optics_noise))


def write_data_star(path: str | os.PathLike[str], blocks: Mapping[str, pd.DataFrame]) -> None:
    """Write ``run_itNNN_data.star`` from :meth:`ParticleTable.to_blocks` (optics, particles)."""
    for name in ("optics", "particles"):
        if name not in blocks:
            raise ValueError(f"{path}: data.star needs a data_{name} block")
    write_star(path, {"optics": blocks["optics"], "particles": blocks["particles"]})


def write_sampling_star(path: str | os.PathLike[str], values: Mapping[str, Any]) -> None:
    """Write ``run_itNNN_sampling.star`` (see :func:`sampling_general_block`)."""
    write_star(path, {"sampling_general": sampling_general_block(**values)})


def write_iteration(
    files: IterationFiles,
    model: Model,
    table: ParticleTable,
    optimiser_values: dict[str, Any],
    sampling_values: dict[str, Any] | None,
    command_line: str,
    moments: tuple[np.ndarray, np.ndarray] | None = None,
    write_data: bool = True,
    project_dir: str | os.PathLike[str] = ".",
) -> list[str]:
    """Write the iteration's files (optimiser last, so a complete optimiser.star means a complete set).

    optimiser_values: labels for the optimiser_general block beyond the file names and
    iteration, which are filled here. sampling_values: None to skip the sampling.star
    (RELION's sequential iteration 0). moments: VDAM (first-moment stack (2K, P, 2(P/2+1)),
    second-moment stack (K, ...)) already in RELION's interleaved layout. Returns written paths.
    """
    base = Path(project_dir)  # file names in the STAR files stay project-relative
    written: list[str] = []
    refs = np.asarray(to_host(model.references), dtype=np.float32)
    write_mrcs(base / files.classes, refs, model.pixel_size_A)
    written.append(files.classes)
    if moments is not None:
        write_complex_stack(base / files.moment1, moments[0])
        write_complex_stack(base / files.moment2, moments[1])
        written += [files.moment1, files.moment2]
    write_model_star(base / files.model, **model_star_tables(model, table, files, with_moments=moments is not None))
    written.append(files.model)
    if write_data:
        write_data_star(base / files.data, table.to_blocks())
        written.append(files.data)
    if sampling_values is not None:
        write_sampling_star(base / files.sampling, sampling_values)
        written.append(files.sampling)
    general = dict(optimiser_values)
    general.update(rlnOutputRootName=files.root, rlnModelStarFile=files.model, rlnExperimentalDataStarFile=files.data,
                   rlnOrientSamplingStarFile=files.sampling, rlnCurrentIteration=int(files.it))
    write_optimiser_star(base / files.optimiser, general, command_line)
    written.append(files.optimiser)
    return written
