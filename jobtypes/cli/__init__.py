"""The ``emclass2d`` command line: one module per verb, ``jobtypes/cli/cmd_<verb>.py``.

Each command module has a docstring (first line: the help; the rest: examples),
``add_args(parser)`` and ``main(args) -> int``. A module that sets
``ACCEPTS_JOB_OPTIONS = True`` receives the words argparse did not know (the job's
``--<relion_name> value`` pairs) in ``args.job_tokens``. Every command gets ``--project
DIR`` (default: the working directory) and ``args.command_line`` (the exact command).

Example::

    emclass2d init
    emclass2d run emclass2d.class2d --fn_img particles.star --nr_classes 50
    emclass2d status

See also: :mod:`emclass2d.jobtypes.running`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from types import ModuleType

#: Command verbs, each a module ``emclass2d.jobtypes.cli.cmd_<verb>``, in ``--help`` order.
#: To add a command, write ``jobtypes/cli/cmd_<verb>.py`` and add its verb here. A verb whose
#: module does not exist (yet) is skipped.
COMMANDS: list[str] = [
    "init", "jobtypes", "run", "continue", "overwrite", "status", "graph", "abort",
    "simulate", "demo", "classes",
]

log = logging.getLogger(__name__)


def _load(verb: str) -> ModuleType | None:
    name = f"emclass2d.jobtypes.cli.cmd_{verb}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


class _Unavailable:
    """Stands in for a command module that failed to import."""

    def __init__(self, verb: str, exc: BaseException) -> None:
        self.verb = verb
        self.reason = f"{type(exc).__name__}: {exc}"
        self.__doc__ = f"(unavailable: {self.reason})"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        pass

    def main(self, args: argparse.Namespace) -> int:
        print(f"emclass2d {self.verb}: command unavailable: {self.reason}", file=sys.stderr)
        return 1


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The top-level parser and the loaded command modules by verb."""
    parser = argparse.ArgumentParser(prog="emclass2d", description="Reference-free 2D classification and "
                                     "class selection as RELION-compatible project jobs.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    modules: dict[str, object] = {}
    for verb in COMMANDS:
        try:
            module: object | None = _load(verb)
        except Exception as exc:  # a broken command must not break the others
            module = _Unavailable(verb, exc)
        if module is None:
            continue
        doc = (getattr(module, "__doc__", None) or verb).strip()
        summary, _, epilog = doc.partition("\n")
        cmd = sub.add_parser(verb, help=summary, description=summary, epilog=epilog.strip() or None,
                             formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                             conflict_handler="resolve")
        cmd.add_argument("--project", metavar="DIR", default=".", help="project directory (default: .)")
        module.add_args(cmd)  # type: ignore[attr-defined]
        modules[verb] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0 = success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser, modules = build_parser()
    args, extras = parser.parse_known_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    module = modules[args.verb]
    if extras and not getattr(module, "ACCEPTS_JOB_OPTIONS", False):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    args.job_tokens = extras
    args.command_line = shlex.join(["emclass2d", *argv])
    try:
        return int(module.main(args) or 0)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        print(f"emclass2d {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from emclass2d.jobtypes.cli.errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"emclass2d {args.verb}: error: {exc}", file=sys.stderr)
            return 1
        raise

