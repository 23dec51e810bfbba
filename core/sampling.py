"""In-plane sampling of the hidden variables: psi angles and translations (RELION's ``HealpixSampling``).

A :class:`Sampling` holds the coarse grids and the oversampling order; the random
perturbation ``r`` is a field, so a new value per E-step gives a new frozen object
(:func:`with_perturbation`). Every sampled psi is shifted by ``r * psi_step_deg`` and
every translation (x and y) by ``r * offset_step_px``.

Hidden variables are ordered class -> psi -> translation; the oversampled (fine) index of
a sample is ``coarse_index * (n_over_psi * n_over_trans) + n_over_trans * i_psi + i_trans``
(:func:`fine_sample_index`).

Example::

    s = make_sampling(psi_step_deg=12.0, offset_range_px=5, offset_step_px=2, oversampling=1)
    s.n_psi_coarse, s.n_trans_coarse      # 30, 21
    s = with_perturbation(s, perturbation_for_iteration(42, iteration=3, perturb_factor=0.5))
    psi = s.fine_psi_deg()                # (30, 2): fine psi per coarse psi
    t = s.fine_translations_px()          # (21, 4, 2): fine (x, y) per coarse translation

See also: :mod:`emclass2d.core.estep` (uses the grids), :mod:`emclass2d.core.resolution`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """In-plane sampling of one iteration.

    psi_step_deg: coarse psi step (360/n_psi_coarse after rounding; RELION ``--psi_step``).
    offset_range_px, offset_step_px: coarse translation disc radius and step (pixels).
    oversampling: adaptive oversampling order o (2^o fine psis, 4^o fine translations).
    perturb_factor: RELION ``--perturb`` (0.5).
    perturbation: current random perturbation r in [-perturb_factor, perturb_factor].
    """

    psi_step_deg: float
    offset_range_px: float
    offset_step_px: float
    oversampling: int = 1
    perturb_factor: float = 0.5
    perturbation: float = 0.0

    @property
    def n_psi_coarse(self) -> int:
        return int(round(360.0 / self.psi_step_deg))

    @property
    def n_over_psi(self) -> int:
        return 2 ** self.oversampling

    @property
    def n_over_trans(self) -> int:
        return 4 ** self.oversampling

    @property
    def n_psi_fine(self) -> int:
        return self.n_psi_coarse * self.n_over_psi

    @property
    def n_trans_coarse(self) -> int:
        return int(self._coarse_grid().shape[0])

    @property
    def n_trans_fine(self) -> int:
        return self.n_trans_coarse * self.n_over_trans

    def coarse_psi_deg(self) -> np.ndarray:
        """(n_psi_coarse,) float64 coarse psis ``i*step + r*step`` (0 … <360, plus r)."""
        i = np.arange(self.n_psi_coarse, dtype=np.float64)
        return (i + self.perturbation) * self.psi_step_deg

    def fine_psi_deg(self) -> np.ndarray:
        """(n_psi_coarse, 2^o) float64 fine psis, wrapped to (-180, 180] before perturbation."""
        step = self.psi_step_deg
        n_over = self.n_over_psi
        base = np.arange(self.n_psi_coarse, dtype=np.float64)[:, None] * step
        if self.oversampling == 0:
            psi = base
        else:
            psi = base - 0.5 * step + (np.arange(n_over)[None, :] + 0.5) * step / n_over
            # RELION wraps 2-D fine psis into (-180, 180]
            psi = np.where(psi > 180.0, psi - 360.0, psi)
        return psi + self.perturbation * step

    def _coarse_grid(self) -> np.ndarray:
        step, rng = self.offset_step_px, self.offset_range_px
        if step <= 0 or rng <= 0:
            return np.zeros((1, 2))
        m = int(math.ceil(rng / step))
        pts = [
            (ix * step, iy * step)
            for ix in range(-m, m + 1)  # x outer, y inner, as RELION's setTranslations
            for iy in range(-m, m + 1)
            if (ix * step) ** 2 + (iy * step) ** 2 < rng * rng + 0.001
        ]
        return np.asarray(pts, dtype=np.float64)

    def coarse_translations_px(self) -> np.ndarray:
        """(n_trans_coarse, 2) float64 (x, y) coarse translations in pixels, perturbed."""
        return self._coarse_grid() + self.perturbation * self.offset_step_px

    def fine_translations_px(self) -> np.ndarray:
        """(n_trans_coarse, 4^o, 2) float64 fine translations (x outer, y inner), perturbed."""
        coarse = self._coarse_grid()
        n = 2 ** self.oversampling
        if self.oversampling == 0:
            sub = np.zeros((1, 2))
        else:
            d = -0.5 * self.offset_step_px + (np.arange(n) + 0.5) * self.offset_step_px / n
            dx, dy = np.meshgrid(d, d, indexing="ij")  # x outer, y inner
            sub = np.stack([dx.ravel(), dy.ravel()], axis=1)
        return coarse[:, None, :] + sub[None, :, :] + self.perturbation * self.offset_step_px


def n_psi_samples(psi_step_deg: float, round_to_32: bool = False) -> int:
    """Number of coarse psis: ceil(360/step), rounded up to a multiple of 32 if asked.

    RELION rounds up to a multiple of 32 when it runs on an accelerator (RELION's ``HealpixSampling::initialise``).
    """
    if psi_step_deg <= 0:
        psi_step_deg = 10.0  # RELION's default when --psi_step < 0
    n = int(math.ceil(360.0 / psi_step_deg - 1e-9))
    if round_to_32:
        n = int(math.ceil(n / 32.0) * 32)
    return n


def make_sampling(
    psi_step_deg: float,
    offset_range_px: float,
    offset_step_px: float,
    oversampling: int = 1,
    perturb_factor: float = 0.5,
    round_psi_to_32: bool = False,
    perturbation: float = 0.0,
) -> Sampling:
    """Build a :class:`Sampling` from RELION's command-line values.

    ``psi_step_deg`` is the coarse step (``--psi_step``; the GUI passes 2^o times its
    "in-plane angular sampling"); the effective step is 360/n (:func:`n_psi_samples`).
    """
    if oversampling < 0:
        raise ValueError(f"oversampling must be >= 0, got {oversampling}")
    n = n_psi_samples(psi_step_deg, round_psi_to_32)
    return Sampling(
        psi_step_deg=360.0 / n,
        offset_range_px=float(offset_range_px),
        offset_step_px=float(offset_step_px),
        oversampling=int(oversampling),
        perturb_factor=float(perturb_factor),
        perturbation=float(perturbation),
    )


def with_perturbation(sampling: Sampling, perturbation: float) -> Sampling:
    """Same sampling with a new random perturbation value."""
    return replace(sampling, perturbation=float(perturbation))


def next_perturbation(previous: float, perturb_factor: float, rng: np.random.Generator) -> float:
    """One RELION update r <- wrap(r + U(0.5 f, f), -f, f) (``resetRandomlyPerturbedSampling``)."""
    f = perturb_factor
    if f <= 0:
        return 0.0
    r = previous + rng.uniform(0.5 * f, f)
    if r > f:
        r -= 2.0 * f
    return float(r)


def perturbation_for_iteration(random_seed: int, iteration: int, perturb_factor: float = 0.5) -> float:
    """Perturbation used in the E-step of ``iteration`` (1-based), starting from r = 0.

    Each update draws from a generator seeded by (random_seed, i), so the value depends
    only on the seed and the iteration: a continued run reproduces the uninterrupted one.
    """
    r = 0.0
    for i in range(1, int(iteration) + 1):
        r = next_perturbation(r, perturb_factor, np.random.default_rng([abs(int(random_seed)), i]))
    return r


def fine_sample_index(coarse_index: int | np.ndarray, i_psi: int | np.ndarray, i_trans: int | np.ndarray,
                      sampling: Sampling) -> int | np.ndarray:
    """Flat oversampled index of a fine sample (RELION ``getPositionOversampledSamplingPoint``).

    ``coarse_index = (class * n_psi_coarse + psi) * n_trans_coarse + trans``.
    """
    n_r, n_t = sampling.n_over_psi, sampling.n_over_trans
    return coarse_index * (n_r * n_t) + n_t * i_psi + i_trans


def coarse_sample_index(class_index: int | np.ndarray, psi_index: int | np.ndarray,
                        trans_index: int | np.ndarray, sampling: Sampling) -> int | np.ndarray:
    """Flat coarse index: class -> psi -> translation (one direction in 2D)."""
    return (class_index * sampling.n_psi_coarse + psi_index) * sampling.n_trans_coarse + trans_index
