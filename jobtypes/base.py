"""The job-type contract: what every job type (ours or a plugin's) declares and receives.

A job type is a class deriving from :class:`JobType` with class-level declarations (process
type label, job directory name, options model) and a :meth:`JobType.run` that does the work
inside a :class:`RunContext`. Options are a pydantic model deriving from :class:`JobOptions`
whose fields carry RELION's job.star variable name (the alias), GUI label, units, bounds and
help, declared with :func:`option`.

Example::

    class Options(JobOptions):
        nr_classes: int = option(1, relion="nr_classes", label="Number of classes:", ge=1)

    class MyJob(JobType):
        process_type = "mypkg.myjob"
        directory = "MyJob"
        options_model = Options

        def run(self, ctx: RunContext) -> None:
            ctx.log(f"running with {ctx.options.nr_classes} classes")

See also: :mod:`emclass2d.jobtypes.hookspecs` (how a job type is registered).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from emclass2d.nodes.graph.labels import NO, YES



def option(
    default: Any,
    *,
    relion: str,
    label: str,
    help: str = "",
    units: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    suggested: tuple[float, float] | None = None,
    in_continue: bool = False,
    node_type: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A job option field.

    ``relion`` is the job.star variable name (also the CLI name ``--<relion>``), ``label``
    the GUI label (RELION's text), ``units`` e.g. "Å", "px", "deg"; ``ge/gt/le/lt`` are hard
    bounds (validation errors), ``suggested`` a soft range for GUIs; ``in_continue`` marks
    options that may change when a job is continued; ``node_type`` marks a file option that is
    an input node of that RELION node type label.
    """
    extra: dict[str, Any] = {"relion": relion, "label": label, "in_continue": in_continue}
    if units:
        extra["units"] = units
    if suggested:
        extra["suggested"] = list(suggested)
    if node_type:
        extra["node_type"] = node_type
    if choices:
        extra["choices"] = list(choices)
    return Field(default, alias=relion, description=help or label, ge=ge, gt=gt, le=le, lt=lt, json_schema_extra=extra)


class JobOptions(BaseModel):
    """Base of every job's options: frozen, unknown keys forbidden, RELION names as aliases.

    Booleans accept RELION's ``Yes``/``No`` (and true/false, 1/0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True)

    #: job.star names of older RELION versions that a job type translates itself (in a
    #: ``model_validator(mode="before")``); kept when a job.star's unknown names are ignored.
    legacy_job_star_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def relion_names(cls) -> dict[str, str]:
        """Map job.star variable name -> python field name, in declaration order."""
        return {(f.alias or name): name for name, f in cls.model_fields.items()}

    @classmethod
    def accepted_names(cls) -> set[str]:
        """Every job.star name taken as input: the current ones and the legacy ones."""
        return set(cls.relion_names()) | cls.legacy_job_star_names

    @classmethod
    def field_info(cls, relion_name: str) -> dict[str, Any]:
        """label/units/default/bounds/help of one option, by its job.star name."""
        name = cls.relion_names()[relion_name]
        f = cls.model_fields[name]
        extra = dict(f.json_schema_extra or {})  # type: ignore[arg-type]
        bounds = {}
        for m in f.metadata:
            for key in ("ge", "gt", "le", "lt"):
                if getattr(m, key, None) is not None:
                    bounds[key] = getattr(m, key)
        return {"name": relion_name, "field": name, "default": f.default, "type": f.annotation,
                "help": f.description, **bounds, **extra}

    @classmethod
    def from_job_star(cls, values: dict[str, str], *, ignore_unknown: bool = False) -> "JobOptions":
        """Build from job.star ``{variable: value string}`` (Yes/No -> bool)."""
        known = cls.accepted_names()
        data = {k: _from_star_value(v) for k, v in values.items() if not ignore_unknown or k in known}
        return cls.model_validate(data)

    def to_job_star(self) -> dict[str, str]:
        """``{variable: value string}`` as RELION writes job.star (Yes/No, 200, 0.5, -1)."""
        out: dict[str, str] = {}
        for relion_name, field_name in self.relion_names().items():
            out[relion_name] = _to_star_value(getattr(self, field_name))
        return out


def _from_star_value(v: Any) -> Any:
    if isinstance(v, str) and v in (YES, NO):
        return v == YES
    return v


def _to_star_value(v: Any) -> str:
    if isinstance(v, bool):
        return YES if v else NO
    if isinstance(v, float):
        return f"{v:g}" if v != int(v) or abs(v) >= 1e15 else str(int(v))
    if v is None:
        return ""
    return str(v)


@dataclass(frozen=True)
class NodeSpec:
    """A node of the project graph: a file path (relative to the project) and its type label."""

    name: str
    type_label: str


class JobAborted(Exception):
    """Raised inside a job when ``RELION_JOB_ABORT_NOW`` appears in its directory."""


class JobFailed(Exception):
    """Raised by a job for an expected failure; the message is shown to the user as is."""


@dataclass
class RunContext:
    """Everything a running job gets. Paths are relative to ``project_dir``, the working directory.

    ``log`` writes a line to the job's ``run.out`` (and the terminal in the foreground),
    ``warn`` to ``run.err``; ``progress`` reports a bar with ETA inside long steps;
    ``iteration_done`` reports a finished iteration (calls the plugins' hook);
    ``check_abort`` raises :class:`JobAborted` when the user asked to abort.
    """

    project_dir: Path
    job_dir: str  #: e.g. "Class2D/job013/" (trailing slash, as RELION)
    options: JobOptions
    is_continue: bool = False
    command_line: str = ""  #: the exact command line, for the optimiser.star header
    log: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    progress: Callable[[int, int, str], None] = lambda done, total, what="": None
    iteration_done: Callable[[int, dict[str, Any]], None] = lambda it, summary: None
    check_abort: Callable[[], None] = lambda: None
    extra_output_nodes: list[NodeSpec] = field(default_factory=list)

    def add_output_node(self, name: str, type_label: str) -> None:
        """Declare an output node found at run time (added to the graph on success)."""
        self.extra_output_nodes.append(NodeSpec(name, type_label))


class JobType:
    """Base class of a job type. Subclasses set the class variables and implement :meth:`run`.

    The constructor must be cheap and must not raise: registries instantiate every job type.
    """

    #: Process type label in the pipeliner convention ``<package>.<job>``.
    process_type: ClassVar[str]
    #: Job directory name under the project, as RELION: "Class2D", "Select".
    directory: ClassVar[str]
    #: The pydantic options model.
    options_model: ClassVar[type[JobOptions]]
    #: One-line description shown by ``emclass2d jobtypes``.
    summary: ClassVar[str] = ""
    #: Whether ``emclass2d continue`` is allowed.
    can_continue: ClassVar[bool] = False
    #: Job.star variable naming the file to continue from (RELION: fn_cont), if any.
    continue_option: ClassVar[str | None] = None

    def input_nodes(self, options: JobOptions) -> list[NodeSpec]:
        """Input nodes: by default every non-empty option declared with ``node_type``."""
        nodes = []
        for relion_name, field_name in options.relion_names().items():
            info = options.field_info(relion_name)
            value = getattr(options, field_name)
            if info.get("node_type") and value:
                nodes.append(NodeSpec(str(value), info["node_type"]))
        return nodes

    def output_nodes(self, options: JobOptions, job_dir: str) -> list[NodeSpec]:
        """Output nodes declared before the run (must not touch the disk)."""
        return []

    def run(self, ctx: RunContext) -> None:
        """Do the job. Raise :class:`JobFailed` with a clear message on expected failure."""
        raise NotImplementedError


Status = Literal["Running", "Scheduled", "Succeeded", "Failed", "Aborted"]
