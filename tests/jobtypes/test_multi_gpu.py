"""Several GPUs: each worker computes on its own device and the result equals one device's.

The ``gpu`` tests run on every visible CUDA device (skipped, with the reason shown, where
there is none); the device-string tests run everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from emclass2d.core.backend import device_id, device_scope, gpu_count, to_host
from emclass2d.jobtypes.base import RunContext
from emclass2d.jobtypes.class2d import particle_stream
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.particle_stream import ParticleStream
from emclass2d.jobtypes.class2d.start import new_state
from emclass2d.jobtypes.class2d.step import iteration_setup
from emclass2d.jobtypes.cli.cmd_simulate import simulate_project_files
from emclass2d.nodes.io.particles import image_source_for


def test_device_strings():
    assert device_id("cpu") is None and device_id("gpu") == 0 and device_id("gpu:3") == 3
    with pytest.raises(ValueError, match="'cpu', 'gpu' or 'gpu:N'"):
        device_id("cuda:1")
    with device_scope("cpu"):
        pass


@pytest.fixture(scope="module")
def iteration(tmp_path_factory):
    """(state, model, sampling) of iteration 1 of a small simulated run."""
    root = tmp_path_factory.mktemp("gpus")
    simulate_project_files("Sim", n=192, box=48, pixel_size_A=3.0, n_views=3, snr=0.3, junk_fraction=0.0,
                           n_micrographs=3, seed=2, project_dir=root)
    opts = Class2DOptions(fn_img="Sim/particles.star", nr_classes=4, particle_diameter=110.0, random_seed=5,
                          do_em=True, do_grad=False, nr_iter_em=2)
    old = os.getcwd()
    os.chdir(root)
    try:
        state = new_state(RunContext(project_dir=root, job_dir="Class2D/job001/", options=opts, log=lambda s: None),
                          opts, ["cpu"])
    finally:
        os.chdir(old)
    model, sampling = iteration_setup(state, opts, 1)
    return root, state, model, sampling


def _expectation(root: Path, state, model, sampling, devices: list[str]):
    stream = ParticleStream(state.table, image_source_for(state.table, root), devices, batch_size=32,
                            memory_budget_bytes=256 << 20, with_ctf=True)
    stats, results, _ = stream.expectation(model, state.settings, sampling, 1, np.arange(state.table.n_particles))
    return stats, results


@pytest.mark.gpu
def test_every_gpu_matches_the_cpu(iteration):
    root, state, model, sampling = iteration
    _, cpu = _expectation(root, state, model, sampling, ["cpu"])
    for i in range(gpu_count()):
        stats, gpu = _expectation(root, state, model, sampling, [f"gpu:{i}"])
        assert stats.wsum_pdf_class.device.id == i  # reduced on the device asked for
        order = np.argsort(gpu.index)
        np.testing.assert_array_equal(gpu.class_index[order], cpu.class_index[np.argsort(cpu.index)])


@pytest.mark.gpu
def test_all_gpus_together_equal_one_and_each_computes(iteration, monkeypatch):
    if gpu_count() < 2:
        pytest.skip("gpu: one CUDA device visible; spreading over several needs two or more")
    import cupy

    root, state, model, sampling = iteration
    seen: list[tuple[int, int]] = []
    real = particle_stream.expectation_batch

    def spy(batch, model, *args, **kwargs):  # records (current device, device of the batch's images)
        seen.append((cupy.cuda.Device().id, batch.images.device.id))
        return real(batch, model, *args, **kwargs)

    monkeypatch.setattr(particle_stream, "expectation_batch", spy)
    devices = [f"gpu:{i}" for i in range(gpu_count())]
    stats_all, all_ = _expectation(root, state, model, sampling, devices)
    monkeypatch.setattr(particle_stream, "expectation_batch", real)
    stats_one, one = _expectation(root, state, model, sampling, devices[:1])
    assert {cur for cur, _ in seen} == set(range(gpu_count()))  # every device computed
    assert all(cur == dev for cur, dev in seen)                 # each on the device holding its batch
    np.testing.assert_array_equal(all_.class_index[np.argsort(all_.index)], one.class_index[np.argsort(one.index)])
    np.testing.assert_allclose(to_host(stats_all.wsum_pdf_class), to_host(stats_one.wsum_pdf_class), rtol=1e-5)
