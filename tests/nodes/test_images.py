"""ImageSource: N@stack names, lazy memory-mapped reads, and the errors users will meet."""
from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from fixture_paths import RELION5_CLASS2D
from emclass2d.nodes.io.images import ImageReadError, ImageSource, parse_image_name
from emclass2d.nodes.io.mrc import write_mrc, write_mrcs
from emclass2d.nodes.io.particles import ParticleTable, image_source_for
from emclass2d.nodes.io.star import write_star

FIXTURES = RELION5_CLASS2D


def _stack(path: Path, k: int, n: int = 8, offset: float = 0.0) -> np.ndarray:
    # Image i is filled with offset + i so reads can be checked by value.
    data = (offset + np.arange(k, dtype=np.float32))[:, None, None] * np.ones((1, n, n), np.float32)
    write_mrcs(path, data, 1.5)
    return data


def test_parse_image_name():
    assert parse_image_name("000012@Extract/job007/mic.mrcs") == (12, "Extract/job007/mic.mrcs")
    assert parse_image_name("3@a.mrcs") == (3, "a.mrcs")
    assert parse_image_name("00000001@b.mrcs") == (1, "b.mrcs")
    assert parse_image_name("single.mrc") == (None, "single.mrc")
    with pytest.raises(ValueError, match="start at 1"):
        parse_image_name("0@a.mrcs")
    with pytest.raises(ValueError, match="positive integer"):
        parse_image_name("x@a.mrcs")


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="RELION 5 fixtures not available")
def test_fixture_reads_match_mrcfile():
    table = ParticleTable.read(FIXTURES / "particles.star")
    reference = mrcfile.read(FIXTURES / "particles.mrcs")
    idx = np.array([499, 3, 3, 0, 250, 17])
    with image_source_for(table, FIXTURES) as source:
        images = source.read(idx)
        assert images.shape == (6, 64, 64) and images.dtype == np.float32
        np.testing.assert_array_equal(images, reference[idx])
        chunks = list(source.iter_batches(200))
        assert [len(c[0]) for c in chunks] == [200, 200, 100]
        np.testing.assert_array_equal(chunks[2][1], reference[400:])
        assert source.files == [FIXTURES / "particles.mrcs"]


def test_several_stacks_any_order(tmp_path):
    a = _stack(tmp_path / "a.mrcs", 3)
    b = _stack(tmp_path / "sub" / "b.mrcs", 4, offset=10)
    names = ["2@a.mrcs", "4@sub/b.mrcs", "1@a.mrcs", "01@sub/b.mrcs", "3@a.mrcs"]
    expected = np.stack([a[1], b[3], a[0], b[0], a[2]])
    for max_open in (1, 8):
        source = ImageSource(names, project_dir=tmp_path, box_size=8, max_open=max_open)
        np.testing.assert_array_equal(source.read(np.arange(5)), expected)
        np.testing.assert_array_equal(source.read([4, 1, 1]), expected[[4, 1, 1]])
        assert len(source._open) <= max_open
        source.close()
        np.testing.assert_array_equal(source.read([0]), expected[:1])  # reopens after close
        source.close()
    assert source.location(1) == (tmp_path / "sub" / "b.mrcs", 3)


def test_absolute_paths(tmp_path):
    a = _stack(tmp_path / "a.mrcs", 2)
    source = ImageSource([f"2@{tmp_path / 'a.mrcs'}"], project_dir="/nonexistent")
    np.testing.assert_array_equal(source.read([0]), a[1:])


def _table_with_names(tmp_path: Path, names: list[str], box: int = 8) -> ParticleTable:
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnAmplitudeContrast": [0.1], "rlnSphericalAberration": [2.7],
                           "rlnVoltage": [300.0], "rlnImagePixelSize": [1.5], "rlnImageSize": [box],
                           "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": names, "rlnMicrographName": ["m.mrc"] * len(names),
                          "rlnOpticsGroup": [1] * len(names)})
    path = tmp_path / "particles.star"
    write_star(path, {"optics": optics, "particles": parts})
    return ParticleTable.read(path)


def test_missing_stack_names_file_and_first_row(tmp_path):
    _stack(tmp_path / "a.mrcs", 2)
    table = _table_with_names(tmp_path, ["1@a.mrcs", "2@a.mrcs", "1@gone.mrcs", "2@gone.mrcs"])
    source = image_source_for(table, tmp_path)
    np.testing.assert_array_equal(source.read([1]).shape, (1, 8, 8))
    with pytest.raises(ImageReadError, match=r"gone\.mrcs: image stack not found \(referred to by row 3 of .*particles\.star"):
        source.read([3])
    with pytest.raises(ImageReadError, match="gone.mrcs"):
        source.check()


def test_index_out_of_range_names_row_file_and_size(tmp_path):
    _stack(tmp_path / "a.mrcs", 2)
    table = _table_with_names(tmp_path, ["1@a.mrcs", "000005@a.mrcs"])
    with pytest.raises(ImageReadError, match=r"row 2 of .*particles\.star data_particles: rlnImageName '000005@a\.mrcs' "
                                             r"asks for image 5 but .*a\.mrcs holds 2 image"):
        image_source_for(table, tmp_path).read([0])


def test_wrong_box_size(tmp_path):
    _stack(tmp_path / "a.mrcs", 2, n=10)
    table = _table_with_names(tmp_path, ["1@a.mrcs"], box=8)
    with pytest.raises(ImageReadError, match=r"a\.mrcs: images are 10 x 10 px but data_optics rlnImageSize is 8"):
        image_source_for(table, tmp_path).read([0])


def test_complex_mode_refused(tmp_path):
    with mrcfile.new(tmp_path / "c.mrcs") as mrc:
        mrc.set_data(np.zeros((2, 8, 8), np.complex64))
    assert mrcfile.open(tmp_path / "c.mrcs").header.mode == 4
    with pytest.raises(ImageReadError, match=r"c\.mrcs: MRC mode 4 holds complex numbers"):
        ImageSource(["1@c.mrcs"], tmp_path).read([0])


def test_single_image_and_mrc_stack(tmp_path):
    img = np.arange(64, dtype=np.float32).reshape(8, 8)
    write_mrc(tmp_path / "one.mrc", img, 1.0)
    source = ImageSource(["one.mrc", "1@one.mrc"], tmp_path, box_size=8)
    np.testing.assert_array_equal(source.read([0, 1]), np.stack([img, img]))
    with pytest.raises(ImageReadError, match=r"image 2 but .*one\.mrc holds 1 image"):
        ImageSource(["2@one.mrc"], tmp_path).read([0])
    # A stack in a .mrc file: read (tolerant), with a warning that RELION would refuse it.
    data = np.stack([img, img + 100])
    with mrcfile.new(tmp_path / "stack.mrc") as mrc:
        mrc.set_data(data)
    with pytest.warns(UserWarning, match="RELION only reads stacks named .mrcs"):
        out = ImageSource(["2@stack.mrc"], tmp_path).read([0])
    np.testing.assert_array_equal(out[0], img + 100)
    with pytest.raises(ImageReadError, match=r"holds 2 sections but particle 1 names it without an index"):
        ImageSource(["stack.mrc"], tmp_path).read([0])


def test_integer_mode_converted_to_float32(tmp_path):
    data = np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8)
    with mrcfile.new(tmp_path / "i.mrcs") as mrc:
        mrc.set_data(data)
    out = ImageSource(["2@i.mrcs"], tmp_path).read([0])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], data[1].astype(np.float32))


def test_bad_image_name_names_row(tmp_path):
    with pytest.raises(ImageReadError, match=r"particle 2: bad rlnImageName \(image name '0@a\.mrcs': image indices start at 1\)"):
        ImageSource(["1@a.mrcs", "0@a.mrcs"], tmp_path)
