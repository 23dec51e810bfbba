"""Our job types inside CCP-EM's pipeliner, driven through its ``pipeliner`` command line.

Needs the pipeliner's venv (:mod:`ccpem_env`; built on first use, ~1.5 min). One project
holds a pipeliner job (random subset of the RELION fixture particles), our Class2D on it
(K=2, 2 EM iterations), our Select on its optimiser.star, a continue of the Class2D and
an overwrite of the Select; the graph is then checked with the pipeliner's
``ProjectGraph`` and with our reader. Further tests: a RELION-written Class2D job selected
by our Select inside a pipeliner project, a project made by ``emclass2d`` opened and
extended by the pipeliner, and the RELION labels in our outputs.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccpem_env import ccpem_env  # noqa: F401  (session fixture)
from fixture_paths import RELION5_CLASS2D
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.jobstar import JobStar, read_job_star, write_job_star
from emclass2d.nodes.graph.pipeline import read_pipeline
from emclass2d.nodes.io.star import read_star

pytestmark = [pytest.mark.ccpem, pytest.mark.slow]

FIXTURE = RELION5_CLASS2D

MARKERS = {"PIPELINER_JOB_EXIT_SUCCESS": "Succeeded", "PIPELINER_JOB_EXIT_FAILED": "Failed",
           "PIPELINER_JOB_EXIT_ABORTED": "Aborted"}

#: The pipeliner's view of a project, as JSON (run with the venv's interpreter).
GRAPH_DUMP = """
import json
from pipeliner.project_graph import ProjectGraph
with ProjectGraph(read_only={read_only}) as g:
    {update}
    print(json.dumps({{"counter": g.job_counter,
        "processes": [[p.name, p.type, p.status] for p in g.process_list],
        "nodes": {{n.name: n.type for n in g.node_list}},
        "inputs": [[n.name, p.name] for p in g.process_list for n in p.input_nodes],
        "outputs": [[p.name, n.name] for p in g.process_list for n in p.output_nodes]}}))
"""


def pipeliner_graph(env, project: Path, *, update: bool = True) -> dict:
    """The pipeliner's graph; ``update`` first sets the status of finished jobs (its own API)."""
    code = GRAPH_DUMP.format(read_only=not update, update="g.check_process_completion()" if update else "pass")
    return json.loads(env.python_code(project, code).stdout.strip().splitlines()[-1])


def wait_for_job(project: Path, job_dir: str, timeout_s: float = 240) -> str:
    """Wait until the pipeliner's job runner leaves an exit marker; returns the status."""
    deadline = time.monotonic() + timeout_s
    path = project / job_dir
    while time.monotonic() < deadline:
        for marker, status in MARKERS.items():
            if (path / marker).exists():
                return status
        time.sleep(0.5)
    out = (path / "run.out").read_text() if (path / "run.out").exists() else ""
    err = (path / "run.err").read_text() if (path / "run.err").exists() else ""
    pytest.fail(f"{job_dir} did not finish in {timeout_s} s\nrun.out:\n{out[-2000:]}\nrun.err:\n{err[-2000:]}")


def run_job(env, project: Path, job_star: Path, *extra: str) -> str:
    """``pipeliner --run_job`` and wait; returns the job directory it reports."""
    out = env.pipeliner(project, "--run_job", str(job_star), *extra).stdout
    job_dir = next(line.split("Ran job as:")[1].strip() for line in out.splitlines() if "Ran job as:" in line)
    status = wait_for_job(project, job_dir)
    assert status == "Succeeded", (project / job_dir / "run.err").read_text()
    return job_dir


def subset_particles(dst: Path, n: int) -> None:
    """The first ``n`` particles of the RELION fixture (stack linked, not copied)."""
    (dst / "particles.mrcs").symlink_to(FIXTURE / "particles.mrcs")
    blocks = read_star(FIXTURE / "particles.star")
    from emclass2d.nodes.io.star import write_star

    write_star(dst / "particles.star", {"optics": blocks["optics"], "particles": blocks["particles"].iloc[:n]})


def emclass2d_cli(verb: str, project: Path, *args: str) -> list[str]:
    """The ``emclass2d`` command line of this interpreter."""
    return [sys.executable, "-m", "emclass2d.jobtypes.cli", verb, "--project", str(project), *args]


CLASS2D = {"nr_classes": "2", "do_em": "Yes", "do_grad": "No", "nr_iter_em": "2",
           "particle_diameter": "150", "random_seed": "7"}


# ----------------------------------------------------------------------------- workflow

@pytest.fixture(scope="module")
def workflow(ccpem_env, tmp_path_factory):
    """A pipeliner project: subset (pipeliner) -> Class2D (ours) -> Select (ours),
    then Class2D continued and Select overwritten. Returns (project, job dirs, timings)."""
    env = ccpem_env
    project = tmp_path_factory.mktemp("pipeliner_project")
    subset_particles(project, 300)
    timings = {}
    t0 = time.monotonic()
    env.pipeliner(project, "--new_project")
    write_job_star(project / "sample.star", JobStar("pipeliner.select.random_sample",
                                                   {"fn_parts": "particles.star", "n_samples": "200"}))
    sample = run_job(env, project, project / "sample.star")
    env.pipeliner(project, "--default_jobstar", "emclass2d.class2d")
    defaults = read_job_star(project / "emclass2d_class2d_job.star")
    c2d_values = {**defaults.options, "fn_img": f"{sample}sampled_particles.star", **CLASS2D}
    write_job_star(project / "class2d.star", JobStar("emclass2d.class2d", c2d_values))
    t1 = time.monotonic()
    class2d = run_job(env, project, project / "class2d.star")
    timings["class2d_s"] = time.monotonic() - t1
    write_job_star(project / "select.star", JobStar("emclass2d.select.class2dauto", {
        "fn_model": f"{class2d}run_it002_optimiser.star", "rank_threshold": "0"}))
    select = run_job(env, project, project / "select.star")
    # continue: the user edits continue_job.star, then --continue_job
    cont = read_job_star(project / class2d / "continue_job.star")
    cont.options.update({"fn_cont": f"{class2d}run_it002_optimiser.star", "nr_iter_em": "3"})
    write_job_star(project / class2d / "continue_job.star", cont)
    env.pipeliner(project, "--continue_job", class2d)
    assert wait_for_job(project, class2d) == "Succeeded", (project / class2d / "run.err").read_text()
    # overwrite the Select with a new threshold, same job directory
    write_job_star(project / "select2.star", JobStar("emclass2d.select.class2dauto", {
        "fn_model": f"{class2d}run_it002_optimiser.star", "rank_threshold": "0", "select_nr_classes": "1"}))
    assert run_job(env, project, project / "select2.star", "--overwrite", select) == select
    timings["workflow_s"] = time.monotonic() - t0
    graph = pipeliner_graph(env, project)
    return {"project": project, "sample": sample, "class2d": class2d, "select": select,
            "graph": graph, "timings": timings, "env": env}


def test_default_jobstar_matches_our_defaults(workflow):
    """``--default_jobstar`` writes every option of our model with our defaults."""
    from emclass2d.jobtypes.class2d.options import Class2DOptions

    written = read_job_star(workflow["project"] / "emclass2d_class2d_job.star")
    assert written.process_type == "emclass2d.class2d"
    ours = Class2DOptions().to_job_star()
    assert set(written.options) == set(ours)
    assert Class2DOptions.from_job_star(written.options) == Class2DOptions()


def test_available_jobs_lists_ours(workflow):
    out = workflow["env"].pipeliner(workflow["project"], "--available_jobs").stdout
    assert "emclass2d.class2d" in out and "emclass2d.select.class2dauto" in out


def test_graph_nodes_and_edges(workflow):
    """The pipeliner's graph after the workflow: statuses, node types, edges, counter."""
    g, sample, c2d, sel = workflow["graph"], workflow["sample"], workflow["class2d"], workflow["select"]
    procs = {name: (ptype, status) for name, ptype, status in g["processes"]}
    assert procs == {sample: ("pipeliner.select.random_sample", "Succeeded"),
                     c2d: ("emclass2d.class2d", "Succeeded"),
                     sel: ("emclass2d.select.class2dauto", "Succeeded")}
    assert g["counter"] == 4  # overwrite and continue reuse their numbers
    assert [f"{sample}sampled_particles.star", c2d] in g["inputs"]
    assert [f"{c2d}run_it002_optimiser.star", sel] in g["inputs"]
    assert g["nodes"][f"{c2d}run_it002_data.star"] == "ParticleGroupMetadata.star.relion.class2d"
    assert g["nodes"][f"{c2d}run_it002_optimiser.star"] == "OptimiserData.star.relion.class2d"
    # the continued run's files were declared at run time (RELION_OUTPUT_NODES.star)
    assert g["nodes"][f"{c2d}run_ct2_it003_optimiser.star"] == "OptimiserData.star.relion.class2d"
    assert [c2d, f"{c2d}run_ct2_it003_data.star"] in g["outputs"]
    assert {n for p, n in g["outputs"] if p == sel} == {
        f"{sel}particles.star", f"{sel}class_averages.star", f"{sel}rank_optimiser.star"}
    assert g["nodes"][f"{sel}class_averages.star"] == "Image2DGroupMetadata.star.relion.classaverages"
    assert g["nodes"][f"{sel}rank_optimiser.star"] == "OptimiserData.star.relion.select"


def test_overwrite_and_continue_results(workflow):
    project, c2d, sel = workflow["project"], workflow["class2d"], workflow["select"]
    assert (project / c2d / "job.star.ct000").exists()  # the pipeliner kept the first job.star
    assert read_job_star(project / c2d / "job.star").is_continue
    assert (project / c2d / "run_ct2_it003_optimiser.star").exists()
    assert read_job_star(project / sel / "job.star").options["select_nr_classes"] == "1"
    chosen = read_star(project / sel / "backup_selection.star")[""]
    assert int(chosen["rlnSelected"].astype(int).sum()) >= 1
    assert (project / c2d / L.EXIT_SUCCESS).exists()  # RELION's marker too, for RELION's GUI


def test_our_reader_reads_pipeliner_graph(workflow):
    """nodes/graph/pipeline.py reads the pipeliner's default_pipeline.star: same graph."""
    g = workflow["graph"]
    ours = read_pipeline(workflow["project"] / L.PIPELINE_FILE)
    assert ours.job_counter == g["counter"]
    assert [[p.name, p.type_label, p.status] for p in ours.processes] == g["processes"]
    assert {n.name: n.type_label for n in ours.nodes} == g["nodes"]
    assert sorted(map(list, ours.input_edges)) == sorted(g["inputs"])
    assert sorted(map(list, ours.output_edges)) == sorted(g["outputs"])


def test_results_display_shows_gallery_and_selection(workflow):
    """The pipeliner's results display of our jobs: class gallery image; selection image + HTML."""
    env, project = workflow["env"], workflow["project"]
    code = """
import json
from pipeliner.project_graph import ProjectGraph
from pipeliner.job_factory import create_job_from_proc
out = {}
with ProjectGraph() as g:
    for p in g.process_list:
        if p.type.startswith("emclass2d."):
            job = create_job_from_proc(p)
            rdos = job.save_results_display_files()
            loaded = job.load_results_display_files()
            out[p.name] = [[r.dobj_type, getattr(r, "image_path", "") or getattr(r, "html_file", "")] for r in loaded]
print(json.dumps(out))
"""
    shown = json.loads(env.python_code(project, code).stdout.strip().splitlines()[-1])
    c2d, sel = workflow["class2d"], workflow["select"]
    assert ["image", f"{c2d}class_gallery.png"] == shown[c2d][0]
    assert ["image", f"{sel}class_averages.png"] in shown[sel]
    assert ["html", f"{sel}report.html"] in shown[sel]
    for kind, path in shown[c2d] + shown[sel]:
        assert (project / path).stat().st_size > 0


def test_outputs_have_relion_labels(workflow):
    """Our Class2D/Select outputs written under the pipeliner carry what RELION's readers need."""
    project, c2d, sel = workflow["project"], workflow["class2d"], workflow["select"]
    check_class2d_outputs_like_relion(project / c2d, "run_it002", n_classes=2)
    check_select_outputs(project, sel)


# ------------------------------------------------------------------- RELION round trip

#: What RELION's readers take from a Class2D iteration (RELION's ``RelionJob::initialiseSelectJob``, ``ClassRanker::read``) besides the
#: blocks/labels compared with RELION's own files.
OPTIMISER_NEEDS = ["rlnModelStarFile", "rlnExperimentalDataStarFile", "rlnDoCorrectCtf", "rlnDoIgnoreCtfUntilFirstPeak",
                   "rlnCtfDataArePhaseFlipped", "rlnDoOnlyFlipCtfPhases", "rlnParticleDiameter"]
#: Labels RELION writes only in some iterations (RELION's ``MlModel::write``: orientability only when angular
#: accuracies were estimated), so a file without them is still one RELION writes.
CONDITIONAL_LABELS = {"rlnSpectralOrientabilityContribution"}
MODEL_CLASSES_NEEDS = ["rlnReferenceImage", "rlnClassDistribution", "rlnAccuracyRotations",
                       "rlnAccuracyTranslationsAngst", "rlnEstimatedResolution"]


def _labels(blocks: dict) -> dict[str, set[str]]:
    return {name: set(t.columns) if hasattr(t, "columns") else set(t) for name, t in blocks.items()}


def check_class2d_outputs_like_relion(job: Path, stem: str, n_classes: int) -> None:
    """Every block and label of RELION's own iteration files is in ours (class blocks per class)."""
    relion = FIXTURE / "Class2D" / "job001"
    for kind in ("optimiser", "model", "data"):
        want = _labels(read_star(relion / f"run_it025_{kind}.star"))
        have = _labels(read_star(job / f"{stem}_{kind}.star"))
        for block, labels in want.items():
            if block.startswith("model_class_") and block != "model_classes":
                if int(block.rsplit("_", 1)[1]) > n_classes:
                    continue
            assert block in have, f"{stem}_{kind}.star lacks data_{block} (RELION writes it)"
            missing = labels - have[block] - CONDITIONAL_LABELS
            assert not missing, f"{stem}_{kind}.star data_{block} lacks {sorted(missing)}"
    opt = read_star(job / f"{stem}_optimiser.star")["optimiser_general"]
    assert set(OPTIMISER_NEEDS) <= set(opt)
    model_file = str(opt["rlnModelStarFile"])
    assert model_file.endswith(f"{stem}_model.star") and str(opt["rlnExperimentalDataStarFile"]).endswith(f"{stem}_data.star")
    model = read_star(job / f"{stem}_model.star")
    assert len(model["model_classes"]) == n_classes and set(MODEL_CLASSES_NEEDS) <= set(model["model_classes"].columns)


def check_select_outputs(project: Path, sel: str) -> None:
    """Select outputs with the blocks/labels of RELION's class ranker (RELION's ``ClassRanker`` output files)."""
    job = project / sel
    parts = read_star(job / "particles.star")
    assert {"optics", "particles"} <= set(parts)
    assert {"rlnImageName", "rlnClassNumber", "rlnOpticsGroup"} <= set(parts["particles"].columns)
    averages = read_star(job / "class_averages.star")[""]
    assert {*MODEL_CLASSES_NEEDS, "rlnPredictedClassScore"} <= set(averages.columns)
    ranked = read_star(job / "rank_model.star")["model_classes"]
    assert {*MODEL_CLASSES_NEEDS, "rlnClassScore"} <= set(ranked.columns)
    opt = read_star(job / "rank_optimiser.star")["optimiser_general"]
    assert str(opt["rlnModelStarFile"]) == f"{sel}rank_model.star"
    assert str(opt["rlnExperimentalDataStarFile"]) == f"{sel}rank_data.star"
    assert "rlnSelected" in read_star(job / "backup_selection.star")[""].columns
    # selected particles are exactly those of the selected classes
    selected = {int(k) for k, s in zip(range(1, 10_000), read_star(job / "backup_selection.star")[""]["rlnSelected"]) if int(s)}
    assert set(parts["particles"]["rlnClassNumber"].astype(int)) <= selected


def test_select_on_relion_class2d_in_pipeliner_project(ccpem_env, tmp_path):
    """A Class2D job written by RELION 5, recorded as relion.class2d.em, selected by our Select."""
    env, project = ccpem_env, tmp_path
    env.pipeliner(project, "--new_project")
    (project / "particles.mrcs").symlink_to(FIXTURE / "particles.mrcs")
    shutil.copy(FIXTURE / "particles.star", project / "particles.star")
    shutil.copytree(FIXTURE / "Class2D", project / "Class2D")
    env.python_code(project, """
from pipeliner.project_graph import ProjectGraph
from pipeliner.process import Process
from pipeliner.node_factory import create_node
with ProjectGraph(read_only=False) as g:
    proc = g.add_process(Process("Class2D/job001/", "relion.class2d.em", "Succeeded"), do_overwrite=False)
    g.add_new_input_edge(create_node("particles.star", "ParticleGroupMetadata", ["relion"]), proc)
    for name, top in (("run_it025_data.star", "ParticleGroupMetadata"), ("run_it025_optimiser.star", "OptimiserData")):
        g.add_new_output_edge(proc, create_node("Class2D/job001/" + name, top, ["relion", "class2d"]))
    g.job_counter = 2
""")
    write_job_star(project / "select.star", JobStar("emclass2d.select.class2dauto", {
        "fn_model": "Class2D/job001/run_it025_optimiser.star", "rank_threshold": "0", "select_nr_classes": "4"}))
    sel = run_job(env, project, project / "select.star")
    assert sel == "Select/job002/"
    parts = read_star(project / sel / "particles.star")["particles"]
    assert len(parts) == 500  # all four RELION classes selected: every particle
    g = pipeliner_graph(env, project)
    assert ["Class2D/job001/run_it025_optimiser.star", sel] in g["inputs"]
    assert g["nodes"]["Class2D/job001/run_it025_optimiser.star"] == "OptimiserData.star.relion.class2d"
    assert dict((n, (t, s)) for n, t, s in g["processes"])["Class2D/job001/"] == ("relion.class2d.em", "Succeeded")
    check_select_outputs(project, sel)


def test_pipeliner_opens_and_extends_emclass2d_project(ccpem_env, tmp_path):
    """A project made by ``emclass2d`` is read by the pipeliner's ProjectGraph, which then
    adds one of its own jobs on our output; our reader and CLI read the mixed graph."""
    env, project = ccpem_env, tmp_path
    subset_particles(project, 150)
    subprocess.run(emclass2d_cli("init", project), check=True, capture_output=True)
    args = [word for k, v in {**CLASS2D, "fn_img": "particles.star"}.items() for word in (f"--{k}", v)]
    proc = subprocess.run(emclass2d_cli("run", project, "emclass2d.class2d", *args), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ours = read_pipeline(project / L.PIPELINE_FILE)
    g = pipeliner_graph(env, project, update=False)
    assert [[p.name, p.type_label, p.status] for p in ours.processes] == g["processes"] == \
        [["Class2D/job001/", "emclass2d.class2d", "Succeeded"]]
    assert {n.name: n.type_label for n in ours.nodes} == g["nodes"]
    # the pipeliner runs its own job on our output in the same project
    write_job_star(project / "sample.star", JobStar("pipeliner.select.random_sample", {
        "fn_parts": "Class2D/job001/run_it002_data.star", "n_samples": "50"}))
    sample = run_job(env, project, project / "sample.star")
    pipeliner_graph(env, project)  # the pipeliner records the finished job's status
    mixed = read_pipeline(project / L.PIPELINE_FILE)
    assert mixed.process(sample).status == "Succeeded"
    assert ("Class2D/job001/run_it002_data.star", sample) in mixed.input_edges
    assert mixed.node("Class2D/job001/run_it002_data.star").type_label == "ParticleGroupMetadata.star.relion.class2d"
    status = subprocess.run(emclass2d_cli("status", project), capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "pipeliner.select.random_sample" in status.stdout or sample in status.stdout


def test_third_party_plugin_job_runs_in_pipeliner(ccpem_env, tmp_path):
    """A plugin's job type, declared by its own distribution in both groups, runs through
    the pipeliner with its declared and run-time output nodes."""
    import dataclasses
    import os

    import echo_plugin
    from emclass2d.jobtypes.ccpem import ENTRY_POINT_GROUP, entry_point_value

    plugins = echo_plugin.install_distribution(tmp_path / "plugins")
    info = plugins / "testpkg_echo-0.1.dist-info" / "entry_points.txt"
    info.write_text(info.read_text() + f"\n[{ENTRY_POINT_GROUP}]\ntestpkg.echo = {entry_point_value('testpkg.echo')}\n")
    paths = [str(plugins), *filter(None, [ccpem_env.env.get("PYTHONPATH")])]
    env = dataclasses.replace(ccpem_env, env={**ccpem_env.env, "PYTHONPATH": os.pathsep.join(paths)})
    project = tmp_path / "project"
    project.mkdir()
    subset_particles(project, 10)
    env.pipeliner(project, "--new_project")
    write_job_star(project / "echo.star", JobStar("testpkg.echo", {"fn_in": "particles.star", "message": "hi",
                                                                   "nr_iter": "2"}))
    job = run_job(env, project, project / "echo.star")
    assert job == "Echo/job001/"
    assert (project / job / "echo.txt").read_text() == "1 hi\n2 hi\n"
    g = pipeliner_graph(env, project)
    assert g["processes"] == [[job, "testpkg.echo", "Succeeded"]]
    assert ["particles.star", job] in g["inputs"]
    assert {n for p, n in g["outputs"]} == {f"{job}echo.txt", f"{job}extra.txt"}
    assert g["nodes"][f"{job}extra.txt"] == echo_plugin.ECHO_NODE
