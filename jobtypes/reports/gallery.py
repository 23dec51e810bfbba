"""Class-average gallery (PNG montage) and a self-contained HTML report.

Tiles are sorted by class distribution (largest first) and labelled with the class number,
particle percentage, resolution and, when given, the score; selected classes are framed.
Used by the Select job and by Class2D for its last iteration.

Example::

    write_gallery("Select/job014/class_averages.png", averages, class_numbers=np.arange(1, K + 1),
                  distribution=pdf_class, resolution_A=res, scores=scores, selected=keep)
    write_html_report("Select/job014/report.html", "Select/job014/class_averages.png",
                      title="Select/job014", summary_lines=["4598 particles from 34 selected classes"],
                      scores=scores, threshold=0.5)
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emclass2d.nodes.io.atomic import atomic_path, write_text_atomic  # noqa: E402

#: Scores below this are "not scored" (RELION writes −999).
_UNSCORED_BELOW = -998.0


def _tile_image(img: np.ndarray) -> np.ndarray:
    """Contrast-stretch one image to [0, 1] (0.5 % / 99.5 % percentiles)."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    return np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img, dtype=float)


def write_gallery(
    png_path: str | os.PathLike[str],
    images: np.ndarray,
    class_numbers: Sequence[int] | np.ndarray,
    distribution: Sequence[float] | np.ndarray,
    resolution_A: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
    selected: Sequence[bool] | np.ndarray | None = None,
    columns: int | None = None,
    tile_inches: float = 1.3,
) -> None:
    """PNG montage of ``images`` ``(K, N, N)``, sorted by ``distribution`` descending (atomic write)."""
    images = np.asarray(images, dtype=np.float64)
    k = len(images)
    dist = np.asarray(distribution, dtype=np.float64)
    order = np.argsort(-dist, kind="stable")
    cols = columns or max(1, min(k, math.ceil(math.sqrt(k * 1.6))))
    rows = max(1, math.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches, rows * (tile_inches + 0.35)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for pos, idx in enumerate(order):
        ax = axes.ravel()[pos]
        ax.imshow(_tile_image(images[idx]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        res = float(np.asarray(resolution_A)[idx])
        label = f"{int(np.asarray(class_numbers)[idx])}  {100 * dist[idx]:.1f}%\n{res:.1f} Å" if res < 900 else \
            f"{int(np.asarray(class_numbers)[idx])}  {100 * dist[idx]:.1f}%\n– Å"
        if scores is not None:
            s = float(np.asarray(scores)[idx])
            label += f"  s={s:.2f}" if s > _UNSCORED_BELOW else "  s=–"
        ax.set_title(label, fontsize=7, pad=2)
        if selected is not None and bool(np.asarray(selected)[idx]):
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9641")
                spine.set_linewidth(3)
    fig.tight_layout(pad=0.3)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _score_histogram_png(scores: np.ndarray, threshold: float | None) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 2.4))
    ax.hist(scores, bins=np.linspace(0, 1, 21), color="#4575b4", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#d73027", lw=1.5, label=f"threshold {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("class score")
    ax.set_ylabel("classes")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_html_report(
    html_path: str | os.PathLike[str],
    gallery_png: str | os.PathLike[str],
    title: str,
    summary_lines: Sequence[str] = (),
    scores: Sequence[float] | np.ndarray | None = None,
    threshold: float | None = None,
    table_rows: Sequence[Sequence[str]] = (),
    table_header: Sequence[str] = (),
) -> None:
    """One HTML file with the gallery and a score histogram embedded as base64 PNGs."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if summary_lines:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in summary_lines) + "</ul>")
    parts.append(f"<h2>Class averages</h2><img alt='class averages' src='data:image/png;base64,"
                 f"{b64(Path(gallery_png).read_bytes())}'>")
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        s = s[s > _UNSCORED_BELOW]
        if s.size:
            parts.append("<h2>Scores</h2><img alt='score histogram' src='data:image/png;base64,"
                         f"{b64(_score_histogram_png(s, threshold))}'>")
    if table_rows:
        parts.append("<h2>Classes</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table_header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table_rows]
        parts.append("</table>")
    parts.append("</body></html>\n")
    write_text_atomic(html_path, "".join(parts))
