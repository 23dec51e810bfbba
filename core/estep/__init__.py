"""E-step of 2D classification for one batch of particles, as matrix products (RELION's ``MlOptimiser::expectation``).

For particle images X (Fourier, per pixel j), translations t (phase factors), classes k
and psis, the negative log-likelihood is

    D = Σ_j w_j |X_j φ_j(t) - a_j P_kψ,j|² + Xi2_high/2,   w_j = 1/(2 σ²_j), a_j = s_g·CTF_j
      = Σ_j w_j|X_j|²  -  2 Re[(w a X φ(t)) · conj(P_kψ)]  +  (w a²)·|P_kψ|² + Xi2_high/2,

so the cross term between all (particle, translation) rows and all (class, psi) columns
is one GEMM (written as a real GEMM over the real view of the complex arrays, real and
imaginary parts interleaved, which equals the real part of the complex product at half
the cost) and the reference power term a second real GEMM. The search is RELION's two-pass adaptive one: a coarse pass at the
coarse image size over everything, a significance threshold at ``adaptive_fraction``,
then the oversampled children of the significant coarse samples only, at the current size.
That fine pass is evaluated in one of two ways with the same results (a speed choice per
particle, :data:`DENSE_FRACTION`): *gathered* (each particle's significant psis ×
translations, padded to the largest set of a sub-chunk, batched GEMMs) when few samples
are significant, or *dense* (all fine psis of the involved classes × all fine
translations as the coarse pass's two GEMMs, masked to the children of the significant
samples; the statistics as GEMMs over particle × translation) when posteriors are flat,
as in the first iterations. Sufficient statistics are accumulated per (class, fine psi)
on the current-size pixel set; the M-step back-rotates them once per iteration.
Projections and phase factors shared by all batches of an iteration are kept in
``EStepSetup.cache`` when they fit a quarter of the memory budget.

Offset prior: RELION mixes pixel and Å units in it (RELION's ``getAllSquaredDifferences``); here every offset
(rounded old offset + trial translation, class centre) is converted to Å before the
Gaussian is evaluated, which equals RELION at 1 Å/pixel. The class centre is RELION's
stored rlnClassPriorOffsetX/Y value, i.e. ``prior_offset_A * pdf_class``.

Example::

    setup = prepare_iteration(model, settings, sampling, iteration=1)
    total = None
    for batch in batches:
        stats, res = expectation_batch(batch, model, settings, setup)
        total = stats if total is None else total + stats

Modules: :mod:`.setup` (per iteration), :mod:`.pixels`, :mod:`.images` (image
preparation), :mod:`.coarse` (the entry point and the coarse pass), :mod:`.fine_gathered`
and :mod:`.fine_dense` (the two fine passes), :mod:`.terms` (what the passes share).
The statistics, :class:`~emclass2d.core.stats.BatchStats`, are defined in
:mod:`emclass2d.core.stats`.

See also: :mod:`emclass2d.core.mstep` (consumes :class:`BatchStats`),
:mod:`emclass2d.core.sampling`, :mod:`emclass2d.core.projector`.
"""
from __future__ import annotations

from emclass2d.core.estep.coarse import DENSE_FRACTION, expectation_batch
from emclass2d.core.estep.images import noise_fill_images, translate_integer
from emclass2d.core.estep.pixels import PixelSet, phase_factors, pixel_set
from emclass2d.core.estep.setup import DEFAULT_MEMORY_BUDGET, EStepSetup, prepare_iteration
from emclass2d.core.estep.terms import ParticleResults
from emclass2d.core.stats import BatchStats, merge_stats

__all__ = ["DENSE_FRACTION", "DEFAULT_MEMORY_BUDGET", "BatchStats", "EStepSetup", "ParticleResults", "PixelSet",
           "expectation_batch", "merge_stats", "noise_fill_images", "phase_factors", "pixel_set", "prepare_iteration",
           "translate_integer"]
