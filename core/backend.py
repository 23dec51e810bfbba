"""Array backend: NumPy on the CPU, CuPy on a GPU, one code path.

This is the only module that imports CuPy, and it does so lazily, so the package imports
and runs everywhere. Core functions take their array module from their inputs
(:func:`array_module`), never from a global, so both backends can be used in one process.

Example::

    xp = get_xp("cpu")            # numpy
    x = to_device(np.ones(3), "gpu:0")
    y = to_host(x)                # numpy again

See also: ``Class2D`` options ``use_gpu`` / ``gpu_ids`` (RELION's syntax "0,1").
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import Any

import numpy as np

#: Real and complex dtypes of images, references and Fourier transforms.
FLOAT = np.float32
COMPLEX = np.complex64
#: Dtypes for sums over many particles (noise spectra, class weights, log-likelihoods).
ACCUM_FLOAT = np.float64
ACCUM_COMPLEX = np.complex128


def cupy_or_none() -> ModuleType | None:
    """Return the cupy module if it imports and sees a CUDA device, else None."""
    try:
        import cupy  # noqa: PLC0415  (lazy on purpose)

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, CUDA driver errors: no GPU backend here
        return None


def gpu_available() -> bool:
    """True when CuPy works and at least one CUDA device is visible."""
    return cupy_or_none() is not None


def gpu_count() -> int:
    """Number of visible CUDA devices (0 without CuPy or a device)."""
    cp = cupy_or_none()
    return int(cp.cuda.runtime.getDeviceCount()) if cp is not None else 0


def get_xp(device: str = "cpu") -> ModuleType:
    """Array module for a device string: ``"cpu"`` -> numpy, ``"gpu"``/``"gpu:N"`` -> cupy."""
    if device == "cpu":
        return np
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError(
            "Use GPU acceleration was requested but CuPy with a CUDA device is not available; "
            "install emclass2d[gpu] on a machine with an NVIDIA GPU, or set use_gpu to No"
        )
    return cp


def array_module(*arrays: Any) -> ModuleType:
    """The module (numpy or cupy) of the array arguments; raises on a numpy/cupy mix.

    Python scalars and None are ignored.
    """
    found: ModuleType | None = None
    for a in arrays:
        if a is None or isinstance(a, (int, float, complex, np.generic)):
            continue
        mod = np if isinstance(a, np.ndarray) else _module_of(a)
        if found is None:
            found = mod
        elif mod is not found:
            raise TypeError("arrays live on different devices (numpy and cupy mixed)")
    return found if found is not None else np


def _module_of(a: Any) -> ModuleType:
    name = type(a).__module__.split(".")[0]
    if name == "cupy":
        import cupy  # noqa: PLC0415

        return cupy
    return np


def device_id(device: str) -> int | None:
    """CUDA device number of a device string: ``"gpu:N"`` -> N, ``"gpu"`` -> 0, ``"cpu"`` -> None."""
    if device == "cpu":
        return None
    if device == "gpu":
        return 0
    head, _, number = device.partition(":")
    if head != "gpu" or not number.isdigit():
        raise ValueError(f"device must be 'cpu', 'gpu' or 'gpu:N' (got {device!r})")
    return int(number)


def device_scope(device: str) -> AbstractContextManager[Any]:
    """Context in which new CuPy arrays and kernels go to ``device`` (nothing on the CPU).

    CuPy's current device is per thread and starts at 0, so every thread that computes on
    ``gpu:N`` (the main thread included) must enter this scope first.
    """
    dev = device_id(device)
    if dev is None:
        return nullcontext()
    return get_xp(device).cuda.Device(dev)


def to_device(a: Any, device: str = "cpu") -> Any:
    """Copy a host array to ``device`` (no copy on the CPU, or if already there)."""
    if device == "cpu":
        return to_host(a)
    with device_scope(device):
        return get_xp(device).asarray(a)


def to_host(a: Any) -> np.ndarray:
    """Return a NumPy array whatever the input's device."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    if callable(get) and type(a).__module__.split(".")[0] == "cupy":
        return get()
    return np.asarray(a)


def device_of(a: Any) -> str:
    """Device string of an array: "cpu" or "gpu:N"."""
    if isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] != "cupy":
        return "cpu"
    return f"gpu:{a.device.id}"
