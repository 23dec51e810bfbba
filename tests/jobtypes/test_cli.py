"""The ``emclass2d`` command line end to end, in a temporary project, through subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: echo_plugin
import echo_plugin  # noqa: E402

from emclass2d.jobtypes import cli
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.jobstar import read_job_star  # noqa: E402
from emclass2d.nodes.graph.project import Project  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return echo_plugin.install_distribution(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def env(site):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def proj(tmp_path, env, site, monkeypatch):
    """(project root, run-in-subprocess, run-in-process) with the echo plugin installed."""
    root = tmp_path / "p"
    root.mkdir()

    def emclass2d(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", *argv], cwd=cwd or root,
                              env=env, capture_output=True, text=True, timeout=60)

    monkeypatch.syspath_prepend(str(site))

    def inproc(*argv: str) -> int:
        return cli.main([*argv, "--project", str(root)])

    assert inproc("init") == 0
    (root / "particles.star").write_text("data_\n")
    return root, emclass2d, inproc


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_status_graph(proj, capsys):
    root, emclass2d, inproc = proj
    assert inproc("jobtypes") == 0
    assert "testpkg.echo" in capsys.readouterr().out
    assert inproc("jobtypes", "testpkg.echo") == 0
    shown = capsys.readouterr().out
    assert "--nr_iter" in shown and "Number of iterations:" in shown and "may change" in shown
    ran = emclass2d("run", "testpkg.echo", "--fn_in", "particles.star", "--nr_iter", "3", "--message", "hi")
    assert ran.returncode == 0, ran.stderr
    assert "Echo/job001/: Succeeded" in ran.stdout and "echo 3/3 (100%)" in ran.stdout
    assert (root / "Echo/job001/echo.txt").read_text() == "1 hi\n2 hi\n3 hi\n"
    note = (root / "Echo/job001/note.txt").read_text()
    assert "emclass2d run testpkg.echo --fn_in particles.star --nr_iter 3 --message hi" in note
    assert inproc("run", "--job-star", "Echo/job001/job.star", "--do_fail", "Yes") == 1
    assert "Echo/job002/: Failed" in capsys.readouterr().err
    status = emclass2d("status")
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["Echo/job001/", "testpkg.echo", "Succeeded"]
    assert lines[1].split() == ["Echo/job002/", "testpkg.echo", "Failed"]
    assert inproc("graph") == 0
    graph = capsys.readouterr().out
    assert "<- particles.star  (ParticleGroupMetadata.star.relion)" in graph
    assert "-> Echo/job001/echo.txt" in graph
    dot = emclass2d("graph", "--dot", "--project", str(root), cwd=root.parent).stdout
    assert dot.startswith("digraph") and '"particles.star" -> "Echo/job001/";' in dot


def test_foreign_processes_are_listed_not_run(proj, capsys):
    root, _, inproc = proj
    project = Project(root)
    with project.edit() as pipe:
        project.add_job(pipe, "Class2D", "relion.class2d", status=L.STATUS_SUCCEEDED)
    assert inproc("status") == 0
    assert "(external)" in capsys.readouterr().out
    assert inproc("overwrite", "Class2D/job001/") == 1
    assert "does not run them" in capsys.readouterr().err


def test_continue_and_overwrite(proj, capsys):
    root, emclass2d, inproc = proj
    assert inproc("run", "testpkg.echo", "--nr_iter", "2") == 0
    assert inproc("continue", "Echo/job001", "--message", "x", "--fn_cont", "Echo/job001/echo.txt") == 1
    assert "cannot change on continue" in capsys.readouterr().err
    cont = emclass2d("continue", "Echo/job001", "--nr_iter", "3", "--fn_cont", "Echo/job001/echo.txt")
    assert cont.returncode == 0, cont.stderr
    assert (root / "Echo/job001/echo.txt").read_text().count("hello") == 3
    assert read_job_star(root / "Echo/job001/job.star").is_continue
    over = emclass2d("overwrite", "Echo/job001/", "--message", "bye")
    assert over.returncode == 0, over.stderr
    assert (root / "Echo/job001/echo.txt").read_text() == "1 bye\n2 bye\n3 bye\n"
    assert not read_job_star(root / "Echo/job001/job.star").is_continue
    assert Project(root).read().job_counter == 2


def test_detach_and_abort(proj, capsys):
    root, emclass2d, inproc = proj
    started = emclass2d("run", "testpkg.echo", "--nr_iter", "400", "--sleep_s", "0.05", "--detach")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "Echo/job001/"
    run_out = root / "Echo/job001/run.out"
    deadline = time.monotonic() + 30
    while "echo" not in (run_out.read_text() if run_out.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Project(root).read().process("Echo/job001/").status == L.STATUS_RUNNING
    aborted = emclass2d("abort", "Echo/job001/")
    assert aborted.returncode == 0, aborted.stderr
    while Project(root).read().process("Echo/job001/").status == L.STATUS_RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Project(root).read().process("Echo/job001/").status == L.STATUS_ABORTED
    assert (root / "Echo/job001" / L.EXIT_ABORTED).exists()
    assert inproc("abort", "Echo/job001/") == 1
    assert "not running" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "testpkg.echo", "--fn_in", "missing.star"], "input file missing.star not found"),
    (["run", "testpkg.echo", "--nr_iter", "zero"], "--nr_iter 'zero'"),
    (["run", "testpkg.echo", "--mesage", "x"], "did you mean --message?"),
    (["run", "testpkg.ech"], "did you mean testpkg.echo?"),
    (["continue", "Echo/job007/"], "Echo/job007/: no such job"),
    (["overwrite", "Echo/job007/"], "Echo/job007/: no such job"),
    (["abort", "Echo/job007/"], "no such job"),
])
def test_errors_exit_nonzero_and_write_nothing(proj, capsys, argv, message):
    root, _, inproc = proj
    before = _snapshot(root)
    assert inproc(*argv) == 1
    assert message in capsys.readouterr().err
    assert _snapshot(root) == before


def test_errors_in_a_subprocess(proj):
    root, emclass2d, _ = proj
    before = _snapshot(root)
    result = emclass2d("run", "testpkg.echo", "--nr_iter", "-3")
    assert result.returncode == 1 and "--nr_iter '-3'" in result.stderr
    bad = emclass2d("status", "--bogus")
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr
    assert _snapshot(root) == before


def test_not_a_project(tmp_path, env):
    result = subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", "status"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not a project directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_command_list_tolerates_missing_and_broken_modules(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", ["status", "not_written_yet"])
    parser, modules = cli.build_parser()
    assert list(modules) == ["status"]
    real_load = cli._load

    def load(verb):
        if verb == "broken":
            raise SyntaxError("bad module")
        return real_load(verb)

    monkeypatch.setattr(cli, "_load", load)
    monkeypatch.setattr(cli, "COMMANDS", ["status", "broken"])
    parser, modules = cli.build_parser()
    assert list(modules) == ["status", "broken"]
    assert cli.main(["broken"]) == 1
    assert "command unavailable" in capsys.readouterr().err
