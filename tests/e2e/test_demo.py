"""The README's demo command end to end, on a tiny data set (simulate, Class2D, Select)."""
from __future__ import annotations

import argparse

import pytest

from emclass2d.jobtypes.cli import cmd_demo
from emclass2d.nodes.graph.pipeline import read_pipeline


def _args(tmp_path, **over):
    parser = argparse.ArgumentParser()
    cmd_demo.add_args(parser)
    argv = ["--dir", str(tmp_path / "demo"), "--n", "600", "--classes", "4", "--iter", "2"]
    for k, v in over.items():
        argv += [f"--{k}", str(v)]
    return parser.parse_args(argv)


@pytest.mark.slow
def test_demo_runs_class2d_then_select_and_reports_truth(tmp_path, capsys):
    assert cmd_demo.main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    root = tmp_path / "demo"
    pipe = read_pipeline(root / "default_pipeline.star")
    assert [(p.name, p.status) for p in pipe.processes] == [
        ("Class2D/job001/", "Succeeded"), ("Select/job002/", "Succeeded")]
    assert "Against the simulated truth: kept" in out and "selected classes" in out
    for rel in ("Class2D/job001/run_it002_classes.mrcs", "Class2D/job001/class_gallery.png",
                "Select/job002/particles.star", "Select/job002/report.html"):
        assert (root / rel).is_file(), rel


def test_demo_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("x")
    assert cmd_demo.main(_args(tmp_path)) == 1
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["keep.txt"]
