"""Sufficient statistics of the E-step: the contract between the E-step and the M-step.

:class:`BatchStats` holds, per class and fine psi, the weighted sums the M-step turns into
class averages, noise spectra, scales and the other parameters; statistics of several
batches (or devices) add up with :func:`merge_stats`.

Example::

    total = stats_a if stats_b is None else merge_stats(stats_a, stats_b)

See also: :mod:`emclass2d.core.estep` (produces them), :mod:`emclass2d.core.mstep` (consumes them).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


from emclass2d.core.backend import array_module


@dataclass(frozen=True)
class BatchStats:
    """Sufficient statistics of processed particles (summable with ``+``).

    bp_data: (H, K, n_psi_fine, J) complex, Σ w·(CTF·s/σ²)·X(t) (or the residual
    X(t) − CTF·s·P) per class and fine psi on the current-size pixel set; H = 2 with
    pseudo-halves (part_index even -> 0, odd -> 1), else 1. bp_weight: same shape, real,
    Σ w·(CTF·s)²/σ². wsum_sigma2_noise: (n_optics, N//2+1); sumw_optics: (n_optics,);
    wsum_pdf_class: (K,); wsum_prior_offset_A: (K, 2) Σ w·offset (Å);
    wsum_sigma2_offset_A2: Σ w·|offset − centre|² (Å²); scale_xa, scale_aa,
    n_particles_group: (n_groups,); sum_norm_correction, log_likelihood, sum_pmax: scalars;
    n_particles: int. psi_fine_deg, kx, ky, current_size describe the bp arrays (not summed).
    """

    bp_data: Any
    bp_weight: Any
    wsum_sigma2_noise: Any
    sumw_optics: Any
    wsum_pdf_class: Any
    wsum_prior_offset_A: Any
    wsum_sigma2_offset_A2: Any
    scale_xa: Any
    scale_aa: Any
    n_particles_group: Any
    sum_norm_correction: Any
    log_likelihood: Any
    sum_pmax: Any
    n_particles: int
    psi_fine_deg: Any
    kx: Any
    ky: Any
    current_size: int

    _META = ("psi_fine_deg", "kx", "ky", "current_size")

    def __add__(self, other: "BatchStats") -> "BatchStats":
        return merge_stats(self, other)


def merge_stats(a: BatchStats, b: BatchStats) -> BatchStats:
    """Sum of two :class:`BatchStats` (float64/complex128 accumulators)."""
    if a.current_size != b.current_size or a.bp_data.shape != b.bp_data.shape:
        raise ValueError("cannot merge statistics of different image sizes or sampling")
    xp = array_module(a.bp_data, b.bp_data)
    out = {}
    for f in fields(BatchStats):
        name = f.name
        va, vb = getattr(a, name), getattr(b, name)
        if name in BatchStats._META:
            out[name] = va
        elif name == "n_particles":
            out[name] = va + vb
        elif name == "bp_data":
            out[name] = va.astype(xp.complex128) + vb
        else:
            out[name] = xp.asarray(va, dtype=xp.float64) + vb
    return BatchStats(**out)
