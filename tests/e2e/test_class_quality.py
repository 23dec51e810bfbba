"""Class quality over several random seeds: the views a user expects to see, found on average.

One simulated data set (1,200 particles of 64 px at 3 Å/px, four equally frequent views that
differ clearly, SNR 0.1, 5 % junk) classified into K = 6 classes by EM, 10 iterations, with
three random seeds, as RELION does (``do_split_classes No``) and with class splitting. A user
running this expects every one of the four views in a class of its own and no class that
mixes views, whatever the seed; the bounds are that requirement with a margin of half a
view on the mean, not figures the code happened to give:

* mean over seeds of the views found (majority of a class at least 90 % pure) >= 3.5 of 4;
* mean class purity of the good particles >= 0.9 (merging two views of 300 particles each
  costs 0.25, so this fails on one merge in most seeds).

RELION's EM falls into the local optimum where good particles collapse into a few mixed
classes and the spare classes empty out (issue's side-by-side table: 2-4 of 8 views found by
RELION 5 on an unseen set); our RELION-behaviour run is held to the same requirement and
marked as expected to fail for that reason until it is fixed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emclass2d.core.metrics import class_purity, views_found
from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
from emclass2d.nodes.io.star import read_star

pytestmark = pytest.mark.slow

N_VIEWS = 4
N_ITER = 10
SEEDS = (1, 2, 3)
#: Required mean over the seeds: all four views, with half a view of margin.
MIN_MEAN_VIEWS = N_VIEWS - 0.5
#: Required mean class purity of the good particles.
MIN_MEAN_PURITY = 0.9


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quality")
    assert _cli(root, "init").returncode == 0
    simulate_project_files("Sim", n=1200, box=64, pixel_size_A=3.0, n_views=N_VIEWS, snr=0.1, junk_fraction=0.05,
                           n_micrographs=8, seed=3, project_dir=root, view_weights=[1.0] * N_VIEWS)
    return root


def _cli(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", *argv], cwd=root, capture_output=True,
                          text=True, timeout=900, env=os.environ.copy())


def _scores(project: Path, split: bool) -> list[tuple[int, float]]:
    """(views found, purity) of one EM run per seed."""
    truth = read_star(project / "Sim/truth.star")["particles"].set_index("rlnImageName")
    out = []
    for seed in SEEDS:
        res = _cli(project, "run", "emclass2d.class2d", "--fn_img", "Sim/particles.star", "--do_em", "Yes",
                   "--do_grad", "No", "--nr_classes", "6", "--nr_iter_em", str(N_ITER), "--particle_diameter", "130",
                   "--random_seed", str(seed), "--nr_threads", "2", "--do_split_classes", "Yes" if split else "No")
        assert res.returncode == 0, res.stderr[-2000:]
        job = sorted((project / "Class2D").glob("job*"))[-1]
        data = read_star(job / f"run_it{N_ITER:03d}_data.star")["particles"]
        view = truth.loc[data["rlnImageName"].astype(str), "rlnClassNumber"].to_numpy()
        cls = data["rlnClassNumber"].to_numpy()
        good = view > 0
        out.append((views_found(view[good], cls[good], min_purity=0.9), class_purity(view[good], cls[good])))
    print(f"split={split}: (views found, purity) per seed {out}")
    return out


def _assert_quality(scores: list[tuple[int, float]]) -> None:
    views = np.mean([v for v, _ in scores])
    purity = np.mean([p for _, p in scores])
    assert views >= MIN_MEAN_VIEWS and purity >= MIN_MEAN_PURITY, (views, purity, scores)


def test_split_classes_find_every_view(project):
    """``do_split_classes Yes``: every view in a pure class of its own, on average over the seeds."""
    _assert_quality(_scores(project, split=True))


@pytest.mark.xfail(reason="RELION-behaviour EM collapses good particles into a few mixed classes (two of four views "
                          "found with each of the three seeds when written) "
                          "(issue: class quality); do_split_classes is the remedy", strict=False)
def test_relion_behaviour_finds_every_view(project):
    """``do_split_classes No`` (RELION's EM) held to the same requirement."""
    _assert_quality(_scores(project, split=False))
