"""Centre of mass, centring, bilinear translation/rotation and Fourier shifts (RELION's ``MlOptimiser::centerClasses``, ``shiftImageInFourierTransform``)."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core.center import (
    center_classes,
    center_of_mass_positive,
    clip_length,
    rotate_images,
    shift_fourier,
    translate_images,
)
from emclass2d.core.fourier import irfft2_centered, rfft2_centered


def blob(n: int, cx: float, cy: float, sigma: float = 2.0) -> np.ndarray:
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def brute_bilinear_translate(img: np.ndarray, tx: float, ty: float) -> np.ndarray:
    """float64 reference: out(x, y) = in(x - tx, y - ty), zero outside, by explicit loops."""
    n = img.shape[0]
    out = np.zeros((n, n))

    def at(r: int, c: int) -> float:
        return float(img[r, c]) if 0 <= r < n and 0 <= c < n else 0.0

    for r in range(n):
        for c in range(n):
            sx, sy = c - tx, r - ty
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            out[r, c] = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                         + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    return out


def test_center_of_mass_of_shifted_blob_ignores_negative_pixels() -> None:
    img = blob(32, 3.25, -2.5)
    img -= 0.8 * blob(32, -8.0, 6.0)  # negative density must not pull the centre
    com = center_of_mass_positive(img[None])[0]
    assert com == pytest.approx([3.25, -2.5], abs=0.02)


def test_center_classes_centres_and_reports_shift() -> None:
    classes = np.stack([blob(32, 3.25, -2.5), blob(32, -1.0, 2.0)])
    centred, shifts = center_classes(classes, max_shift_px=10.0)
    assert shifts == pytest.approx(np.array([[-3.25, 2.5], [1.0, -2.0]]), abs=0.02)
    assert np.abs(center_of_mass_positive(centred)).max() < 0.05
    assert centred[0].max() == pytest.approx(1.0, abs=0.1)


def test_center_classes_clips_long_shifts() -> None:
    classes = blob(32, 6.0, 0.0)[None]
    _, shifts = center_classes(classes, max_shift_px=2.0)
    assert shifts[0] == pytest.approx([-2.0, 0.0], abs=1e-6)
    v = clip_length(np.array([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    assert v == pytest.approx(np.array([[0.6, 0.8], [0.3, 0.4]]))


def test_translate_matches_float64_brute_force_with_zeros_entering() -> None:
    rng = np.random.default_rng(3)
    imgs = rng.normal(size=(2, 9, 9)).astype(np.float32)
    shifts = np.array([[1.3, -0.6], [-2.0, 3.0]])
    out = translate_images(imgs, shifts)
    for i in range(2):
        ref = brute_bilinear_translate(imgs[i], *shifts[i])
        assert out[i] == pytest.approx(ref, abs=1e-5)
    # integer shift: zeros enter from the left/top, no wrap
    assert np.all(out[1][:, -2:] == 0) and np.all(out[1][:3, :] == 0)


def test_rotate_90_degrees_moves_x_axis_onto_y_axis() -> None:
    img = np.zeros((1, 9, 9), dtype=np.float32)
    img[0, 4, 4 + 3] = 1.0  # (x, y) = (3, 0)
    out = rotate_images(img, 90.0)[0]
    assert out[4 + 3, 4] == pytest.approx(1.0, abs=1e-5)  # (x, y) = (0, 3)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_fourier_shift_equals_cyclic_real_space_shift() -> None:
    rng = np.random.default_rng(4)
    imgs = rng.normal(size=(2, 16, 16)).astype(np.float32)
    shifts = np.array([[2.0, -3.0], [-1.0, 5.0]])
    out = irfft2_centered(shift_fourier(rfft2_centered(imgs), shifts, 16), 16)
    for i in range(2):
        ref = np.roll(imgs[i], (int(shifts[i, 1]), int(shifts[i, 0])), axis=(0, 1))
        assert out[i] == pytest.approx(ref, abs=1e-4)
    # sub-pixel: a smooth blob moves by the same vector as the real-space bilinear shift
    b = blob(32, 0.0, 0.0, sigma=3.0)[None]
    moved = irfft2_centered(shift_fourier(rfft2_centered(b), np.array([1.5, -0.5]), 32), 32)
    assert center_of_mass_positive(moved)[0] == pytest.approx([1.5, -0.5], abs=0.02)


@pytest.mark.gpu
def test_gpu_matches_cpu() -> None:
    from emclass2d.core.backend import to_device, to_host

    rng = np.random.default_rng(8)
    imgs = rng.normal(size=(3, 16, 16)).astype(np.float32) + blob(16, 2.0, -1.0)[None] * 4
    shifts = np.array([[1.3, -0.6], [-2.0, 3.0], [0.25, 0.5]])
    d = to_device(imgs, "gpu")
    assert to_host(translate_images(d, to_device(shifts, "gpu"))) == pytest.approx(translate_images(imgs, shifts), abs=1e-5)
    assert to_host(rotate_images(d, to_device(np.array([10.0, 95.0, -30.0]), "gpu"))) == pytest.approx(
        rotate_images(imgs, np.array([10.0, 95.0, -30.0])), abs=1e-5)
    got, s = center_classes(d, 3.0)
    ref, s_ref = center_classes(imgs, 3.0)
    assert to_host(got) == pytest.approx(ref, abs=1e-4) and to_host(s) == pytest.approx(s_ref, abs=1e-6)
    f = rfft2_centered(imgs)
    assert to_host(shift_fourier(to_device(f, "gpu"), to_device(shifts, "gpu"), 16)) == pytest.approx(
        shift_fourier(f, shifts, 16), abs=1e-5)
