"""The compute core: pure functions on NumPy or CuPy arrays and small frozen dataclasses.

Nothing here opens a file, reads an option model or draws a progress bar; every function
takes its device from its inputs (:mod:`~emclass2d.core.backend` is the only module that
imports CuPy). The core imports neither :mod:`emclass2d.nodes` nor :mod:`emclass2d.jobtypes`.

What lives where:

* data: :mod:`.batch` (``ParticleBatch``), :mod:`.model` (``Model``, ``Settings``),
  :mod:`.sampling` (psi and offset grids), :mod:`.stats` (``BatchStats``, the E-step →
  M-step contract);
* one iteration: :mod:`.estep` (package: set-up, pixels, image preparation, coarse and fine
  passes), :mod:`.mstep`, :mod:`.accuracy` (expected orientation accuracies), :mod:`.center`,
  :mod:`.mask`, :mod:`.resolution`, :mod:`.initial` (initial noise and references);
* VDAM: :mod:`.vdam` (moments, reference update), :mod:`.vdam_maximization` (one gradient
  step), :mod:`.vdam_schedule` (per-iteration settings and mini-batches);
* building blocks: :mod:`.backend`, :mod:`.fourier`, :mod:`.projector`, :mod:`.ctf`;
* selection: :mod:`.ranker_features`, :mod:`.selection`; :mod:`.metrics`;
  :mod:`.simulate` (particles with known truth).

Example::

    setup = prepare_iteration(model, settings, sampling, iteration=1)
    stats, results = expectation_batch(batch, model, settings, setup)
    model = maximization(model, stats, setup.tau2, settings)
"""
