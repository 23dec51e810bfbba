"""Gallery PNG and HTML report."""
from __future__ import annotations

import base64
import re

import numpy as np
from PIL import Image

from emclass2d.jobtypes.reports.gallery import write_gallery, write_html_report


def _images(k: int = 7, n: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(k, n, n)).astype(np.float32)


def test_gallery_png_grid(tmp_path):
    png = tmp_path / "g.png"
    k = 7
    write_gallery(png, _images(k), np.arange(1, k + 1), np.linspace(0.3, 0.01, k), np.full(k, 8.5),
                  scores=np.r_[np.linspace(0.9, 0.1, k - 1), -999.0], selected=np.arange(k) < 3, columns=4)
    with Image.open(png) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w == 4 * 130 and h == 2 * 165      # 4 columns x 2 rows at 100 dpi


def test_gallery_frames_selected_tiles(tmp_path):
    k = 4
    args = (_images(k), np.arange(1, k + 1), np.full(k, 0.25), np.full(k, 10.0))
    write_gallery(tmp_path / "a.png", *args, selected=np.ones(k, bool), columns=4)
    write_gallery(tmp_path / "b.png", *args, selected=np.zeros(k, bool), columns=4)
    a = np.asarray(Image.open(tmp_path / "a.png").convert("RGB")).astype(int)
    b = np.asarray(Image.open(tmp_path / "b.png").convert("RGB")).astype(int)
    green = lambda x: ((x[..., 1] > 120) & (x[..., 0] < 60) & (x[..., 2] < 100)).sum()  # noqa: E731
    assert green(a) > 100 and green(b) == 0


def test_html_report_is_self_contained(tmp_path):
    k = 5
    png = tmp_path / "g.png"
    write_gallery(png, _images(k), np.arange(1, k + 1), np.full(k, 0.2), np.full(k, 9.0), scores=np.full(k, 0.7))
    html = tmp_path / "r.html"
    write_html_report(html, png, "Select/job003", ["123 particles from 4 selected classes"],
                      scores=np.array([0.1, 0.7, 0.8, -999.0]), threshold=0.5,
                      table_rows=[["1", "10", "20.00", "9.0", "0.70", "yes"]], table_header=("class", "particles", "%",
                                                                                             "res", "score", "sel"))
    text = html.read_text()
    assert "123 particles from 4 selected classes" in text and "src='http" not in text
    blobs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(blobs) == 2
    assert base64.b64decode(blobs[0]) == png.read_bytes()
