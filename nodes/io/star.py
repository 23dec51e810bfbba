"""STAR files as RELION reads and writes them.

Reading goes through ``starfile`` (every block as a dict of DataFrames/dicts, string
labels kept as strings); writing is ours, in RELION 5's layout (``# version 50001``,
``data_<name>``, list or loop tables, RELION's number formats, a line with one space
closing each block) so RELION, CCP-EM's pipeliner and users' scripts read our files.
Every write is atomic.

Example::

    blocks = read_star("Class2D/job013/run_it025_model.star")
    blocks["model_general"]["rlnNrClasses"]      # -> 4
    write_star("out.star", {"optics": optics_df, "particles": parts_df})

See also: :mod:`emclass2d.nodes.io.atomic`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import starfile

from emclass2d.nodes.io.atomic import atomic_path

#: A data block: a loop table (DataFrame) or a list table (label -> value).
DataBlock = Union[pd.DataFrame, dict[str, Any]]

#: STAR version line RELION 5 writes before every block (``CURRENT_MDT_VERSION``).
STAR_VERSION_LINE = "# version 50001"

#: Labels that are strings in RELION even when their values look like numbers.
STRING_LABELS: tuple[str, ...] = (
    "rlnImageName", "rlnMicrographName", "rlnGroupName", "rlnOpticsGroupName",
    "rlnReferenceImage", "rlnGradMoment1", "rlnGradMoment2", "rlnOriginalParticleName",
    "rlnMicrographMovieName", "rlnCtfImage", "rlnMtfFileName", "rlnOutputRootName",
    "rlnModelStarFile", "rlnModelStarFile2", "rlnExperimentalDataStarFile",
    "rlnOrientSamplingStarFile", "rlnTomoTomogramsFile", "rlnTomoTrajectoriesFile",
    "rlnSolventMaskName", "rlnSolventMask2Name", "rlnBodyStarFile", "rlnTauSpectrumName",
    "rlnLocalSymmetryFile", "rlnFourierMask", "rlnSgdStepsizeScheme", "rlnTau2FudgeScheme",
    "rlnJobTypeLabel", "rlnJobOptionVariable", "rlnJobOptionValue",
    "rlnPipeLineProcessName", "rlnPipeLineProcessAlias", "rlnPipeLineProcessTypeLabel",
    "rlnPipeLineProcessStatusLabel", "rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel",
    "rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode",
    "rlnGroupNameOriginal", "rlnClassName", "rlnSelectedName",
)


class StarFileError(ValueError):
    """A STAR file is missing, unreadable, or lacks a block/label we need."""


def read_star(path: str | os.PathLike[str], extra_string_labels: Sequence[str] = ()) -> dict[str, DataBlock]:
    """Read every block of a STAR file: ``{block name: DataFrame or dict}``.

    Block names are without ``data_`` (RELION's unnamed ``data_`` block is ``""``).
    Raises :class:`StarFileError` naming the file when it is missing or cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise StarFileError(f"{path}: file not found")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=list(STRING_LABELS) + list(extra_string_labels))
    except Exception as exc:  # starfile raises a variety of parser errors
        raise StarFileError(f"{path}: not a readable STAR file ({exc})") from exc
    return {name: _normalise_block(block) for name, block in blocks.items()}


def _normalise_block(block: DataBlock) -> DataBlock:
    if isinstance(block, pd.DataFrame):
        for col in block.columns:
            if col in STRING_LABELS or block[col].dtype == object or pd.api.types.is_string_dtype(block[col]):
                block[col] = block[col].astype(str).astype(object)
        return block
    return dict(block)


def require_block(blocks: Mapping[str, DataBlock], name: str, path: str | os.PathLike[str], loop: bool | None = None) -> DataBlock:
    """Return ``blocks[name]`` or raise a :class:`StarFileError` naming file and block."""
    if name not in blocks:
        found = ", ".join(f"data_{b}" for b in blocks) or "none"
        raise StarFileError(f"{path}: block data_{name} not found (blocks present: {found})")
    block = blocks[name]
    if loop is True and not isinstance(block, pd.DataFrame):
        raise StarFileError(f"{path}: block data_{name} should be a loop_ table")
    return block


def require_labels(table: pd.DataFrame, labels: Sequence[str], path: str | os.PathLike[str], block: str) -> None:
    """Raise a :class:`StarFileError` listing labels absent from a loop table."""
    missing = [lab for lab in labels if lab not in table.columns]
    if missing:
        raise StarFileError(f"{path}: data_{block} lacks required label(s) " + ", ".join(f"_{m}" for m in missing))


# ----------------------------------------------------------------------------- writing


def format_value(value: Any) -> str:
    """One value as RELION writes it (``MetaDataTable::getValueToString``).

    DOUBLE: ``%12.6f`` / ``%12.5f`` for negatives, exponent form when 0<|v|<0.001 or
    |v|>100000; INT: ``%12d``; BOOL: 0/1; strings quoted when empty or containing blanks.
    """
    if isinstance(value, (bool, np.bool_)):
        return f"{int(value):12d}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):12d}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            return f"{v:12f}"
        a = abs(v)
        if a > 100000 or (0 < a < 0.001):
            return f"{v:12.6e}" if v >= 0 else f"{v:12.5e}"
        return f"{v:12.6f}" if v >= 0 else f"{v:12.5f}"
    s = "" if value is None else str(value)
    if s == "":
        return '""'
    if s.startswith('"') or any(c in s for c in " \t"):
        return '"' + s.replace('"', "") + '"'
    return s


def _format_column(series: pd.Series) -> list[str]:
    if pd.api.types.is_bool_dtype(series):
        return [f"{int(v):12d}" for v in series]
    if pd.api.types.is_integer_dtype(series):
        return [f"{int(v):12d}" for v in series]
    if pd.api.types.is_float_dtype(series):
        return [format_value(float(v)) for v in series]
    return [format_value(v) for v in series]


def block_to_text(name: str, block: DataBlock) -> str:
    """Text of one block in RELION's layout (empty string for an empty loop table)."""
    lines = ["", STAR_VERSION_LINE, "", f"data_{name}", ""]
    if isinstance(block, pd.DataFrame):
        if len(block) == 0:
            return ""
        lines.append("loop_ ")
        lines += [f"_{label} #{i} " for i, label in enumerate(block.columns, start=1)]
        columns = [_format_column(block[c]) for c in block.columns]
        for row in zip(*columns):
            lines.append("".join(f"{v:>10} " for v in row))
    else:
        width = max((len(k) for k in block), default=0) + 12
        for label, value in block.items():
            text = format_value(value)
            lines.append(f"_{label:<{width}}{text}")
    lines.append(" ")
    return "\n".join(lines) + "\n"


def star_text(blocks: Mapping[str, DataBlock], comments: Sequence[str] = ()) -> str:
    """Whole-file text: optional leading ``# `` comment lines, then each block."""
    head = "".join(f"# {c}\n" if not c.startswith("#") else f"{c}\n" for c in comments)
    return head + "".join(block_to_text(n, b) for n, b in blocks.items())


def write_star(path: str | os.PathLike[str], blocks: Mapping[str, DataBlock], comments: Sequence[str] = ()) -> None:
    """Write blocks to ``path`` atomically in RELION's layout.

    ``comments`` are lines put before the first block (the optimiser.star header).
    """
    text = star_text(blocks, comments)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
