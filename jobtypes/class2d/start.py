"""The first state of a Class2D run: a new run (noise, blob references) or a continued one.

A new run reads the particles, estimates the initial noise spectra and stage-1 references
from the first particles of each optics group and builds RELION 4+'s random-blob
references (RELION's ``MlOptimiser::initialise*``); iteration 0 is written. A continued
run rebuilds the state from ``fn_cont`` (a ``run_itNNN_optimiser.star``) and restarts at
NNN+1 under the root ``<root>_ct<NNN>``, as RELION's ``--continue`` does; the starting
iteration is written again under that root.

Example::

    state = new_state(ctx, opts, devices=["cpu"])       # or continue_state(ctx, opts)
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from emclass2d.core.backend import get_xp, to_device, to_host
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid
from emclass2d.core.initial import (NoiseSums, ReferenceSums, add_noise_sums, add_reference_sums, blob_references,
                                    check_background_normalisation, first_particles_per_group, initial_ssnr,
                                    initial_tau2, lowpass_raised_cosine, rotated_defocus_angle, sigma2_noise_from_sums,
                                    stage2_references)
from emclass2d.core.model import Model, Settings
from emclass2d.core.resolution import default_ini_high_A, image_sizes, initial_resolution
from emclass2d.core.sampling import Sampling, make_sampling
from emclass2d.jobtypes.base import JobFailed, RunContext
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.particle_stream import move_to
from emclass2d.jobtypes.class2d.step import INITIAL_SIGMA_OFFSET_A, WIDTH_MASK_EDGE_PX, RunState, write_iteration_files
from emclass2d.nodes.files import class2d as c2f
from emclass2d.nodes.files.class2d import model_from_iteration
from emclass2d.nodes.io.mrc import read_mrcs
from emclass2d.nodes.io.particles import ParticleTable, image_source_for, resolve_in_project


def resolve_seed(seed: int) -> int:
    """RELION's -1 = seed from the clock; the value used is written to the optimiser.star."""
    return int(time.time()) % 2_000_000_000 if seed < 0 else int(seed)


def make_settings(opts: Class2DOptions, box: int, pixel_size_A: float, n_groups: int, seed: int) -> Settings:
    """Core switches from the job options (GUI: --norm --scale --flatten_solvent always on)."""
    return Settings(
        tau2_fudge=float(opts.tau_fudge), do_ctf=bool(opts.do_ctf_correction),
        ctf_intact_first_peak=bool(opts.ctf_intact_first_peak), do_norm=True, do_scale=n_groups > 1,
        zero_mask=bool(opts.do_zero_mask), particle_diameter_A=float(opts.particle_diameter),
        width_mask_edge_px=WIDTH_MASK_EDGE_PX, strict_highres_exp_A=float(opts.highres_limit),
        random_seed=int(seed))


def make_base_sampling(opts: Class2DOptions) -> Sampling:
    """RELION GUI: coarse psi step = 2 × fine, coarse offset step = 2 × fine, oversampling 1."""
    factor = 2 ** int(opts.oversampling)
    if not opts.dont_skip_align:
        return make_sampling(360.0, 0.0, 0.0, oversampling=0)
    return make_sampling(float(opts.psi_sampling) * factor, float(opts.offset_range),
                         float(opts.offset_step) * factor, oversampling=int(opts.oversampling))


def _read_particles(ctx: RunContext, fn_img: str) -> ParticleTable:
    if not fn_img:
        raise JobFailed("fn_img (Input images STAR file) is empty: give a particles.star")
    path = resolve_in_project(fn_img, ctx.project_dir)
    if not path.is_file():
        raise JobFailed(f"Input images STAR file {fn_img} not found")
    return ParticleTable.read(path)


def read_initial_references(ctx: RunContext, fn_ref: str, box: int, pixel_size_A: float) -> np.ndarray:
    """The ``fn_ref`` stack (K, N, N) float32, checked against the particles' box and pixel size.

    RELION's ``--ref`` with a 2-D stack: one reference per image, the stack sets the number of
    classes. Raises JobFailed naming the file and what was expected.
    """
    path = resolve_in_project(fn_ref, ctx.project_dir)
    if not path.is_file():
        raise JobFailed(f"fn_ref: initial references {fn_ref} not found")
    try:
        stack, px = read_mrcs(path)
    except Exception as exc:  # mrcfile raises ValueError / OSError for bad headers and short files
        raise JobFailed(f"fn_ref: {fn_ref} is not a readable MRC stack ({exc})") from None
    if stack.ndim != 3 or stack.shape[1:] != (box, box):
        raise JobFailed(f"fn_ref: {fn_ref} holds images of {stack.shape[1:]} px; expected {box} x {box} px "
                        "as the particles")
    if not np.isfinite(stack).all():
        bad = int(np.nonzero(~np.isfinite(stack).reshape(len(stack), -1).all(axis=1))[0][0]) + 1
        raise JobFailed(f"fn_ref: image {bad} of {fn_ref} has non-finite pixels (NaN or infinity)")
    if px > 1.0 and abs(px - pixel_size_A) > 0.01 * pixel_size_A:
        ctx.warn(f"WARNING: fn_ref {fn_ref} has pixel size {px:g} Å in its header, the particles {pixel_size_A:g} Å; "
                 "the images are used as they are")
    return stack.astype(np.float32)


def new_state(ctx: RunContext, opts: Class2DOptions, devices: list[str]) -> RunState:
    """Read particles, estimate the initial noise and build blob references (RELION 4+)."""
    table = _read_particles(ctx, opts.fn_img)
    if opts.do_ctf_correction:
        table.check_ctf_labels()
    for msg in table.warn_small_groups(10):
        ctx.warn(f"WARNING: {msg}")
    seed = resolve_seed(opts.random_seed)
    n, px = table.box_size, table.pixel_size_A
    diameter_A = float(opts.particle_diameter)
    if diameter_A > n * px:
        ctx.warn(f"WARNING: Mask diameter ({diameter_A:g} Å) is larger than the box ({n} px × {px:g} Å = {n * px:g} Å)")
    settings = make_settings(opts, n, px, table.n_groups, seed)
    images = image_source_for(table, ctx.project_dir)
    k = int(opts.nr_classes)
    given_refs = read_initial_references(ctx, opts.fn_ref, n, px) if opts.fn_ref else None
    if given_refs is not None:
        if len(given_refs) != k:
            ctx.log(f"Initial references: {len(given_refs)} images in {opts.fn_ref} set the number of classes "
                    f"(nr_classes {k} not used, as RELION's --ref)")
        k = len(given_refs)
    ctx.log(f"Particles: {table.n_particles} ({n} px, {px:g} Å/px, {table.n_groups} scale groups, "
            f"{table.n_optics_groups} optics groups); classes: {k}; random seed: {seed}")
    xp = get_xp(devices[0])
    radius_px = diameter_A / (2 * px)

    # Initial noise spectra and stage-1 references from the first particles per optics group.
    first = first_particles_per_group(table.optics_index)
    noise = NoiseSums.zeros(n, table.n_optics_groups, xp=xp)
    refs = ReferenceSums.zeros(n, k, xp=xp)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    X, Y = frequency_grid(n, px, xp)
    warned = False
    ctx.progress(0, len(first), "initial noise and references")
    for start in range(0, len(first), 256):
        ctx.check_abort()
        idx = first[start:start + 256]
        imgs = to_device(images.read(idx), devices[0])
        if not warned:
            msg = check_background_normalisation(to_host(imgs), radius_px, first_index=int(idx[0]))
            if msg:
                ctx.warn(f"WARNING: {msg}")
                warned = True
        noise = add_noise_sums(noise, imgs, xp.asarray(table.optics_index[idx]),
                               radius_px=radius_px if opts.do_zero_mask else None, edge_px=WIDTH_MASK_EDGE_PX)
        if given_refs is None:  # stage-1 references, only for the blobs
            psi = rng.uniform(0.0, 360.0, size=len(idx))
            ctf = None
            if opts.do_ctf_correction:
                c = table.ctf_parameters(idx)
                ctf = compute_ctf(X, Y, c["defocus_u_A"], c["defocus_v_A"],
                                  rotated_defocus_angle(c["defocus_angle_deg"], psi), c["voltage_kV"], c["cs_mm"],
                                  c["amplitude_contrast"], c["phase_shift_deg"], c["ctf_bfactor_A2"], c["ctf_scale"],
                                  intact_first_peak=opts.ctf_intact_first_peak)
            refs = add_reference_sums(refs, imgs, ctf, xp.asarray(idx % k), xp.asarray(psi))
        ctx.progress(min(start + 256, len(first)), len(first), "initial noise and references")
    sigma2 = sigma2_noise_from_sums(noise)
    ini_high = default_ini_high_A(n, px)
    if given_refs is None:
        stage2 = stage2_references(refs, ini_high, px)
        references = blob_references(stage2, diameter_A / px, WIDTH_MASK_EDGE_PX, ini_high, px, seed)
    else:  # low-passed at ini_high as RELION's initial references (initialLowPassFilterReferences)
        references = lowpass_raised_cosine(xp.asarray(given_refs), ini_high, px)

    model = Model.empty(n_classes=k, box=n, pixel_size_A=px, n_optics=table.n_optics_groups,
                        n_groups=table.n_groups, xp=xp, tau2_fudge=settings.tau2_fudge,
                        sigma2_offset_A2=INITIAL_SIGMA_OFFSET_A ** 2)
    tau2 = initial_tau2(references, settings.tau2_fudge)
    ssnr = initial_ssnr(tau2, sigma2, table.n_particles, model.pdf_class,
                        group_counts=np.bincount(table.optics_index, minlength=table.n_optics_groups))
    sampling = make_base_sampling(opts)
    cur_res = initial_resolution(n, px, ini_high)
    cur, coarse = image_sizes(cur_res, n, px, settings.incr_size, sampling.psi_step_deg, diameter_A,
                              sampling.oversampling, settings.strict_highres_exp_A)
    model = replace(model, references=xp.asarray(references, dtype=xp.float32), sigma2_noise=xp.asarray(sigma2),
                    tau2=xp.asarray(tau2), data_vs_prior=xp.asarray(ssnr), current_resolution=cur_res,
                    current_size=cur, coarse_size=coarse)
    root = f"{ctx.job_dir}run"
    state = RunState(model=move_to(model, "cpu"), table=table, sampling=sampling, settings=settings, root=root,
                     start_iteration=1, random_seed=seed, allow_coarser=bool(opts.allow_coarser))
    write_iteration_files(ctx, opts, state, 0, write_sampling=True)
    return state


def continue_state(ctx: RunContext, opts: Class2DOptions) -> RunState:
    """State from ``fn_cont`` (a run_itNNN_optimiser.star); restarts at NNN+1 (RELION's ``--continue``)."""
    if not opts.fn_cont:
        raise JobFailed("Continue needs fn_cont: the run_itNNN_optimiser.star to continue from")
    name = Path(opts.fn_cont).name
    if "_it" not in name or not name.endswith("_optimiser.star"):
        raise JobFailed(f"fn_cont {opts.fn_cont}: expected a run_itNNN_optimiser.star file")
    it = c2f.read_class2d_iteration(opts.fn_cont, ctx.project_dir)
    g = it.optimiser.general
    if int(it.model.general.get("rlnReferenceDimensionality", 2)) != 2:
        raise JobFailed(f"{opts.fn_cont}: not a 2D classification (rlnReferenceDimensionality "
                        f"{it.model.general.get('rlnReferenceDimensionality')})")
    table = it.data
    refs, _ = it.read_class_images()
    seed = int(g.get("rlnRandomSeed", 0))
    settings = Settings(
        tau2_fudge=float(opts.tau_fudge), do_ctf=bool(g.get("rlnDoCorrectCtf", True)),
        ctf_intact_first_peak=bool(g.get("rlnDoIgnoreCtfUntilFirstPeak", False)),
        ctf_phase_flipped=bool(g.get("rlnCtfDataArePhaseFlipped", False)),
        do_norm=bool(g.get("rlnDoCorrectNorm", True)), do_scale=bool(g.get("rlnDoCorrectScale", True)) and table.n_groups > 1,
        zero_mask=bool(g.get("rlnDoZeroMask", True)), particle_diameter_A=float(opts.particle_diameter),
        width_mask_edge_px=float(g.get("rlnWidthMaskEdge", WIDTH_MASK_EDGE_PX)),
        adaptive_fraction=float(g.get("rlnAdaptiveOversampleFraction", 0.999)),
        strict_highres_exp_A=float(g.get("rlnHighresLimitExpectation", -1.0)),
        random_seed=seed)
    model = model_from_iteration(it, refs, table.n_groups, settings.tau2_fudge, INITIAL_SIGMA_OFFSET_A)
    sampling = make_base_sampling(opts)
    root = c2f.continue_root(it.output_root, it.iteration)
    ctx.log(f"Continuing from {opts.fn_cont} (iteration {it.iteration}); new files are {root}_itNNN_*")
    state = RunState(model=model, table=table, sampling=sampling, settings=settings, root=root,
                     start_iteration=it.iteration + 1, random_seed=seed, allow_coarser=bool(opts.allow_coarser))
    write_iteration_files(ctx, opts, state, it.iteration, write_sampling=True)
    return state
