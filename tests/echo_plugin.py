"""A tiny third-party plugin for the registry, runner and CLI tests: job types ``testpkg.*``.

Used in-process (``pm.register(echo_plugin)``) and as a real installed distribution:
:func:`install_distribution` copies this file as module ``testpkg_echo`` next to a
``testpkg_echo-0.1.dist-info`` whose ``entry_points.txt`` names it in the ``emclass2d``
group, so putting that folder on ``PYTHONPATH`` makes it discoverable like a pip install.
"""
from __future__ import annotations

import time
from pathlib import Path

from emclass2d.jobtypes import hookimpl
from emclass2d.jobtypes.base import JobFailed, JobOptions, JobType, NodeSpec, RunContext, option

PARTICLES = "ParticleGroupMetadata.star.relion"
ECHO_NODE = "ProcessData.txt.testpkg.echo"


class EchoOptions(JobOptions):
    fn_in: str = option("", relion="fn_in", label="Input particles:", node_type=PARTICLES)
    fn_cont: str = option("", relion="fn_cont", label="Continue from here:", in_continue=True)
    message: str = option("hello", relion="message", label="Message:")
    nr_iter: int = option(3, relion="nr_iter", label="Number of iterations:", ge=1, le=1000, in_continue=True)
    scale: float = option(1.0, relion="scale", label="Scale (A):", units="Å", gt=0)
    do_fail: bool = option(False, relion="do_fail", label="Fail on purpose?")
    sleep_s: float = option(0.0, relion="sleep_s", label="Sleep per iteration (s):", ge=0)


class EchoJob(JobType):
    process_type = "testpkg.echo"
    directory = "Echo"
    options_model = EchoOptions
    summary = "Write the message once per iteration to echo.txt."
    can_continue = True
    continue_option = "fn_cont"

    def output_nodes(self, options: JobOptions, job_dir: str) -> list[NodeSpec]:
        return [NodeSpec(job_dir + "echo.txt", ECHO_NODE)]

    def run(self, ctx: RunContext) -> None:
        opts = ctx.options
        out = Path(ctx.job_dir) / "echo.txt"  # relative: the runner's cwd is the project
        lines = out.read_text().splitlines() if ctx.is_continue and out.exists() else []
        for it in range(len(lines) + 1, opts.nr_iter + 1):
            ctx.check_abort()
            if opts.sleep_s:
                time.sleep(opts.sleep_s)
            lines.append(f"{it} {opts.message}")
            ctx.progress(it, opts.nr_iter, "echo")
            ctx.iteration_done(it, {"iteration": it, "message": opts.message})
        if opts.do_fail:
            raise JobFailed("failing on purpose (do_fail = Yes)")
        out.write_text("\n".join(lines) + "\n")
        ctx.log(f"wrote {len(lines)} lines")
        extra = Path(ctx.job_dir) / "extra.txt"
        extra.write_text("x")
        ctx.add_output_node(str(extra), ECHO_NODE)


@hookimpl
def emclass2d_register_job_types() -> list[type[JobType]]:
    return [EchoJob]


def install_distribution(root: Path) -> Path:
    """Write module ``testpkg_echo`` and its dist-info under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "testpkg_echo.py").write_text(Path(__file__).read_text())
    info = root / "testpkg_echo-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: testpkg-echo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[emclass2d]\necho = testpkg_echo\n")
    return root
