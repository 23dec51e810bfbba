"""Project directory, lock, concurrency, and the runner's new/continue/overwrite flows."""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: echo_plugin
import echo_plugin  # noqa: E402

from emclass2d.jobtypes import hookimpl  # noqa: E402
from emclass2d.jobtypes.registry import get_plugin_manager, get_registry  # noqa: E402
from emclass2d.jobtypes.running import (RunError, execute, prepare_continue, prepare_new,  # noqa: E402
                                       prepare_overwrite, run_new)
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.jobstar import read_job_star  # noqa: E402
from emclass2d.nodes.graph.lock import LockTimeout, PipelineLock  # noqa: E402
from emclass2d.nodes.graph.pipeline import Node, Process  # noqa: E402
from emclass2d.nodes.graph.project import Project, ProjectError  # noqa: E402


@pytest.fixture
def project(tmp_path) -> Project:
    project = Project.init(tmp_path / "proj")
    (project.root / "particles.star").write_text("data_\n")
    return project


@pytest.fixture
def registry():
    pm = get_plugin_manager(entry_points=False)
    pm.register(echo_plugin)
    return get_registry(pm)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_from_template(tmp_path):
    assert not Project.is_project(tmp_path)
    with pytest.raises(ProjectError, match="not a project directory"):
        Project.open(tmp_path)
    project = Project.init(tmp_path)
    assert Project.is_project(tmp_path)
    assert project.read().job_counter == 1 and project.read().processes == []
    assert "emclass2d" in (tmp_path / "README.txt").read_text()
    with pytest.raises(ProjectError, match="already a project"):
        Project.init(tmp_path)


def test_edit_writes_only_on_clean_exit(project):
    before = project.pipeline_path.read_bytes()
    with pytest.raises(RuntimeError):
        with project.edit() as pipe:
            pipe.add_process(Process("Echo/job001/", "testpkg.echo"))
            raise RuntimeError("boom")
    assert project.pipeline_path.read_bytes() == before
    assert not (project.root / L.LOCK_DIR).exists()
    with project.edit() as pipe:
        name = project.add_job(pipe, "Echo", "testpkg.echo", inputs=[Node("particles.star", L.NODE_PARTICLES)],
                               outputs=[Node("Echo/job001/out.txt", "ProcessData.txt")])
    assert name == "Echo/job001/"
    assert (project.root / L.CHANGED_FILE).exists()
    assert (project.job_path(name) / L.JOB_PIPELINE_FILE).exists()
    assert project.read().job_counter == 2


def test_job_names_pad_to_three_digits_then_not(project):
    with project.edit() as pipe:
        pipe.job_counter = 999
        assert project.add_job(pipe, "Echo", "testpkg.echo") == "Echo/job999/"
        assert project.add_job(pipe, "Echo", "testpkg.echo") == "Echo/job1000/"
    (project.root / "Echo" / "job1001").mkdir()  # a stray directory is never reused
    with project.edit() as pipe:
        assert project.add_job(pipe, "Echo", "testpkg.echo") == "Echo/job1002/"


def test_resolve_job_and_node_markers(project):
    with project.edit() as pipe:
        name = project.add_job(pipe, "Echo", "testpkg.echo", outputs=[Node("Echo/job001/a.star", L.NODE_CLASS2D_DATA),
                                                                     Node("Echo/job001/b.star", L.NODE_OPTIMISER)])
        pipe.process(name).alias = "Echo/nice/"
    (project.job_path(name) / "a.star").write_text("x")
    for text in ("Echo/job001", "Echo/job001/", "./Echo/job001", str(project.root / "Echo/job001"), "Echo/nice"):
        assert project.resolve_job(text) == name
    with pytest.raises(ProjectError, match="no such job"):
        project.resolve_job("Echo/job009/")
    touched = project.touch_node_markers(project.read(), name)
    assert touched == [project.root / ".Nodes/ParticleGroupMetadata/Echo/nice/a.star"]


def test_lock_waits_then_times_out_and_breaks_stale_locks(tmp_path):
    held = PipelineLock(tmp_path)
    held.acquire()
    start = time.monotonic()
    with pytest.raises(LockTimeout, match="locked"):
        PipelineLock(tmp_path, timeout_s=0.2).acquire()
    assert time.monotonic() - start >= 0.2
    held.release()
    assert not (tmp_path / L.LOCK_DIR).exists()
    # A lock left by a process that no longer exists on this host.
    proc = multiprocessing.get_context("fork").Process(target=_take_lock_and_die, args=(tmp_path,))
    proc.start()
    proc.join()
    assert (tmp_path / L.LOCK_DIR / L.LOCK_FILE).exists()
    with PipelineLock(tmp_path, timeout_s=1):
        assert f"pid={os.getpid()}" in (tmp_path / L.LOCK_DIR / L.LOCK_FILE).read_text()
    # A lock of unknown origin (e.g. another host) that is older than the limit.
    (tmp_path / L.LOCK_DIR).mkdir()
    (tmp_path / L.LOCK_DIR / L.LOCK_FILE).write_text("RELION lock\n")
    old = time.time() - 3600
    os.utime(tmp_path / L.LOCK_DIR / L.LOCK_FILE, (old, old))
    with pytest.raises(LockTimeout):
        PipelineLock(tmp_path, timeout_s=0.1, stale_after_s=7200).acquire()
    with PipelineLock(tmp_path, timeout_s=1, stale_after_s=600):
        pass


def _take_lock_and_die(root: Path) -> None:
    PipelineLock(root).acquire()
    os._exit(0)


def _add_jobs(root: str, tag: str, count: int) -> None:
    project = Project(root)
    for _ in range(count):
        with project.edit() as pipe:
            name = project.add_job(pipe, "Echo", f"testpkg.{tag}")
            pipe.add_output(Node(f"{name}out_{tag}.txt", "ProcessData.txt"), name)


def test_two_processes_adding_50_jobs_each_lose_nothing(project):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_jobs, args=(str(project.root), tag, 50)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    pipe = project.read()
    names = [p.name for p in pipe.processes]
    assert len(names) == 100 and len(set(names)) == 100
    assert sorted(names) == [f"Echo/job{i:03d}/" for i in range(1, 101)]
    assert pipe.job_counter == 101
    assert sum(p.type_label == "testpkg.a" for p in pipe.processes) == 50
    assert len(pipe.output_edges) == 100 and len(pipe.nodes) == 100


# ----------------------------------------------------------------------------- runner flows

def test_new_job_success(project, registry):
    status = run_new(project, "testpkg.echo", {"fn_in": "particles.star", "nr_iter": "2"}, registry=registry)
    assert status == L.STATUS_SUCCEEDED
    job = project.job_path("Echo/job001/")
    assert (job / "echo.txt").read_text() == "1 hello\n2 hello\n"
    assert (job / L.EXIT_SUCCESS).exists()
    assert (job / L.PIPELINE_FILE).exists() and (job / L.JOB_PIPELINE_FILE).exists()
    assert " ++++ Executing new job on " in (job / L.NOTE_FILE).read_text()
    assert "wrote 2 lines" in (job / L.RUN_OUT).read_text()
    pipe = project.read()
    assert pipe.process("Echo/job001/").status == L.STATUS_SUCCEEDED
    assert [n.name for n in pipe.outputs_of("Echo/job001/")] == ["Echo/job001/echo.txt", "Echo/job001/extra.txt"]
    assert (project.root / ".Nodes/ProcessData/Echo/job001/extra.txt").exists()
    jobstar = read_job_star(job / L.JOB_STAR_FILE)
    assert jobstar.process_type == "testpkg.echo" and not jobstar.is_continue and jobstar.options["nr_iter"] == "2"


def test_refused_run_writes_nothing(project, registry):
    before = _snapshot(project.root)
    with pytest.raises(RunError, match="input file missing.star not found"):
        prepare_new(project, registry, "testpkg.echo", {"fn_in": "missing.star"})
    with pytest.raises(RunError, match="did you mean --nr_iter"):
        prepare_new(project, registry, "testpkg.echo", {"nr_iterr": "3"})
    with pytest.raises(RunError, match="unknown job type testpkg.ech .did you mean testpkg.echo"):
        prepare_new(project, registry, "testpkg.ech", {})
    assert _snapshot(project.root) == before


def test_failure_and_crash_are_recorded(project, registry):
    assert run_new(project, "testpkg.echo", {"do_fail": "Yes"}, registry=registry) == L.STATUS_FAILED
    job = project.job_path("Echo/job001/")
    assert (job / L.EXIT_FAILURE).exists()
    assert "failing on purpose" in (job / L.RUN_ERR).read_text()
    assert project.read().process("Echo/job001/").status == L.STATUS_FAILED


def test_continue_flow(project, registry):
    run_new(project, "testpkg.echo", {"nr_iter": "2"}, registry=registry)
    name = "Echo/job001/"
    with pytest.raises(RunError, match="cannot change on continue: --message"):
        prepare_continue(project, registry, name, {"message": "new", "fn_cont": "Echo/job001/echo.txt"})
    with pytest.raises(RunError, match="needs --fn_cont"):
        prepare_continue(project, registry, name, {"nr_iter": "4"})
    with pytest.raises(RunError, match="file Echo/job001/nothere.txt not found"):
        prepare_continue(project, registry, name, {"fn_cont": "Echo/job001/nothere.txt"})
    job = prepare_continue(project, registry, "Echo/job001", {"nr_iter": "4", "fn_cont": "Echo/job001/echo.txt"})
    assert job.is_continue and job.job_dir == name
    assert read_job_star(project.job_path(name) / L.JOB_STAR_FILE).is_continue
    assert project.read().process(name).status == L.STATUS_RUNNING
    assert not (project.job_path(name) / L.EXIT_SUCCESS).exists()
    assert execute(job, pm=registry.plugin_manager, foreground=False) == L.STATUS_SUCCEEDED
    assert (project.job_path(name) / "echo.txt").read_text().splitlines() == [f"{i} hello" for i in range(1, 5)]
    assert (project.job_path(name) / L.NOTE_FILE).read_text().count("Executing new job") == 2
    assert project.read().job_counter == 2  # same job, no new number


def test_overwrite_flow(project, registry):
    run_new(project, "testpkg.echo", {"nr_iter": "2"}, registry=registry)
    run_new(project, "testpkg.echo", {"nr_iter": "1"}, registry=registry)
    with project.edit() as pipe:  # a third job reads job001's output
        reader = project.add_job(pipe, "Echo", "relion.external", inputs=[Node("Echo/job001/echo.txt", "x")],
                                 status=L.STATUS_SUCCEEDED)
    before = _snapshot(project.root)
    with pytest.raises(RunError, match=f"used by {reader}; use --force"):
        prepare_overwrite(project, registry, "Echo/job001/", {"message": "bye"})
    with pytest.raises(RunError, match="--nr_iter '0'"):
        prepare_overwrite(project, registry, "Echo/job001/", {"nr_iter": "0"}, force=True)
    with pytest.raises(RunError, match="relion.external job; emclass2d lists such jobs but does not run them"):
        prepare_overwrite(project, registry, reader, {})
    assert _snapshot(project.root) == before
    (project.job_path("Echo/job001/") / "stale.txt").write_text("old")
    job = prepare_overwrite(project, registry, "Echo/job001/", {"message": "bye"}, force=True)
    assert not (project.job_path("Echo/job001/") / "stale.txt").exists()
    assert execute(job, foreground=False) == L.STATUS_SUCCEEDED
    assert (project.job_path("Echo/job001/") / "echo.txt").read_text() == "1 bye\n2 bye\n"
    pipe = project.read()
    assert [p.name for p in pipe.processes] == ["Echo/job001/", "Echo/job002/", reader]
    assert pipe.job_counter == 4
    assert pipe.consumers_of("Echo/job001/") == [reader]
    assert [p.name for p in project.root.joinpath("Echo").iterdir() if p.name.startswith(".")] == []


def test_running_job_is_protected(project, registry):
    job = prepare_new(project, registry, "testpkg.echo", {})
    with pytest.raises(RunError, match="still Running"):
        prepare_overwrite(project, registry, job.job_dir, {})
    with pytest.raises(RunError, match="still Running"):
        prepare_continue(project, registry, job.job_dir, {"fn_cont": "particles.star"})


class _AbortOnStart:
    @hookimpl
    def emclass2d_job_started(self, project_dir, job_dir):
        (Path(project_dir) / job_dir / L.ABORT_NOW).touch()


def test_abort_marker_aborts(project, registry):
    registry.plugin_manager.register(_AbortOnStart())
    status = run_new(project, "testpkg.echo", {"nr_iter": "5"}, registry=registry)
    assert status == L.STATUS_ABORTED
    job = project.job_path("Echo/job001/")
    assert (job / L.EXIT_ABORTED).exists() and not (job / "echo.txt").exists()
    assert project.read().process("Echo/job001/").status == L.STATUS_ABORTED
    with project.edit() as pipe:  # a completion check leaves finished jobs alone
        assert project.check_completion(pipe) == []
