"""Probability distributions for service times, connect times and replica lag.

A scenario file describes every random duration with a small TOML table such as
``{ dist = "exponential", mean = 0.005 }``.  This module turns those tables into
immutable objects that know their exact mean and coefficient of variation (the
numbers queueing theory needs) and can draw many samples at once from a NumPy
random generator (the thing the simulator needs).  ``to_dict`` gives the TOML
form back, so a parsed scenario can be written out and read in again unchanged.

All durations are in seconds and must be finite and non-negative: a negative
service time has no meaning, and an infinite one would stall the simulation.

The module also holds ``ScenarioError`` and the few validation helpers that
``simlib.scenario`` shares with it.  They live here, not in ``scenario.py``,
because the scenario parser imports this module: defining them in the
scenario module would make the two modules import each other.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

__all__ = [
    "MAX_EMPIRICAL_SAMPLES",
    "Constant",
    "Distribution",
    "Empirical",
    "Exponential",
    "Lognormal",
    "ScenarioError",
    "Uniform",
    "parse_distribution",
]

# A calibrated empirical distribution is a list of measurements.  A million is
# far more than any calibration run produces, and keeps files loadable quickly.
MAX_EMPIRICAL_SAMPLES = 1_000_000


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class Missing(enum.Enum):
    """Markers for "there is no value here".

    ``MISSING`` is the value of a required field the user left out; error
    messages show it as ``got nothing``.  ``NO_VALUE`` means an error is not
    about a value at all (an unreadable file), so the message has no ``got``.
    An enum rather than bare ``object()`` sentinels so they survive pickling.
    """

    MISSING = "nothing"
    NO_VALUE = "no value"


MISSING = Missing.MISSING
NO_VALUE = Missing.NO_VALUE


class ScenarioError(ValueError):
    """A scenario that cannot be run, explained in one line.

    ``str(error)`` reads ``<dotted.field>: <what is allowed>, got <bad value>``,
    for example ``pool.pool_size: must be an integer >= 0, got -3``.  The command
    line prints exactly that line, so it must never span several lines.
    """

    def __init__(self, field: str, problem: str, got: object = NO_VALUE) -> None:
        # Passing all three to ValueError keeps the exception picklable
        # (pickle re-creates it as ScenarioError(*self.args)).
        super().__init__(field, problem, got)
        self.field = field
        self.problem = problem
        self.got = got
        text = f"{field}: {problem}"
        if got is not NO_VALUE:
            text += f", got {describe(got)}"
        self.message = _one_line(text)

    def __str__(self) -> str:
        return self.message


def _one_line(text: str) -> str:
    # A last line of defence: a user's key or file name could contain a line
    # break, and the error line must stay a single line.
    return "\\n".join(text.splitlines()) if text else text


def describe(value: object) -> str:
    """Show a bad value the way the user wrote it (TOML spelling, short)."""
    if isinstance(value, Missing):
        return value.value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        number = int(value)
        # str() of an int with thousands of digits raises ValueError (CPython's
        # guard against slow conversions), so describe huge ones instead.
        text = str(number) if number.bit_length() <= 256 else "a huge integer"
    elif isinstance(value, numbers.Real):
        # repr(float) already spells inf and nan the way TOML does.
        text = repr(float(value))
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(describe(item) for item in value[:10])
        text += ", ...]" if len(value) > 10 else "]"
    elif isinstance(value, Mapping):
        items = [f"{_key(str(k))} = {describe(v)}" for k, v in list(value.items())[:10]]
        text = "{" + ", ".join(items) + "}"
    elif hasattr(value, "isoformat"):  # TOML dates and times
        text = value.isoformat()
    else:
        text = repr(value)
    # Keep messages readable even when someone passes a huge list or number.
    return text if len(text) <= 80 else text[:77] + "..."


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    """Spell a key as TOML would: bare if possible, else quoted."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def subfield(parent: str, key: object) -> str:
    """The dotted name of ``key`` inside the table ``parent`` ("" = top level)."""
    return f"{parent}.{_key(str(key))}" if parent else _key(str(key))


# ---------------------------------------------------------------------------
# Validation helpers shared with simlib.scenario
# ---------------------------------------------------------------------------


def is_number(value: object) -> bool:
    """True for ints and floats, but not for booleans.

    Python's ``bool`` is a subclass of ``int``, so ``isinstance(True, int)``
    holds; a scenario that says ``pool_size = true`` is a mistake, not a 1.
    ``numbers.Real`` also admits NumPy scalars, which parameter sweeps produce.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def check_number(
    field: str,
    value: object,
    allowed: str,
    ok: Callable[[float], bool],
    *,
    allow_inf: bool = False,
) -> float:
    """Return ``value`` as a float, or raise ScenarioError saying ``allowed``."""
    if not is_number(value):
        raise ScenarioError(field, allowed, value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer too large for a float
        raise ScenarioError(field, allowed, value) from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or not ok(number):
        raise ScenarioError(field, allowed, value)
    return number


def check_integer(field: str, value: object, allowed: str, ok: Callable[[int], bool]) -> int:
    """Return ``value`` as an int, or raise ScenarioError saying ``allowed``.

    Floats are refused even when whole (``5.0``): a pool of 2.5 connections is
    a typo, and accepting 5.0 but not 5.5 would be a surprising rule.
    """
    if not is_number(value) or not isinstance(value, numbers.Integral):
        raise ScenarioError(field, allowed, value)
    number = int(value)
    if not ok(number):
        raise ScenarioError(field, allowed, value)
    return number


def one_of(options: tuple[str, ...]) -> str:
    """The words of an error message for a choice: ``must be one of "a", "b"``."""
    return "must be one of " + ", ".join(json.dumps(o) for o in options)


# ---------------------------------------------------------------------------
# The distributions
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Constant:
    """Always the same duration: ``{ dist = "constant", value = 0.004 }``."""

    value: float

    @property
    def mean(self) -> float:
        return self.value

    @property
    def cv(self) -> float:
        return 0.0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.float64)

    def to_dict(self) -> dict[str, object]:
        return {"dist": "constant", "value": self.value}


@dataclass(frozen=True, slots=True)
class Exponential:
    """Memoryless durations, the "M" of M/M/c: ``{ dist = "exponential", mean }``."""

    mean: float

    @property
    def cv(self) -> float:
        # The standard deviation of an exponential equals its mean.
        return 1.0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, size=n)

    def to_dict(self) -> dict[str, object]:
        return {"dist": "exponential", "mean": self.mean}


@dataclass(frozen=True, slots=True)
class Lognormal:
    """Right-skewed durations given by their mean and coefficient of variation.

    People think about latency as "about 5 ms, give or take 50%", not in terms
    of the underlying normal's mu and sigma, so the file uses mean and cv and
    this class converts: sigma^2 = ln(1 + cv^2), mu = ln(mean) - sigma^2 / 2.
    """

    mean: float
    cv: float

    @property
    def sigma(self) -> float:
        return math.sqrt(math.log1p(self.cv**2))

    @property
    def mu(self) -> float:
        return math.log(self.mean) - self.sigma**2 / 2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(self.mu, self.sigma, size=n)

    def to_dict(self) -> dict[str, object]:
        return {"dist": "lognormal", "mean": self.mean, "cv": self.cv}


@dataclass(frozen=True, slots=True)
class Uniform:
    """Any duration between ``low`` and ``high``, all equally likely."""

    low: float
    high: float

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @property
    def cv(self) -> float:
        if self.mean == 0:
            return 0.0
        return (self.high - self.low) / math.sqrt(12) / self.mean

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=n)

    def to_dict(self) -> dict[str, object]:
        return {"dist": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True, slots=True)
class Empirical:
    """Measured durations, replayed by drawing from them with replacement.

    ``labs compare`` calibrates connect times this way: whatever shape the
    real distribution has, the simulation reuses it without fitting a model.
    """

    samples: tuple[float, ...]
    # The same samples as a NumPy array, built once: converting a long tuple on
    # every draw would cost more than the draw.  Not compared, hashed or shown.
    _array: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A frozen dataclass can still set its own fields while being built.
        object.__setattr__(self, "samples", tuple(float(x) for x in self.samples))
        object.__setattr__(self, "_array", np.asarray(self.samples, dtype=np.float64))

    @property
    def mean(self) -> float:
        return float(self._array.mean())

    @property
    def cv(self) -> float:
        mean = self.mean
        # Population standard deviation: the samples *are* the distribution.
        return 0.0 if mean == 0 else float(self._array.std()) / mean

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self._array, size=n, replace=True)

    def to_dict(self) -> dict[str, object]:
        return {"dist": "empirical", "samples": list(self.samples)}


Distribution: TypeAlias = Constant | Exponential | Lognormal | Uniform | Empirical


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def _non_negative(field: str, value: object) -> float:
    return check_number(field, value, "must be a number >= 0", lambda x: x >= 0)


def _positive(field: str, value: object) -> float:
    return check_number(field, value, "must be a number > 0", lambda x: x > 0)


def _samples(field: str, value: object) -> tuple[float, ...]:
    allowed = f"must be a non-empty array of numbers >= 0 (at most {MAX_EMPIRICAL_SAMPLES})"
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_EMPIRICAL_SAMPLES:
        raise ScenarioError(field, allowed, value)
    # Name the first bad element exactly, e.g. query.service_time.samples[3].
    return tuple(_non_negative(f"{field}[{i}]", x) for i, x in enumerate(value))


# A parameter's checker: (dotted field name, value) -> the value to store.
_Checker: TypeAlias = Callable[[str, object], object]

# For each dist: its class, and a checker for each of its (required) parameters.
_PARAMETERS: dict[str, tuple[Callable[..., Distribution], dict[str, _Checker]]] = {
    "constant": (Constant, {"value": _non_negative}),
    "exponential": (Exponential, {"mean": _positive}),
    "lognormal": (Lognormal, {"mean": _positive, "cv": _non_negative}),
    "uniform": (Uniform, {"low": _non_negative, "high": _non_negative}),
    "empirical": (Empirical, {"samples": _samples}),
}
_DIST_NAMES = tuple(_PARAMETERS)


def parse_distribution(field: str, obj: object) -> Distribution:
    """Validate the TOML form of a distribution found at ``field``.

    ``obj`` is a table such as ``{ dist = "lognormal", mean = 0.005, cv = 0.5 }``,
    or a bare number as shorthand for a constant.  An existing distribution
    object is accepted too (parameter sweeps pass them) and checked again.
    """
    if isinstance(obj, Constant | Exponential | Lognormal | Uniform | Empirical):
        obj = obj.to_dict()
    if is_number(obj):
        return Constant(_non_negative(field, obj))
    if not isinstance(obj, Mapping):
        raise ScenarioError(
            field,
            'must be a number >= 0 or a table such as { dist = "exponential", mean = 0.005 }',
            obj,
        )

    name = obj.get("dist", MISSING)
    # Check the type first: an unhashable value (a list) cannot be looked up.
    if not isinstance(name, str) or name not in _PARAMETERS:
        raise ScenarioError(f"{field}.dist", one_of(_DIST_NAMES), name)
    cls, checkers = _PARAMETERS[name]

    values: dict[str, object] = {}
    for key, value in obj.items():
        if key == "dist":
            continue
        if key not in checkers:
            allowed = ", ".join(checkers)
            raise ScenarioError(
                subfield(field, key),
                f'not a parameter of dist "{name}" (allowed: {allowed})',
                value,
            )
        values[key] = checkers[key](f"{field}.{key}", value)
    for key, check in checkers.items():
        if key not in values:
            # Run the checker on MISSING to reuse its "must be ..." wording.
            try:
                check(f"{field}.{key}", MISSING)
            except ScenarioError as error:
                raise ScenarioError(
                    error.field, f'required for dist "{name}", {error.problem}', MISSING
                ) from None

    if name == "uniform" and values["high"] < values["low"]:  # type: ignore[operator]
        raise ScenarioError(
            f"{field}.high",
            f"must be a number >= low ({describe(values['low'])})",
            values["high"],
        )
    return cls(**values)
