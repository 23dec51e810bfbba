"""List the job types that can run; with TYPE, show its options.

Example:
  emclass2d jobtypes
  emclass2d jobtypes emclass2d.class2d
"""
from __future__ import annotations

import argparse

from emclass2d.jobtypes.registry import get_registry
from emclass2d.jobtypes.running import allowed_text


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_type", nargs="?", metavar="TYPE", help="a process type label")


def main(args: argparse.Namespace) -> int:
    registry = get_registry()
    if args.job_type:
        job_type = registry.get(args.job_type)
        model = job_type.options_model
        print(f"{job_type.process_type}: {job_type.summary}".rstrip(": "))
        print(f"jobs in {job_type.directory}/jobNNN/; "
              + (f"can continue (--{job_type.continue_option})" if job_type.can_continue else "cannot continue"))
        defaults = model.model_construct().to_job_star()
        rows = [("option", "label", "default", "units", "allowed", "on continue")]
        for name in model.relion_names():
            info = model.field_info(name)
            shown = defaults.get(name, "")
            note = info.get("node_type", "")
            rows.append((f"--{name}", info.get("label", ""), shown if shown != "" else '""', info.get("units", ""),
                         allowed_text(info) + (f" ({note})" if note else ""),
                         "may change" if info.get("in_continue") else ""))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
        return 0
    rows = [(label, registry.job_types[label].directory, registry.plugin_of[label], registry.job_types[label].summary)
            for label in registry.labels()]
    if not rows:
        print("no job types registered")
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row[:3], widths)) + "  " + row[3])
    if registry.unavailable:
        print("\nunavailable:")
        for name, reason in sorted(registry.unavailable.items()):
            print(f"  {name}: {reason}")
    return 0
