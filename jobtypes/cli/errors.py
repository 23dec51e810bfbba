"""Exceptions that mean "the user asked for something impossible": shown as one line, exit 1."""
from __future__ import annotations

from emclass2d.jobtypes.cli.tokens import TokenError
from emclass2d.jobtypes.registry import UnknownJobType
from emclass2d.jobtypes.running import RunError
from emclass2d.nodes.graph.lock import LockTimeout
from emclass2d.nodes.graph.project import ProjectError
from emclass2d.nodes.io.star import StarFileError

USER_ERRORS: tuple[type[BaseException], ...] = (RunError, ProjectError, StarFileError, LockTimeout,
                                                UnknownJobType, TokenError)
