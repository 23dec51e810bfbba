"""Pictures of a Class2D run: the convergence plot users read to judge convergence.

Users compare iterations to decide whether a run has converged (seeds: "compare the class
averages from iterations 24 and 25"); this plot shows per iteration the resolution, the
fraction of particles whose best class changed, the changes of offsets and psi, and the
class distribution.

Example::

    write_convergence_plot("Class2D/job013/convergence.png", history)

``history`` is a list of per-iteration dicts with keys ``iteration``, ``resolution_A``,
``changes_classes`` (fraction), ``changes_offsets_A``, ``changes_psi_deg`` and
``class_distribution`` (sequence of K fractions).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from emclass2d.nodes.io.atomic import atomic_path


def write_convergence_plot(png_path: str | os.PathLike[str], history: Sequence[dict[str, Any]]) -> None:
    """Write a 4-panel PNG of the run's convergence; does nothing for an empty history."""
    if not history:
        return
    import matplotlib  # noqa: PLC0415  (heavy import only when plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    it = np.array([h["iteration"] for h in history])
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(it, [h.get("resolution_A", np.nan) for h in history], "o-", ms=3)
    ax.set_ylabel("resolution (Å)")
    ax.invert_yaxis()
    ax.set_title("Current resolution")
    ax = axes[0, 1]
    ax.plot(it, [100 * h.get("changes_classes", np.nan) for h in history], "o-", ms=3, color="C1")
    ax.set_ylabel("particles changing class (%)")
    ax.set_title("Changes of optimal classes")
    ax = axes[1, 0]
    ax.plot(it, [h.get("changes_offsets_A", np.nan) for h in history], "o-", ms=3, color="C2", label="offsets (Å)")
    ax2 = ax.twinx()
    ax2.plot(it, [h.get("changes_psi_deg", np.nan) for h in history], "s-", ms=3, color="C3", label="psi (deg)")
    ax.set_ylabel("offset change (Å)", color="C2")
    ax2.set_ylabel("psi change (deg)", color="C3")
    ax.set_title("Changes of optimal offsets and psi")
    ax = axes[1, 1]
    dist = np.array([np.asarray(h["class_distribution"], dtype=float) for h in history if "class_distribution" in h])
    if dist.size:
        its = np.array([h["iteration"] for h in history if "class_distribution" in h])
        order = np.argsort(-dist[-1])
        bottom = np.zeros(len(its))
        for k in order:
            ax.bar(its, 100 * dist[:, k], bottom=bottom, width=0.9, linewidth=0)
            bottom += 100 * dist[:, k]
        ax.set_ylim(0, 100)
    ax.set_ylabel("class distribution (%)")
    ax.set_title("Class distribution")
    for a in axes.ravel():
        a.set_xlabel("iteration")
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
