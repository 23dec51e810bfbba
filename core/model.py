"""Model state and algorithm switches of 2D classification (RELION's ``MlModel::write``, ``MlOptimiser::expectation``, ``MlOptimiser::maximization``).

:class:`Model` is frozen; each M-step returns a new one (``dataclasses.replace``). Arrays
live on one device (numpy or cupy). :class:`Settings` holds the switches that do not change
during a run.

Example::

    model = Model.empty(n_classes=50, box=64, pixel_size_A=2.0, n_optics=1, n_groups=1, xp=np)
    model = dataclasses.replace(model, references=refs, sigma2_noise=sigma2)

Units: offsets in Å (``prior_offset_A`` is the true class mean offset, *not* RELION's
Å × pdf_class stored in rlnClassPriorOffsetX/Y; the writer converts), ``sigma2_offset_A2``
in Å², ``current_resolution`` in 1/Å, accuracies in degrees / Å (999 when unknown).

See also: :mod:`emclass2d.core.estep`, :mod:`emclass2d.core.mstep`.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Settings:
    """Algorithm switches of a run (RELION option in brackets)."""

    tau2_fudge: float = 1.0            #: T (--tau2_fudge)
    do_ctf: bool = True                #: --ctf
    ctf_intact_first_peak: bool = False  #: --ctf_intact_first_peak
    ctf_phase_flipped: bool = False    #: --ctf_phase_flipped
    do_norm: bool = False              #: --norm
    do_scale: bool = False             #: --scale
    zero_mask: bool = False            #: --zero_mask
    particle_diameter_A: float = -1.0  #: --particle_diameter (<0: (N - maskedge)·px)
    width_mask_edge_px: float = 5.0    #: --maskedge
    adaptive_fraction: float = 0.999   #: --adaptive_fraction
    strict_highres_exp_A: float = -1.0  #: --strict_highres_exp
    maxsig: int = -1                   #: --maxsig (VDAM: 5·K)
    min_sigma2_offset_A2: float = 2.0  #: --min_sigma2_offset
    sigma2_fudge: float = 1.0          #: --sigma2_fudge
    minres_map: int = 5                #: --minres_map
    incr_size: int = 10                #: --incr_size
    fix_sigma_noise: bool = False      #: --fix_sigma_noise
    fix_sigma_offset: bool = False     #: --fix_sigma_offset
    random_seed: int = 0               #: --random_seed (resolved, >= 0)
    padding_factor: int = 2            #: --pad

    def diameter_A(self, box: int, pixel_size_A: float) -> float:
        """Particle (mask) diameter in Å, RELION's default (N - maskedge)·px when unset."""
        if self.particle_diameter_A > 0:
            return float(self.particle_diameter_A)
        return (box - self.width_mask_edge_px) * pixel_size_A


@dataclass(frozen=True)
class Model:
    """State of the 2D classification model (RELION MlModel, 2D subset).

    references: (K, N, N) float32 real-space class averages, origin at the box centre.
    pdf_class: (K,) class fractions (sum 1). pdf_direction: (K,) class prior used in the
    E-step (RELION pdf_direction; 1 after reading a model.star).
    prior_offset_A: (K, 2) true mean (x, y) offset of each class in Å.
    sigma2_offset_A2: offset prior variance (Å²).
    sigma2_noise: (n_optics, N//2+1) noise variance per complex component per shell.
    tau2, data_vs_prior, sigma2_ref, fourier_completeness: (K, N//2+1) per shell
        (rlnReferenceTau2, rlnSsnrMap, rlnReferenceSigma2, rlnFourierCompleteness).
    overall_completeness, estimated_resolution_A, accuracy_rot_deg, accuracy_trans_A: (K,).
    scale: (n_groups,) rlnGroupScaleCorrection.
    """

    references: Any
    pdf_class: Any
    pdf_direction: Any
    prior_offset_A: Any
    sigma2_offset_A2: float
    sigma2_noise: Any
    tau2: Any
    data_vs_prior: Any
    sigma2_ref: Any
    fourier_completeness: Any
    overall_completeness: Any
    estimated_resolution_A: Any
    accuracy_rot_deg: Any
    accuracy_trans_A: Any
    scale: Any
    avg_norm_correction: float
    tau2_fudge: float
    current_size: int
    coarse_size: int
    current_resolution: float
    pixel_size_A: float
    box: int
    padding_factor: int = 2
    log_likelihood: float = 0.0
    ave_pmax: float = 0.0

    @property
    def n_classes(self) -> int:
        return int(self.references.shape[0])

    @property
    def n_shells(self) -> int:
        return self.box // 2 + 1

    @staticmethod
    def empty(n_classes: int, box: int, pixel_size_A: float, n_optics: int = 1, n_groups: int = 1,
              xp: ModuleType = np, tau2_fudge: float = 1.0, sigma2_offset_A2: float = 100.0) -> "Model":
        """A model with zero references and flat priors (fill references/sigma2 before use)."""
        k, ns = n_classes, box // 2 + 1
        f64 = xp.float64
        return Model(
            references=xp.zeros((k, box, box), dtype=xp.float32),
            pdf_class=xp.full((k,), 1.0 / k, dtype=f64),
            pdf_direction=xp.full((k,), 1.0 / k, dtype=f64),
            prior_offset_A=xp.zeros((k, 2), dtype=f64),
            sigma2_offset_A2=float(sigma2_offset_A2),
            sigma2_noise=xp.zeros((n_optics, ns), dtype=f64),
            tau2=xp.zeros((k, ns), dtype=f64),
            data_vs_prior=xp.zeros((k, ns), dtype=f64),
            sigma2_ref=xp.zeros((k, ns), dtype=f64),
            fourier_completeness=xp.zeros((k, ns), dtype=f64),
            overall_completeness=xp.zeros((k,), dtype=f64),
            estimated_resolution_A=xp.full((k,), 999.0, dtype=f64),
            accuracy_rot_deg=xp.full((k,), 999.0, dtype=f64),
            accuracy_trans_A=xp.full((k,), 999.0, dtype=f64),
            scale=xp.ones((n_groups,), dtype=f64),
            avg_norm_correction=1.0,
            tau2_fudge=float(tau2_fudge),
            current_size=box,
            coarse_size=box,
            current_resolution=0.0,
            pixel_size_A=float(pixel_size_A),
            box=int(box),
        )
