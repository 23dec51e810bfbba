"""emclass2d job types as job types of CCP-EM's pipeliner (``ccpem-pipeliner``).

The pipeliner finds job types through the entry-point group ``ccpem_pipeliner.jobs``;
each entry point's name is the job's process type and its object a ``PipelinerJob``
subclass. Every job type of our registry (ours and third-party plugins') is exposed as an
attribute of this module named by :func:`entry_point_attr` (``emclass2d.class2d`` ->
``emclass2d__class2d``). The classes are made on first access (module ``__getattr__``),
so importing this module needs neither the pipeliner nor a registry.

Declaring the job types (pyproject.toml of the distribution that provides them)::

    [project.entry-points."ccpem_pipeliner.jobs"]
    "emclass2d.class2d" = "emclass2d.jobtypes.ccpem:emclass2d__class2d"
    "emclass2d.select.class2dauto" = "emclass2d.jobtypes.ccpem:emclass2d__select__class2dauto"

``python -m emclass2d.jobtypes.ccpem`` prints these lines for every registered job type.
Then, in a project::

    pipeliner --default_jobstar emclass2d.class2d     # writes emclass2d_class2d_job.star
    pipeliner --run_job emclass2d_class2d_job.star    # runs Class2D/jobNNN/

A pipeliner job runs ``python -m emclass2d.jobtypes.ccpem.exec <jobdir>`` with the
pipeliner's interpreter in the project directory; the pipeliner owns the graph.

See also: :mod:`emclass2d.jobtypes.ccpem.job` (the job class), :mod:`emclass2d.jobtypes.ccpem.exec`.
"""
from __future__ import annotations

import functools
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emclass2d.jobtypes.registry import Registry

#: The pipeliner's entry-point group for job types.
ENTRY_POINT_GROUP = "ccpem_pipeliner.jobs"
#: This module's import name (also when run as ``python -m``).
MODULE = "emclass2d.jobtypes.ccpem"
#: Separator standing for '.' of a process type in an attribute name.
_DOT = "__"
_ATTR_RE = re.compile(r"^[a-z][a-z0-9_]*(__[a-z0-9_]+)+$")


def entry_point_attr(process_type: str) -> str:
    """Attribute of this module for a process type: ``'emclass2d.class2d'`` -> ``'emclass2d__class2d'``."""
    if _DOT in process_type:
        raise ValueError(f"process type {process_type!r} contains {_DOT!r}; it cannot be an entry-point attribute")
    return process_type.replace(".", _DOT)


def process_type_of(attr: str) -> str:
    """Inverse of :func:`entry_point_attr`."""
    return attr.replace(_DOT, ".")


def entry_point_value(process_type: str) -> str:
    """``'emclass2d.jobtypes.ccpem:emclass2d__class2d'``: what an entry point names."""
    return f"{MODULE}:{entry_point_attr(process_type)}"


def entry_point_lines(process_types: list[str]) -> list[str]:
    """``pyproject.toml`` lines declaring ``process_types`` in the pipeliner's group."""
    return [f'[project.entry-points."{ENTRY_POINT_GROUP}"]'] + \
        [f'"{p}" = "{entry_point_value(p)}"' for p in process_types]


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The registry used for the pipeliner's job classes (built once per process)."""
    from emclass2d.jobtypes.registry import get_registry  # noqa: PLC0415

    return get_registry()


@functools.lru_cache(maxsize=None)
def job_class(process_type: str) -> type:
    """The ``PipelinerJob`` subclass for a registered process type (imports the pipeliner).

    A process type that is not registered (plugin missing or broken) gets a class the
    pipeliner lists as unavailable, with the reason.
    """
    from emclass2d.jobtypes.ccpem import job as _ccpem_job

    reg = registry()
    if process_type in reg:
        return _ccpem_job.make_job_class(reg.get(process_type))
    reason = reg.unavailable.get(process_type) or f"no emclass2d plugin registers {process_type}"
    return _ccpem_job.make_unavailable_class(process_type, reason)


def __getattr__(name: str) -> Any:
    """Job classes on demand: ``emclass2d__class2d`` -> the job class of ``emclass2d.class2d``."""
    if _ATTR_RE.match(name):
        return job_class(process_type_of(name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Print the entry-point lines for every registered job type."""
    reg = registry()
    for line in entry_point_lines(reg.labels()):
        print(line)
    for name, reason in reg.unavailable.items():
        print(f"# unavailable: {name}: {reason}", file=sys.stderr)
    return 0

