"""MRC image files as RELION writes and reads them: class stacks, single maps, moment stacks.

Stacks (``.mrcs``) hold K images of N x N, mode 2 (float32); the header carries the pixel
size in the cell (a = px * nx, b = px * ny) and, for a 2-D stack, c = nz so the z "pixel
size" reads back as 1 (RELION ``rwMRC.h:writeMRC``). Readers take px = a / mx. Every write
is atomic, so RELION or a Select job never sees half a stack.

VDAM moment stacks (``run_itNNN_1moment.mrcs``) store complex half-transforms as
interleaved (re, im) float32 pairs; :func:`write_complex_stack` / :func:`read_complex_stack`
only pack and unpack the pairs, the layout (projector grid) belongs to the VDAM code.

Example::

    write_mrcs("Class2D/job013/run_it025_classes.mrcs", classes, pixel_size_A=3.0)
    classes, px = read_mrcs("Class2D/job013/run_it025_classes.mrcs")   # (4, 64, 64), 3.0

See also: :mod:`emclass2d.nodes.io.images` (reading particle images by ``N@stack`` name).
"""
from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path

import mrcfile
import numpy as np

from emclass2d.nodes.io.atomic import atomic_path

#: MRC modes holding complex numbers; RELION refuses to read them as images.
COMPLEX_MODES = (3, 4)


class MrcFileError(ValueError):
    """An MRC file is missing, unreadable or not what was expected."""


def _version() -> str:
    try:
        return importlib.metadata.version("emclass2d")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _header_label() -> bytes:
    # RELION writes "Relion <version>   <dd-Mon-yy  HH:MM:SS>" as the single label.
    stamp = time.strftime("%d-%b-%y  %H:%M:%S")
    return f"emclass2d {_version()}   {stamp}".encode("ascii")[:80]


def _write(path: str | os.PathLike[str], data: np.ndarray, cell_A: tuple[float, float, float], stack: bool) -> None:
    data = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)  # also computes dmin/dmax/dmean/rms
            if stack:
                mrc.set_image_stack()
            h = mrc.header
            nz = data.shape[0] if data.ndim == 3 else 1
            # RELION: mx, my, mz equal nx, ny, nz; ispg 0 for everything it writes.
            h.mx, h.my, h.mz = data.shape[-1], data.shape[-2], nz
            h.ispg = 0
            h.cella.x, h.cella.y, h.cella.z = cell_A
            h.nlabl = 1
            h.label[0] = _header_label()


def write_mrcs(path: str | os.PathLike[str], stack: np.ndarray, pixel_size_A: float) -> None:
    """Write a (K, N, N) float32 image stack (``.mrcs``) with the pixel size in the header.

    The cell is (px * nx, px * ny, nz): a 2-D stack has no z sampling (RELION convention).
    Raises ValueError for an array that is not 3-D.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"{path}: an image stack must be (K, N, N), got shape {stack.shape}")
    k, ny, nx = stack.shape
    _write(path, stack, (pixel_size_A * nx, pixel_size_A * ny, float(k)), stack=True)


def write_mrc(path: str | os.PathLike[str], data: np.ndarray, pixel_size_A: float) -> None:
    """Write one 2-D image (N, N) or one volume (Z, N, N) as ``.mrc``.

    2-D: cell c = 1 (no z sampling); 3-D: cell c = px * nz.
    """
    data = np.asarray(data)
    if data.ndim == 2:
        ny, nx = data.shape
        _write(path, data, (pixel_size_A * nx, pixel_size_A * ny, 1.0), stack=False)
    elif data.ndim == 3:
        nz, ny, nx = data.shape
        _write(path, data, (pixel_size_A * nx, pixel_size_A * ny, pixel_size_A * nz), stack=False)
    else:
        raise ValueError(f"{path}: expected a 2-D image or a 3-D volume, got shape {data.shape}")


def _open_checked(path: str | os.PathLike[str]):
    path = Path(path)
    if not path.is_file():
        raise MrcFileError(f"{path}: file not found")
    try:
        mrc = mrcfile.open(path, mode="r", permissive=True)
    except Exception as exc:  # mrcfile raises several types on corrupt headers
        raise MrcFileError(f"{path}: not a readable MRC file ({exc})") from exc
    if mrc.data is None:
        mrc.close()
        raise MrcFileError(f"{path}: MRC header is invalid or the data block is truncated")
    mode = int(mrc.header.mode)
    if mode in COMPLEX_MODES:
        mrc.close()
        raise MrcFileError(f"{path}: MRC mode {mode} (complex) cannot be read as images")
    return mrc


def pixel_size_from_header(header) -> float:
    """Pixel size in Å as RELION reads it: cell a / mx (1.0 when the header has none)."""
    mx = int(header.mx)
    a = float(header.cella.x)
    return a / mx if mx > 0 and a > 0 else 1.0


def read_mrc(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Read a whole MRC file as float32 (2-D or 3-D as stored) and its pixel size in Å."""
    with _open_checked(path) as mrc:
        return np.asarray(mrc.data, dtype=np.float32).copy(), pixel_size_from_header(mrc.header)


def read_mrcs(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Read an image stack as (K, N, N) float32 and its pixel size in Å.

    A single 2-D image comes back as a stack of one.
    """
    data, px = read_mrc(path)
    if data.ndim == 2:
        data = data[None]
    return data, px


def write_complex_stack(path: str | os.PathLike[str], stack: np.ndarray) -> None:
    """Store (K, H, W) complex images as (K, H, 2W) float32 interleaved (re, im) pairs.

    RELION's VDAM moments (RELION's ``_1moment.mrcs``/``_2moment.mrcs`` layout): W = pf*N/2 + 1, H = pf*N; the header has pixel
    size 1 (cell = dimensions), as RELION writes them.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3 or not np.iscomplexobj(stack):
        raise ValueError(f"{path}: expected a (K, H, W) complex array, got {stack.dtype} {stack.shape}")
    c64 = np.ascontiguousarray(stack, dtype=np.complex64)
    pairs = c64.view(np.float32)  # (K, H, 2W): re, im, re, im, ...
    k, h, w2 = pairs.shape
    _write(path, pairs, (float(w2), float(h), float(k)), stack=True)


def read_complex_stack(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a stack of interleaved (re, im) pairs back as (K, H, W) complex64."""
    data, _ = read_mrcs(path)
    if data.shape[-1] % 2:
        raise MrcFileError(f"{path}: width {data.shape[-1]} is odd; not interleaved (re, im) pairs")
    return np.ascontiguousarray(data).view(np.complex64)
