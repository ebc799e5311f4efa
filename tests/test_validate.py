"""The declarative argument checks: each constraint's message, checks before the body runs, and
the public functions state their options."""

from __future__ import annotations

import pytest
import torch

import landscape
from landscape import LandscapeError
from landscape._validate import Integer, OneOf, Optional, Positive, Real, validate_params


@pytest.mark.parametrize("constraint, good, bad, message", [
    (OneOf(("a", None)), [None, "a"], ["b", 1, torch.tensor(1.0)],
     r"x must be one of \('a', None\)"),
    (OneOf((False, True, "f")), [True, "f"], [1, 0, "g"], "x must be one of"),
    (OneOf(("single",), "a width in inches"), ["single"], ["wide"],
     r"x must be one of \('single',\) or a width in inches; got 'wide'\."),
    (Integer(2), [2, 10], [1, 2.0, True, "3"], "x must be an integer >= 2"),
    (Positive(), [1e-9, 3], [0, -1, float("inf"), True, "1"], "x must be a number positive"),
    (Positive(1.0), [0.5], [1.0], r"x must be a number in \(0, 1.0\)"),
    (Real(0.0), [0, 0.5], [-0.1, float("nan"), True], "x must be a finite number >= 0"),
    (Optional(Integer(1)), [None, 1], [0], "x must be an integer >= 1"),
])
def test_each_constraint_names_the_option_and_what_it_must_be(constraint, good, bad, message):
    for value in good:
        constraint("x", value)
    for value in bad:
        with pytest.raises(LandscapeError, match=message):
            constraint("x", value)


def test_decorated_function_checks_before_its_body_runs():
    ran = []

    @validate_params(kind=OneOf(("a", "b")), n=Integer(1))
    def f(x, *, kind="a", n=1):
        ran.append(x)
        return x

    assert f(3, kind="b") == 3
    with pytest.raises(LandscapeError, match="kind must be one of"):
        f(4, kind="c")
    with pytest.raises(LandscapeError, match="n must be an integer"):
        f(5, n=0)
    assert ran == [3]
    assert set(f.__constraints__) == {"kind", "n"}
    with pytest.raises(TypeError):
        f()  # a call Python itself refuses is worded by Python


def test_constraints_must_name_parameters():
    with pytest.raises(TypeError, match="no parameters"):
        validate_params(kindd=OneOf(("a",)))(lambda kind="a": kind)


@pytest.mark.parametrize("fn, option", [
    (landscape.sharpness, "norm"), (landscape.sharpness, "m"), (landscape.audit, "budget"),
    (landscape.compare, "buffers"), (landscape.interpolate, "buffers"),
    (landscape.random_direction, "normalization"), (landscape.pac_bayes_flatness, "noise"),
    (landscape.first_order_flatness, "perturb"), (landscape.local_entropy, "sampler"),
])
def test_public_functions_state_their_options(fn, option):
    assert option in fn.__constraints__
