"""Contrast transfer function with RELION's conventions (``CTF::getCTF``).

CTF = -sin(gamma)·exp(-B·u²/4)·scale, with
gamma = -π·λ·Δf(θ)·u² + (π/2)·Cs·λ³·u⁴ - φ_p - atan(Q0/sqrt(1-Q0²)).
Positive (= Q0) at zero frequency; particles are white on a dark background, so a
CTF-corrected class average is white too. Defocus is positive for underfocus, Δf(θ) =
ΔfU·cos²(θ-φ_a) + ΔfV·sin²(θ-φ_a), θ the polar angle of (X, Y) from +X towards +Y.

Example::

    X, Y = frequency_grid(64, 3.0)          # 1/Å, (64, 33)
    ctf = compute_ctf(X, Y, defocus_u_A=np.array([15000.]), defocus_v_A=np.array([14000.]),
                      defocus_angle_deg=np.array([30.]), voltage_kV=300, cs_mm=2.7,
                      amplitude_contrast=0.1)   # (1, 64, 33)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emclass2d.core.backend import array_module


def electron_wavelength_A(voltage_kV: float | Any) -> Any:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (scalar or array)."""
    xp = array_module(voltage_kV) if hasattr(voltage_kV, "shape") else np
    return 12.2643247 / xp.sqrt(voltage_kV * 1e3 * (1.0 + 0.978466e-6 * voltage_kV * 1e3))


def compute_gamma(
    freq_x: Any,
    freq_y: Any,
    defocus_u_A: Any,
    defocus_v_A: Any,
    defocus_angle_deg: Any,
    voltage_kV: float | Any,
    cs_mm: float | Any,
    amplitude_contrast: float | Any,
    phase_shift_deg: Any = 0.0,
) -> Any:
    """Phase ``gamma`` of the CTF, ``(P, ...)`` for per-particle ``(P,)`` parameters.

    ``freq_x``/``freq_y`` are spatial frequencies in 1/Å (any shape S); per-particle
    arguments are arrays of shape (P,) or scalars; the result has shape (P,) + S (or S
    when all parameters are scalars). Voltage, Cs and Q0 may be per particle (optics group).
    """
    xp = array_module(freq_x, freq_y)
    f64 = xp.float64

    def per_particle(v: Any) -> Any:
        a = xp.asarray(v, dtype=f64)
        return a.reshape(a.shape + (1,) * freq_x.ndim)

    du, dv, ang = per_particle(defocus_u_A), per_particle(defocus_v_A), per_particle(defocus_angle_deg)
    volt, cs, q0, phase = per_particle(voltage_kV), per_particle(cs_mm), per_particle(amplitude_contrast), per_particle(phase_shift_deg)
    lam = electron_wavelength_A(volt)
    fx = xp.asarray(freq_x, dtype=f64)
    fy = xp.asarray(freq_y, dtype=f64)
    u2 = fx * fx + fy * fy
    theta = xp.arctan2(fy, fx)
    c = xp.cos(theta - xp.deg2rad(ang))
    s = xp.sin(theta - xp.deg2rad(ang))
    defocus = du * c * c + dv * s * s
    cs_A = cs * 1e7
    return (
        -np.pi * lam * defocus * u2
        + 0.5 * np.pi * cs_A * lam**3 * u2 * u2
        - xp.deg2rad(phase)
        - xp.arctan(q0 / xp.sqrt(1.0 - q0 * q0))
    )


def compute_ctf(
    freq_x: Any,
    freq_y: Any,
    defocus_u_A: Any,
    defocus_v_A: Any,
    defocus_angle_deg: Any,
    voltage_kV: float | Any,
    cs_mm: float | Any,
    amplitude_contrast: float | Any,
    phase_shift_deg: Any = 0.0,
    bfactor_A2: Any = 0.0,
    scale: Any = 1.0,
    intact_first_peak: bool = False,
    phase_flipped: bool = False,
) -> Any:
    """CTF values (float32) at the given frequencies; shapes as :func:`compute_gamma`.

    ``intact_first_peak`` sets the CTF to 1 where |gamma| < π/2 (RELION
    ``--ctf_intact_first_peak``); ``phase_flipped`` returns |CTF|. Values with
    |CTF| < 1e-8 are set to ±1e-8 as RELION does.
    """
    xp = array_module(freq_x, freq_y)
    gamma = compute_gamma(freq_x, freq_y, defocus_u_A, defocus_v_A, defocus_angle_deg,
                          voltage_kV, cs_mm, amplitude_contrast, phase_shift_deg)
    extra = (1,) * xp.asarray(freq_x).ndim
    b = xp.asarray(bfactor_A2, dtype=xp.float64)
    b = b.reshape(b.shape + extra)
    sc = xp.asarray(scale, dtype=xp.float64)
    sc = sc.reshape(sc.shape + extra)
    u2 = xp.asarray(freq_x, dtype=xp.float64) ** 2 + xp.asarray(freq_y, dtype=xp.float64) ** 2
    ctf = -xp.sin(gamma) * xp.exp(-b * u2 / 4.0) * sc
    if intact_first_peak:
        ctf = xp.where(xp.abs(gamma) < np.pi / 2, 1.0, ctf)
    if phase_flipped:
        ctf = xp.abs(ctf)
    tiny = xp.abs(ctf) < 1e-8
    ctf = xp.where(tiny, xp.where(ctf < 0, -1e-8, 1e-8), ctf)
    return ctf.astype(xp.float32)
