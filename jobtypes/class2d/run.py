"""The Class2D run: choose the devices, start (new or continued), then the EM or the VDAM loop.

:mod:`~emclass2d.jobtypes.class2d.start` builds the first state (new run or ``fn_cont``),
:mod:`~emclass2d.jobtypes.class2d.em` and :mod:`~emclass2d.jobtypes.class2d.vdam` iterate,
both with the pieces in :mod:`~emclass2d.jobtypes.class2d.step`.

Example (what ``emclass2d run emclass2d.class2d ...`` calls)::

    run_class2d(ctx)        # ctx.options is a Class2DOptions
"""
from __future__ import annotations



from emclass2d.core.backend import device_scope, gpu_available, gpu_count
from emclass2d.jobtypes.base import JobFailed, RunContext
from emclass2d.jobtypes.class2d.em import run_em
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.start import continue_state, new_state
from emclass2d.jobtypes.class2d.vdam import run_vdam
from emclass2d.nodes.io.images import ImageReadError
from emclass2d.nodes.io.star import StarFileError


def run_class2d(ctx: RunContext) -> None:
    """Run (or continue) a Class2D job in ``ctx.job_dir`` (see module docstring)."""
    opts = ctx.options
    assert isinstance(opts, Class2DOptions)
    _configure_threads(opts.nr_threads)
    devices = select_devices(opts)
    ctx.log(f"Compute devices: {', '.join(devices)}")
    if opts.do_queue:
        ctx.warn("WARNING: Submit to queue? is Yes, but queue submission is not available: the job runs here")
    with device_scope(devices[0]):  # the M-step and the reductions run on the first device
        try:
            state = continue_state(ctx, opts) if ctx.is_continue else new_state(ctx, opts, devices)
        except (StarFileError, ImageReadError, ValueError) as exc:
            raise JobFailed(str(exc)) from exc
        if opts.do_grad:
            run_vdam(ctx, opts, state, devices)
        else:
            run_em(ctx, opts, state, devices)


def _configure_threads(nr_threads: int) -> None:
    """Limit BLAS/FFT threads to ``nr_threads`` (RELION ``--j``)."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        threadpool_limits(int(nr_threads))
    except Exception:  # threadpoolctl absent: leave the BLAS default
        pass
    try:
        import scipy.fft  # noqa: PLC0415

        scipy.fft.set_workers(int(nr_threads))  # type: ignore[attr-defined]
    except Exception:
        pass


def select_devices(opts: Class2DOptions) -> list[str]:
    """``["cpu"]`` or the GPUs named by ``gpu_ids`` (RELION syntax; empty = all visible)."""
    if not opts.use_gpu:
        return ["cpu"]
    if not gpu_available():
        raise JobFailed("Use GPU acceleration? is Yes but no CUDA device is usable here "
                        "(install emclass2d[gpu] on a machine with an NVIDIA GPU, or set use_gpu No)")
    ids = parse_gpu_ids(opts.gpu_ids)
    if not ids:
        raise JobFailed(f"Which GPUs to use: '{opts.gpu_ids}' selects no device")
    return [f"gpu:{i}" for i in ids]


def parse_gpu_ids(gpu_ids: str) -> list[int]:
    """Parse RELION's "Which GPUs to use" string into device ids.

    ``""`` means every visible device; ``"0,1,2,3"`` or ``"0:1"`` (RELION separates MPI
    ranks with ':') list devices. Duplicates are removed, order kept.
    """
    text = gpu_ids.strip().strip('"')
    if not text:
        return list(range(gpu_count()))
    ids: list[int] = []
    for part in text.replace(":", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"gpu_ids: '{gpu_ids}' is not a list of device numbers like '0,1,2,3'")
        if int(part) not in ids:
            ids.append(int(part))
    return ids
