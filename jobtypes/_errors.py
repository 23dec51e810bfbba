"""Exceptions that mean "the user asked for something impossible": shown as one line, exit 1."""
from __future__ import annotations

from emclass2d.jobtypes._tokens import TokenError
from emclass2d.jobtypes.manager import UnknownJobType
from emclass2d.jobtypes.runner import RunError
from emclass2d.nodes.lock import LockTimeout
from emclass2d.nodes.project import ProjectError
from emclass2d.nodes.star import StarFileError

USER_ERRORS: tuple[type[BaseException], ...] = (RunError, ProjectError, StarFileError, LockTimeout,
                                                UnknownJobType, TokenError)
