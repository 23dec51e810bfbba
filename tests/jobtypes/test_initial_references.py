"""``fn_ref``: a Class2D run started from given 2-D references (relion_refine's ``--ref``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emclass2d.core.initial import lowpass_raised_cosine
from emclass2d.core.resolution import default_ini_high_A
from emclass2d.core.simulate import simulate_particles
from emclass2d.jobtypes.base import JobFailed
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
from emclass2d.nodes.graph.labels import NODE_IMAGE2D_STACK
from emclass2d.nodes.io.mrc import read_mrcs, write_mrcs
from class2d_runs import run_class2d_in

BOX, PX, VIEWS, SEED = 48, 3.0, 3, 7
SIM = dict(n=240, box=BOX, pixel_size_A=PX, n_views=VIEWS, snr=0.5, junk_fraction=0.0, n_micrographs=4, seed=SEED,
           view_weights=[1.0] * VIEWS)


def _run(project: Path, job: str, **options) -> list[str]:
    opts = Class2DOptions(fn_img="Sim/particles.star", do_em=True, do_grad=False, particle_diameter=110.0,
                          random_seed=1, psi_sampling=15.0, offset_range=3.0, offset_step=1.5, nr_threads=1, **options)
    return run_class2d_in(project, job, opts)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refs")
    simulate_project_files("Sim", project_dir=root, **SIM)
    views = simulate_particles(**{**SIM, "n": 10}).view_projections  # same seed: the same views
    # On the particles' grey scale, as RELION's --ref expects: signal x scale / noise sd.
    truth = pd.read_csv(root / "Sim/truth.csv")
    grey = float(np.mean(truth["scale"] / truth["noise_sd"]))
    write_mrcs(root / "refs.mrcs", (grey * views).astype(np.float32), PX)
    return root


def test_iteration_zero_holds_the_given_references_low_passed(project):
    lines = _run(project, "Class2D/job001/", fn_ref="refs.mrcs", nr_classes=5, nr_iter_em=2)
    given, _ = read_mrcs(project / "refs.mrcs")
    it0, _ = read_mrcs(project / "Class2D/job001/run_it000_classes.mrcs")
    assert it0.shape == (VIEWS, BOX, BOX)  # the stack sets K, not nr_classes
    assert any("3 images in refs.mrcs set the number of classes" in line for line in lines)
    expected = lowpass_raised_cosine(given, default_ini_high_A(BOX, PX), PX)
    for k in range(VIEWS):
        assert np.corrcoef(it0[k].ravel(), expected[k].ravel())[0, 1] > 0.99


def test_classes_follow_the_given_references(project):
    """Started from the true views (on the particles' grey scale), class k ends holding view k."""
    _run(project, "Class2D/job002/", fn_ref="refs.mrcs", nr_iter_em=8)
    data = pd.read_csv(project / "Sim/truth.csv")
    from emclass2d.nodes.io.star import read_star
    out = read_star(project / "Class2D/job002/run_it008_data.star")["particles"]
    cls = dict(zip(out["rlnImageName"].astype(str), out["rlnClassNumber"].to_numpy()))
    labels = np.array([cls[n] for n in data["rlnImageName"].astype(str)])
    assert np.mean(labels - 1 == data["view"].to_numpy()) > 0.9  # by chance: 1/3


def test_fn_ref_is_an_input_node():
    from emclass2d.jobtypes.class2d import Class2DJob

    opts = Class2DOptions(fn_img="Sim/particles.star", fn_ref="refs.mrcs")
    nodes = {(n.name, n.type_label) for n in Class2DJob().input_nodes(opts)}
    assert ("refs.mrcs", NODE_IMAGE2D_STACK) in nodes


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32), np.float32), "holds images of (32, 32) px; expected 48 x 48 px"),
    (np.full((2, BOX, BOX), np.nan, np.float32), "image 1 of bad.mrcs has non-finite pixels"),
])
def test_bad_reference_stack_is_refused_with_the_file_named(project, images, message):
    write_mrcs(project / "bad.mrcs", images, PX)
    with pytest.raises(JobFailed, match=message.replace("(", r"\(").replace(")", r"\)")):
        _run(project, "Class2D/job009/", fn_ref="bad.mrcs", nr_iter_em=1)


def test_missing_reference_stack_is_refused(project):
    with pytest.raises(JobFailed, match="fn_ref: initial references nothere.mrcs not found"):
        _run(project, "Class2D/job010/", fn_ref="nothere.mrcs", nr_iter_em=1)
