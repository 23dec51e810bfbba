"""Class2D iteration files: read RELION 5's, write ours, and compare label by label."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from fixture_paths import RELION5_CLASS2D
from emclass2d.nodes.files.class2d import (
    OPTIMISER_GENERAL, class_image_name, class_spectrum_table, classes_table, continue_root,
    find_latest_optimiser, groups_table, iteration_root, model_general_block, model_star_blocks,
    optics_noise_table, optimiser_general_block, parse_optimiser_name, read_class2d_iteration,
    read_model_star, read_optimiser_star, write_data_star, write_model_star, write_optimiser_star,
    write_sampling_star,
)
from emclass2d.nodes.io.star import StarFileError, read_star, write_star

FIXTURES = RELION5_CLASS2D
RUNS = {"em": ("job001", 25), "vdam": ("job002", 100)}
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="RELION 5 fixtures not available")


def _relion_file(kind: str, what: str) -> Path:
    job, it = RUNS[kind]
    return FIXTURES / "Class2D" / job / f"run_it{it:03d}_{what}.star"


def _assert_same_star(ours: Path, theirs: Path) -> None:
    """Both files parsed by starfile: same blocks, same labels in the same order, equal values."""
    a = starfile.read(ours, always_dict=True)
    b = starfile.read(theirs, always_dict=True)
    assert list(a) == list(b)
    for name in b:
        x, y = a[name], b[name]
        assert type(x) is type(y), name
        if isinstance(y, pd.DataFrame):
            assert list(x.columns) == list(y.columns), name
            assert len(x) == len(y), name
            for col in y.columns:
                assert list(x[col]) == list(y[col]), (name, col)
        else:
            assert list(x) == list(y), name
            for label in y:
                assert x[label] == y[label], (name, label)


def _data_lines(path: Path) -> list[str]:
    """Lines after the header comments; list-table lines as tokens (padding differs, see report)."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("# RELION") or line.startswith("# emclass2d") or line.startswith("# --"):
            continue
        if line.startswith("_rln") and "#" not in line:
            out.append(" ".join(line.split()))
        else:
            out.append(line)
    return out


@needs_fixtures
@pytest.mark.parametrize("kind", ["em", "vdam"])
def test_rewrite_relion_iteration(tmp_path, kind):
    job, it = RUNS[kind]
    run = read_class2d_iteration(f"Class2D/{job}/run_it{it:03d}_optimiser.star", FIXTURES)
    assert run.iteration == it and run.n_classes == 4 and run.output_root == f"Class2D/{job}/run"
    assert run.data.n_particles == 500 and run.data.n_groups == 10
    assert run.classes_path == FIXTURES / "Class2D" / job / f"run_it{it:03d}_classes.mrcs"
    classes, px = run.read_class_images()
    assert classes.shape == (4, 64, 64) and px == pytest.approx(3.0)
    assert run.model.pdf_class.sum() == pytest.approx(1.0, abs=1e-5)
    assert run.optimiser.general["rlnDoGradientRefine"] is (kind == "vdam")
    assert run.optimiser.command_line.startswith(f"--o Class2D/{job}/run ")
    if kind == "vdam":
        assert run.model.moment_stacks == (f"Class2D/{job}/run_it100_1moment.mrcs", f"Class2D/{job}/run_it100_2moment.mrcs")
    else:
        assert run.model.moment_stacks is None

    written = {
        "optimiser": tmp_path / "optimiser.star", "model": tmp_path / "model.star",
        "data": tmp_path / "data.star", "sampling": tmp_path / "sampling.star",
    }
    write_optimiser_star(written["optimiser"], run.optimiser.general, run.optimiser.command_line, version="0.1.0")
    m = run.model
    write_model_star(written["model"], m.general, m.classes, m.class_spectra, m.groups, m.optics_noise)
    write_data_star(written["data"], run.data.to_blocks())
    write_sampling_star(written["sampling"], run.sampling)
    for what, path in written.items():
        _assert_same_star(path, _relion_file(kind, what))
        assert _data_lines(path) == _data_lines(_relion_file(kind, what)), what
    # Loop tables and the data.star are byte-identical to RELION's.
    assert written["data"].read_text() == _relion_file(kind, "data").read_text()
    lines = written["optimiser"].read_text().splitlines()
    theirs = _relion_file(kind, "optimiser").read_text().splitlines()
    assert lines[0] == "# emclass2d optimiser; version 0.1.0"
    assert lines[1] == theirs[1]  # the command line, trailing space included


@needs_fixtures
def test_read_optimiser_types_and_defaults(tmp_path):
    opt = read_optimiser_star(_relion_file("em", "optimiser"))
    g = opt.general
    assert list(g)[:3] == ["rlnOutputRootName", "rlnModelStarFile", "rlnExperimentalDataStarFile"]
    assert "rlnModelStarFile2" not in g
    assert g["rlnDoCorrectCtf"] is True and g["rlnRandomSeed"] == 1795266401
    assert g["rlnTomoTomogramsFile"] == "" and g["rlnSolventMaskName"] == "None"
    assert isinstance(g["rlnBestResolutionThusFar"], float) and isinstance(g["rlnSmallestChangesClasses"], int)
    assert opt.header == "# RELION optimiser; version 5.0.1"
    # Older files: labels RELION reads with defaults, and the pixel-unit accuracy label.
    text = _relion_file("em", "optimiser").read_text()
    text = text.replace("_rlnGradEmIters                                                  0\n", "")
    text = text.replace("_rlnOverallAccuracyTranslationsAngst ", "_rlnOverallAccuracyTranslations      ")
    old = tmp_path / "old_optimiser.star"
    old.write_text(text)
    g = read_optimiser_star(old).general
    assert g["rlnGradEmIters"] == 1 and g["rlnOverallAccuracyTranslationsAngst"] == pytest.approx(0.9)
    broken = tmp_path / "broken_optimiser.star"
    broken.write_text(text.replace("_rlnCurrentIteration ", "_rlnSomethingElse "))
    with pytest.raises(StarFileError, match=r"broken_optimiser\.star: .*missing value\(s\) for _rlnCurrentIteration"):
        read_optimiser_star(broken)


def test_optimiser_block_builder():
    required = dict(rlnOutputRootName="Class2D/job013/run", rlnModelStarFile="m.star",
                    rlnExperimentalDataStarFile="d.star", rlnOrientSamplingStarFile="s.star",
                    rlnCurrentIteration=3, rlnNumberOfIterations=25, rlnRandomSeed=7, rlnParticleDiameter=150)
    block = optimiser_general_block(**{**required, "rlnDoZeroMask": 1, "rlnRandomSeed": np.int64(9)})
    assert list(block) == [label for label, _, default in OPTIMISER_GENERAL if label != "rlnModelStarFile2"]
    assert block["rlnDoZeroMask"] is True and block["rlnParticleDiameter"] == 150.0
    assert type(block["rlnRandomSeed"]) is int and block["rlnTomoTomogramsFile"] == ""
    with pytest.raises(ValueError, match=r"missing value\(s\) for _rlnRandomSeed"):
        optimiser_general_block(**{k: v for k, v in required.items() if k != "rlnRandomSeed"})
    with pytest.raises(ValueError, match=r"unknown label\(s\) _rlnNotALabel"):
        optimiser_general_block(**required, rlnNotALabel=1)
    with pytest.raises(ValueError, match=r"_rlnCurrentIteration: expected INT"):
        optimiser_general_block(**{**required, "rlnCurrentIteration": 2.5})


@needs_fixtures
def test_model_builders_reproduce_relion_tables(tmp_path):
    theirs = read_model_star(_relion_file("em", "model"))
    spec = theirs.class_spectra[0]
    ours = class_spectrum_table(
        64, 3.0, spec["rlnSsnrMap"], spec["rlnFourierCompleteness"], spec["rlnReferenceSigma2"],
        spec["rlnReferenceTau2"], orientability=spec["rlnSpectralOrientabilityContribution"])
    assert list(ours.columns) == list(spec.columns)
    path = tmp_path / "one.star"
    write_star(path, {"a": ours})
    again = read_star(path)["a"]
    for col in spec.columns:  # equal at RELION's printed precision
        np.testing.assert_array_equal(again[col].to_numpy(), spec[col].to_numpy(), err_msg=col)
    classes = classes_table(
        "Class2D/job001/run_it025_classes.mrcs", theirs.pdf_class, theirs.classes["rlnAccuracyRotations"],
        theirs.classes["rlnAccuracyTranslationsAngst"], theirs.classes["rlnEstimatedResolution"],
        theirs.classes["rlnOverallFourierCompleteness"], theirs.classes["rlnClassPriorOffsetX"],
        theirs.classes["rlnClassPriorOffsetY"])
    pd.testing.assert_frame_equal(classes, theirs.classes)
    sigma2 = np.r_[theirs.optics_noise[0]["rlnSigma2Noise"].to_numpy(), 0.0]  # a shell with no noise estimate
    noise = optics_noise_table(64, 3.0, sigma2)
    pd.testing.assert_frame_equal(noise, theirs.optics_noise[0], check_exact=False, rtol=1e-5, atol=5e-7)
    groups = groups_table(theirs.groups["rlnGroupName"], theirs.groups["rlnGroupNrParticles"],
                          theirs.groups["rlnGroupScaleCorrection"])
    pd.testing.assert_frame_equal(groups, theirs.groups)
    blocks = model_star_blocks(theirs.general, classes, theirs.class_spectra, groups, [noise])
    assert list(blocks) == list(read_star(_relion_file("em", "model")))
    with pytest.raises(ValueError, match="rlnNrClasses is 4 but 3 class rows"):
        model_star_blocks(theirs.general, classes.iloc[:3], theirs.class_spectra, groups, [noise])


def test_vdam_classes_table_and_helical_omission():
    t = classes_table("r_classes.mrcs", [0.5, 0.5], [1, 2], [1, 1], [10, 10], [1, 1], [0, 0], [0, 0],
                      moment1_path="r_1moment.mrcs", moment2_path="r_2moment.mrcs")
    assert list(t.columns[:4]) == ["rlnReferenceImage", "rlnGradMoment1", "rlnGradMoment2", "rlnClassDistribution"]
    assert t["rlnGradMoment1"].tolist() == ["00000001@r_1moment.mrcs", "00000002@r_1moment.mrcs"]
    general = model_general_block(rlnOriginalImageSize=64, rlnCurrentResolution=10.1, rlnCurrentImageSize=58,
                                  rlnPixelSize=3, rlnNrClasses=2, rlnNrGroups=1, rlnTau2FudgeFactor=2,
                                  rlnSigmaOffsetsAngst=3.6)
    assert "rlnNrHelicalAsymUnits" not in general and general["rlnIsHelix"] is False
    assert list(general)[:5] == ["rlnReferenceDimensionality", "rlnDataDimensionality", "rlnOriginalImageSize",
                                 "rlnCurrentResolution", "rlnCurrentImageSize"]


@needs_fixtures
def test_pre4_model_with_group_noise(tmp_path):
    blocks = read_star(_relion_file("em", "model"))
    noise = blocks.pop("model_optics_group_1")
    for g in range(1, 11):  # RELION 3.x: one noise spectrum per scale group
        scaled = noise.copy()
        scaled["rlnSigma2Noise"] = noise["rlnSigma2Noise"] * g
        blocks[f"model_group_{g}"] = scaled
    path = tmp_path / "old_model.star"
    write_star(path, blocks)
    model = read_model_star(path)
    assert model.pre4 and len(model.group_noise) == 10
    np.testing.assert_allclose(model.optics_noise[0]["rlnSigma2Noise"], noise["rlnSigma2Noise"] * 5.5, rtol=1e-6)


def test_naming_helpers(tmp_path):
    assert iteration_root("Class2D/job013/run", 25) == "Class2D/job013/run_it025"
    assert iteration_root("run", 1234) == "run_it1234"
    assert continue_root("Class2D/job013/run", 25) == "Class2D/job013/run_ct25"
    assert class_image_name(1, "Class2D/job013/run_it025_classes.mrcs") == "00000001@Class2D/job013/run_it025_classes.mrcs"
    assert parse_optimiser_name("run_ct25_it030_optimiser.star") == ("run_ct25", 30)
    assert parse_optimiser_name("run_it025_model.star") is None
    assert find_latest_optimiser(tmp_path) is None
    for name in ("run_it000", "run_it025", "run_ct25_it025", "run_ct25_it026", "run2_it099", "run_unmasked_it099"):
        (tmp_path / f"{name}_optimiser.star").write_text("")
    assert find_latest_optimiser(tmp_path).name == "run_ct25_it026_optimiser.star"
    (tmp_path / "run_ct25_ct26_it026_optimiser.star").write_text("")
    assert find_latest_optimiser(tmp_path).name == "run_ct25_ct26_it026_optimiser.star"
    (tmp_path / "run_it030_optimiser.star").write_text("")
    assert find_latest_optimiser(tmp_path).name == "run_it030_optimiser.star"


@needs_fixtures
def test_missing_files_name_the_label(tmp_path):
    job = tmp_path / "Class2D" / "job001"
    shutil.copytree(FIXTURES / "Class2D" / "job001", job)
    shutil.copy(FIXTURES / "particles.star", tmp_path)
    opt = "Class2D/job001/run_it025_optimiser.star"
    assert read_class2d_iteration(opt, tmp_path).iteration == 25
    (job / "run_it025_classes.mrcs").unlink()
    with pytest.raises(StarFileError, match=r"run_it025_model\.star: _rlnReferenceImage names Class2D/job001/run_it025_classes\.mrcs"):
        read_class2d_iteration(opt, tmp_path)
    (job / "run_it025_sampling.star").unlink()
    with pytest.raises(StarFileError, match=r"_rlnOrientSamplingStarFile names Class2D/job001/run_it025_sampling\.star, which does not exist"):
        read_class2d_iteration(opt, tmp_path)
    (job / "run_it025_model.star").unlink()
    with pytest.raises(StarFileError, match=r"run_it025_optimiser\.star: _rlnModelStarFile names .*which does not exist"):
        read_class2d_iteration(opt, tmp_path)
    with pytest.raises(StarFileError, match=r"optimiser\.star not found"):
        read_class2d_iteration("Class2D/job001/run_it026_optimiser.star", tmp_path)
