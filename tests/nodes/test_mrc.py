"""MRC writing and reading: RELION's header conventions, pixel size, moment stacks."""
from __future__ import annotations


import mrcfile
import numpy as np
import pytest

from fixture_paths import RELION5_CLASS2D
from emclass2d.nodes.io.mrc import (
    MrcFileError, read_complex_stack, read_mrc, read_mrcs, write_complex_stack, write_mrc, write_mrcs,
)

FIXTURES = RELION5_CLASS2D
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="RELION 5 fixtures not available")


def test_stack_round_trip_and_header(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(5, 12, 12)).astype(np.float32)
    path = tmp_path / "run_it001_classes.mrcs"
    write_mrcs(path, stack, pixel_size_A=2.75)
    data, px = read_mrcs(path)
    np.testing.assert_array_equal(data, stack)
    assert px == pytest.approx(2.75)
    with mrcfile.open(path) as mrc:
        h = mrc.header
        assert int(h.mode) == 2 and int(h.ispg) == 0 and int(h.nsymbt) == 0
        assert (int(h.nx), int(h.ny), int(h.nz)) == (12, 12, 5)
        assert (int(h.mx), int(h.my), int(h.mz)) == (12, 12, 5)
        # 2-D stack: cell c = nz, so the z "pixel size" is 1 (RELION writeMRC).
        assert (float(h.cella.x), float(h.cella.y), float(h.cella.z)) == pytest.approx((33.0, 33.0, 5.0))
        assert float(h.dmin) == pytest.approx(stack.min())
        assert float(h.dmax) == pytest.approx(stack.max())
        assert float(h.dmean) == pytest.approx(stack.mean(dtype=np.float64), abs=1e-6)
        assert float(h.rms) == pytest.approx(stack.std(dtype=np.float64), rel=1e-5)
        assert mrc.is_image_stack()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


def test_single_image_and_volume(tmp_path):
    img = np.arange(36, dtype=np.float32).reshape(6, 6)
    write_mrc(tmp_path / "img.mrc", img, 1.25)
    data, px = read_mrc(tmp_path / "img.mrc")
    np.testing.assert_array_equal(data, img)
    assert px == pytest.approx(1.25)
    assert read_mrcs(tmp_path / "img.mrc")[0].shape == (1, 6, 6)
    with mrcfile.open(tmp_path / "img.mrc") as mrc:
        assert float(mrc.header.cella.z) == pytest.approx(1.0)
    vol = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    write_mrc(tmp_path / "vol.mrc", vol, 2.0)
    with mrcfile.open(tmp_path / "vol.mrc") as mrc:
        assert tuple(float(v) for v in mrc.voxel_size.tolist()) == pytest.approx((2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match=r"\(K, N, N\)"):
        write_mrcs(tmp_path / "bad.mrcs", img, 1.0)


def test_overwrite_is_atomic_replacement(tmp_path):
    path = tmp_path / "s.mrcs"
    write_mrcs(path, np.zeros((2, 4, 4), np.float32), 1.0)
    write_mrcs(path, np.ones((3, 4, 4), np.float32), 1.0)
    data, _ = read_mrcs(path)
    assert data.shape == (3, 4, 4) and np.all(data == 1)


def test_complex_stack_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(2)
    moments = (rng.normal(size=(3, 8, 5)) + 1j * rng.normal(size=(3, 8, 5))).astype(np.complex64)
    path = tmp_path / "run_it010_1moment.mrcs"
    write_complex_stack(path, moments)
    raw = mrcfile.read(path)
    assert raw.shape == (3, 8, 10) and raw.dtype == np.float32
    np.testing.assert_array_equal(raw[..., 0::2], moments.real)  # interleaved (re, im)
    np.testing.assert_array_equal(raw[..., 1::2], moments.imag)
    np.testing.assert_array_equal(read_complex_stack(path), moments)
    with pytest.raises(ValueError, match="complex"):
        write_complex_stack(path, moments.real)


def test_missing_and_complex_files(tmp_path):
    with pytest.raises(MrcFileError, match=r"nothere\.mrcs: file not found"):
        read_mrcs(tmp_path / "nothere.mrcs")
    with mrcfile.new(tmp_path / "c.mrc") as mrc:
        mrc.set_data(np.zeros((4, 4), np.complex64))
    with pytest.raises(MrcFileError, match=r"mode 4 \(complex\)"):
        read_mrc(tmp_path / "c.mrc")


@needs_fixtures
def test_reads_relion_class_stacks():
    for path in (FIXTURES / "Class2D/job001/run_it025_classes.mrcs", FIXTURES / "Class2D/job002/run_it100_classes.mrcs"):
        data, px = read_mrcs(path)
        assert data.shape == (4, 64, 64) and data.dtype == np.float32
        assert px == pytest.approx(3.0)
        assert np.isfinite(data).all() and data.std() > 0


@needs_fixtures
def test_reads_relion_moment_stacks():
    # K = 4, pf = 2, N = 64: (2K, pf*N, pf*N/2 + 1) for moment 1, K images for moment 2.
    m1 = read_complex_stack(FIXTURES / "Class2D/job002/run_it100_1moment.mrcs")
    m2 = read_complex_stack(FIXTURES / "Class2D/job002/run_it100_2moment.mrcs")
    assert m1.shape == (8, 128, 65) and m1.dtype == np.complex64
    assert m2.shape == (4, 128, 65)
    assert np.abs(m1).max() > 0


def test_our_stack_matches_relion_header_layout(tmp_path):
    """Same header fields as RELION's own class stack, except the label text."""
    if not FIXTURES.is_dir():
        pytest.skip("RELION 5 fixtures not available")
    theirs = FIXTURES / "Class2D/job001/run_it025_classes.mrcs"
    data, px = read_mrcs(theirs)
    ours = tmp_path / "classes.mrcs"
    write_mrcs(ours, data, px)
    with mrcfile.open(theirs) as a, mrcfile.open(ours) as b:
        for field in ("nx", "ny", "nz", "mode", "mx", "my", "mz", "ispg", "nsymbt", "mapc", "mapr", "maps", "nlabl"):
            assert int(a.header[field]) == int(b.header[field]), field
        for field in ("cella", "cellb"):
            assert tuple(a.header[field].tolist()) == pytest.approx(tuple(b.header[field].tolist())), field
        assert bytes(a.header.map) == bytes(b.header.map)
