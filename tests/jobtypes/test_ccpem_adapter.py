"""The CCP-EM pipeliner adapter without the pipeliner: entry-point names, option
translation, validation and the job executor (``emclass2d.jobtypes.ccpem.exec``) on a plugin job."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

import pytest

import echo_plugin
from emclass2d.jobtypes import ccpem
from emclass2d.nodes.files.output_nodes import read_output_nodes_file, write_output_nodes_file
from emclass2d.jobtypes.ccpem.options import joboption_specs, split_node_type, validation_problems
from emclass2d.jobtypes.base import JobOptions, JobType, option
from emclass2d.jobtypes.class2d import Class2DJob
from emclass2d.jobtypes.select import SelectClass2DAuto
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.jobstar import JobStar, write_job_star
from emclass2d.nodes.graph.pipeline import Node
from emclass2d.nodes.graph.project import Project

# ----------------------------------------------------------------------------- entry points


def test_import_needs_no_pipeliner():
    code = ("import sys, emclass2d.jobtypes.ccpem as c; "
            "assert not any(m == 'pipeliner' or m.startswith('pipeliner.') for m in sys.modules), 'pipeliner imported'; "
            "assert 'emclass2d.jobtypes.registry' not in sys.modules, 'registry built at import'; "
            "print(c.entry_point_value('emclass2d.class2d'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "emclass2d.jobtypes.ccpem:emclass2d__class2d"


@pytest.mark.parametrize("process_type", ["emclass2d.class2d", "emclass2d.select.class2dauto", "testpkg.echo_2"])
def test_entry_point_attr_round_trip(process_type):
    attr = ccpem.entry_point_attr(process_type)
    assert attr.isidentifier() and "." not in attr
    assert ccpem.process_type_of(attr) == process_type


def test_entry_point_attr_refuses_double_underscore():
    with pytest.raises(ValueError, match="__"):
        ccpem.entry_point_attr("pkg.a__b")


def test_entry_point_lines_are_pyproject_lines():
    lines = ccpem.entry_point_lines(["emclass2d.class2d", "emclass2d.select.class2dauto"])
    assert lines == ['[project.entry-points."ccpem_pipeliner.jobs"]',
                     '"emclass2d.class2d" = "emclass2d.jobtypes.ccpem:emclass2d__class2d"',
                     '"emclass2d.select.class2dauto" = "emclass2d.jobtypes.ccpem:emclass2d__select__class2dauto"']


def test_module_getattr_only_serves_job_names():
    assert not hasattr(ccpem, "__wrapped__")
    with pytest.raises(AttributeError):
        ccpem.NotAJob  # noqa: B018


def test_main_prints_lines_for_registered_types():
    out = subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.ccpem"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"emclass2d.class2d" = "emclass2d.jobtypes.ccpem:emclass2d__class2d"' in out.stdout.splitlines()


# ----------------------------------------------------------------------------- options

def specs_by_name(job_type: type[JobType]):
    return {s.name: s for s in joboption_specs(job_type)}


@pytest.mark.parametrize("label, expected", [
    ("ParticleGroupMetadata.star.relion", ("ParticleGroupMetadata", "star", ["relion"])),
    ("OptimiserData.star.relion.class2d", ("OptimiserData", "star", ["relion", "class2d"])),
    ("DensityMap.mrc", ("DensityMap", "mrc", [])),
])
def test_split_node_type(label, expected):
    assert split_node_type(label) == expected


def test_every_option_becomes_a_joboption_in_order():
    for job_type in (Class2DJob, SelectClass2DAuto, echo_plugin.EchoJob):
        assert [s.name for s in joboption_specs(job_type)] == list(job_type.options_model.relion_names())


def test_class2d_specs_carry_labels_bounds_and_nodes():
    s = specs_by_name(Class2DJob)
    assert s["fn_img"].cls_name == "InputNodeJobOption"
    assert s["fn_img"].kwargs["node_type"] == "ParticleGroupMetadata" and s["fn_img"].kwargs["node_kwds"] == ["relion"]
    assert s["fn_img"].kwargs["pattern"][1] == [".star"]
    assert s["fn_cont"].kwargs["only_in_continue"] and s["fn_cont"].kwargs["in_continue"]
    nr = s["nr_classes"]
    assert (nr.cls_name, nr.kwargs["label"], nr.kwargs["default_value"]) == ("IntJobOption", "Number of classes:", 1)
    assert (nr.kwargs["hard_min"], nr.kwargs["hard_max"], nr.kwargs["suggested_min"], nr.kwargs["suggested_max"]) == \
        (1, 10000, 1, 50)
    assert not nr.kwargs["in_continue"]
    tau = s["tau_fudge"]
    assert tau.cls_name == "FloatJobOption" and tau.kwargs["default_value"] == 2.0
    assert "hard_min" not in tau.kwargs  # gt=0 is checked by the model's validation instead
    assert tau.kwargs["in_continue"]
    assert s["do_em"].cls_name == "BooleanJobOption" and s["do_em"].kwargs["default_value"] is False
    assert s["do_queue"].kwargs["jobop_group"] == "Queue submission options"
    assert s["nr_threads"].kwargs["jobop_group"] == "Running options"
    assert s["gpu_ids"].cls_name == "StringJobOption"


def test_select_input_node_is_an_optimiser():
    s = specs_by_name(SelectClass2DAuto)["fn_model"]
    assert (s.cls_name, s.kwargs["node_type"], s.kwargs["node_kwds"]) == ("InputNodeJobOption", "OptimiserData",
                                                                          ["relion", "class2d"])


class _KindsOptions(JobOptions):
    algorithm: Literal["em", "vdam"] = option("em", relion="algorithm", label="Algorithm:")
    mode: str = option("a", relion="mode", label="Mode:", choices=("a", "b"))
    count: int = option(3, relion="count", label="Count:", gt=0, lt=10)
    cutoff: Optional[float] = option(None, relion="cutoff", label="Cutoff (A):", ge=1.5)


class _KindsJob(JobType):
    process_type = "testpkg.kinds"
    directory = "Kinds"
    options_model = _KindsOptions


def test_literal_choices_strict_int_bounds_and_optional():
    s = specs_by_name(_KindsJob)
    assert s["algorithm"].cls_name == "MultipleChoiceJobOption" and s["algorithm"].kwargs["choices"] == ["em", "vdam"]
    assert s["mode"].kwargs["choices"] == ["a", "b"] and s["mode"].kwargs["default_value"] == "a"
    assert (s["count"].kwargs["hard_min"], s["count"].kwargs["hard_max"]) == (1, 9)
    assert s["cutoff"].cls_name == "FloatJobOption"
    assert s["cutoff"].kwargs["default_value"] is None and s["cutoff"].kwargs["hard_min"] == 1.5


def test_validation_problems_name_the_option():
    model = Class2DJob.options_model
    assert validation_problems(model, model().to_job_star()) == []
    bad = validation_problems(model, {**model().to_job_star(), "nr_classes": "0"})
    assert [name for name, _ in bad] == ["nr_classes"] and "greater than or equal to 1" in bad[0][1]
    both = validation_problems(model, {**model().to_job_star(), "do_em": "Yes", "do_grad": "Yes"})
    assert both and both[0][0] is None and "choose exactly one algorithm" in both[0][1]
    # unknown names (e.g. compatibility options a framework adds) are not the model's business
    assert validation_problems(model, {**model().to_job_star(), "qsub_extra_1": "x"}) == []


# ----------------------------------------------------------------------------- output nodes file

def test_output_nodes_file_round_trip(tmp_path):
    path = tmp_path / L.OUTPUT_NODES_FILE
    nodes = [Node("Class2D/job003/run_ct2_it003_data.star", L.NODE_CLASS2D_DATA),
             Node("Class2D/job003/run_ct2_it003_optimiser.star", L.NODE_CLASS2D_OPTIMISER)]
    write_output_nodes_file(path, nodes)
    assert read_output_nodes_file(path) == nodes
    write_output_nodes_file(path, [])
    assert not path.exists() and read_output_nodes_file(path) == []


# ----------------------------------------------------------------------------- executor

def _framework_job(tmp_path: Path, options: dict[str, str]) -> tuple[Path, str, dict[str, str]]:
    """A project with an Echo job directory set up as the pipeliner leaves it before running."""
    project = Project.init(tmp_path / "project").root
    (project / "particles.star").write_text("data_\n")
    job_dir = "Echo/job001/"
    (project / job_dir).mkdir(parents=True)
    write_job_star(project / job_dir / "job.star", JobStar("testpkg.echo", options))
    (project / job_dir / L.EXIT_SUCCESS).touch()  # stale marker of an earlier run
    plugins = echo_plugin.install_distribution(tmp_path / "plugins")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    return project, job_dir, env


def _exec(project: Path, job_dir: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.ccpem.exec", job_dir], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_exec_runs_job_without_touching_the_graph(tmp_path):
    project, job_dir, env = _framework_job(tmp_path, {"fn_in": "particles.star", "message": "hi", "nr_iter": "2"})
    graph_before = (project / L.PIPELINE_FILE).read_bytes()
    out = _exec(project, job_dir, env)
    assert out.returncode == 0, out.stderr
    job = project / job_dir
    assert (job / "echo.txt").read_text().splitlines() == ["1 hi", "2 hi"]
    assert (job / L.EXIT_SUCCESS).exists() and not (job / L.EXIT_FAILURE).exists()
    assert "wrote 2 lines" in (job / L.RUN_OUT).read_text()
    # graph, mini pipeline and .Nodes belong to the framework
    assert (project / L.PIPELINE_FILE).read_bytes() == graph_before
    assert not (job / L.JOB_PIPELINE_FILE).exists() and not (project / L.NODES_DIR).exists()
    # only the node found at run time is handed over; declared outputs are the framework's already
    assert read_output_nodes_file(job / L.OUTPUT_NODES_FILE) == [Node(f"{job_dir}extra.txt", echo_plugin.ECHO_NODE)]


def test_exec_failure_exit_status_and_marker(tmp_path):
    project, job_dir, env = _framework_job(tmp_path, {"fn_in": "particles.star", "do_fail": "Yes"})
    out = _exec(project, job_dir, env)
    assert out.returncode == 1
    job = project / job_dir
    assert (job / L.EXIT_FAILURE).exists() and not (job / L.EXIT_SUCCESS).exists()
    assert "failing on purpose" in (job / L.RUN_ERR).read_text()
    assert not (job / L.OUTPUT_NODES_FILE).exists()


def test_exec_refuses_unknown_job_type(tmp_path):
    project, job_dir, env = _framework_job(tmp_path, {})
    write_job_star(project / job_dir / "job.star", JobStar("testpkg.missing", {}))
    out = _exec(project, job_dir, env)
    assert out.returncode == 1 and "cannot start" in out.stderr and "testpkg.missing" in out.stderr
    assert (project / job_dir / L.EXIT_FAILURE).exists()
