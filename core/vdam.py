"""VDAM reference update: adaptive moments of the residual gradient and the damped step (RELION's ``MlOptimiser::maximizationGradientParameters``, ``BackProjector::reconstructGrad``, ``centerClasses``).

Grids are padded half-plane Fourier transforms of shape ``(K, P, P//2+1)`` with
``P = round(pf*N)`` made even, in **FFTW layout** (as :mod:`emclass2d.core.fourier`: row
``i`` has ky = i for i <= P/2 else i - P, column j has kx = j), phase origin at the box
centre and scaled like an N-pixel transform (a padded transform ÷P² times pf²). Only voxels
with ``kx² + ky² < round(pf*r_max)²`` (r_max = current_size//2) take part, as in RELION's
back-projector loops; shell of a voxel = ROUND(|k|/pf) (half away from zero).

RELION stores the moments in "projector layout" (rows centred: row i has ky = i - P/2)
as interleaved (re, im) float images, ``_1moment.mrcs`` (2K images: class k half 1 at
k, half 2 at k+K) and ``_2moment.mrcs`` (K images). :meth:`VdamState.to_moment_stacks`
and :meth:`VdamState.from_moment_stacks` convert (RELION's ``_1moment.mrcs``/``_2moment.mrcs`` layout).

Per iteration (RELION's ``MlOptimiser::iterate`` with ``--grad``), after the E-step accumulated the residual sums of the two
pseudo-halves::

    upd = update_moments(state, data_h1, weight_h1, data_h2, weight_h2, pdf_class, current_size, N)
    state = upd.state
    pair = choose_class_replacement(pdf_class, upd.avg_class_error, threshold)   # if sched allows
    if pair: state = replace_class(state, *pair); averages, pdf, ... = copy_class_rows(...)
    averages, fsc = reconstruct_grad(averages, upd.grad, upd.noise, pdf_class, step, T,
                                     current_size, update=upd.active & (k != drop))

Longer than most modules because the moments, their grid layouts and the reference update
share one padded-grid convention; they are kept together so that convention is written once.

See also: :mod:`emclass2d.core.vdam_schedule` (step size, T, mini-batches per iteration),
:mod:`emclass2d.core.vdam_maximization` (one gradient step).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.fourier import irfft2_centered, rfft2_centered, round_half_away
from emclass2d.core.mask import mask_particles
from emclass2d.core.projector import padded_size

#: Decay of the first moments (hard-coded in RELION, not ``--mu``).
BETA1 = 0.9
#: Decay of the second moment.
BETA2 = 0.999
#: Initial value of the second moment (``MOM2_INIT_CONSTANT``).
MOM2_INIT = 1.0
#: Guards of the preconditioner and the half-set ratio.
EPS = 1e-12
#: Damping of the copied half-1 first moment when a class is replaced.
REPLACE_DAMPING = 0.9
#: Soft-edge width (px) of the circular mask applied when going back to real space.
REAL_SPACE_MASK_EDGE_PX = 3.0


def max_r2_padded(current_size: int, ori_size: int, padding_factor: float) -> int:
    """round(pf*r_max)² with r_max = min(current_size//2, N//2); voxels need r² < this."""
    r_max = min(current_size // 2, ori_size // 2)
    pf = padded_size(ori_size, padding_factor) / ori_size
    r = int(math.floor(r_max * pf + 0.5))
    return r * r


def padded_radius2(p: int, xp: Any = np) -> Any:
    """Integer kx²+ky² of each element of the ``(P, P//2+1)`` FFTW half-plane."""
    ky = np.arange(p)
    ky = np.where(ky <= p // 2, ky, ky - p)
    kx = np.arange(p // 2 + 1)
    return xp.asarray(ky[:, None] ** 2 + kx[None, :] ** 2, dtype=xp.int64)


def padded_shell_index(p: int, ori_size: int, xp: Any = np) -> Any:
    """Shell ROUND(sqrt(r²)/pf) (in N-box Fourier pixels) of each padded half-plane element."""
    pf = p / ori_size
    r = np.sqrt(to_host(padded_radius2(p)).astype(np.float64)) / pf
    return xp.asarray(round_half_away(r))


def fftw_to_centred_rows(grid: Any) -> Any:
    """FFTW-layout half-plane ``(..., P, P//2+1)`` -> RELION projector/moment layout (row i: ky = i - P/2)."""
    xp = array_module(grid)
    return xp.fft.fftshift(grid, axes=-2)


def centred_rows_to_fftw(grid: Any) -> Any:
    """Inverse of :func:`fftw_to_centred_rows`."""
    xp = array_module(grid)
    return xp.fft.ifftshift(grid, axes=-2)


def centred_grid_to_fftw(grid: Any, padded_size: int) -> Any:
    """Any centred-row half-plane grid -> FFTW layout ``(..., P, P//2+1)``.

    ``grid`` has rows centred on row ``grid.shape[-2]//2`` (ky = row - that) and columns
    from kx = 0, with at least ky in [-P/2, P/2-1] and kx in [0, P/2]: e.g. the moment
    layout (P rows) or a guarded projector/back-projector grid (P+3 rows, P/2+2 columns).
    FFTW row P/2 takes ky = -P/2 (outside every band used here).
    """
    xp = array_module(grid)
    p = padded_size
    origin = grid.shape[-2] // 2
    ky = np.arange(p)
    ky = np.where(ky < p // 2, ky, ky - p)
    rows = ky + origin
    if rows.min() < 0 or rows.max() >= grid.shape[-2] or grid.shape[-1] < p // 2 + 1:
        raise ValueError(f"centred grid of shape {grid.shape} does not cover a padded box of {p}")
    return grid[..., xp.asarray(rows), : p // 2 + 1]


def _shell_mean(values: Any, inside: Any, shells: Any, nshells: int) -> tuple[Any, Any]:
    """Per-class mean of ``values`` (K, P, P//2+1) over ``inside`` voxels per shell; also counts."""
    xp = array_module(values)
    k = values.shape[0]
    idx = xp.where(inside, shells, nshells).ravel()
    counts = xp.bincount(idx, minlength=nshells + 1)[:nshells].astype(xp.float64)
    offsets = (xp.arange(k, dtype=xp.int64) * (nshells + 1))[:, None]
    flat_idx = (offsets + idx[None, :]).ravel()
    sums = xp.bincount(flat_idx, weights=values.reshape(-1).astype(xp.float64), minlength=k * (nshells + 1))
    sums = sums.reshape(k, nshells + 1)[:, :nshells]
    return xp.where(counts > 0, sums / xp.maximum(counts, 1.0), 0.0), counts


@dataclass(frozen=True)
class VdamState:
    """Gradient moments kept between VDAM iterations (``Igrad1``/``Igrad2`` of the model).

    Attributes:
        m1_half1, m1_half2: (K, P, P//2+1) complex first moments of the two pseudo-halves.
        m2: (K, P, P//2+1) real second moment (initialised to 1).
        m2_updated_r2: (K,) host int64; voxels with r² < this value have had m2 updated
            at least once. RELION writes m2's imaginary part as 1 where never updated and 0
            elsewhere; this keeps that bit so the written stacks match.
    All arrays in FFTW layout on one device. Nothing else is needed to continue a run:
    the first-use rule of m1 is "all zero", and the schedule follows from the iteration.
    """

    m1_half1: Any
    m1_half2: Any
    m2: Any
    m2_updated_r2: np.ndarray

    @property
    def nr_classes(self) -> int:
        return int(self.m1_half1.shape[0])

    @property
    def padded_size(self) -> int:
        return int(self.m1_half1.shape[-2])

    @classmethod
    def initial(cls, nr_classes: int, padded_size: int, xp: Any = np, dtype: Any = np.float32) -> VdamState:
        """Zero first moments and m2 = 1 for a new run (``padded_size`` = P)."""
        cdtype = np.result_type(dtype, np.complex64)
        shape = (nr_classes, padded_size, padded_size // 2 + 1)
        return cls(
            m1_half1=xp.zeros(shape, dtype=cdtype),
            m1_half2=xp.zeros(shape, dtype=cdtype),
            m2=xp.full(shape, MOM2_INIT, dtype=dtype),
            m2_updated_r2=np.zeros(nr_classes, dtype=np.int64),
        )

    def to_moment_stacks(self) -> tuple[np.ndarray, np.ndarray]:
        """Host float32 stacks for ``_1moment.mrcs`` (2K, P, 2*(P//2+1)) and ``_2moment.mrcs`` (K, ...)."""
        k, p = self.nr_classes, self.padded_size
        m1 = np.concatenate([to_host(self.m1_half1), to_host(self.m1_half2)], axis=0)
        m1 = np.fft.fftshift(m1, axes=-2)
        stack1 = np.empty((2 * k, p, 2 * (p // 2 + 1)), dtype=np.float32)
        stack1[..., 0::2] = m1.real
        stack1[..., 1::2] = m1.imag
        r2 = to_host(padded_radius2(p))
        imag2 = np.where(r2[None] < self.m2_updated_r2[:, None, None], 0.0, MOM2_INIT)
        stack2 = np.empty((k, p, 2 * (p // 2 + 1)), dtype=np.float32)
        stack2[..., 0::2] = np.fft.fftshift(to_host(self.m2).real, axes=-2)
        stack2[..., 1::2] = np.fft.fftshift(imag2, axes=-2)
        return stack1, stack2

    @classmethod
    def from_moment_stacks(
        cls, stack1: np.ndarray, stack2: np.ndarray, xp: Any = np, dtype: Any = np.float32
    ) -> VdamState:
        """Rebuild the state from the two moment stacks as RELION writes them (RELION's ``_1moment.mrcs``/``_2moment.mrcs`` layout).

        Raises:
            ValueError: shapes that are not (2K, P, 2*(P//2+1)) and (K, P, 2*(P//2+1)).
        """
        stack1 = np.asarray(stack1)
        stack2 = np.asarray(stack2)
        if stack1.ndim != 3 or stack2.ndim != 3:
            raise ValueError("moment stacks: expected 3-D image stacks (_1moment.mrcs, _2moment.mrcs)")
        k, p, width = stack2.shape
        if width != 2 * (p // 2 + 1) or stack1.shape != (2 * k, p, width):
            raise ValueError(
                f"moment stacks: expected _1moment (2K, P, 2*(P//2+1)) and _2moment (K, P, 2*(P//2+1)), "
                f"got {stack1.shape} and {stack2.shape}"
            )
        cdtype = np.result_type(dtype, np.complex64)
        m1 = (stack1[..., 0::2].astype(np.float64) + 1j * stack1[..., 1::2]).astype(cdtype)
        m1 = np.fft.ifftshift(m1, axes=-2)
        m2 = np.fft.ifftshift(stack2[..., 0::2], axes=-2).astype(dtype)
        imag2 = np.fft.ifftshift(stack2[..., 1::2], axes=-2)
        r2 = to_host(padded_radius2(p))
        never = imag2 != 0
        updated = np.array(
            [int(r2[never[c]].min()) if never[c].any() else int(r2.max()) + 1 for c in range(k)], dtype=np.int64
        )
        return cls(
            m1_half1=xp.asarray(m1[:k]),
            m1_half2=xp.asarray(m1[k:]),
            m2=xp.asarray(m2),
            m2_updated_r2=updated,
        )


@dataclass(frozen=True)
class MomentUpdate:
    """Result of :func:`update_moments`.

    Attributes:
        state: the new moments.
        grad: (K, P, P//2+1) preconditioned gradient G (0 outside the band and for inactive classes).
        noise: (K, N//2+1) per-shell mean |m1_half1 - m1_half2| (0 for inactive classes).
        avg_class_error: (K,) mean |G|² over the band times pdf_class (0 for inactive classes).
        active: (K,) host bool, classes whose moments were updated (pdf_class > 0 and
            a non-zero half-1 weight); only these get the reference update.
    """

    state: VdamState
    grad: Any
    noise: Any
    avg_class_error: np.ndarray
    active: np.ndarray


def update_moments(
    state: VdamState,
    data_half1: Any,
    weight_half1: Any,
    data_half2: Any,
    weight_half2: Any,
    pdf_class: Any,
    current_size: int,
    ori_size: int,
) -> MomentUpdate:
    """Moments and preconditioned gradient from the pseudo-half residual sums (RELION's ``MlOptimiser::maximizationGradientParameters``).

    ``data_h`` (K, P, P//2+1) complex and ``weight_h`` (K, P, P//2+1) real are the
    back-projected residual sums of each pseudo-half (particles with even / odd index).
    Per voxel inside the band: g_h = data_h / max(1, weight_h); m1_h <- g_h on first use
    (m1_h all zero) else 0.9*m1_h + 0.1*g_h; m2 <- 0.999*m2 + 0.001*|g2-g1|²/(|(g1+g2)/2|²+1e-12);
    G = ((m1_1 + m1_2)/2) / (sqrt(m2) + 1e-12).
    """
    xp = array_module(data_half1, weight_half1, data_half2, weight_half2, state.m1_half1)
    k, p = state.nr_classes, state.padded_size
    if data_half1.shape != (k, p, p // 2 + 1):
        raise ValueError(f"pseudo-half sums: expected shape {(k, p, p // 2 + 1)}, got {data_half1.shape}")
    pdf_host = np.asarray(to_host(pdf_class), dtype=np.float64)
    w1_total = to_host(xp.sum(xp.abs(weight_half1).reshape(k, -1), axis=1))
    active = (pdf_host > 0) & (np.asarray(w1_total) > 0)
    max_r2 = max_r2_padded(current_size, ori_size, p / ori_size)
    r2 = padded_radius2(p, xp)
    inside = r2 < max_r2
    nshells = ori_size // 2 + 1
    shells = padded_shell_index(p, ori_size, xp)

    m1a, m1b, m2 = state.m1_half1.copy(), state.m1_half2.copy(), state.m2.copy()
    grad = xp.zeros_like(state.m1_half1)
    noise = xp.zeros((k, nshells), dtype=xp.float64)
    error = np.zeros(k, dtype=np.float64)
    updated_r2 = state.m2_updated_r2.copy()
    idx = np.flatnonzero(active)
    if idx.size:
        ia = xp.asarray(idx)
        g1 = xp.where(inside, data_half1[ia] / xp.maximum(1.0, weight_half1[ia]), 0)
        g2 = xp.where(inside, data_half2[ia] / xp.maximum(1.0, weight_half2[ia]), 0)
        for m1, g in ((m1a, g1), (m1b, g2)):
            old = m1[ia]
            # first use: the whole moment of that class is still zero -> take the gradient as is
            first_use = ~xp.any(old != 0, axis=(1, 2))[:, None, None]
            blended = xp.where(first_use, g, BETA1 * old + (1 - BETA1) * g)
            m1[ia] = xp.where(inside, blended, old).astype(m1.dtype)
        ratio = xp.abs(g2 - g1) ** 2 / (xp.abs((g1 + g2) / 2) ** 2 + EPS)
        m2[ia] = xp.where(inside, BETA2 * m2[ia] + (1 - BETA2) * ratio, m2[ia]).astype(m2.dtype)
        updated_r2[idx] = np.maximum(updated_r2[idx], max_r2)
        g = xp.where(inside, ((m1a[ia] + m1b[ia]) / 2) / (xp.sqrt(m2[ia]) + EPS), 0)
        grad[ia] = g.astype(grad.dtype)
        noise_a, _ = _shell_mean(xp.abs(m1a[ia] - m1b[ia]), inside, shells, nshells)
        noise[ia] = noise_a
        n_inside = float(to_host(xp.sum(inside)))
        err = to_host(xp.sum((xp.abs(g) ** 2 * inside).reshape(idx.size, -1), axis=1)) / max(n_inside, 1.0)
        error[idx] = np.asarray(err, dtype=np.float64) * pdf_host[idx]
    new_state = VdamState(m1_half1=m1a, m1_half2=m1b, m2=m2, m2_updated_r2=updated_r2)
    return MomentUpdate(state=new_state, grad=grad, noise=noise, avg_class_error=error, active=active)


def choose_class_replacement(pdf_class: Any, avg_class_error: Any, threshold: float) -> tuple[int, int] | None:
    """(drop, expand) for ``--class_inactivity_threshold`` (RELION's ``maximizationGradientParameters``), or None.

    expand = largest avg_class_error; drop = smallest pdf_class, only if it is below
    threshold / (number of classes with pdf_class > 0). The first index wins ties. A
    class is never replaced by itself (None then).
    """
    pdf = np.asarray(to_host(pdf_class), dtype=np.float64)
    err = np.asarray(to_host(avg_class_error), dtype=np.float64)
    if threshold <= 0 or pdf.size < 2:
        return None
    nr_active = int(np.count_nonzero(pdf > 0))
    drop = int(np.argmin(pdf))
    expand = int(np.argmax(err))
    if nr_active == 0 or not pdf[drop] < threshold / nr_active or drop == expand:
        return None
    return drop, expand


def replace_class(state: VdamState, drop: int, expand: int, damping: float = REPLACE_DAMPING) -> VdamState:
    """Copy class ``expand``'s moments into ``drop``; the copied half-1 first moment is x ``damping``."""
    m1a, m1b, m2 = state.m1_half1.copy(), state.m1_half2.copy(), state.m2.copy()
    m1a[drop] = m1a[expand] * damping
    m1b[drop] = m1b[expand]
    m2[drop] = m2[expand]
    updated = state.m2_updated_r2.copy()
    updated[drop] = updated[expand]
    return VdamState(m1_half1=m1a, m1_half2=m1b, m2=m2, m2_updated_r2=updated)


def restart_split_moments(state: VdamState, expand: int, drop: int) -> VdamState:
    """Moments after class ``expand`` was split into ``expand`` and ``drop`` (new averages for both).

    The first moments of both restart (all zero: the next gradient is taken as is, as on
    first use), so neither carries the momentum of the mixed class; ``drop`` takes the
    second moment of ``expand``.
    """
    m1a, m1b, m2 = state.m1_half1.copy(), state.m1_half2.copy(), state.m2.copy()
    for k in (expand, drop):
        m1a[k] = 0
        m1b[k] = 0
    m2[drop] = m2[expand]
    updated = state.m2_updated_r2.copy()
    updated[drop] = updated[expand]
    return VdamState(m1_half1=m1a, m1_half2=m1b, m2=m2, m2_updated_r2=updated)


def copy_class_rows(arrays: Mapping[str, Any], drop: int, expand: int) -> dict[str, Any]:
    """Copies of per-class arrays (first axis = class) with row ``expand`` copied into ``drop``.

    For the model side of a class replacement: class average, pdf_class, tau2, SSNR,
    pdf_direction (``MlModel::reset_class``).
    """
    out: dict[str, Any] = {}
    for name, arr in arrays.items():
        new = arr.copy()
        new[drop] = arr[expand]
        out[name] = new
    return out


def average_to_padded_fourier(averages: Any, padding_factor: float, current_size: int) -> Any:
    """Padded half-plane transform (K, P, P//2+1) of real-space averages (K, N, N).

    Zero-padded to P with the box centres aligned, transformed and scaled like an
    N-pixel transform; no sinc² gridding pre-correction (``reconstructGrad``). Voxels with
    r² > round(pf*r_max)² are zeroed (r² = round(pf*r_max)² is kept, as RELION does).
    """
    xp = array_module(averages)
    n = averages.shape[-1]
    p = padded_size(n, padding_factor)
    off = p // 2 - n // 2
    pad = xp.zeros(averages.shape[:-2] + (p, p), dtype=averages.dtype)
    pad[..., off : off + n, off : off + n] = averages
    f = rfft2_centered(pad) * ((p / n) ** 2)
    keep = padded_radius2(p, xp) <= max_r2_padded(current_size, n, p / n)
    return xp.where(keep, f, 0).astype(f.dtype)


def padded_fourier_to_average(transforms: Any, ori_size: int) -> Any:
    """Real-space averages (K, N, N) from padded half-planes (K, P, P//2+1).

    Inverse transform of size P, central N x N crop, ÷pf², soft circular mask at radius
    N/2 with a 3-px raised-cosine edge, outside filled with the background mean
    (``windowToOridimRealSpace``); no gridding correction in VDAM.
    """
    p = transforms.shape[-2]
    img = irfft2_centered(transforms, p)
    off = p // 2 - ori_size // 2
    img = img[..., off : off + ori_size, off : off + ori_size] / ((p / ori_size) ** 2)
    return mask_particles(img, radius_px=ori_size / 2.0, edge_px=REAL_SPACE_MASK_EDGE_PX)


def fsc_weights(
    prev_transforms: Any,
    noise: Any | None,
    tau2_fudge: float,
    current_size: int,
    ori_size: int,
    fsc_halves: Any | None = None,
) -> Any:
    """FSC-like per-shell weight (K, N//2+1) of the reference update (RELION's ``BackProjector::reconstructGrad`` step 2).

    prev = mean |P| over the band voxels of each shell; snr = 2*T*prev/noise (0 where
    noise = 0); fsc = min(max(snr/(1+snr), fsc_halves), 1); shells without voxels get 0.
    ``noise=None`` (no pseudo-halves) gives fsc = 1 everywhere.
    """
    xp = array_module(prev_transforms)
    k, p = prev_transforms.shape[0], prev_transforms.shape[-2]
    nshells = ori_size // 2 + 1
    if noise is None:
        return xp.ones((k, nshells), dtype=xp.float64)
    inside = padded_radius2(p, xp) < max_r2_padded(current_size, ori_size, p / ori_size)
    prev, counts = _shell_mean(xp.abs(prev_transforms), inside, padded_shell_index(p, ori_size, xp), nshells)
    noise = xp.asarray(noise, dtype=xp.float64)
    snr = xp.where(noise > 0, 2.0 * tau2_fudge * prev / xp.where(noise > 0, noise, 1.0), 0.0)
    f = snr / (1.0 + snr)
    halves = xp.zeros(nshells) if fsc_halves is None else xp.asarray(fsc_halves, dtype=xp.float64)
    fsc = xp.minimum(xp.maximum(f, halves), 1.0)
    return xp.where(counts[None, :] > 0, fsc, 0.0)


def class_step_sizes(step_size: float, pdf_class: Any, per_class: bool = True) -> np.ndarray:
    """λ_k = step*(1 - exp(-(3K+10)*pdf_class[k])) (sequential RELION); plain step if not per_class (MPI)."""
    pdf = np.asarray(to_host(pdf_class), dtype=np.float64)
    if not per_class:
        return np.full(pdf.shape, step_size)
    return step_size * (1.0 - np.exp(-(3 * pdf.size + 10) * pdf))


def reconstruct_grad(
    averages: Any,
    grad: Any,
    noise: Any | None,
    pdf_class: Any,
    step_size: float,
    tau2_fudge: float,
    current_size: int,
    update: Any,
    per_class_step: bool = True,
    fsc_halves: Any | None = None,
) -> tuple[Any, Any]:
    """Gradient step on the class averages (RELION's ``BackProjector::reconstructGrad``).

    For each class with ``update[k]``: P = padded transform of ``averages[k]`` (K, N, N);
    inside the band P <- P + λ_k*(fsc*G - (1-fsc)*P); back to real space with
    :func:`padded_fourier_to_average`. Other classes are returned unchanged.

    Returns:
        (new averages (K, N, N), fsc (K, N//2+1) float64; 0 rows for classes not updated).
    """
    xp = array_module(averages, grad)
    k, n = averages.shape[0], averages.shape[-1]
    p = grad.shape[-2]
    pf = p / n
    upd = np.asarray(to_host(update), dtype=bool)
    fsc_all = xp.zeros((k, n // 2 + 1), dtype=xp.float64)
    idx = np.flatnonzero(upd)
    if idx.size == 0:
        return averages.copy(), fsc_all
    ia = xp.asarray(idx)
    prev = average_to_padded_fourier(averages[ia], pf, current_size)
    fsc = fsc_weights(prev, None if noise is None else noise[ia], tau2_fudge, current_size, n, fsc_halves)
    inside = padded_radius2(p, xp) < max_r2_padded(current_size, n, pf)
    shells = xp.minimum(padded_shell_index(p, n, xp), n // 2)
    fsc_vox = fsc[:, shells]  # (k', P, P//2+1)
    lam = xp.asarray(class_step_sizes(step_size, pdf_class, per_class_step)[idx])[:, None, None]
    delta = fsc_vox * grad[ia] - (1.0 - fsc_vox) * prev
    new_f = prev + xp.where(inside, lam * delta, 0)
    out = averages.copy()
    out[ia] = padded_fourier_to_average(new_f.astype(prev.dtype), n).astype(averages.dtype)
    fsc_all[ia] = fsc
    return out, fsc_all


def centring_min_shift_px(particle_diameter_A: float, pixel_size_A: float) -> float:
    """Shortest centring shift (px) applied in VDAM: max(0.01*diameter/px, 2) (RELION's ``centerClasses`` in VDAM)."""
    return max(0.01 * particle_diameter_A / pixel_size_A, 2.0)


def centring_applies(shift_px: tuple[float, float], particle_diameter_A: float, pixel_size_A: float) -> bool:
    """Whether a class's centre-of-mass shift (dx, dy) px is long enough to apply in VDAM."""
    return math.hypot(shift_px[0], shift_px[1]) >= centring_min_shift_px(particle_diameter_A, pixel_size_A)


def shift_first_moments(state: VdamState, shifts_px: Any) -> VdamState:
    """Shift both first moments of each class by ``shifts_px[k] = (dx, dy)`` px (RELION's ``centerClasses`` in VDAM).

    Phase ramp exp(-2πi (kx*dx + ky*dy)/P) on the padded grid, i.e. the same translation of
    the (zero-padded) real-space image that moves the class average by (dx, dy). Rows of
    zeros leave a class unchanged; m2 is not shifted.
    """
    xp = array_module(state.m1_half1)
    p = state.padded_size
    shifts = np.asarray(to_host(shifts_px), dtype=np.float64).reshape(state.nr_classes, 2)
    ky = np.arange(p)
    ky = np.where(ky <= p // 2, ky, ky - p).astype(np.float64)
    kx = np.arange(p // 2 + 1, dtype=np.float64)
    phase = -2.0 * np.pi * (shifts[:, 0, None, None] * kx[None, None, :] + shifts[:, 1, None, None] * ky[None, :, None]) / p
    ramp = xp.asarray(np.exp(1j * phase).astype(np.result_type(state.m1_half1.dtype, np.complex64)))
    return dataclasses.replace(state, m1_half1=state.m1_half1 * ramp, m1_half2=state.m1_half2 * ramp)
