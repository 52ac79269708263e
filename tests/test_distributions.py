"""Tests for simlib.distributions: exact moments, sampling, parsing.

Sampling tests draw n = 200,000 values with a fixed seed and compare sample
statistics with the exact values.  The tolerance is five standard errors of
the statistic, computed from the distribution itself.  A correct sampler then
fails with probability below one in a million (for a normal statistic), while
a wrong parameterisation (say, sigma where sigma^2 was meant) is off by many
standard errors and fails for certain.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest

from simlib.distributions import (
    MAX_EMPIRICAL_SAMPLES,
    Constant,
    Distribution,
    Empirical,
    Exponential,
    Lognormal,
    ScenarioError,
    Uniform,
    parse_distribution,
)

N = 200_000
Z = 5.0  # tolerance in standard errors


def rng(seed: int = 20240521) -> np.random.Generator:
    return np.random.default_rng(seed)


ALL: list[Distribution] = [
    Constant(0.004),
    Exponential(0.005),
    Lognormal(0.005, 0.5),
    Lognormal(2.0, 3.0),
    Uniform(0.001, 0.009),
    Empirical((0.003, 0.004, 0.004, 0.010)),
]


# --- moments -----------------------------------------------------------------


def test_exact_means_and_cvs() -> None:
    assert Constant(3.0).mean == 3.0 and Constant(3.0).cv == 0.0
    assert Exponential(0.2).mean == 0.2 and Exponential(0.2).cv == 1.0
    assert Lognormal(0.2, 0.7).mean == 0.2 and Lognormal(0.2, 0.7).cv == 0.7
    assert Uniform(1.0, 3.0).mean == 2.0
    assert Uniform(1.0, 3.0).cv == pytest.approx((2.0 / math.sqrt(12)) / 2.0)
    assert Uniform(0.0, 0.0).cv == 0.0
    e = Empirical((1.0, 2.0, 3.0, 4.0))
    assert e.mean == 2.5
    assert e.cv == pytest.approx(float(np.std([1, 2, 3, 4])) / 2.5)  # population std
    assert Empirical((0.0, 0.0)).cv == 0.0


def test_lognormal_parameters() -> None:
    d = Lognormal(0.005, 0.5)
    assert d.sigma**2 == pytest.approx(math.log(1 + 0.25))
    assert d.mu == pytest.approx(math.log(0.005) - d.sigma**2 / 2)
    # The mean of a lognormal is exp(mu + sigma^2 / 2): the parameterisation
    # must give back exactly the mean we asked for.
    assert math.exp(d.mu + d.sigma**2 / 2) == pytest.approx(0.005)


# --- sampling ----------------------------------------------------------------


@pytest.mark.parametrize("dist", ALL, ids=repr)
def test_sample_shape_and_type(dist: Distribution) -> None:
    x = dist.sample(rng(), 1000)
    assert isinstance(x, np.ndarray)
    assert x.dtype == np.float64 and x.shape == (1000,)
    assert (x >= 0).all()
    assert dist.sample(rng(), 0).shape == (0,)


@pytest.mark.parametrize("dist", ALL, ids=repr)
def test_sample_mean_within_five_standard_errors(dist: Distribution) -> None:
    x = dist.sample(rng(), N)
    standard_error = dist.cv * dist.mean / math.sqrt(N)
    assert abs(x.mean() - dist.mean) <= Z * standard_error + 1e-12


@pytest.mark.parametrize("dist", ALL, ids=repr)
def test_sampling_is_reproducible(dist: Distribution) -> None:
    assert np.array_equal(dist.sample(rng(7), 500), dist.sample(rng(7), 500))


def test_constant_samples_are_constant() -> None:
    assert (Constant(0.25).sample(rng(), 100) == 0.25).all()


def test_uniform_samples_stay_in_range() -> None:
    x = Uniform(0.002, 0.003).sample(rng(), N)
    assert x.min() >= 0.002 and x.max() <= 0.003


@pytest.mark.parametrize("cv", [0.25, 0.5, 1.0, 2.0])
def test_lognormal_log_is_normal_with_mu_and_sigma(cv: float) -> None:
    # log X ~ Normal(mu, sigma): its sample mean has standard error
    # sigma / sqrt(n), and its sample sd has standard error sigma / sqrt(2n).
    d = Lognormal(0.005, cv)
    logs = np.log(d.sample(rng(), N))
    assert abs(logs.mean() - d.mu) <= Z * d.sigma / math.sqrt(N)
    assert abs(logs.std() - d.sigma) <= Z * d.sigma / math.sqrt(2 * N)


@pytest.mark.parametrize("cv", [0.25, 0.5, 1.0])
def test_lognormal_sample_cv(cv: float) -> None:
    d = Lognormal(0.005, cv)
    x = d.sample(rng(), N)
    # Standard error of the sample sd by the delta method: Var(s^2) is about
    # (m4 - var^2) / n, with m4 the fourth central moment, and
    # sd = sqrt(var) gives SE(sd) = SE(var) / (2 sd).  Lognormal raw moments
    # are E[X^k] = exp(k mu + k^2 sigma^2 / 2).
    raw = [math.exp(k * d.mu + k * k * d.sigma**2 / 2) for k in range(5)]
    m = raw[1]
    var = raw[2] - m**2
    m4 = raw[4] - 4 * m * raw[3] + 6 * m**2 * raw[2] - 3 * m**4
    se_sd = math.sqrt((m4 - var**2) / N) / (2 * math.sqrt(var))
    # cv = sd / mean; adding the two error terms ignores their (positive)
    # covariance, which makes the bound conservative.
    se_cv = math.hypot(se_sd / m, cv * (math.sqrt(var) / math.sqrt(N)) / m)
    assert abs(x.std() / x.mean() - cv) <= Z * se_cv


def test_lognormal_with_zero_cv_is_constant() -> None:
    assert np.allclose(Lognormal(0.005, 0.0).sample(rng(), 100), 0.005)


def test_empirical_draws_each_sample_equally_often() -> None:
    values = (0.001, 0.002, 0.005, 0.010)
    x = Empirical(values).sample(rng(), N)
    assert set(np.unique(x)) <= set(values)
    p = 1 / len(values)
    for v in values:
        # A frequency is a binomial proportion: SE = sqrt(p (1 - p) / n).
        assert abs((x == v).mean() - p) <= Z * math.sqrt(p * (1 - p) / N)


def test_empirical_keeps_duplicates_as_weights() -> None:
    x = Empirical((1.0, 1.0, 1.0, 2.0)).sample(rng(), N)
    assert abs((x == 1.0).mean() - 0.75) <= Z * math.sqrt(0.75 * 0.25 / N)


# --- value semantics -----------------------------------------------------------


@pytest.mark.parametrize("dist", ALL, ids=repr)
def test_frozen_hashable_picklable(dist: Distribution) -> None:
    # Assign to a real field: on Python 3.11 assigning a name that is not a
    # field of a slotted frozen dataclass raises TypeError instead (a CPython bug).
    first = dataclasses.fields(dist)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(dist, first, 1.0)
    assert hash(dist) == hash(pickle.loads(pickle.dumps(dist)))
    assert pickle.loads(pickle.dumps(dist)) == dist


def test_empirical_equality_ignores_cached_array() -> None:
    assert Empirical((1.0, 2.0)) == Empirical((1, 2))  # ints become floats
    assert Empirical((1.0, 2.0)) != Empirical((2.0, 1.0))
    assert "array" not in repr(Empirical((1.0,)))


# --- parsing -----------------------------------------------------------------


@pytest.mark.parametrize("dist", ALL, ids=repr)
def test_to_dict_round_trips(dist: Distribution) -> None:
    assert parse_distribution("x", dist.to_dict()) == dist


def test_to_dict_forms() -> None:
    assert Constant(0.004).to_dict() == {"dist": "constant", "value": 0.004}
    assert Exponential(0.005).to_dict() == {"dist": "exponential", "mean": 0.005}
    assert Lognormal(1.0, 0.5).to_dict() == {"dist": "lognormal", "mean": 1.0, "cv": 0.5}
    assert Uniform(0.0, 1.0).to_dict() == {"dist": "uniform", "low": 0.0, "high": 1.0}
    assert Empirical((1.0, 2.0)).to_dict() == {"dist": "empirical", "samples": [1.0, 2.0]}


def test_bare_number_is_a_constant() -> None:
    assert parse_distribution("d", 0.004) == Constant(0.004)
    assert parse_distribution("d", 0) == Constant(0.0)
    assert isinstance(parse_distribution("d", 3).mean, float)


def test_ints_become_floats() -> None:
    d = parse_distribution("d", {"dist": "uniform", "low": 1, "high": 2})
    assert d == Uniform(1.0, 2.0) and isinstance(d.low, float)


def test_distribution_objects_are_accepted_and_rechecked() -> None:
    assert parse_distribution("d", Exponential(0.5)) == Exponential(0.5)
    with pytest.raises(ScenarioError) as info:
        parse_distribution("d", Exponential(-1.0))
    assert info.value.field == "d.mean"


def test_empirical_limit() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_distribution(
            "d", {"dist": "empirical", "samples": [0.0] * (MAX_EMPIRICAL_SAMPLES + 1)}
        )
    assert info.value.field == "d.samples"
    assert len(str(info.value)) < 300  # the huge list is abbreviated


BAD = [
    # (value, field named in the error, words the message must contain)
    (-1, "d", "must be a number >= 0"),
    (True, "d", "got true"),
    ("fast", "d", 'got "fast"'),
    ([1, 2], "d", "got [1, 2]"),
    (float("nan"), "d", "got nan"),
    (float("inf"), "d", "got inf"),
    ({}, "d.dist", "got nothing"),
    ({"mean": 1}, "d.dist", "got nothing"),
    (
        {"dist": "gamma"},
        "d.dist",
        'must be one of "constant", "exponential", "lognormal", '
        '"uniform", "empirical", got "gamma"',
    ),
    ({"dist": 3}, "d.dist", "got 3"),
    ({"dist": ["exponential"]}, "d.dist", 'got ["exponential"]'),
    ({"dist": "constant"}, "d.value", 'required for dist "constant"'),
    ({"dist": "constant", "value": -0.5}, "d.value", "got -0.5"),
    ({"dist": "constant", "value": "1"}, "d.value", 'got "1"'),
    ({"dist": "exponential", "mean": 0}, "d.mean", "must be a number > 0, got 0"),
    ({"dist": "exponential", "mean": -1}, "d.mean", "must be a number > 0, got -1"),
    ({"dist": "exponential", "mean": False}, "d.mean", "got false"),
    ({"dist": "exponential", "mean": 1, "cv": 1}, "d.cv", 'not a parameter of dist "exponential"'),
    ({"dist": "exponential", "value": 1}, "d.value", "(allowed: mean)"),
    ({"dist": "lognormal", "mean": 1}, "d.cv", "required"),
    ({"dist": "lognormal", "mean": 1, "cv": -0.1}, "d.cv", "must be a number >= 0"),
    ({"dist": "lognormal", "mean": 0, "cv": 1}, "d.mean", "must be a number > 0"),
    ({"dist": "lognormal", "mean": 1, "cv": float("inf")}, "d.cv", "got inf"),
    ({"dist": "uniform", "low": 2, "high": 1}, "d.high", "must be a number >= low (2.0), got 1"),
    ({"dist": "uniform", "low": -1, "high": 1}, "d.low", "must be a number >= 0"),
    ({"dist": "uniform", "high": 1}, "d.low", "required"),
    ({"dist": "empirical", "samples": []}, "d.samples", "non-empty array"),
    ({"dist": "empirical", "samples": 3}, "d.samples", "got 3"),
    ({"dist": "empirical", "samples": "1,2"}, "d.samples", 'got "1,2"'),
    ({"dist": "empirical", "samples": [1, -2, 3]}, "d.samples[1]", "got -2"),
    ({"dist": "empirical", "samples": [1, True]}, "d.samples[1]", "got true"),
    ({"dist": "empirical", "samples": [1, float("nan")]}, "d.samples[1]", "got nan"),
    ({"dist": "constant", "value": 1, "extra": 2}, "d.extra", 'not a parameter of dist "constant"'),
]


@pytest.mark.parametrize(("value", "field", "words"), BAD, ids=[repr(b[0])[:40] for b in BAD])
def test_bad_distributions(value: object, field: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_distribution("d", value)
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(field + ": ")
    assert words in message
    assert ", got " in message
    assert len(message.splitlines()) == 1


def test_error_names_the_full_dotted_field() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_distribution("database.connect_time", {"dist": "exponential", "mean": -1})
    assert str(info.value) == "database.connect_time.mean: must be a number > 0, got -1"
