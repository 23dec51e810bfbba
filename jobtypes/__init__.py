"""Job types, their registry and the ``emclass2d`` command line.

Where options meet files and the core. :mod:`.hookspecs` (the plugin contract),
:mod:`.base` (``JobOptions``, ``JobType``, ``RunContext``) and :mod:`.registry` (plugin
manager and registry) are the plugin API; then one package per front end or job:

* :mod:`.running`: validate, prepare and execute a job (foreground or detached), the one
  path every front end takes;
* :mod:`.cli`: the ``emclass2d`` command, one module per verb;
* :mod:`.ccpem`: our job types as CCP-EM pipeliner job types;
* :mod:`.reports`: class gallery and convergence plot;
* :mod:`.class2d` and :mod:`.select`: the two job types, registered as plugins.

Writing a plugin
----------------

A plugin is any importable module that implements one or more hooks of
:mod:`emclass2d.jobtypes.hookspecs`, marked with :data:`hookimpl`. emclass2d's own
Class2D and Select job types are plugins of exactly this kind.

1. Declare the options and the job type (see :mod:`emclass2d.jobtypes.base`)::

       # mypkg/echo.py
       from emclass2d.jobtypes import hookimpl
       from emclass2d.jobtypes.base import JobOptions, JobType, NodeSpec, RunContext, option

       class EchoOptions(JobOptions):
           message: str = option("hello", relion="message", label="Message:")
           nr_iter: int = option(3, relion="nr_iter", label="Iterations:", ge=1, in_continue=True)

       class EchoJob(JobType):
           process_type = "mypkg.echo"            # <package>.<job>, never relion.*
           directory = "Echo"                     # jobs go to Echo/jobNNN/
           options_model = EchoOptions
           summary = "Write a message to a file."

           def output_nodes(self, options, job_dir):
               return [NodeSpec(job_dir + "echo.txt", "ProcessData.txt.mypkg.echo")]

           def run(self, ctx: RunContext) -> None:
               for it in range(1, ctx.options.nr_iter + 1):
                   ctx.check_abort()
                   ctx.progress(it, ctx.options.nr_iter, "echo")
                   ctx.iteration_done(it, {"iteration": it})
               (ctx.project_dir / ctx.job_dir / "echo.txt").write_text(ctx.options.message)

2. Register it with the registration hook::

       @hookimpl
       def emclass2d_register_job_types():
           return [EchoJob]

3. Make it discoverable through the ``emclass2d`` entry-point group of your distribution::

       # pyproject.toml of mypkg
       [project.entry-points.emclass2d]
       echo = "mypkg.echo"

   After ``pip install`` it is listed by ``emclass2d jobtypes`` and runs with
   ``emclass2d run mypkg.echo --message hi``. A module that fails to import or registers
   nothing is listed as unavailable with the reason; it never breaks the others. Set
   ``EMCLASS2D_DISABLE_PLUGINS=echo,other`` to skip plugins by entry-point name.

4. To follow jobs rather than provide them, implement the execution hooks
   (``emclass2d_job_started``, ``emclass2d_iteration_done``, ``emclass2d_job_finished``,
   ``emclass2d_job_failed``) in the same way.

In tests, register a plugin object directly::

    pm = get_plugin_manager()
    pm.register(my_module_or_object)
    registry = get_registry(pm)
"""
from emclass2d.jobtypes.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
