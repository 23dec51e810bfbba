"""A batch of particles as the compute core sees it: host or device arrays, no files.

``jobtypes/class2d`` fills it from the particle table and the image stacks; core functions
read only what is here. All arrays share one device.

Example::

    batch = ParticleBatch(images=imgs, part_index=np.arange(8), defocus_u_A=..., ...)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ParticleBatch:
    """B particles of one box size ``N`` (model grid) and their metadata.

    images: (B, N, N) float32, real space, origin at the box centre, as stored on disk.
    part_index: (B,) int64, index of each particle in the run's particle table (RELION's
        micrograph-sorted order); seeds per-particle noise and pseudo-half assignment.
    group: (B,) int32, 0-based scale group (rlnGroupNumber - 1).
    optics_group: (B,) int32, 0-based optics group.
    origin_px: (B, 2) float32, current (x, y) offsets in pixels (rlnOriginX/YAngst / px).
    norm_correction: (B,) float32, current rlnNormCorrection.
    defocus_u_A, defocus_v_A, defocus_angle_deg, phase_shift_deg, ctf_bfactor_A2,
    ctf_scale: (B,) float64 per-particle CTF parameters (RELION defaults where absent).
    voltage_kV, cs_mm, amplitude_contrast: (B,) float64 from each particle's optics group.
    ctf_premultiplied: (B,) bool, rlnCtfDataAreCtfPremultiplied of the optics group.
    """

    images: Any
    part_index: Any
    group: Any
    optics_group: Any
    origin_px: Any
    norm_correction: Any
    defocus_u_A: Any
    defocus_v_A: Any
    defocus_angle_deg: Any
    phase_shift_deg: Any
    ctf_bfactor_A2: Any
    ctf_scale: Any
    voltage_kV: Any
    cs_mm: Any
    amplitude_contrast: Any
    ctf_premultiplied: Any

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    def with_images(self, images: Any) -> "ParticleBatch":
        return replace(self, images=images)
