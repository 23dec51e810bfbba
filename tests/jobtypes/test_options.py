"""Option validation: valid values, each kind of invalid value, Yes/No, command-line words."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: echo_plugin
import echo_plugin  # noqa: E402

from emclass2d.jobtypes.cli.tokens import TokenError, parse_job_tokens  # noqa: E402
from emclass2d.jobtypes.running import OptionsError, allowed_text, validate_options  # noqa: E402

JOB = echo_plugin.EchoJob()


def test_valid_values_from_strings():
    opts = validate_options(JOB, {"nr_iter": "7", "scale": "0.5", "message": "hi there", "do_fail": "No"})
    assert (opts.nr_iter, opts.scale, opts.message, opts.do_fail) == (7, 0.5, "hi there", False)
    assert opts.to_job_star() == {"fn_in": "", "fn_cont": "", "message": "hi there", "nr_iter": "7",
                                  "scale": "0.5", "do_fail": "No", "sleep_s": "0"}


def test_base_values_are_overridden():
    opts = validate_options(JOB, {"nr_iter": "9"}, base={"nr_iter": "2", "message": "old"})
    assert (opts.nr_iter, opts.message) == (9, "old")


@pytest.mark.parametrize("text, expected", [("Yes", True), ("No", False), ("yes", True), ("true", True),
                                            ("1", True), ("0", False), ("false", False)])
def test_yes_no_parsing(text, expected):
    assert validate_options(JOB, {"do_fail": text}).do_fail is expected


def test_bad_boolean_says_yes_or_no():
    with pytest.raises(OptionsError) as err:
        validate_options(JOB, {"do_fail": "maybe"})
    assert "--do_fail 'maybe'" in str(err.value) and "Yes or No" in str(err.value)


def test_bad_type():
    with pytest.raises(OptionsError) as err:
        validate_options(JOB, {"nr_iter": "many"})
    msg = str(err.value)
    assert "testpkg.echo" in msg and "--nr_iter 'many'" in msg and "integer >= 1 and <= 1000" in msg


def test_out_of_range_lists_every_bad_option():
    with pytest.raises(OptionsError) as err:
        validate_options(JOB, {"nr_iter": "0", "scale": "-2", "sleep_s": "-1"})
    lines = str(err.value).splitlines()
    assert len(lines) == 4  # heading + one line per bad option
    assert any("--nr_iter '0'" in ln and ">= 1" in ln for ln in lines)
    assert any("--scale '-2'" in ln and "number > 0" in ln for ln in lines)
    assert any("--sleep_s '-1'" in ln and "number >= 0" in ln for ln in lines)


def test_unknown_option_suggests_closest():
    with pytest.raises(OptionsError) as err:
        validate_options(JOB, {"nr_iters": "3", "zzz": "1"})
    msg = str(err.value)
    assert "--nr_iters (did you mean --nr_iter?)" in msg
    assert "--zzz" in msg and "--zzz (did" not in msg


def test_allowed_text():
    info = echo_plugin.EchoOptions.field_info("scale")
    assert allowed_text(info) == "number > 0"
    assert allowed_text({"type": str, "choices": ["em", "vdam"]}) == "one of em, vdam"


def test_command_line_words():
    assert parse_job_tokens(["testpkg.echo", "--nr_iter", "4", "--do_fail", "--scale=-0.5", "--offset", "-1"],
                            positional="TYPE") == ("testpkg.echo", {"nr_iter": "4", "do_fail": "Yes",
                                                                    "scale": "-0.5", "offset": "-1"})
    assert parse_job_tokens(["--message", "a b"], positional="TYPE") == (None, {"message": "a b"})
    with pytest.raises(TokenError, match="given twice"):
        parse_job_tokens(["--a", "1", "--a", "2"])
    with pytest.raises(TokenError, match="unexpected word 'x'"):
        parse_job_tokens(["--a", "1", "x"], positional="TYPE")


@pytest.mark.parametrize(("relion4", "algorithm", "iterations"), [
    ({"nr_iter": "100", "do_grad": "Yes"}, "vdam", 100),  # the RELION 4.0 tutorial's settings
    ({"nr_iter": "30", "do_grad": "No"}, "em", 30),
    ({"nr_iter": "30", "do_grad": "Yes", "nr_iter_grad": "150"}, "vdam", 150),  # RELION 5's name wins
])
def test_relion4_job_star_iterations(relion4, algorithm, iterations):
    from emclass2d.jobtypes.class2d.options import Class2DOptions

    values = {"fn_img": "Extract/job012/particles.star", "nr_classes": "100", "tau_fudge": "2",
              "particle_diameter": "200", "do_zero_mask": "Yes", "highres_limit": "-1", "do_center": "Yes",
              "do_fast_subsets": "No", **relion4}  # do_fast_subsets: a RELION 3.1/4 name we do not use
    opts = Class2DOptions.from_job_star(values, ignore_unknown=True)
    assert (opts.do_grad, opts.do_em) == (algorithm == "vdam", algorithm == "em")
    assert opts.nr_iter == iterations
    assert "nr_iter" not in opts.to_job_star()  # written back with RELION 5's names
    with pytest.raises(ValueError, match="do_fast_subsets"):
        Class2DOptions.from_job_star(values)  # unknown names are refused unless ignored


def test_relion4_iterations_through_the_command_line_path():
    """`emclass2d run --job-star` of a RELION 4.0 job.star goes through validate_options."""
    from emclass2d.jobtypes.registry import get_registry

    class2d = get_registry().get("emclass2d.class2d")
    opts = validate_options(class2d, {"fn_img": "p.star", "nr_iter": "100", "do_grad": "Yes"})
    assert (opts.do_grad, opts.nr_iter_grad) == (True, 100)
    opts = validate_options(class2d, {"fn_img": "p.star", "nr_iter": "25", "do_grad": "No"})
    assert (opts.do_em, opts.nr_iter_em) == (True, 25)
