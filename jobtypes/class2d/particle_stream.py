"""One pass of the E-step over a set of particles, spread over the selected devices.

Reads particle images batch by batch from the memory-mapped stacks (the next batch is read
in a background thread while the current one is computed), moves each batch to its device,
calls :func:`emclass2d.core.estep.expectation_batch`, and reduces the statistics on the
first device. With several GPUs the batches go round-robin to one worker thread per GPU;
each thread enters its GPU (CuPy's current device is per thread) before computing.

Example::

    stream = ParticleStream(table, images, devices=["cpu"], batch_size=256)
    stats, results = stream.expectation(model, settings, sampling, iteration, indices)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from emclass2d.core.backend import device_scope, to_device, to_host
from emclass2d.core.estep import BatchStats, EStepSetup, expectation_batch, merge_stats, prepare_iteration
from emclass2d.core.model import Model, Settings
from emclass2d.core.sampling import Sampling
from emclass2d.nodes.io.particles import ParticleTable


def move_to(obj: Any, device: str) -> Any:
    """Copy every array field of a frozen dataclass (Model, ParticleBatch, stats) to ``device``."""
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if hasattr(v, "shape") and hasattr(v, "dtype") and getattr(v, "ndim", 0) > 0:
            changes[f.name] = to_device(v, device)
    return dataclasses.replace(obj, **changes)


@dataclass
class ParticleResultsHost:
    """Per-particle E-step results for all processed particles (host arrays, table order)."""

    index: np.ndarray
    class_index: np.ndarray
    psi_deg: np.ndarray
    origin_px: np.ndarray
    dll: np.ndarray
    pmax: np.ndarray
    n_significant: np.ndarray
    norm_correction: np.ndarray


class ParticleStream:
    """Streams particles through the E-step on one or more devices."""

    def __init__(self, table: ParticleTable, images: Any, devices: Sequence[str], batch_size: int,
                 memory_budget_bytes: int, with_ctf: bool, preread: bool = False,
                 check_abort: Callable[[], None] = lambda: None,
                 progress: Callable[[int, int, str], None] = lambda d, t, w="": None) -> None:
        self.table = table
        self.images = images
        self.devices = list(devices) or ["cpu"]
        self.batch_size = int(batch_size)
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.with_ctf = with_ctf
        self.check_abort = check_abort
        self.progress = progress
        self._cache: np.ndarray | None = None
        if preread:
            self._cache = images.read(np.arange(table.n_particles))

    def read(self, index: np.ndarray) -> np.ndarray:
        """Images of particle rows ``index`` (float32, host)."""
        if self._cache is not None:
            return self._cache[index]
        return self.images.read(index)

    def batches(self, indices: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(index, images) per batch; the next batch is read while the caller computes."""
        chunks = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self.read, chunks[0])
            for i, chunk in enumerate(chunks):
                imgs = future.result()
                if i + 1 < len(chunks):
                    future = pool.submit(self.read, chunks[i + 1])
                yield chunk, imgs

    def expectation(self, model: Model, settings: Settings, sampling: Sampling, iteration: int,
                    indices: np.ndarray, accumulate_residual: bool = False,
                    split_halves: bool = False) -> tuple[BatchStats, ParticleResultsHost, EStepSetup]:
        """E-step over particle rows ``indices``; statistics on the first device, results on the host."""
        devs = self.devices
        models = {d: move_to(model, d) for d in devs}
        setups = {}
        for d in devs:
            with device_scope(d):
                setups[d] = prepare_iteration(models[d], settings, sampling, iteration)
        total = len(indices)
        done = 0
        stats: dict[str, BatchStats | None] = {d: None for d in devs}
        collected: list[tuple[np.ndarray, Any]] = []

        def work(dev: str, idx: np.ndarray, imgs: np.ndarray) -> tuple[np.ndarray, Any, BatchStats]:
            with device_scope(dev):
                batch = move_to(self.table.make_batch(idx, imgs, with_ctf=self.with_ctf), dev)
                s, r = expectation_batch(batch, models[dev], settings, setups[dev],
                                         accumulate_residual=accumulate_residual, split_halves=split_halves,
                                         memory_budget_bytes=self.memory_budget_bytes)
                return idx, r, s

        def absorb(dev: str, out: tuple[np.ndarray, Any, BatchStats]) -> None:
            nonlocal done
            idx, r, s = out
            with device_scope(dev):
                stats[dev] = s if stats[dev] is None else merge_stats(stats[dev], s)
            collected.append((idx, r))
            done += len(idx)
            self.progress(done, total, f"iteration {iteration} E-step")

        self.progress(0, total, f"iteration {iteration} E-step")
        if len(devs) == 1:
            for idx, imgs in self.batches(indices):
                self.check_abort()
                absorb(devs[0], work(devs[0], idx, imgs))
        else:
            with ThreadPoolExecutor(max_workers=len(devs)) as pool:
                pending = []
                for i, (idx, imgs) in enumerate(self.batches(indices)):
                    self.check_abort()
                    dev = devs[i % len(devs)]
                    pending.append((dev, pool.submit(work, dev, idx, imgs)))
                    if len(pending) >= 2 * len(devs):
                        d, fut = pending.pop(0)
                        absorb(d, fut.result())
                for d, fut in pending:
                    absorb(d, fut.result())
        merged: BatchStats | None = None
        with device_scope(devs[0]):
            for d in devs:
                s = stats[d]
                if s is None:
                    continue
                s = s if d == devs[0] else move_to(s, devs[0])
                merged = s if merged is None else merge_stats(merged, s)
        if merged is None:
            raise ValueError("expectation: no particles were processed")
        return merged, _gather(collected), setups[devs[0]]


def _gather(collected: list[tuple[np.ndarray, Any]]) -> ParticleResultsHost:
    idx = np.concatenate([c[0] for c in collected])
    def cat(name: str) -> np.ndarray:
        return np.concatenate([to_host(getattr(c[1], name)) for c in collected])
    return ParticleResultsHost(idx, cat("class_index"), cat("psi_deg"), cat("origin_px"), cat("dll"), cat("pmax"),
                               cat("n_significant"), cat("norm_correction"))
