"""Per-iteration schedule of the gradient-driven (VDAM) Class2D algorithm (RELION's ``MlOptimiser::iterate`` with ``--grad``, ``MlOptimiser::write`` with ``--grad_write_iter``).

One VDAM "iteration" is one mini-batch. The run has three phases (initial, in-between,
final); the mini-batch size grows linearly through the in-between phase, the step size
falls from ``step*inflate`` to ``step`` and the regularisation parameter T rises from
``T/deflate`` to ``T`` along decimal sigmoids centred in that phase. Everything here is a
pure function of the options and the iteration number, so a continued run reproduces the
schedule from ``rlnCurrentIteration`` alone.

Example::

    sched = make_vdam_schedule(nr_iter=200, nr_particles=20_000, nr_classes=50, tau2_fudge=2)
    sched.phase_lengths            # (60, 100, 40)
    sched.step_size(85)            # 0.6
    sched.tau2_fudge_at(72)        # ~1.454
    sched.subset_size(100)         # 200 + round(40/100*800) = 520
    idx = minibatch_indices(20_000, sched.subset_size(100), random_seed=1, iteration=100)

See also: :mod:`emclass2d.core.vdam` (moments and the reference update).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Base step size for 2D classification when ``--grad_stepsize`` is -1 (RELION's ``MlOptimiser::iterate`` with ``--grad``).
DEFAULT_STEPSIZE_2D = 0.3
#: Step size reached at the start of a run with the default "<0.9/s>-step" scheme.
INITIAL_STEPSIZE_2D = 0.9
#: Base T (``--tau2_fudge``) for classification when none is given.
DEFAULT_TAU2_FUDGE = 4.0


def phase_lengths(nr_iter: int, ini_frac: float = 0.3, fin_frac: float = 0.2) -> tuple[int, int, int, float, float]:
    """Split ``nr_iter`` mini-batches into (ini_iter, inbetween_iter, fin_iter) (RELION's ``MlOptimiser::iterate`` with ``--grad``).

    Both fractions must lie in (0, 1); if their sum exceeds 0.9 both are divided by
    ``sum + 0.1``. Returns the three lengths and the (possibly rescaled) fractions, which
    are what RELION stores as rlnSgdInitialIterationsFraction / rlnSgdFinalIterationsFraction.

    Raises:
        ValueError: a fraction outside (0, 1) or ``nr_iter < 1``.
    """
    if nr_iter < 1:
        raise ValueError(f"--iter: number of VDAM mini-batches must be >= 1, got {nr_iter}")
    for name, frac in (("--grad_ini_frac", ini_frac), ("--grad_fin_frac", fin_frac)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name}: fraction of mini-batches must lie in (0, 1), got {frac}")
    total = ini_frac + fin_frac
    if total > 0.9:
        ini_frac, fin_frac = ini_frac / (total + 0.1), fin_frac / (total + 0.1)
    ini_iter = int(nr_iter * ini_frac)
    fin_iter = int(nr_iter * fin_frac)
    inbetween_iter = max(nr_iter - ini_iter - fin_iter, 0)
    return ini_iter, inbetween_iter, fin_iter, ini_frac, fin_frac


def default_subset_sizes(nr_particles: int, ini_subset: int = -1, fin_subset: int = -1) -> tuple[int, int]:
    """Initial and final mini-batch sizes for 2D; -1 (or <= 0) means automatic (RELION's ``MlOptimiser::iterate`` with ``--grad``).

    ini = max(min(0.005*N_p, 10000), 200); fin = max(min(0.05*N_p, 100000), 1000),
    truncated to integers as a C++ double-to-integer conversion does.
    """
    ini = ini_subset if ini_subset > 0 else int(max(min(0.005 * nr_particles, 10000.0), 200.0))
    fin = fin_subset if fin_subset > 0 else int(max(min(0.05 * nr_particles, 100000.0), 1000.0))
    return ini, fin


def parse_scheme_factor(scheme: str, option: str) -> float | None:
    """``"<x>-step"`` -> x, ``"plain"`` -> None (constant); anything else raises ValueError."""
    text = scheme.strip()
    if text == "plain":
        return None
    if text.endswith("-step"):
        try:
            value = float(text[: -len("-step")])
        except ValueError:
            value = float("nan")
        if math.isfinite(value) and value > 0:
            return value
    raise ValueError(f"{option}: expected 'plain' or '<number>-step' (e.g. '3-step'), got '{scheme}'")


def decimal_sigmoid(it: int, centre_start: int, width: int) -> float:
    """1/(10^((it - b - a/2)/(a/4)) + 1) with b = ``centre_start``, a = ``width`` (RELION's ``MlOptimiser::iterate`` with ``--grad``).

    1 well before the middle of the window [b, b+a], 0 well after, 0.5 at b + a/2.
    RELION divides by a/4 = 0 when the window is empty (very short runs); here ``width <= 0``
    becomes a hard step at b: 1 before, 0.5 at, 0 after (the limit of the sigmoid as a -> 0).
    """
    x = it - centre_start - width / 2.0
    if width <= 0:
        return 1.0 if x < 0 else (0.5 if x == 0 else 0.0)
    exponent = x / (width / 4.0)
    if exponent > 300.0:  # 10**300 still fits a double; beyond, the sigmoid is 0
        return 0.0
    return 1.0 / (10.0**exponent + 1.0)


@dataclass(frozen=True)
class VdamSchedule:
    """Resolved VDAM options; methods give each iteration's settings (RELION's ``MlOptimiser::iterate`` with ``--grad``).

    Build with :func:`make_vdam_schedule`, which resolves the -1/"" automatic values.
    ``it`` is RELION's iteration number: 1 … nr_iter (0 = the initial write only).
    """

    nr_iter: int
    nr_particles: int
    nr_classes: int
    ini_iter: int
    inbetween_iter: int
    fin_iter: int
    ini_frac: float
    fin_frac: float
    ini_subset: int
    fin_subset: int
    stepsize: float
    stepsize_inflate: float | None  # None = "plain"
    tau2_fudge: float
    tau2_fudge_deflate: float | None  # None = "plain"
    grad_em_iters: int = 0
    write_every: int = 10
    mu: float = 0.9
    class_inactivity_threshold: float = 0.0
    maxsig: int = -1
    firstiter_cc: bool = False

    @property
    def phase_lengths(self) -> tuple[int, int, int]:
        """(ini_iter, inbetween_iter, fin_iter)."""
        return self.ini_iter, self.inbetween_iter, self.fin_iter

    def do_grad(self, it: int) -> bool:
        """Whether iteration ``it`` is a gradient step (else plain EM over all particles)."""
        if it > self.nr_iter - self.grad_em_iters:
            return False
        return not (self.firstiter_cc and it == 1)

    def subset_size(self, it: int) -> int:
        """Mini-batch size of iteration ``it``; -1 = all particles (``MlOptimiser::updateSubsetSize``)."""
        if it < self.ini_iter:
            size = self.ini_subset
        elif it < self.ini_iter + self.inbetween_iter:
            frac = (it - self.ini_iter) / self.inbetween_iter
            # C++ ROUND: half away from zero (the difference may be negative)
            delta = frac * (self.fin_subset - self.ini_subset)
            size = self.ini_subset + int(math.copysign(math.floor(abs(delta) + 0.5), delta))
        else:
            size = self.fin_subset
        if (
            not self.do_grad(it)
            or self.nr_iter - it < self.grad_em_iters
            or (it == self.nr_iter and self.nr_classes > 1)
            or size >= self.nr_particles
        ):
            return -1
        return size

    def step_size(self, it: int) -> float:
        """Gradient step size of iteration ``it`` (rlnGradCurrentStepsize; seq ``updateStepSize``)."""
        if self.stepsize_inflate is None:
            return self.stepsize
        sig = decimal_sigmoid(it, self.ini_iter, self.inbetween_iter // 2)
        return self.stepsize * self.stepsize_inflate * sig + self.stepsize * (1.0 - sig)

    def tau2_fudge_at(self, it: int) -> float:
        """T in effect at iteration ``it`` (rlnTau2FudgeFactor; seq ``updateTau2Fudge``)."""
        if self.tau2_fudge_deflate is None:
            return self.tau2_fudge
        sig = decimal_sigmoid(it, self.ini_iter, self.inbetween_iter // 4)
        return self.tau2_fudge / self.tau2_fudge_deflate * sig + self.tau2_fudge * (1.0 - sig)

    def maximum_significants(self, it: int) -> int:
        """Cap on significant samples per particle: ``--maxsig`` if > 0, else 5*K when grad, else none (-1)."""
        if self.maxsig > 0:
            return self.maxsig
        return 5 * self.nr_classes if self.do_grad(it) else -1

    def mu_at(self, it: int) -> float:
        """Momentum of pdf_class, sigma2_noise, norm, scale, offsets (RELION's ``maximizationOtherParameters`` with ``--mu``): mu on mini-batches, else 0."""
        return self.mu if self.do_grad(it) and self.subset_size(it) != -1 else 0.0

    def center_classes_at(self, it: int, center_classes: bool = True) -> bool:
        """Whether ``centerClasses`` runs after iteration ``it`` (RELION's ``centerClasses`` in VDAM).

        Initial and in-between phases and any iteration not followed by a gradient step
        (so the last one), never in the rest of the final phase.
        """
        if not center_classes:
            return False
        return (not self.do_grad(it + 1)) or it < self.ini_iter + self.inbetween_iter

    def class_replacement_at(self, it: int) -> bool:
        """Whether inactive classes may be replaced at ``it`` (ini < it < ini + inbetween, threshold > 0)."""
        return (
            self.class_inactivity_threshold > 0
            and self.ini_iter < it < self.ini_iter + self.inbetween_iter
        )

    def writes_files(self, it: int) -> bool:
        """Whether iteration ``it`` writes its files (RELION's ``MlOptimiser::write`` with ``--grad_write_iter``)."""
        skip = (
            self.do_grad(it)
            and self.subset_size(it) > 0
            and it % self.write_every != 0
            and it != self.nr_iter
        )
        return not skip


def make_vdam_schedule(
    nr_iter: int,
    nr_particles: int,
    nr_classes: int,
    *,
    ini_frac: float = 0.3,
    fin_frac: float = 0.2,
    ini_subset: int = -1,
    fin_subset: int = -1,
    stepsize: float = -1.0,
    stepsize_scheme: str = "",
    tau2_fudge: float = -1.0,
    tau2_fudge_scheme: str = "",
    grad_em_iters: int = 0,
    write_every: int = 10,
    mu: float = 0.9,
    class_inactivity_threshold: float = 0.0,
    maxsig: int = -1,
    firstiter_cc: bool = False,
) -> VdamSchedule:
    """Resolve RELION's VDAM options (CLI names in parentheses) into a :class:`VdamSchedule`.

    ``stepsize`` (``--grad_stepsize``) -1 -> 0.3; ``stepsize_scheme`` "" -> "<0.9/s>-step";
    ``tau2_fudge`` (``--tau2_fudge``) <= 0 -> 4; ``tau2_fudge_scheme`` "" -> "<T>-step"
    (T ramps from 1 to T); "plain" keeps either constant.

    Raises:
        ValueError: bad fractions, schemes, counts (naming the option).
    """
    if nr_particles < 1:
        raise ValueError(f"number of particles must be >= 1, got {nr_particles}")
    if nr_classes < 1:
        raise ValueError(f"--K: number of classes must be >= 1, got {nr_classes}")
    if write_every < 1:
        raise ValueError(f"--grad_write_iter: must be >= 1, got {write_every}")
    if grad_em_iters < 0:
        raise ValueError(f"--grad_em_iters: must be >= 0, got {grad_em_iters}")
    ini_iter, inbetween, fin_iter, ini_frac, fin_frac = phase_lengths(nr_iter, ini_frac, fin_frac)
    ini_size, fin_size = default_subset_sizes(nr_particles, ini_subset, fin_subset)
    step = stepsize if stepsize > 0 else DEFAULT_STEPSIZE_2D
    inflate = (
        INITIAL_STEPSIZE_2D / step
        if stepsize_scheme.strip() == ""
        else parse_scheme_factor(stepsize_scheme, "--grad_stepsize_scheme")
    )
    tau = tau2_fudge if tau2_fudge > 0 else DEFAULT_TAU2_FUDGE
    deflate = (
        tau if tau2_fudge_scheme.strip() == "" else parse_scheme_factor(tau2_fudge_scheme, "--tau2_fudge_scheme")
    )
    return VdamSchedule(
        nr_iter=nr_iter,
        nr_particles=nr_particles,
        nr_classes=nr_classes,
        ini_iter=ini_iter,
        inbetween_iter=inbetween,
        fin_iter=fin_iter,
        ini_frac=ini_frac,
        fin_frac=fin_frac,
        ini_subset=ini_size,
        fin_subset=fin_size,
        stepsize=step,
        stepsize_inflate=inflate,
        tau2_fudge=tau,
        tau2_fudge_deflate=deflate,
        grad_em_iters=grad_em_iters,
        write_every=write_every,
        mu=mu,
        class_inactivity_threshold=class_inactivity_threshold,
        maxsig=maxsig,
        firstiter_cc=firstiter_cc,
    )


def minibatch_indices(
    nr_particles: int,
    subset_size: int,
    random_seed: int,
    iteration: int,
    optics_group: Any | None = None,
) -> np.ndarray:
    """Particle indices of one mini-batch (``Experiment::randomiseParticlesOrder``, RELION's ``MlOptimiser::iterate`` with ``--grad``).

    The whole list is permuted with ``numpy.random.default_rng(random_seed + iteration)``
    (reproducible, but not the same permutation as RELION's std::mt19937), the first
    ``subset_size`` entries are kept (all for -1), then stably sorted by ``optics_group``
    (per-particle labels, shape (nr_particles,)) if given. ``random_seed == 0`` skips the
    shuffle as RELION does (the same leading particles every time; callers should warn).

    Returns:
        int64 indices into the particle list (the micrograph-sorted order), host NumPy.
    """
    if random_seed < 0:
        raise ValueError(f"--random_seed: expected a non-negative seed, got {random_seed}")
    if random_seed == 0:
        order = np.arange(nr_particles, dtype=np.int64)
    else:
        order = np.random.default_rng(random_seed + iteration).permutation(nr_particles).astype(np.int64)
    if 0 < subset_size < nr_particles:
        order = order[:subset_size]
    if optics_group is not None:
        groups = np.asarray(optics_group)
        if groups.shape != (nr_particles,):
            raise ValueError(
                f"optics_group: expected one label per particle, shape ({nr_particles},), got {groups.shape}"
            )
        order = order[np.argsort(groups[order], kind="stable")]
    return order
