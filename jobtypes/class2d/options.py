"""Options of the Class2D job: RELION's job.star names, GUI labels and defaults (RELION's ``RelionJob::initialiseClass2DJob``).

Every RELION Class2D option is accepted so that a RELION ``job.star`` can be run as is;
options that only steer RELION's own process handling (queue, disc I/O, scratch) are kept
for round trips and documented as having no effect here. A few of ours follow RELION's
``relion_refine`` command-line names (``random_seed``, ``grad_*``, ``mu``, ``oversampling``).

Example::

    opts = Class2DOptions(fn_img="Extract/job012/particles.star", nr_classes=50,
                          do_em=True, do_grad=False)
    opts.to_job_star()["nr_classes"]     # '50'
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import TypeAdapter, ValidationError, model_validator

from emclass2d.jobtypes.base import JobOptions, option
from emclass2d.nodes.graph.labels import NODE_IMAGE2D_STACK, NODE_PARTICLES, format_flag

_BOOL = TypeAdapter(bool)


class Class2DOptions(JobOptions):
    """Reference-free 2D classification (EM or VDAM)."""

    # --- I/O
    fn_img: str = option("", relion="fn_img", label="Input images STAR file:", node_type=NODE_PARTICLES,
                         help="particles.star in RELION 3.1+ format (optics + particles tables)")
    fn_ref: str = option("", relion="fn_ref", label="Initial references (2D stack):", node_type=NODE_IMAGE2D_STACK,
                         help="optional .mrcs stack of starting class averages on the particles' grey scale (e.g. "
                              "a run_itNNN_classes.mrcs; relion_refine --ref); its images set the number of "
                              "classes; empty: references made from the particles (blobs)")
    fn_cont: str = option("", relion="fn_cont", label="Continue from here:", in_continue=True,
                          help="a run_itNNN_optimiser.star of this job to continue from")
    # --- CTF
    do_ctf_correction: bool = option(True, relion="do_ctf_correction", label="Do CTF-correction?")
    ctf_intact_first_peak: bool = option(False, relion="ctf_intact_first_peak", label="Ignore CTFs until first peak?")
    # --- Optimisation
    nr_classes: int = option(1, relion="nr_classes", label="Number of classes:", ge=1, le=10000, suggested=(1, 50))
    tau_fudge: float = option(2.0, relion="tau_fudge", label="Regularisation parameter T:", gt=0, suggested=(0.1, 10),
                              in_continue=True, help="T: higher values give more high-resolution detail (and more overfitting)")
    do_em: bool = option(False, relion="do_em", label="Use EM algorithm?")
    nr_iter_em: int = option(25, relion="nr_iter_em", label="Number of EM iterations:", ge=1, le=10000, in_continue=True)
    do_grad: bool = option(True, relion="do_grad", label="Use VDAM algorithm?")
    nr_iter_grad: int = option(200, relion="nr_iter_grad", label="Number of VDAM mini-batches:", ge=10, le=100000,
                               suggested=(50, 500), in_continue=True)
    particle_diameter: float = option(200.0, relion="particle_diameter", label="Mask diameter (A):", units="Å", gt=0,
                                      in_continue=True)
    do_zero_mask: bool = option(True, relion="do_zero_mask", label="Mask individual particles with zeros?")
    highres_limit: float = option(-1.0, relion="highres_limit", label="Limit resolution E-step to (A):", units="Å",
                                  help="-1: no limit")
    do_center: bool = option(True, relion="do_center", label="Center class averages?", in_continue=True)
    # --- Sampling
    dont_skip_align: bool = option(True, relion="dont_skip_align", label="Perform image alignment?", in_continue=True)
    psi_sampling: float = option(6.0, relion="psi_sampling", label="In-plane angular sampling:", units="deg",
                                 gt=0, le=90, in_continue=True, help="fine step; the coarse search uses twice this")
    offset_range: float = option(5.0, relion="offset_range", label="Offset search range (pix):", units="px",
                                 ge=0, le=100, in_continue=True)
    offset_step: float = option(1.0, relion="offset_step", label="Offset search step (pix):", units="px",
                                gt=0, le=50, in_continue=True, help="fine step; the coarse search uses twice this")
    allow_coarser: bool = option(False, relion="allow_coarser", label="Allow coarser sampling?", in_continue=True)
    # --- Helix (accepted for job.star round trips; helical classification is not provided)
    do_helix: bool = option(False, relion="do_helix", label="Classify 2D helical segments?")
    helical_tube_outer_diameter: float = option(200.0, relion="helical_tube_outer_diameter", label="Tube diameter (A):", units="Å")
    do_bimodal_psi: bool = option(True, relion="do_bimodal_psi", label="Do bimodal angular searches?")
    range_psi: float = option(6.0, relion="range_psi", label="Angular search range - psi (deg):", units="deg")
    do_restrict_xoff: bool = option(True, relion="do_restrict_xoff", label="Restrict helical offsets to rise:")
    helical_rise: float = option(4.75, relion="helical_rise", label="Helical rise (A):", units="Å")
    # --- Compute
    nr_pool: int = option(3, relion="nr_pool", label="Number of pooled particles:", ge=1, in_continue=True,
                          help="kept for RELION job.star compatibility; batches are sized by batch_size")
    do_parallel_discio: bool = option(True, relion="do_parallel_discio", label="Use parallel disc I/O?", in_continue=True)
    do_preread_images: bool = option(False, relion="do_preread_images", label="Pre-read all particles into RAM?", in_continue=True,
                                     help="read every particle into memory once instead of streaming from the stacks")
    scratch_dir: str = option("", relion="scratch_dir", label="Copy particles to scratch directory:", in_continue=True,
                              help="kept for compatibility; particles are streamed from memory-mapped stacks")
    do_combine_thru_disc: bool = option(False, relion="do_combine_thru_disc", label="Combine iterations through disc?", in_continue=True)
    use_gpu: bool = option(False, relion="use_gpu", label="Use GPU acceleration?", in_continue=True)
    gpu_ids: str = option("", relion="gpu_ids", label="Which GPUs to use:", in_continue=True,
                          help='RELION syntax, e.g. "0,1,2,3"; empty = all visible GPUs')
    # --- Running
    nr_mpi: int = option(1, relion="nr_mpi", label="Number of MPI procs:", ge=1, in_continue=True)
    nr_threads: int = option(1, relion="nr_threads", label="Number of threads:", ge=1, le=1024, in_continue=True)
    do_queue: bool = option(False, relion="do_queue", label="Submit to queue?", in_continue=True)
    queuename: str = option("openmpi", relion="queuename", label="Queue name:", in_continue=True)
    qsub: str = option("sbatch", relion="qsub", label="Queue submit command:", in_continue=True)
    qsubscript: str = option("", relion="qsubscript", label="Standard submission script:", in_continue=True)
    min_dedicated: int = option(1, relion="min_dedicated", label="Minimum dedicated cores per node:", ge=1, in_continue=True)
    other_args: str = option("", relion="other_args", label="Additional arguments:", in_continue=True)
    # --- Ours (relion_refine command-line names where one exists)
    random_seed: int = option(-1, relion="random_seed", label="Random seed:", ge=-1,
                              help="-1: from the clock (the seed used is written to the optimiser.star)")
    batch_size: int = option(0, relion="batch_size", label="Particles per batch:", ge=0, in_continue=True,
                             help="0: sized automatically from memory_budget_mb")
    memory_budget_mb: float = option(1024.0, relion="memory_budget_mb", label="Memory per batch (MB):", units="MB",
                                     gt=0, in_continue=True)
    oversampling: int = option(1, relion="oversampling", label="Oversampling order:", ge=0, le=3, in_continue=True)
    class_inactivity_threshold: float = option(0.1, relion="class_inactivity_threshold",
                                               label="Class inactivity threshold (VDAM):", ge=0, in_continue=True)
    do_split_classes: bool = option(
        False, relion="do_split_classes", label="Re-seed inactive classes by splitting?", in_continue=True,
        help="Yes: an inactive class (pdf below class_inactivity_threshold / active classes) is re-seeded by "
             "splitting the most heterogeneous large class along the main variation of its aligned particles "
             "(EM and VDAM); No: RELION's behaviour (VDAM copies the class with the largest gradient, EM leaves "
             "empty classes empty)")
    grad_write_iter: int = option(10, relion="grad_write_iter", label="Write output every N mini-batches (VDAM):",
                                  ge=1, in_continue=True)
    grad_ini_frac: float = option(0.3, relion="grad_ini_frac", label="Initial phase fraction (VDAM):", gt=0, lt=1, in_continue=True)
    grad_fin_frac: float = option(0.2, relion="grad_fin_frac", label="Final phase fraction (VDAM):", gt=0, lt=1, in_continue=True)
    grad_ini_subset: int = option(-1, relion="grad_ini_subset", label="Initial mini-batch size (VDAM):", ge=-1, in_continue=True,
                                  help="-1: automatic (0.5% of particles, 200 to 10,000)")
    grad_fin_subset: int = option(-1, relion="grad_fin_subset", label="Final mini-batch size (VDAM):", ge=-1, in_continue=True,
                                  help="-1: automatic (5% of particles, 1,000 to 100,000)")
    grad_stepsize: float = option(-1.0, relion="grad_stepsize", label="Step size (VDAM):", in_continue=True, help="-1: 0.3")
    mu: float = option(0.9, relion="mu", label="Momentum of other parameters (VDAM):", ge=0, lt=1, in_continue=True)
    grad_em_iters: int = option(0, relion="grad_em_iters", label="Trailing EM iterations (VDAM):", ge=0, in_continue=True)

    legacy_job_star_names: ClassVar[frozenset[str]] = frozenset({"nr_iter"})

    @model_validator(mode="before")
    @classmethod
    def _relion4_iterations(cls, data: Any) -> Any:
        """RELION 4.0's job.star: one ``nr_iter`` ("Number of iterations:") for both algorithms
        and ``do_grad`` ("Use gradient-driven algorithm?") without ``do_em``.

        ``nr_iter`` becomes the mini-batches (do_grad Yes) or the EM iterations (No), unless
        RELION 5's own name is also given; without ``do_em``, EM is used when do_grad is No.
        """
        if not isinstance(data, dict) or "nr_iter" not in data:
            return data
        data = dict(data)
        nr_iter = data.pop("nr_iter")
        try:  # parsed as the field itself parses it
            grad = _BOOL.validate_python(data.get("do_grad", cls.model_fields["do_grad"].default))
        except ValidationError:
            return data  # the do_grad field reports its own error
        data.setdefault("nr_iter_grad" if grad else "nr_iter_em", nr_iter)
        data.setdefault("do_em", not grad)
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> "Class2DOptions":
        problems: list[str] = []
        if self.do_em == self.do_grad:
            problems.append(
                f"do_em={format_flag(self.do_em)} and do_grad={format_flag(self.do_grad)}: choose exactly one algorithm "
                "(Use EM algorithm? or Use VDAM algorithm?)")
        if self.do_grad and self.nr_mpi > 1:
            problems.append(f"nr_mpi={self.nr_mpi}: the VDAM algorithm cannot run with more than one MPI process; use threads (nr_threads) or GPUs instead")
        elif self.nr_mpi > 1:
            problems.append(f"nr_mpi={self.nr_mpi}: multi-process execution is not available; use nr_mpi 1 with nr_threads and/or use_gpu/gpu_ids")
        if self.do_helix:
            problems.append("do_helix=Yes: helical 2D classification is not provided; set Classify 2D helical segments? to No")
        if self.highres_limit != -1 and self.highres_limit <= 0:
            problems.append(f"highres_limit={self.highres_limit}: give a resolution in Å (> 0) or -1 for no limit")
        if self.offset_range > 0 and self.offset_step > self.offset_range:
            problems.append(f"offset_step={self.offset_step} px is larger than offset_range={self.offset_range} px")
        if self.grad_ini_subset > 0 and self.grad_fin_subset > 0 and self.grad_fin_subset < self.grad_ini_subset:
            problems.append(f"grad_fin_subset={self.grad_fin_subset} is smaller than grad_ini_subset={self.grad_ini_subset}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def nr_iter(self) -> int:
        """Iterations (EM) or mini-batches (VDAM) requested."""
        return self.nr_iter_em if self.do_em else self.nr_iter_grad


