"""Turning ``--<relion_name> value`` words of the command line into job.star-style values.

Example::

    parse_job_tokens(["emclass2d.class2d", "--nr_classes", "4", "--do_em"], positional="TYPE")
    # -> ('emclass2d.class2d', {'nr_classes': '4', 'do_em': 'Yes'})
"""
from __future__ import annotations

from emclass2d.nodes.graph.labels import YES


class TokenError(ValueError):
    """Words of the command line that are not ``--name value`` pairs."""


def parse_job_tokens(tokens: list[str], positional: str | None = None) -> tuple[str | None, dict[str, str]]:
    """Split an optional leading positional from ``--name value`` / ``--name=value`` pairs.

    A name followed by another ``--name`` (or nothing) is a switch and means ``Yes``.
    Values may start with a single dash (``--offset -1``).
    """
    first = None
    rest = list(tokens)
    if positional and rest and not rest[0].startswith("--"):
        first = rest.pop(0)
    values: dict[str, str] = {}
    i = 0
    while i < len(rest):
        word = rest[i]
        if not word.startswith("--") or word == "--":
            what = f"{positional} " if positional and first is None else ""
            raise TokenError(f"unexpected word {word!r}; expected {what}--<option> <value> pairs")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                value = rest[i + 1]
                i += 1
            else:
                value = YES
        if name in values:
            raise TokenError(f"option --{name} given twice")
        values[name] = value
        i += 1
    return first, values
