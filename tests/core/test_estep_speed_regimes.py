"""The E-step's dense and gathered fine passes give the same results in every regime.

The fine pass is evaluated either per particle over its significant psis × translations
(gathered) or over all fine psis of the involved classes × all fine translations, masked to
the children of the significant coarse samples (dense); the choice is a speed decision only.
"""
from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from emclass2d.core.estep import coarse, fine_dense, fine_gathered
from emclass2d.core.backend import to_host
from emclass2d.core.estep import BatchStats, ParticleResults, expectation_batch, prepare_iteration
from emclass2d.core.sampling import make_sampling, with_perturbation
from test_estep import _brute, _make_problem

DENSE, GATHERED = 0.0, 1e9


def _flat(model, factor=300.0):
    """Noise so large that posteriors are flat: most coarse samples are significant."""
    return dataclasses.replace(model, sigma2_noise=model.sigma2_noise * factor)


def _run(monkeypatch, fraction, model, batch, settings, samp, iteration=2, **kw):
    monkeypatch.setattr(coarse, "DENSE_FRACTION", fraction)
    setup = prepare_iteration(model, settings, samp, iteration=iteration)
    return expectation_batch(batch, model, settings, setup, **kw)


def _assert_same(a: tuple[BatchStats, ParticleResults], b: tuple[BatchStats, ParticleResults]) -> None:
    (sa, ra), (sb, rb) = a, b
    for f in dataclasses.fields(ParticleResults):
        x, y = to_host(getattr(ra, f.name)), to_host(getattr(rb, f.name))
        if f.name in ("class_index", "n_significant"):
            assert np.array_equal(x, y), f.name
        else:
            assert np.allclose(x, y, rtol=1e-10, atol=1e-12), f.name
    for f in dataclasses.fields(BatchStats):
        x, y = getattr(sa, f.name), getattr(sb, f.name)
        if f.name == "n_particles" or f.name == "current_size":
            assert x == y
            continue
        x, y = to_host(x), to_host(y)
        scale = max(float(np.abs(y).max()), 1e-300)
        assert np.allclose(x, y, rtol=1e-10, atol=1e-11 * scale), f.name


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("variant", ["default", "noise_fill", "halves_residual", "strict_highres", "no_oversampling"])
def test_dense_equals_gathered(monkeypatch, flat, variant):
    model, batch, settings, samp = _make_problem(seed=3, b=6, norm=True)
    kw = {}
    if flat:
        model = _flat(model)
    if variant == "noise_fill":
        settings = dataclasses.replace(settings, zero_mask=False)
    elif variant == "halves_residual":
        kw = dict(split_halves=True, accumulate_residual=True)
    elif variant == "strict_highres":
        # both passes at the coarse size, statistics at the current size
        settings = dataclasses.replace(settings, strict_highres_exp_A=10.0)
    elif variant == "no_oversampling":
        samp = with_perturbation(make_sampling(60.0, 1.0, 1.0, oversampling=0), 0.23)
    dense = _run(monkeypatch, DENSE, model, batch, settings, samp, **kw)
    gathered = _run(monkeypatch, GATHERED, model, batch, settings, samp, **kw)
    _assert_same(dense, gathered)
    n_coarse = 3 * samp.n_psi_coarse * samp.n_trans_coarse
    nsig = to_host(dense[1].n_significant)
    assert (nsig.mean() > 0.5 * n_coarse) if flat else (nsig.mean() < 0.2 * n_coarse)


def test_dense_path_matches_brute_force(monkeypatch):
    model, batch, settings, samp = _make_problem(norm=True)
    expected, st_ref = _brute(model, batch, settings, samp)
    stats, res = _run(monkeypatch, DENSE, model, batch, settings, samp, iteration=3, memory_budget_bytes=200_000)
    for p, e in enumerate(expected):
        assert int(res.class_index[p]) == e["cls"]
        assert float(res.psi_deg[p]) == pytest.approx(e["psi"])
        assert np.allclose(res.origin_px[p], e["off"])
        assert float(res.pmax[p]) == pytest.approx(e["pmax"], rel=1e-7)
        assert float(res.dll[p]) == pytest.approx(e["dll"], rel=1e-9)
        assert float(res.norm_correction[p]) == pytest.approx(e["norm"], rel=1e-9)
    assert np.allclose(stats.bp_data[0], st_ref["data"], atol=1e-9 * np.abs(st_ref["data"]).max())
    assert np.allclose(stats.bp_weight[0], st_ref["weight"], rtol=1e-9)
    assert np.allclose(stats.wsum_sigma2_noise, st_ref["s2"], rtol=1e-8, atol=1e-14)
    assert np.allclose(stats.scale_xa, st_ref["xa"], rtol=1e-8)
    assert np.allclose(stats.scale_aa, st_ref["aa"], rtol=1e-8)
    assert float(stats.wsum_sigma2_offset_A2) == pytest.approx(st_ref["s2off"], rel=1e-8)


def test_regime_picks_the_path(monkeypatch):
    """Flat posteriors go through the dense pass, peaked ones through the gathered one."""
    model, batch, settings, samp = _make_problem(seed=3, b=6)
    model = _flat(model, 0.05)  # sharp posteriors: a few significant samples each
    calls = {"dense": 0, "gathered": 0}
    real_dense, real_gathered = fine_dense._fine_dense, fine_gathered._fine_gathered

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(fine_dense, "_fine_dense", count("dense", real_dense))
    monkeypatch.setattr(fine_gathered, "_fine_gathered", count("gathered", real_gathered))
    setup = prepare_iteration(model, settings, samp, iteration=1)
    expectation_batch(batch, model, settings, setup)
    assert calls == {"dense": 0, "gathered": 1}
    calls.update(dense=0, gathered=0)
    flat = _flat(model, 300.0 / 0.05)
    expectation_batch(batch, flat, settings, prepare_iteration(flat, settings, samp, iteration=1))
    assert calls == {"dense": 1, "gathered": 0}


def test_dense_pass_memory_follows_budget(monkeypatch):
    """Peak temporary memory of a flat-posterior batch grows with, and stays near, the budget."""
    model, _, settings, samp = _make_problem(seed=5, b=2)
    model = _flat(model)
    rng = np.random.default_rng(7)
    b = 120
    batch = _make_problem(seed=5, b=b)[1]
    batch = dataclasses.replace(batch, images=batch.images + 0.01 * rng.standard_normal(batch.images.shape))
    monkeypatch.setattr(coarse, "DENSE_FRACTION", DENSE)
    setup = prepare_iteration(model, settings, samp, iteration=1)
    expectation_batch(batch, model, settings, setup)  # fills the per-iteration projection cache
    peaks = []
    for budget in (2_000_000, 8_000_000):
        tracemalloc.start()
        expectation_batch(batch, model, settings, setup, memory_budget_bytes=budget)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[0] < 1.5 * 2_000_000
    assert peaks[1] < 1.5 * 8_000_000
    assert peaks[1] > peaks[0]
