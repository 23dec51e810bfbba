"""Names of a Class2D run's files: ``run_it025``, continue roots ``run_ct25``, the newest optimiser.

Example::

    iteration_root("Class2D/job013/run", 25)                  # 'Class2D/job013/run_it025'
    parse_optimiser_name("run_ct25_it030_optimiser.star")      # ('run_ct25', 30)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


_OPTIMISER_RE = re.compile(r"^(?P<root>.+?)_it(?P<it>\d{3,})_optimiser\.star$")


_CT_RE = re.compile(r"_ct(\d+)")


def iteration_root(root: str, it: int) -> str:
    """``("Class2D/job013/run", 25) -> "Class2D/job013/run_it025"`` (3 digits minimum)."""
    return f"{root}_it{it:03d}"


def continue_root(root: str, it: int) -> str:
    """Output root of a run continued from iteration ``it``: ``run -> run_ct25`` (no padding).

    RELION adds ``_ct<it>`` when ``--o`` is absent or equals the stored rlnOutputRootName
    (RELION's ``MlOptimiser::read`` on ``--continue``), so a second continue gives ``run_ct25_ct40``.
    """
    return f"{root}_ct{it}"


def parse_optimiser_name(name: str | os.PathLike[str]) -> tuple[str, int] | None:
    """``"run_ct25_it030_optimiser.star" -> ("run_ct25", 30)``; None if not an optimiser file."""
    match = _OPTIMISER_RE.match(Path(name).name)
    if match is None:
        return None
    return match.group("root"), int(match.group("it"))


def find_latest_optimiser(job_dir: str | os.PathLike[str], root_name: str = "run") -> Path | None:
    """The newest ``<root>[_ctNN...]_itNNN_optimiser.star`` in ``job_dir`` (None if none).

    Newest = highest iteration; at equal iteration the file of the latest continuation
    (a continued run rewrites its starting iteration under ``run_ctNN_itNNN``).
    """
    best: tuple[tuple[int, int, tuple[int, ...]], Path] | None = None
    for path in Path(job_dir).glob(f"{root_name}*_it*_optimiser.star"):
        parsed = parse_optimiser_name(path.name)
        if parsed is None:
            continue
        root, it = parsed
        suffix = root[len(root_name):]
        if _CT_RE.sub("", suffix):  # some other root, e.g. "run2" or "run_unmasked"
            continue
        cts = tuple(int(c) for c in _CT_RE.findall(suffix))
        key = (it, len(cts), cts)
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else best[1]


@dataclass(frozen=True)
class IterationFiles:
    """File names of iteration ``it`` under output root ``root`` (``Class2D/job013/run``)."""

    root: str
    it: int

    @property
    def stem(self) -> str:
        return iteration_root(self.root, self.it)

    @property
    def optimiser(self) -> str:
        return self.stem + "_optimiser.star"

    @property
    def model(self) -> str:
        return self.stem + "_model.star"

    @property
    def data(self) -> str:
        return self.stem + "_data.star"

    @property
    def sampling(self) -> str:
        return self.stem + "_sampling.star"

    @property
    def classes(self) -> str:
        return self.stem + "_classes.mrcs"

    @property
    def moment1(self) -> str:
        return self.stem + "_1moment.mrcs"

    @property
    def moment2(self) -> str:
        return self.stem + "_2moment.mrcs"
