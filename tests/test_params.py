"""Tests for refundguard._params: value predicates, constraint descriptions and check_params."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from numbers import Integral, Real

import numpy as np
import pytest

from refundguard._params import (
    Interval,
    ListOf,
    MappingOf,
    Options,
    Unchecked,
    check_params,
    describe,
    is_finite_real,
    is_int,
    is_python_real,
)
from refundguard.errors import ConfigError

# value -> (is_int, is_finite_real, is_python_real)
PREDICATES = [
    (3, True, True, True),
    (-1, True, True, True),
    (np.int64(3), True, True, False),
    (True, False, False, False),
    (np.bool_(True), False, False, False),
    (0.5, False, True, True),
    (np.float64(0.5), False, True, True),
    (np.float32(0.5), False, True, False),
    (Fraction(1, 2), False, True, False),
    (math.nan, False, False, False),
    (math.inf, False, False, True),
    (-math.inf, False, False, True),
    ("1", False, False, False),
    (None, False, False, False),
]


@pytest.mark.parametrize(("value", "int_", "finite_real", "python_real"), PREDICATES)
def test_predicates(value, int_, finite_real, python_real):
    assert is_int(value) is int_
    assert is_finite_real(value) is finite_real
    assert is_python_real(value) is python_real


def test_interval_bounds_and_text():
    leaves = Interval(Integral, 2, 131072, closed="both")
    assert [leaves.is_satisfied_by(v) for v in (1, 2, 131072, 131073, 2.0, np.int32(7), True)] == [
        False, True, True, False, False, True, False,
    ]
    assert str(leaves) == "an int in the range [2, 131072]"
    share = Interval(Real, 0, 1, closed="right")
    assert [share.is_satisfied_by(v) for v in (0, 0.0, 1e-300, 1, 1.5, math.nan, np.float32(0.5))] == [
        False, False, True, True, False, False, True,
    ]
    assert str(share) == "a float in the range (0.0, 1.0]"
    positive = Interval(Real, 0, None, closed="neither")
    assert str(positive) == "a float in the range (0.0, inf)"
    assert not positive.is_satisfied_by(math.inf)  # non-finite values never satisfy a Real interval
    assert str(Interval(Integral, 1, None, closed="left")) == "an int in the range [1, inf)"
    assert str(Interval(Integral, None, 0, closed="right")) == "an int in the range (-inf, 0]"
    anything = Interval(Integral, None, None, closed="neither")
    assert str(anything) == "an int" and anything.is_satisfied_by(-(10**30)) and not anything.is_satisfied_by(1.0)


def test_interval_rejects_bad_definitions():
    with pytest.raises(TypeError, match="kind"):
        Interval(str, 0, 1, closed="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="closed"):
        Interval(Real, 0, 1, closed="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reversed"):
        Interval(Real, 1, 0, closed="both")


def test_options_mapping_list_and_unchecked():
    auto = Options(str, {"auto"})
    assert auto.is_satisfied_by("auto") and not auto.is_satisfied_by("Auto") and str(auto) == "'auto'"
    sign = Options(Integral, {1, 0, -1})
    assert sign.is_satisfied_by(np.int8(-1)) and not sign.is_satisfied_by(True) and not sign.is_satisfied_by(1.0)
    assert str(sign) == "an int among {-1, 0, 1}"
    mono = MappingOf(sign, key="feature")
    assert mono.is_satisfied_by({}) and mono.is_satisfied_by({"a": 1}) and not mono.is_satisfied_by({"a": 2})
    assert not mono.is_satisfied_by([("a", 1)])
    assert str(mono) == "a mapping of feature -> an int among {-1, 0, 1}"
    names = ListOf("feature names or positions")
    assert names.is_satisfied_by(["a", 0]) and names.is_satisfied_by(()) and not names.is_satisfied_by("a")
    assert not names.is_satisfied_by({"a"})
    assert Unchecked("why").is_satisfied_by(object())


def test_describe_joins_like_scikit_learn():
    assert describe([None]) == "None"
    assert describe([None, Interval(Integral, 1, None, closed="left")]) == "None or an int in the range [1, inf)"
    assert describe([None, Options(str, {"balanced"}), ListOf("classes")]) == "None, 'balanced' or a list of classes"


def test_check_params_raises_the_first_broken_rule_in_table_order():
    rules = {
        "a": [Interval(Integral, 1, None, closed="left")],
        "b": [None, Interval(Real, 0, 1, closed="both")],
        "c": [Unchecked("checked later")],
    }
    check_params("Owner", rules, {"a": 1, "b": None, "c": object(), "not_in_table": 0})
    with pytest.raises(ConfigError, match=re.escape("The 'b' parameter of Owner must be None or a float in the range [0.0, 1.0]. Got 2 instead.")) as e:
        check_params("Owner", rules, {"a": 1, "b": 2, "c": None})
    assert (e.value.owner, e.value.field, e.value.value) == ("Owner", "b", 2)
    with pytest.raises(ConfigError, match=re.escape("The 'a' parameter of Owner must be an int in the range [1, inf). Got 0 instead.")):
        check_params("Owner", rules, {"a": 0, "b": 2, "c": None})
    with pytest.raises(KeyError):
        check_params("Owner", rules, {"a": 1})
