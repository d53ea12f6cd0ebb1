"""Parameter checking: value predicates and declarative parameter rules.

Two parts, used by :mod:`refundguard.config` and the model estimator:

* **Predicates** with one meaning per name. :func:`is_int` and
  :func:`is_finite_real` accept any integral / real number (Python or NumPy), the
  way an estimator's parameters arrive from a grid search;
  :func:`is_python_real` accepts only Python ``int`` / ``float`` (the values a
  configuration writes to JSON).
* **Rules as data**, modelled on scikit-learn's ``_parameter_constraints``: an
  owner declares ``{parameter: [constraint, ...]}`` with :class:`Interval`,
  :class:`Options`, :class:`MappingOf`, :class:`ListOf`, ``None`` or
  :class:`Unchecked`, and :func:`check_params` raises one
  :class:`~refundguard.errors.ConfigError` in scikit-learn's wording for the first
  parameter that satisfies none of its constraints::

      The 'num_leaves' parameter of RefundAbuseClassifier must be an int in the
      range [2, 131072]. Got 1 instead.

This is refundguard's own small copy of the idea: scikit-learn's
``sklearn.utils._param_validation`` is private API and raises its own exception type.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from refundguard.errors import ConfigError

__all__ = [
    "Constraint",
    "Interval",
    "ListOf",
    "MappingOf",
    "Options",
    "Unchecked",
    "check_params",
    "describe",
    "is_finite_real",
    "is_int",
    "is_python_real",
]


# ----------------------------------------------------------------------------- predicates


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer, Python or NumPy (``numbers.Integral``), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number, Python or NumPy, and not a bool.

    Any ``numbers.Real`` counts (``int``, ``float``, ``numpy.int64``,
    ``numpy.float32``, ``fractions.Fraction``, ...); NaN and infinities do not.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def is_python_real(value: Any) -> bool:
    """Whether ``value`` is a Python ``int`` or ``float`` that is not NaN (and not a bool).

    Subclasses count (``numpy.float64`` is a ``float``), other NumPy scalars such as
    ``numpy.int64`` or ``numpy.float32`` do not. Infinities pass: the caller bounds
    the range (every range check rejects them).
    """
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )


# ----------------------------------------------------------------------------- constraints


class Constraint(Protocol):
    """What :func:`check_params` needs from a rule: a test and a readable description."""

    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` follows the rule."""
        ...

    def __str__(self) -> str:
        """The rule in words, completing "must be ..." (e.g. ``"an int in the range [1, inf)"``)."""
        ...


_Kind = type[numbers.Integral | numbers.Real | str]


def _is_kind(kind: _Kind, value: Any) -> bool:
    if kind is numbers.Integral:
        return is_int(value)
    if kind is numbers.Real:
        return is_finite_real(value)
    return isinstance(value, kind)


def _kind_text(kind: _Kind) -> str:
    return {numbers.Integral: "an int", numbers.Real: "a float", str: "a str"}[kind]


class _NoneConstraint:
    """The value ``None`` (written as plain ``None`` in a rule list)."""

    def is_satisfied_by(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


class Interval:
    """Numbers of one kind between two bounds.

    Parameters
    ----------
    kind : numbers.Integral or numbers.Real
        ``Integral``: :func:`is_int` values. ``Real``: :func:`is_finite_real`
        values (ints count as reals; NaN and infinities never satisfy the rule).
    left, right : number or None
        The bounds; ``None`` means unbounded on that side. With both ``None`` the
        rule is "any int" / "any finite float".
    closed : {"left", "right", "both", "neither"}
        Which bounds belong to the interval.

    Examples
    --------
    >>> import numbers
    >>> str(Interval(numbers.Integral, 2, 131072, closed="both"))
    'an int in the range [2, 131072]'
    >>> str(Interval(numbers.Real, 0, 1, closed="right"))
    'a float in the range (0.0, 1.0]'
    >>> Interval(numbers.Integral, 1, None, closed="left").is_satisfied_by(0)
    False
    """

    def __init__(
        self,
        kind: type[numbers.Integral | numbers.Real],
        left: float | None,
        right: float | None,
        *,
        closed: Literal["left", "right", "both", "neither"],
    ) -> None:
        if kind not in (numbers.Integral, numbers.Real):
            raise TypeError(f"Interval kind must be numbers.Integral or numbers.Real; got {kind!r}.")
        if closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"Interval closed must be 'left', 'right', 'both' or 'neither'; got {closed!r}.")
        if left is not None and right is not None and right < left:
            raise ValueError(f"Interval bounds are reversed: [{left}, {right}].")
        self.kind = kind
        self.left = left
        self.right = right
        self.closed = closed

    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` is of the interval's kind and within its bounds."""
        if not _is_kind(self.kind, value):
            return False
        left_open = self.closed in ("right", "neither")
        right_open = self.closed in ("left", "neither")
        if self.left is not None and (value < self.left or (left_open and value == self.left)):
            return False
        return not (self.right is not None and (value > self.right or (right_open and value == self.right)))

    def _bound(self, bound: float | None, infinity: str) -> str:
        if bound is None:
            return infinity
        return str(float(bound)) if self.kind is numbers.Real else str(int(bound))

    def __str__(self) -> str:
        kind = _kind_text(self.kind)
        if self.left is None and self.right is None:
            return kind
        open_ = "[" if self.closed in ("left", "both") and self.left is not None else "("
        close = "]" if self.closed in ("right", "both") and self.right is not None else ")"
        return f"{kind} in the range {open_}{self._bound(self.left, '-inf')}, {self._bound(self.right, 'inf')}{close}"

    def __repr__(self) -> str:
        return f"Interval({self.kind.__name__}, {self.left!r}, {self.right!r}, closed={self.closed!r})"


class Options:
    """A value of one kind from a fixed set.

    Parameters
    ----------
    kind : numbers.Integral, numbers.Real or str
        The value must be of this kind (bools are never ints).
    values : collection
        The allowed values.

    Examples
    --------
    >>> import numbers
    >>> str(Options(str, {"auto"}))
    "'auto'"
    >>> str(Options(numbers.Integral, {1, -1, 0}))
    'an int among {-1, 0, 1}'
    """

    def __init__(self, kind: _Kind, values: Sequence[Any] | set[Any] | frozenset[Any]) -> None:
        if kind not in (numbers.Integral, numbers.Real, str):
            raise TypeError(f"Options kind must be numbers.Integral, numbers.Real or str; got {kind!r}.")
        self.kind = kind
        self.values = frozenset(values)
        if not self.values:
            raise ValueError("Options needs at least one value.")

    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` is of the right kind and one of the options."""
        return _is_kind(self.kind, value) and value in self.values

    def __str__(self) -> str:
        shown = sorted(self.values)
        if len(shown) == 1:
            return repr(shown[0])
        return f"{_kind_text(self.kind)} among {{{', '.join(repr(v) for v in shown)}}}"

    def __repr__(self) -> str:
        return f"Options({self.kind.__name__}, {sorted(self.values)!r})"


class MappingOf:
    """A mapping (dict) whose every value follows one rule; the keys are not checked.

    Parameters
    ----------
    values
        The rule for each value.
    key : str
        What the keys are, for the description (e.g. ``"feature"``).

    Examples
    --------
    >>> import numbers
    >>> str(MappingOf(Options(numbers.Integral, (-1, 0, 1)), key="feature"))
    'a mapping of feature -> an int among {-1, 0, 1}'
    """

    def __init__(self, values: Constraint, *, key: str) -> None:
        self.values = values
        self.key = key

    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` is a Mapping whose values all follow the rule."""
        return isinstance(value, Mapping) and all(self.values.is_satisfied_by(v) for v in value.values())

    def __str__(self) -> str:
        return f"a mapping of {self.key} -> {self.values}"

    def __repr__(self) -> str:
        return f"MappingOf({self.values!r}, key={self.key!r})"


class ListOf:
    """A list-like value (any ``Sequence`` but a str); its items are described, not checked.

    The owner checks the items where it has the context to do so (for example,
    that each one names a column of ``X`` in ``fit``).

    Parameters
    ----------
    items : str
        What the items are, for the description (e.g. ``"feature names or positions"``).

    Examples
    --------
    >>> str(ListOf("feature names or positions"))
    'a list of feature names or positions'
    """

    def __init__(self, items: str) -> None:
        self.items = items

    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` is a Sequence and not a str."""
        return isinstance(value, Sequence) and not isinstance(value, str)

    def __str__(self) -> str:
        return f"a list of {self.items}"

    def __repr__(self) -> str:
        return f"ListOf({self.items!r})"


class Unchecked:
    """A parameter that :func:`check_params` deliberately leaves alone, with the reason.

    Parameters
    ----------
    reason : str
        Who checks it instead (e.g. ``"sklearn's check_random_state in fit"``).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def is_satisfied_by(self, value: Any) -> bool:
        """Always true."""
        return True

    def __str__(self) -> str:
        return f"anything (unchecked: {self.reason})"

    def __repr__(self) -> str:
        return f"Unchecked({self.reason!r})"


def _as_constraint(rule: Constraint | None) -> Constraint:
    return _NoneConstraint() if rule is None else rule


def describe(rules: Sequence[Constraint | None]) -> str:
    """The rules of one parameter in words: ``"None or an int in the range [1, inf)"``."""
    texts = [str(_as_constraint(r)) for r in rules]
    if len(texts) <= 1:
        return "".join(texts)
    return f"{', '.join(texts[:-1])} or {texts[-1]}"


def check_params(owner: str, constraints: Mapping[str, Sequence[Constraint | None]], params: Mapping[str, Any]) -> None:
    """Check parameters against their declared rules, in the order of ``constraints``.

    Parameters
    ----------
    owner
        The class (or function) whose parameters these are, for the message.
    constraints
        Parameter name -> the constraints it may satisfy (any one is enough);
        ``None`` in a list stands for the value ``None``.
    params
        Parameter name -> value; must hold every name of ``constraints``.

    Raises
    ------
    ConfigError
        For the first parameter that satisfies none of its constraints, worded
        ``"The 'x' parameter of Owner must be <rules>. Got <value> instead."``.
    """
    for name, rules in constraints.items():
        value = params[name]
        if not any(_as_constraint(rule).is_satisfied_by(value) for rule in rules):
            raise ConfigError.invalid(owner, name, describe(rules), value)
