"""A RELION-style project directory: its pipeline, job directories and marker files.

Every path is resolved against one root, so nothing depends on the working directory.
Reading the graph needs no lock; editing it does, through :meth:`Project.edit`, which
locks, reads, hands out the :class:`~emclass2d.nodes.graph.pipeline.Pipeline` and writes it back
only if the block finished without an exception (then touches ``.pipeline_has_changed``).

Example::

    project = Project.init("/data/myproject")         # or Project.open(".")
    with project.edit() as pipe:
        job = project.add_job(pipe, "Class2D", "emclass2d.class2d",
                              inputs=[Node("particles.star", L.NODE_PARTICLES)])
    project.job_path(job)                               # /data/myproject/Class2D/job001
    project.read().process(job).status                  # 'Running'

See also: :mod:`emclass2d.nodes.graph.pipeline`, :mod:`emclass2d.nodes.graph.lock`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.lock import PipelineLock
from emclass2d.nodes.graph.pipeline import Node, Pipeline, Process, read_pipeline, write_pipeline

#: Files of ``emclass2d.project_template`` copied into a new project.
TEMPLATE_FILES: tuple[str, ...] = (L.PIPELINE_FILE, "README.txt")


class ProjectError(RuntimeError):
    """Not a project, unknown job, or a project operation that cannot be done."""


class Project:
    """A project rooted at one directory (the one holding ``default_pipeline.star``)."""

    def __init__(self, root: str | os.PathLike[str], *, lock_timeout_s: float = 60.0) -> None:
        self.root = Path(root).resolve()
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r})"

    # ------------------------------------------------------------------ creation
    @staticmethod
    def is_project(root: str | os.PathLike[str]) -> bool:
        """True if ``root`` holds a ``default_pipeline.star``."""
        return (Path(root) / L.PIPELINE_FILE).is_file()

    @classmethod
    def open(cls, root: str | os.PathLike[str] = ".") -> "Project":
        """The project at ``root``; raises :class:`ProjectError` if it is not one."""
        if not cls.is_project(root):
            raise ProjectError(f"{Path(root).resolve()}: not a project directory (no {L.PIPELINE_FILE}); "
                               "run 'emclass2d init' there first")
        return cls(root)

    @classmethod
    def init(cls, root: str | os.PathLike[str] = ".") -> "Project":
        """Create a project from ``project_template/``; refuses an existing project."""
        root = Path(root)
        if cls.is_project(root):
            raise ProjectError(f"{root.resolve()}: already a project ({L.PIPELINE_FILE} exists)")
        root.mkdir(parents=True, exist_ok=True)
        template = resources.files("emclass2d.project_template")
        for name in TEMPLATE_FILES:
            target = root / name
            if not target.exists():
                target.write_bytes(template.joinpath(name).read_bytes())
        return cls(root)

    # ------------------------------------------------------------------ paths
    @property
    def pipeline_path(self) -> Path:
        return self.root / L.PIPELINE_FILE

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """Absolute path of a project-relative path (absolute paths are returned as is)."""
        return self.root / relative

    def job_path(self, job_name: str) -> Path:
        """Directory of a job, e.g. ``job_path('Class2D/job013/')``."""
        return self.root / job_name

    def relative(self, path: str | os.PathLike[str]) -> str:
        """Project-relative form of a path given absolute, ``./``-prefixed or relative."""
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(self.root)
            except ValueError:
                return str(path)
        return os.path.normpath(str(p))

    def resolve_job(self, text: str, pipe: Pipeline | None = None) -> str:
        """Job name (``Class2D/job013/``) for a job dir given any way: alias, absolute, no slash.

        Raises :class:`ProjectError` when no process of the graph matches.
        """
        pipe = pipe or self.read()
        want = self.relative(text).rstrip("/") + "/"
        for proc in pipe.processes:
            if proc.name == want or (proc.alias and proc.alias.rstrip("/") + "/" == want):
                return proc.name
        raise ProjectError(f"{text}: no such job in {self.pipeline_path}")

    # ------------------------------------------------------------------ graph
    def lock(self) -> PipelineLock:
        """RELION's pipeline lock for this project."""
        return PipelineLock(self.root, timeout_s=self.lock_timeout_s)

    def read(self) -> Pipeline:
        """A snapshot of the graph (no lock; RELION writes the file atomically as we do)."""
        return read_pipeline(self.pipeline_path)

    @contextlib.contextmanager
    def edit(self) -> Iterator[Pipeline]:
        """Lock, read, yield the graph, write it back on a clean exit, unlock.

        An exception in the block leaves ``default_pipeline.star`` untouched.
        """
        with self.lock():
            pipe = self.read()
            yield pipe
            write_pipeline(self.pipeline_path, pipe)
            self.touch(L.CHANGED_FILE)

    def touch(self, relative: str) -> None:
        """Create or update the mtime of a project-relative file."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    # ------------------------------------------------------------------ jobs
    def new_job_name(self, pipe: Pipeline, directory: str) -> str:
        """Next job name from the counter, skipping numbers whose directory already exists."""
        while True:
            name = pipe.next_job_name(directory)
            if pipe.process(name) is None and not self.job_path(name).exists():
                return name
            pipe.job_counter += 1

    def add_job(self, pipe: Pipeline, directory: str, process_type: str, *,
                inputs: Iterable[Node] = (), outputs: Iterable[Node] = (),
                status: str = L.STATUS_RUNNING, alias: str | None = None) -> str:
        """Add a new process with its edges, create its directory and ``job_pipeline.star``.

        Call inside :meth:`edit`. Returns the job name (``Class2D/job013/``).
        """
        name = self.new_job_name(pipe, directory)
        pipe.add_process(Process(name, process_type, status, alias))
        self.set_edges(pipe, name, inputs, outputs)
        self.job_path(name).mkdir(parents=True, exist_ok=True)
        self.write_job_pipeline(pipe, name)
        return name

    @staticmethod
    def set_edges(pipe: Pipeline, name: str, inputs: Iterable[Node], outputs: Iterable[Node]) -> None:
        """Add input and output edges of a process (nodes already present keep their type)."""
        for node in inputs:
            pipe.add_input(node, name)
        for node in outputs:
            pipe.add_output(node, name)

    def write_job_pipeline(self, pipe: Pipeline, job_name: str) -> None:
        """Write ``<jobdir>job_pipeline.star``: the process with its nodes and edges."""
        write_pipeline(self.job_path(job_name) / L.JOB_PIPELINE_FILE, pipe.subgraph(job_name))

    def copy_pipeline_to(self, job_name: str) -> None:
        """Copy ``default_pipeline.star`` into the job directory (RELION does so after launch)."""
        shutil.copyfile(self.pipeline_path, self.job_path(job_name) / L.PIPELINE_FILE)

    def node_marker(self, pipe: Pipeline, node: Node) -> Path:
        """``.Nodes/<TypeBeforeFirstDot>/<node path>``, using the producer's alias if it has one."""
        path = node.name
        producer = pipe.process(pipe.producer_of(node.name) or "")
        if producer is not None and producer.alias and path.startswith(producer.name):
            path = producer.alias.rstrip("/") + "/" + path[len(producer.name):]
        return self.root / L.NODES_DIR / L.node_type_top(node.type_label) / path

    def touch_node_markers(self, pipe: Pipeline, job_name: str) -> list[Path]:
        """Touch the ``.Nodes`` file of every output node of a job whose file exists."""
        touched = []
        for node in pipe.outputs_of(job_name):
            if (self.root / node.name).exists():
                marker = self.node_marker(pipe, node)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                touched.append(marker)
        return touched

    def remove_node_markers(self, pipe: Pipeline, job_name: str) -> None:
        """Remove the ``.Nodes`` files of a job's output nodes."""
        for node in pipe.outputs_of(job_name):
            self.node_marker(pipe, node).unlink(missing_ok=True)

    def check_completion(self, pipe: Pipeline) -> list[str]:
        """Set the status of Running jobs whose directory holds an exit marker (RELION
        ``checkProcessCompletion``); returns the names updated. Call inside :meth:`edit`."""
        updated = []
        for proc in pipe.processes:
            if proc.status != L.STATUS_RUNNING:
                continue
            for marker, status in L.STATUS_BY_MARKER.items():
                if (self.job_path(proc.name) / marker).exists():
                    proc.status = status
                    updated.append(proc.name)
                    if status == L.STATUS_SUCCEEDED:
                        self.touch_node_markers(pipe, proc.name)
                    break
        return updated
