"""Plugin manager and registry: entry points, third-party plugins, checks, every hook."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: echo_plugin
import echo_plugin  # noqa: E402

from emclass2d.jobtypes import hookimpl, hookspecs  # noqa: E402
from emclass2d.jobtypes.base import JobOptions, JobType, option  # noqa: E402
from emclass2d.jobtypes.registry import UnknownJobType, get_plugin_manager, get_registry  # noqa: E402
from emclass2d.jobtypes.running import run_new  # noqa: E402
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.project import Project  # noqa: E402

HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("emclass2d_"))


class _Opts(JobOptions):
    x: int = option(1, relion="x", label="X:")


def _job(label: str, directory: str = "Dummy", options=_Opts) -> type[JobType]:
    return type("DummyJob", (JobType,), {"process_type": label, "directory": directory, "options_model": options})


class _Provider:
    def __init__(self, *classes):
        self.classes = list(classes)

    @hookimpl
    def emclass2d_register_job_types(self):
        return self.classes


def test_builtin_entry_points_are_registered_or_explained():
    pm = get_plugin_manager()
    registry = get_registry(pm)
    for name in ("class2d", "select"):
        # Until a built-in module registers its job types, it must be listed with a reason.
        assert pm.get_plugin(name) is not None or name in registry.unavailable
    for label in registry.labels():
        if registry.plugin_of[label] in ("class2d", "select"):
            assert label.startswith("emclass2d.")


def test_plugin_registered_at_test_time():
    pm = get_plugin_manager(entry_points=False)
    pm.register(echo_plugin)
    registry = get_registry(pm)
    assert registry.labels() == ["testpkg.echo"]
    assert isinstance(registry.get("testpkg.echo"), echo_plugin.EchoJob)
    with pytest.raises(UnknownJobType, match="did you mean testpkg.echo"):
        registry.get("testpkg.ecco")


@pytest.mark.parametrize("cls, reason", [
    (_job("Bad Label"), "not of the form <package>.<job>"),
    (_job("nopackage"), "not of the form"),
    (_job("relion.class2d"), "relion.* labels belong to RELION"),
    (_job("testpkg.noopts", options=None), "missing options_model"),
    (_job("testpkg.baddir", directory="a/b"), "not a plain folder name"),
    (object, "not a JobType subclass"),
])
def test_registry_checks(cls, reason):
    pm = get_plugin_manager(entry_points=False)
    pm.register(_Provider(cls))
    registry = get_registry(pm)
    assert registry.labels() == []
    assert any(reason in r for r in registry.unavailable.values()), registry.unavailable


def test_duplicate_label_keeps_the_first():
    pm = get_plugin_manager(entry_points=False)
    pm.register(echo_plugin, name="first")
    pm.register(_Provider(_job("testpkg.echo")), name="second")
    registry = get_registry(pm)
    assert registry.plugin_of["testpkg.echo"] == "first"
    assert "already registered by plugin first" in registry.unavailable["testpkg.echo (from second)"]


def test_plugin_whose_hook_raises_is_unavailable():
    class Broken:
        @hookimpl
        def emclass2d_register_job_types(self):
            raise RuntimeError("oops")

    pm = get_plugin_manager(entry_points=False)
    pm.register(Broken(), name="broken")
    pm.register(echo_plugin)
    registry = get_registry(pm)
    assert "RuntimeError: oops" in registry.unavailable["broken"]
    assert "testpkg.echo" in registry


def _dist(root: Path, name: str, module_source: str) -> None:
    (root / f"{name}.py").write_text(module_source)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[emclass2d]\n{name} = {name}\n")


def test_broken_and_empty_distributions_do_not_break_the_registry(tmp_path, monkeypatch):
    _dist(tmp_path, "tp_broken", "raise ImportError('needs libfoo')\n")
    _dist(tmp_path, "tp_empty", "'''Nothing here.'''\n")
    echo_plugin.install_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = get_plugin_manager()
    registry = get_registry(pm)
    assert "cannot import tp_broken: ImportError: needs libfoo" in pm.unavailable["tp_broken"]
    assert "implements no emclass2d_* hook" in pm.unavailable["tp_empty"]
    assert registry.plugin_of["testpkg.echo"] == "echo"
    monkeypatch.setenv("EMCLASS2D_DISABLE_PLUGINS", "echo")
    registry = get_registry(get_plugin_manager())
    assert "testpkg.echo" not in registry and "disabled" in registry.unavailable["echo"]


def test_installed_distribution_runs_through_the_cli(tmp_path):
    plugins = echo_plugin.install_distribution(tmp_path / "site")
    project = Project.init(tmp_path / "proj")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "emclass2d.jobtypes.cli", "run", "testpkg.echo",
                             "--message", "from-a-plugin", "--nr_iter", "2"],
                            cwd=project.root, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (project.root / "Echo/job001/echo.txt").read_text() == "1 from-a-plugin\n2 from-a-plugin\n"
    assert project.read().process("Echo/job001/").status == L.STATUS_SUCCEEDED


# ----------------------------------------------------------------------------- hooks

class _Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def emclass2d_job_started(self, job_dir, process_type, options, is_continue):
        self.calls.append(("started", job_dir, process_type, options.nr_iter, is_continue))

    @hookimpl
    def emclass2d_iteration_done(self, job_dir, iteration, summary):
        self.calls.append(("iteration", job_dir, iteration, summary["message"]))

    @hookimpl
    def emclass2d_job_finished(self, project_dir, job_dir, process_type):
        self.calls.append(("finished", job_dir, process_type, (Path(project_dir) / job_dir / L.EXIT_SUCCESS).exists()))

    @hookimpl
    def emclass2d_job_failed(self, job_dir, status, message):
        self.calls.append(("failed", job_dir, status, message))


@pytest.fixture
def recorded(tmp_path):
    pm = get_plugin_manager(entry_points=False)
    pm.register(echo_plugin)
    recorder = _Recorder()
    pm.register(recorder)
    return Project.init(tmp_path), get_registry(pm), recorder


def test_hook_emclass2d_register_job_types():
    pm = get_plugin_manager(entry_points=False)
    pm.register(_Provider(_job("testpkg.one"), _job("testpkg.two", directory="Two")))
    assert get_registry(pm).labels() == ["testpkg.one", "testpkg.two"]


def test_hook_emclass2d_job_started(recorded):
    project, registry, rec = recorded
    run_new(project, "testpkg.echo", {"nr_iter": "2"}, registry=registry)
    assert rec.calls[0] == ("started", "Echo/job001/", "testpkg.echo", 2, False)


def test_hook_emclass2d_iteration_done(recorded):
    project, registry, rec = recorded
    run_new(project, "testpkg.echo", {"nr_iter": "3", "message": "m"}, registry=registry)
    assert [c for c in rec.calls if c[0] == "iteration"] == [("iteration", "Echo/job001/", i, "m") for i in (1, 2, 3)]


def test_hook_emclass2d_job_finished(recorded):
    project, registry, rec = recorded
    run_new(project, "testpkg.echo", {"nr_iter": "1"}, registry=registry)
    assert rec.calls[-1] == ("finished", "Echo/job001/", "testpkg.echo", True)


def test_hook_emclass2d_job_failed(recorded):
    project, registry, rec = recorded
    run_new(project, "testpkg.echo", {"nr_iter": "1", "do_fail": "Yes"}, registry=registry)
    assert rec.calls[-1] == ("failed", "Echo/job001/", "Failed", "failing on purpose (do_fail = Yes)")
    assert not any(c[0] == "finished" for c in rec.calls)


def test_a_failing_notification_does_not_change_the_outcome(recorded):
    project, registry, _ = recorded

    class Noisy:
        @hookimpl
        def emclass2d_iteration_done(self):
            raise ValueError("plugin bug")

    registry.plugin_manager.register(Noisy())
    assert run_new(project, "testpkg.echo", {"nr_iter": "1"}, registry=registry) == L.STATUS_SUCCEEDED
    assert "plugin bug" in (project.root / "Echo/job001/run.err").read_text()


# ----------------------------------------------------------------------------- meta-tests

def test_hooks_exist():
    assert HOOKS == ["emclass2d_iteration_done", "emclass2d_job_failed", "emclass2d_job_finished",
                     "emclass2d_job_started", "emclass2d_register_job_types"]


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Called" in doc and "firstresult" in doc and ("Return" in doc or "return" in doc)
    assert all(p.annotation is not inspect.Parameter.empty
               for p in inspect.signature(getattr(hookspecs, hook)).parameters.values())


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook):
    tests = "".join(p.read_text() for p in Path(__file__).parents[1].rglob("test_*.py"))
    assert re.search(rf"^def test_hook_{hook}\(", tests, re.MULTILINE), f"no test_hook_{hook}"
