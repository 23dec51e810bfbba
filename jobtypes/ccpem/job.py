"""A registered job type as a CCP-EM pipeliner job class (imports the pipeliner).

:func:`make_job_class` builds a ``PipelinerJob`` subclass for one job type: its job
options come from the pydantic options model (:mod:`emclass2d.jobtypes.ccpem.options`),
its validation is the model's validation, its nodes are the job type's declared input and
output nodes, its one command runs the job with the pipeliner's own interpreter through
:mod:`emclass2d.jobtypes.ccpem.exec`, and its results display shows the pictures and
HTML report the job wrote. Only :mod:`emclass2d.jobtypes.ccpem` imports this module, when
the pipeliner asks for a job class.

Example::

    cls = make_job_class(get_registry().get("emclass2d.class2d"))
    job = cls()
    job.joboptions["nr_classes"].value = "4"
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pipeliner import job_options as jo
from pipeliner.display_tools import create_results_display_object
from pipeliner.node_factory import create_node
from pipeliner.nodes import Node
from pipeliner.pipeliner_job import PipelinerCommand, PipelinerJob
from pipeliner.results_display_objects import ResultsDisplayObject

from emclass2d.jobtypes.ccpem.options import JobOptionSpec, joboption_specs, split_node_type, validation_problems
from emclass2d.jobtypes.base import JobOptions, JobType
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.files.output_nodes import read_output_nodes_file

#: The module the job's command runs (``python -m``), in the project directory.
EXEC_MODULE = "emclass2d.jobtypes.ccpem.exec"


def build_joboption(spec: JobOptionSpec) -> jo.JobOption:
    """The pipeliner ``JobOption`` object a spec describes."""
    kwargs = dict(spec.kwargs)
    if "pattern" in kwargs:
        name, exts = kwargs.pop("pattern")
        kwargs["pattern"] = jo.FileDescription(name, exts or None)
    return getattr(jo, spec.cls_name)(**kwargs)


def make_node(name: str, type_label: str) -> Node:
    """A pipeliner node for a file and its RELION 5 type label."""
    top, _, kwds = split_node_type(type_label)
    return create_node(name, top, kwds)


class EmclassPipelinerJob(PipelinerJob):
    """Base of the generated job classes; ``JOB_TYPE`` is the emclass2d job type wrapped."""

    JOB_TYPE: ClassVar[JobType]

    def __init__(self) -> None:
        super().__init__()
        job_type = self.JOB_TYPE
        self.jobinfo.display_name = job_type.summary or job_type.process_type
        self.jobinfo.short_desc = job_type.summary or job_type.process_type
        self.jobinfo.long_desc = (type(job_type).__doc__ or job_type.summary or "").strip()
        self.jobinfo.version = _package_version()
        self.can_continue = bool(job_type.can_continue)
        for spec in joboption_specs(type(job_type)):
            self.joboptions[spec.name] = build_joboption(spec)

    # ------------------------------------------------------------------ options
    def option_values(self) -> dict[str, str]:
        """``{job.star name: value string}`` of the job options the model knows."""
        known = self.JOB_TYPE.options_model.relion_names()
        return {name: opt.value_string for name, opt in self.joboptions.items() if name in known}

    def options(self) -> JobOptions:
        """The validated options model; raises ``ValueError`` naming each bad option."""
        problems = validation_problems(self.JOB_TYPE.options_model, self.option_values())
        if problems:
            raise ValueError("; ".join(f"{n or 'options'}: {m}" for n, m in problems))
        return self.JOB_TYPE.options_model.from_job_star(self.option_values())

    def additional_joboption_validation(self) -> list[jo.JobOptionValidationResult]:
        """The options model's own checks (bounds, cross-field rules) as pipeliner results."""
        results = []
        for name, message in validation_problems(self.JOB_TYPE.options_model, self.option_values()):
            raised_by = [self.joboptions[name]] if name in self.joboptions else []
            results.append(jo.JobOptionValidationResult("error", raised_by, message))
        cont = self.JOB_TYPE.continue_option
        if self.is_continue and cont and cont in self.joboptions and not self.joboptions[cont].value_string:
            results.append(jo.JobOptionValidationResult(
                "error", [self.joboptions[cont]],
                f"continuing needs '{cont}' (the file to continue from); set it in continue_job.star"))
        return results

    # ------------------------------------------------------------------ nodes
    def create_input_nodes(self, existing_nodes: dict[str, Node] | None = None) -> None:
        """The job type's input nodes; a node already in the pipeline keeps its type."""
        try:
            specs = self.JOB_TYPE.input_nodes(self.options())
        except ValueError:  # invalid options are reported by validation; keep the option-based nodes
            super().create_input_nodes(existing_nodes)
            return
        existing = existing_nodes or {}
        for spec in specs:
            if spec.name not in [n.name for n in self.input_nodes]:
                self.input_nodes.append(existing.get(spec.name) or make_node(spec.name, spec.type_label))

    def create_output_nodes(self) -> None:
        """The outputs the job type declares before running (no disk access)."""
        for spec in self.JOB_TYPE.output_nodes(self.options(), self.output_dir):
            self.output_nodes.append(make_node(spec.name, spec.type_label))

    def create_post_run_output_nodes(self) -> None:
        """Outputs found at run time, listed by the job in ``RELION_OUTPUT_NODES.star``."""
        have = {n.name for n in self.output_nodes}
        for node in read_output_nodes_file(Path(self.output_dir) / L.OUTPUT_NODES_FILE):
            if node.name not in have:
                self.output_nodes.append(make_node(node.name, node.type_label))
                have.add(node.name)

    # ------------------------------------------------------------------ running
    def get_commands(self) -> list[PipelinerCommand]:
        """One command: run the job in its directory with the pipeliner's interpreter."""
        return [PipelinerCommand(["python", "-m", EXEC_MODULE, self.output_dir])]

    # ------------------------------------------------------------------ results
    def create_results_display(self) -> Sequence[ResultsDisplayObject]:
        """The job's pictures (gallery first) and HTML reports; node defaults when there are none."""
        job_dir = Path(self.output_dir)
        pictures = sorted(job_dir.glob("*.png"), key=lambda p: (not _is_gallery(p), p.name))
        reports = sorted(job_dir.glob("*.html"))
        data = [n.name for n in self.output_nodes]
        shown: list[ResultsDisplayObject] = []
        for png in pictures:
            shown.append(create_results_display_object(
                "image", title=_title(png), image_path=os.fspath(png),
                image_desc=f"{self.PROCESS_NAME}: {png.name}", associated_data=data))
        for page in reports:
            shown.append(create_results_display_object(
                "html", title=_title(page), html_file=os.fspath(page), associated_data=data))
        return shown or list(super().create_results_display())


def _is_gallery(path: Path) -> bool:
    return "gallery" in path.stem or "class_averages" in path.stem


def _title(path: Path) -> str:
    return path.stem.replace("_", " ").capitalize()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("emclass2d")
    except PackageNotFoundError:
        return "0.0"


def make_job_class(job_type: JobType) -> type[EmclassPipelinerJob]:
    """A ``PipelinerJob`` subclass running ``job_type`` (``PROCESS_NAME`` = its process type)."""
    name = "".join(part.capitalize() for part in job_type.process_type.replace("_", ".").split(".")) + "Job"
    attrs: dict[str, Any] = {"PROCESS_NAME": job_type.process_type, "OUT_DIR": job_type.directory,
                             "JOB_TYPE": job_type, "__module__": "emclass2d.jobtypes.ccpem",
                             "__doc__": f"CCP-EM pipeliner job running {job_type.process_type}."}
    return type(name, (EmclassPipelinerJob,), attrs)


def make_unavailable_class(process_type: str, reason: str) -> type[PipelinerJob]:
    """A job class listed as unavailable with ``reason`` (its plugin is missing or broken)."""

    class UnavailableEmclassJob(PipelinerJob):
        PROCESS_NAME = process_type
        OUT_DIR = "External"

        def __init__(self) -> None:
            super().__init__()
            self.jobinfo.display_name = process_type
            self.jobinfo.short_desc = f"{process_type} is not available"
            self.jobinfo.alternative_unavailable_reason = reason

        def create_output_nodes(self) -> None:
            pass

        def get_commands(self) -> list[PipelinerCommand]:
            raise RuntimeError(f"job type {process_type} is unavailable: {reason}")

    return UnavailableEmclassJob
