"""The plugin manager and the registry of job types.

:func:`get_plugin_manager` builds a fresh pluggy manager each call (nothing happens at
import): it adds the hook specs and loads every module of the ``emclass2d`` entry-point
group (ours: ``emclass2d.jobtypes.class2d`` and ``emclass2d.jobtypes.select``). A module
that fails to import, or implements no hook, is logged and kept in
``pm.unavailable`` with the reason. :func:`get_registry` asks every plugin for its job
types and checks them in one place.

Example::

    registry = get_registry()
    job_type = registry.get("emclass2d.class2d")       # a JobType instance
    registry.unavailable                               # {'name': 'reason', ...}

See also: :mod:`emclass2d.jobtypes.hookspecs`, :mod:`emclass2d.jobtypes.running`.
"""
from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import re
from dataclasses import dataclass, field

import pluggy

from emclass2d.jobtypes import hookspecs
from emclass2d.jobtypes.base import JobOptions, JobType

log = logging.getLogger(__name__)

#: Entry-point names listed here (comma-separated) are not loaded.
DISABLE_ENV = "EMCLASS2D_DISABLE_PLUGINS"

#: ``<package>.<job>[.<variant>...]``, lower case, as the pipeliner's process type labels.
PROCESS_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
#: Directory names RELION would accept: one path component.
DIRECTORY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus ``unavailable``: plugin or job type name -> why it is not usable."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.unavailable: dict[str, str] = {}


def get_plugin_manager(*, entry_points: bool = True) -> PluginManager:
    """A new plugin manager with the hook specs and (by default) the entry-point plugins.

    Raises pluggy's ``PluginValidationError`` only for a plugin whose hook does not match
    its spec (``check_pending``); import errors are recorded, not raised.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    if entry_points:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


def _load_entry_points(pm: PluginManager) -> None:
    disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        if ep.name in disabled:
            pm.set_blocked(ep.name)
            pm.unavailable[ep.name] = f"disabled by {DISABLE_ENV}"
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            pm.unavailable.setdefault(f"{ep.name} ({ep.value})", f"entry point name {ep.name!r} already used")
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time error of a third-party module
            reason = f"cannot import {ep.value}: {type(exc).__name__}: {exc}"
            log.warning("plugin %s unavailable: %s", ep.name, reason)
            pm.unavailable[ep.name] = reason
            continue
        try:
            pm.register(plugin, name=ep.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            log.warning("plugin %s unavailable: %s", ep.name, exc)
            pm.unavailable[ep.name] = str(exc)
            continue
        if not pm.get_hookcallers(plugin):
            pm.unregister(plugin)
            reason = f"{ep.value} implements no emclass2d_* hook"
            log.info("plugin %s unavailable: %s", ep.name, reason)
            pm.unavailable[ep.name] = reason


class UnknownJobType(KeyError):
    """No registered job type has this process type label."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Registry:
    """Job types by process type label, plus what was left out and why."""

    job_types: dict[str, JobType] = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)  #: process type -> plugin name
    unavailable: dict[str, str] = field(default_factory=dict)
    plugin_manager: PluginManager | None = None

    def labels(self) -> list[str]:
        """Registered process type labels, sorted."""
        return sorted(self.job_types)

    def get(self, process_type: str) -> JobType:
        """The job type for a label; :class:`UnknownJobType` names close matches or the reason."""
        if process_type in self.job_types:
            return self.job_types[process_type]
        if process_type in self.unavailable:
            raise UnknownJobType(f"job type {process_type} is unavailable: {self.unavailable[process_type]}")
        close = difflib.get_close_matches(process_type, self.labels(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        known = ", ".join(self.labels()) or "none"
        raise UnknownJobType(f"unknown job type {process_type}{hint}; registered: {known}")

    def __contains__(self, process_type: object) -> bool:
        return process_type in self.job_types


def check_job_type(cls: object) -> str | None:
    """Why a registered object is not a usable job type, or None if it is."""
    if not (isinstance(cls, type) and issubclass(cls, JobType)):
        return f"{cls!r} is not a JobType subclass"
    label = getattr(cls, "process_type", None)
    if not isinstance(label, str) or not PROCESS_TYPE_RE.match(label):
        return f"{cls.__name__}: process_type {label!r} is not of the form <package>.<job> (lower case)"
    if label.startswith("relion."):
        return f"{cls.__name__}: process_type {label}: relion.* labels belong to RELION's own jobs"
    model = getattr(cls, "options_model", None)
    if not (isinstance(model, type) and issubclass(model, JobOptions)):
        return f"{cls.__name__} ({label}): missing options_model (a JobOptions subclass)"
    directory = getattr(cls, "directory", None)
    if not isinstance(directory, str) or not DIRECTORY_RE.match(directory):
        return f"{cls.__name__} ({label}): directory {directory!r} is not a plain folder name"
    if cls.can_continue and cls.continue_option and cls.continue_option not in model.relion_names():
        return f"{cls.__name__} ({label}): continue_option {cls.continue_option!r} is not an option"
    return None


def get_registry(pm: PluginManager | None = None) -> Registry:
    """Collect and check the job types of every plugin of ``pm`` (default: a new manager)."""
    pm = pm if pm is not None else get_plugin_manager()
    registry = Registry(unavailable=dict(pm.unavailable), plugin_manager=pm)
    for impl in pm.hook.emclass2d_register_job_types.get_hookimpls():
        plugin = impl.plugin_name
        try:
            classes = impl.function() or []
            classes = list(classes)
        except Exception as exc:  # a plugin's bug must not hide the other plugins
            registry.unavailable[plugin] = f"emclass2d_register_job_types failed: {type(exc).__name__}: {exc}"
            log.warning("plugin %s: %s", plugin, registry.unavailable[plugin])
            continue
        for cls in classes:
            reason = check_job_type(cls)
            label = getattr(cls, "process_type", None) or getattr(cls, "__name__", repr(cls))
            if reason is None and label in registry.job_types:
                reason = f"process type {label} already registered by plugin {registry.plugin_of[label]}"
            if reason is None:
                try:
                    job_type = cls()
                except Exception as exc:
                    reason = f"{cls.__name__}() failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                key = label if label not in registry.job_types else f"{label} (from {plugin})"
                registry.unavailable[key] = reason
                log.warning("job type %s unavailable: %s", key, reason)
                continue
            registry.job_types[label] = job_type
            registry.plugin_of[label] = plugin
    return registry
