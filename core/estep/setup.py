"""What the E-step of one iteration shares between batches: sizes, pixel sets, projectors, cache.

Example::

    setup = prepare_iteration(model, settings, sampling, iteration=3)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from emclass2d.core.backend import array_module
from emclass2d.core.model import Model, Settings
from emclass2d.core.projector import Projector, make_projector, reference_power_spectrum
from emclass2d.core.sampling import Sampling
from emclass2d.core.estep.pixels import PixelSet, pixel_set

#: Default peak temporary memory of one :func:`expectation_batch` call (bytes).
DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024


@dataclass(frozen=True)
class EStepSetup:
    """Per-iteration E-step state: projector grids, tau2, sizes, pixel sets, sampling grids.

    tau2: (K, N//2+1) power spectrum of the current references (rlnReferenceTau2; the
    M-step's Wiener prior). psi_fine_deg: (n_psi_fine,) flat fine psis (index
    ipsi_coarse·2^o + i); trans_fine_px: (n_trans_fine,) flat fine translations.
    """

    projector: Projector
    tau2: Any
    sampling: Sampling
    iteration: int
    current_size: int
    coarse_size: int
    fine_size: int
    pix_coarse: PixelSet
    pix_fine: PixelSet
    pix_current: PixelSet
    psi_coarse_deg: Any
    psi_fine_deg: Any
    trans_coarse_px: Any
    trans_fine_px: Any
    #: projections and phase factors shared by the batches of the iteration (filled lazily)
    cache: dict = field(default_factory=dict, repr=False, compare=False)


def prepare_iteration(model: Model, settings: Settings, sampling: Sampling, iteration: int) -> EStepSetup:
    """Build the projector at ``model.current_size`` and everything shared by all batches.

    Call once per iteration after ``model.current_size``/``coarse_size`` and the sampling
    perturbation are set (RELION ``expectationSetup`` / ``setFourierTransformMaps``).
    """
    xp = array_module(model.references)
    n = model.box
    cur = int(model.current_size)
    coarse = int(min(model.coarse_size, cur))
    if sampling.oversampling == 0 and settings.strict_highres_exp_A <= 0:
        coarse = cur  # a single pass at the current size (RELION's ``MlOptimiser::updateCurrentResolution``)
    fine = coarse if settings.strict_highres_exp_A > 0 else cur
    proj = make_projector(model.references, cur, model.padding_factor)
    tau2 = reference_power_spectrum(proj)
    return EStepSetup(
        projector=proj, tau2=tau2, sampling=sampling, iteration=int(iteration),
        current_size=cur, coarse_size=coarse, fine_size=fine,
        pix_coarse=pixel_set(n, coarse, xp), pix_fine=pixel_set(n, fine, xp), pix_current=pixel_set(n, cur, xp),
        psi_coarse_deg=xp.asarray(sampling.coarse_psi_deg()),
        psi_fine_deg=xp.asarray(sampling.fine_psi_deg().reshape(-1)),
        trans_coarse_px=xp.asarray(sampling.coarse_translations_px()),
        trans_fine_px=xp.asarray(sampling.fine_translations_px().reshape(-1, 2)),
    )
