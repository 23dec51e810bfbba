"""ParticleTable against RELION 5's own reading of the fixture (run_it025_data.star)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixture_paths import RELION5_CLASS2D
from emclass2d.nodes.io.particles import ParticleTable, group_name_from_micrograph
from emclass2d.nodes.io.star import StarFileError, read_star, write_star

FIXTURES = RELION5_CLASS2D
PARTICLES = FIXTURES / "particles.star"
RELION_DATA = FIXTURES / "Class2D" / "job001" / "run_it025_data.star"

pytestmark = pytest.mark.skipif(not PARTICLES.is_file(), reason="RELION 5 fixtures not available")


@pytest.fixture(scope="module")
def blocks():
    return read_star(PARTICLES)


@pytest.fixture(scope="module")
def relion_particles():
    return read_star(RELION_DATA)["particles"]


def _write(tmp_path: Path, optics: pd.DataFrame | None, particles: pd.DataFrame, name: str = "p.star") -> Path:
    path = tmp_path / name
    out = {} if optics is None else {"optics": optics}
    out["particles"] = particles
    write_star(path, out)
    return path


def test_fixture_basics(blocks):
    table = ParticleTable.read(PARTICLES)
    assert table.n_particles == 500
    assert table.box_size == 64
    assert table.pixel_size_A == 3.0
    assert table.n_groups == 10
    assert table.group_names[0] == "Micrographs/mic001.mrc"
    assert table.group_index.dtype == np.int32 and table.optics_index.dtype == np.int32
    assert np.all(table.optics_index == 0)
    assert np.array_equal(table.group_counts(), np.full(10, 50))


def test_columns_and_groups_equal_relion(relion_particles):
    """Our columns (input + RELION's defaults, in order) and rlnGroupNumber match RELION's output."""
    table = ParticleTable.read(PARTICLES)
    ours = table.to_blocks()["particles"]
    added = ["rlnGroupNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
             "rlnOriginXAngst", "rlnOriginYAngst", "rlnClassNumber", "rlnNormCorrection"]
    assert list(ours.columns) == list(relion_particles.columns[: len(ours.columns)])
    assert list(ours.columns[-8:]) == added
    assert list(ours["rlnImageName"]) == list(relion_particles["rlnImageName"])
    assert np.array_equal(ours["rlnGroupNumber"].to_numpy(), relion_particles["rlnGroupNumber"].to_numpy())
    assert ours["rlnClassNumber"].dtype == np.int64 and ours["rlnGroupNumber"].dtype == np.int64
    assert np.all(ours["rlnNormCorrection"] == 1.0)


def test_shuffled_input_is_sorted_like_relion(tmp_path, blocks, relion_particles):
    """Micrographs in reverse, particles interleaved: the stable sort restores RELION's order."""
    parts = blocks["particles"]
    mic = parts["rlnMicrographName"].to_numpy()
    rng = np.random.default_rng(7)
    # Shuffle the rows but keep each micrograph's particles in their relative order.
    labels = rng.permutation(np.repeat(np.unique(mic)[::-1], 50))
    order = np.empty(len(parts), dtype=np.int64)
    for m in np.unique(mic):
        order[labels == m] = np.flatnonzero(mic == m)
    shuffled = parts.iloc[order].reset_index(drop=True)
    assert list(shuffled["rlnImageName"]) != list(relion_particles["rlnImageName"])
    path = _write(tmp_path, blocks["optics"], shuffled)
    table = ParticleTable.read(path)
    assert list(table.particles["rlnImageName"]) == list(relion_particles["rlnImageName"])
    assert np.array_equal(table.group_index + 1, relion_particles["rlnGroupNumber"].to_numpy())
    # original_row points back into the shuffled file.
    back = shuffled["rlnImageName"].to_numpy()[table.original_row]
    assert list(back) == list(relion_particles["rlnImageName"])


def test_group_names_and_first_appearance(tmp_path, blocks):
    parts = blocks["particles"].iloc[:6].copy()
    parts["rlnMicrographName"] = ["MotionCorr/job002/Movies/b.mrc"] * 3 + ["MotionCorr/job002/Movies/a.mrc"] * 3
    table = ParticleTable.read(_write(tmp_path, blocks["optics"], parts))
    assert table.group_names == ["Movies/a.mrc", "Movies/b.mrc"]  # sorted first, then first appearance
    assert list(table.group_index) == [0, 0, 0, 1, 1, 1]
    parts["rlnGroupName"] = ["g2", "g1", "g2", "g1", "g1", "g2"]
    table = ParticleTable.read(_write(tmp_path, blocks["optics"], parts, "g.star"))
    # After the sort (a.mrc rows first): g1, g1, g2, g2, g1, g2
    assert table.group_names == ["g1", "g2"]
    assert list(table.group_index) == [0, 0, 1, 1, 0, 1]


def test_group_name_from_micrograph():
    assert group_name_from_micrograph("MotionCorr/job002/Movies/mic1.mrc") == "Movies/mic1.mrc"
    assert group_name_from_micrograph("CtfFind/job1234/x/mic.mrc") == "x/mic.mrc"
    assert group_name_from_micrograph("Micrographs/mic001.mrc") == "Micrographs/mic001.mrc"


def test_pre31_file_is_refused_with_conversion_hint(tmp_path, blocks):
    path = tmp_path / "old.star"
    write_star(path, {"": blocks["particles"]})
    with pytest.raises(StarFileError, match=r"old\.star.*data_optics.*relion_convert_star --i"):
        ParticleTable.read(path)


@pytest.mark.parametrize("label", ["rlnVoltage", "rlnImageSize", "rlnAmplitudeContrast", "rlnSphericalAberration"])
def test_missing_optics_label(tmp_path, blocks, label):
    path = _write(tmp_path, blocks["optics"].drop(columns=[label]), blocks["particles"])
    with pytest.raises(StarFileError, match=rf"p\.star: data_optics lacks required label\(s\) _{label}"):
        ParticleTable.read(path)


def test_legacy_pixel_size_label_is_named(tmp_path, blocks):
    optics = blocks["optics"].rename(columns={"rlnImagePixelSize": "rlnPixelSize"})
    with pytest.raises(StarFileError, match=r"_rlnImagePixelSize.*found _rlnPixelSize"):
        ParticleTable.read(_write(tmp_path, optics, blocks["particles"]))


def test_missing_image_name(tmp_path, blocks):
    with pytest.raises(StarFileError, match=r"data_particles lacks required label _rlnImageName"):
        ParticleTable.read(_write(tmp_path, blocks["optics"], blocks["particles"].drop(columns=["rlnImageName"])))


def test_unknown_optics_group_names_row(tmp_path, blocks):
    parts = blocks["particles"].copy()
    parts.loc[41, "rlnOpticsGroup"] = 3
    with pytest.raises(StarFileError, match=r"data_particles row 42: _rlnOpticsGroup 3 is not in data_optics"):
        ParticleTable.read(_write(tmp_path, blocks["optics"], parts))


def _two_groups(blocks, **changes):
    optics = pd.concat([blocks["optics"]] * 2, ignore_index=True)
    optics["rlnOpticsGroup"] = [1, 2]
    for label, values in changes.items():
        optics[label] = values
    parts = blocks["particles"].copy()
    parts["rlnOpticsGroup"] = np.where(np.arange(len(parts)) % 2, 2, 1)
    return optics, parts


def test_mixed_pixel_sizes_refused(tmp_path, blocks):
    optics, parts = _two_groups(blocks, rlnImagePixelSize=[3.0, 2.5])
    with pytest.raises(StarFileError, match=r"different pixel sizes.*group 1: 3\.0 Å, group 2: 2\.5 Å"):
        ParticleTable.read(_write(tmp_path, optics, parts))


def test_mixed_box_sizes_refused(tmp_path, blocks):
    optics, parts = _two_groups(blocks, rlnImageSize=[64, 128])
    with pytest.raises(StarFileError, match=r"different box sizes"):
        ParticleTable.read(_write(tmp_path, optics, parts))


def test_two_optics_groups(tmp_path, blocks):
    optics, parts = _two_groups(blocks, rlnVoltage=[300.0, 200.0], rlnCtfDataAreCtfPremultiplied=[0, 1])
    table = ParticleTable.read(_write(tmp_path, optics, parts))
    assert np.array_equal(table.optics_index, np.where(table.particles["rlnOpticsGroup"] == 2, 1, 0))
    ctf = table.ctf_parameters()
    assert np.array_equal(ctf["voltage_kV"], np.where(table.optics_index == 1, 200.0, 300.0))
    assert np.array_equal(ctf["ctf_premultiplied"], table.optics_index == 1)
    with pytest.raises(StarFileError, match=r"lacks _rlnOpticsGroup but data_optics has 2"):
        ParticleTable.read(_write(tmp_path, optics, parts.drop(columns=["rlnOpticsGroup"]), "q.star"))


def test_non_numeric_value_names_row(tmp_path, blocks):
    parts = blocks["particles"].copy()
    parts["rlnDefocusU"] = parts["rlnDefocusU"].astype(object)
    parts.loc[9, "rlnDefocusU"] = "abc"
    with pytest.raises(StarFileError, match=r"data_particles row 10: _rlnDefocusU is 'abc', expected a number"):
        ParticleTable.read(_write(tmp_path, blocks["optics"], parts))


def test_ctf_defaults_and_check(tmp_path, blocks):
    parts = blocks["particles"].drop(columns=["rlnDefocusV", "rlnDefocusAngle"])
    table = ParticleTable.read(_write(tmp_path, blocks["optics"], parts))
    ctf = table.ctf_parameters([0, 5])
    assert np.array_equal(ctf["defocus_v_A"], ctf["defocus_u_A"])
    assert np.all(ctf["defocus_angle_deg"] == 0) and np.all(ctf["ctf_scale"] == 1)
    assert np.all(ctf["phase_shift_deg"] == 0) and np.all(ctf["ctf_bfactor_A2"] == 0)
    assert np.all(ctf["cs_mm"] == 2.7) and np.all(ctf["amplitude_contrast"] == 0.1)
    assert not ctf["ctf_premultiplied"].any()
    assert all(v.dtype == np.float64 for k, v in ctf.items() if k != "ctf_premultiplied")
    no_ctf = ParticleTable.read(_write(tmp_path, blocks["optics"], parts.drop(columns=["rlnDefocusU"]), "n.star"))
    with pytest.raises(StarFileError, match=r"lacks _rlnDefocusU, needed for CTF correction"):
        no_ctf.check_ctf_labels()
    batch = no_ctf.make_batch([0, 1], np.zeros((2, 64, 64), np.float32), with_ctf=False)
    assert np.all(batch.defocus_u_A == 0) and np.all(batch.ctf_scale == 1)


def test_make_batch(blocks, relion_particles):
    table = ParticleTable.from_blocks({"optics": blocks["optics"], "particles": relion_particles}, source="data")
    idx = np.array([4, 0, 260])
    images = np.zeros((3, 64, 64), np.float32)
    batch = table.make_batch(idx, images)
    assert batch.size == 3
    expect_x = relion_particles["rlnOriginXAngst"].to_numpy()[idx] / 3.0
    expect_y = relion_particles["rlnOriginYAngst"].to_numpy()[idx] / 3.0
    np.testing.assert_allclose(batch.origin_px[:, 0], expect_x, rtol=1e-6)
    np.testing.assert_allclose(batch.origin_px[:, 1], expect_y, rtol=1e-6)
    assert batch.origin_px.dtype == np.float32
    assert list(batch.group) == [0, 0, 5]
    np.testing.assert_allclose(batch.norm_correction, relion_particles["rlnNormCorrection"].to_numpy()[idx], rtol=1e-6)
    np.testing.assert_array_equal(batch.defocus_u_A, relion_particles["rlnDefocusU"].to_numpy()[idx])


def test_warn_small_groups(tmp_path, blocks):
    parts = blocks["particles"].copy()
    parts.loc[:2, "rlnMicrographName"] = "Micrographs/tiny.mrc"
    table = ParticleTable.read(_write(tmp_path, blocks["optics"], parts))
    messages = table.warn_small_groups(min_count=10)
    assert len(messages) == 1 and "Micrographs/tiny.mrc" in messages[0] and "3 particle" in messages[0]
    assert table.warn_small_groups(min_count=3) == []


def test_set_column_and_round_trip(tmp_path):
    table = ParticleTable.read(PARTICLES)
    table.set_column("rlnClassNumber", [2, 3], index=[0, 1])
    table.set_column("rlnNrOfSignificantSamples", 1, dtype=np.int64)
    table.set_column("rlnLogLikeliContribution", np.arange(500, dtype=float))
    out = tmp_path / "run_it001_data.star"
    write_star(out, table.to_blocks())
    again = ParticleTable.read(out)
    assert list(again.particles["rlnClassNumber"][:3]) == [2, 3, 0]
    assert again.particles["rlnNrOfSignificantSamples"].dtype == np.int64
    assert np.array_equal(again.particles["rlnLogLikeliContribution"], np.arange(500.0))
    assert np.array_equal(again.group_index, table.group_index)
    assert list(again.particles.columns) == list(table.particles.columns)
