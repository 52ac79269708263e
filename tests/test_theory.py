"""Tests for simlib.theory against independent values.

Independent here means: textbook numbers, exact rational arithmetic, scipy's
Poisson distribution, a direct linear-algebra solution of the CTMC, known
closed forms (M/M/1, M/M/1+D, M/D/1) and an exact simulation.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from simlib import theory
from simlib.theory import (
    FifoPatienceSimulation,
    allen_cunneen_mean_wait,
    erlang_b,
    erlang_c,
    littles_law,
    littles_law_L,
    littles_law_lambda,
    littles_law_W,
    machine_repairman,
    md1_mean_response,
    mg1_mean_response,
    mm1_ps_mean_response,
    mm1_ps_mean_response_given_size,
    mmc,
    mmc_deterministic_patience,
    mmk_ps_mean_response,
    pk_mean_wait,
    simulate_fifo_patience,
)

# ---------------------------------------------------------------------------
# independent reference implementations


def exact_erlang_b(c: int, a: int) -> float:
    """Erlang B from its definition in exact rational arithmetic."""
    terms = [Fraction(a**k, math.factorial(k)) for k in range(c + 1)]
    return float(terms[-1] / sum(terms))


def exact_erlang_c(c: int, a: int) -> float:
    """Erlang C from its definition in exact rational arithmetic (a < c)."""
    rho = Fraction(a, c)
    head = sum(Fraction(a**k, math.factorial(k)) for k in range(c))
    tail = Fraction(a**c, math.factorial(c)) / (1 - rho)
    return float(tail / (head + tail))


def mm1_plus_d_timeout(lam: float, mu: float, t: float) -> float:
    """Known M/M/1+D closed form P(timeout) = (1-ρ)ρE / (1-ρ²E), E = e^{-(μ-λ)T}."""
    rho = lam / mu
    e = math.exp(-(mu - lam) * t)
    return (1 - rho) * rho * e / (1 - rho * rho * e)


def birth_death_stationary(births: list[float], deaths: list[float]) -> np.ndarray:
    """Solve π Q = 0, Σπ = 1 for a finite birth-death CTMC by linear algebra.

    births[n] is the rate n -> n+1, deaths[n] the rate n+1 -> n.
    """
    size = len(births) + 1
    q = np.zeros((size, size))
    for n, rate in enumerate(births):
        q[n, n + 1] = rate
    for n, rate in enumerate(deaths):
        q[n + 1, n] = rate
    np.fill_diagonal(q, -q.sum(axis=1))
    # replace one balance equation by the normalisation
    a = np.vstack([q.T[:-1], np.ones(size)])
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    return np.linalg.solve(a, rhs)


# ---------------------------------------------------------------------------
# Little's law


def test_littles_law_helpers_are_consistent():
    assert littles_law_L(200.0, 0.05) == pytest.approx(10.0)
    assert littles_law_lambda(10.0, 0.05) == pytest.approx(200.0)
    assert littles_law_W(10.0, 200.0) == pytest.approx(0.05)
    assert littles_law(arrival_rate=200.0, mean_time=0.05) == pytest.approx(10.0)
    assert littles_law(mean_number=10.0, mean_time=0.05) == pytest.approx(200.0)
    assert littles_law(mean_number=10.0, arrival_rate=200.0) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        littles_law(mean_number=1.0)
    with pytest.raises(ValueError):
        littles_law_L(-1.0, 1.0)


def test_littles_law_holds_inside_the_models():
    r = mmc(7.0, 1.0, 9)
    assert r.mean_in_system == pytest.approx(littles_law_L(7.0, r.mean_response))
    assert r.mean_queue_length == pytest.approx(littles_law_L(7.0, r.mean_wait))
    # busy connections = throughput x holding time
    assert r.utilisation * r.c == pytest.approx(littles_law_L(7.0, 1.0))
    p = mmc_deterministic_patience(12.0, 1.0, 10, 0.4)
    assert p.mean_queue_length == pytest.approx(littles_law_L(12.0, p.mean_wait_all))
    assert p.utilisation * p.c == pytest.approx(littles_law_L(p.throughput, 1.0))


# ---------------------------------------------------------------------------
# Erlang B and C


def test_erlang_b_textbook_value():
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, abs=5e-7)


def test_erlang_c_textbook_value():
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3, rel=1e-12)


@pytest.mark.parametrize("c,a", [(1, 1), (2, 1), (5, 3), (10, 5), (20, 17), (40, 30), (3, 7)])
def test_erlang_b_and_c_against_exact_rationals(c, a):
    assert erlang_b(c, a) == pytest.approx(exact_erlang_b(c, a), rel=1e-12)
    if a < c:
        assert erlang_c(c, a) == pytest.approx(exact_erlang_c(c, a), rel=1e-12)


@pytest.mark.parametrize(
    "c,a", [(1000, 1000.0), (1000, 900.0), (1000, 1.0), (300, 1000.0), (50, 30.0)]
)
def test_erlang_b_large_against_poisson(c, a):
    # B(c, a) = P(X = c) / P(X <= c) for X ~ Poisson(a): computed independently by scipy.
    expected = math.exp(stats.poisson.logpmf(c, a) - stats.poisson.logcdf(c, a))
    assert erlang_b(c, a) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_erlang_b_single_server_overload():
    assert erlang_b(1, 1000.0) == pytest.approx(1000.0 / 1001.0, rel=1e-14)


def test_erlang_edge_cases():
    assert erlang_b(0, 3.0) == 1.0
    assert erlang_b(4, 0.0) == 0.0
    assert erlang_c(4, 0.0) == 0.0
    assert erlang_c(4, 4.0) == 1.0  # no steady state: everyone eventually waits
    assert 0.0 < erlang_c(1000, 999.9) < 1.0
    with pytest.raises(ValueError):
        erlang_b(-1, 1.0)
    with pytest.raises(ValueError):
        erlang_b(2.5, 1.0)
    with pytest.raises(ValueError):
        erlang_c(2, -1.0)


# ---------------------------------------------------------------------------
# M/M/c


def test_mm1_textbook():
    lam, mu = 0.5, 1.0
    r = mmc(lam, mu, 1)
    rho = lam / mu
    assert r.utilisation == pytest.approx(rho)
    assert r.p_wait == pytest.approx(rho)
    assert r.mean_wait == pytest.approx(rho / (mu - lam))
    assert r.mean_response == pytest.approx(1 / (mu - lam))
    assert r.mean_in_system == pytest.approx(rho / (1 - rho))
    assert r.mean_queue_length == pytest.approx(rho**2 / (1 - rho))


def test_mmc_mean_wait_matches_reference_fact():
    lam, mu, c = 8.0, 1.0, 10
    r = mmc(lam, mu, c)
    assert r.mean_wait == pytest.approx(erlang_c(c, lam / mu) / (c * mu - lam))


def test_mmc_against_direct_birth_death_chain():
    lam, mu, c, cap = 4.0, 1.0, 5, 400  # truncation far in the tail (ρ = 0.8)
    pi = birth_death_stationary([lam] * cap, [min(n + 1, c) * mu for n in range(cap)])
    n = np.arange(cap + 1)
    r = mmc(lam, mu, c)
    assert r.p_wait == pytest.approx(pi[c:].sum(), rel=1e-9)
    assert r.mean_in_system == pytest.approx((n * pi).sum(), rel=1e-9)


def test_mmc_waiting_time_distribution():
    r = mmc(8.0, 1.0, 10)
    assert r.p_wait_longer_than(0.0) == pytest.approx(r.p_wait)
    assert r.p_wait_longer_than(0.7) == pytest.approx(r.p_wait * math.exp(-2.0 * 0.7))
    for p in (0.5, 0.9, 0.99):
        t = r.wait_quantile(p)
        if t > 0:
            assert r.p_wait_longer_than(t) == pytest.approx(1 - p)
        else:
            assert r.p_wait <= 1 - p
    assert r.wait_quantile(0.0) == 0.0
    with pytest.raises(ValueError):
        r.wait_quantile(1.0)


def test_mmc_unstable_raises_clear_error():
    with pytest.raises(ValueError, match="unstable"):
        mmc(10.0, 1.0, 10)
    with pytest.raises(ValueError, match="unstable"):
        mmc(11.0, 1.0, 10)


def test_mmc_large_does_not_overflow():
    r = mmc(999.0, 1.0, 1000)
    assert math.isfinite(r.mean_wait) and 0.0 < r.p_wait < 1.0


# ---------------------------------------------------------------------------
# M/M/c + D (deterministic patience)


@pytest.mark.parametrize(
    "lam,mu,c", [(0.5, 1.0, 1), (4.0, 1.0, 5), (90.0, 1.0, 100), (999.0, 1.0, 1000)]
)
def test_patience_infinite_is_erlang_c(lam, mu, c):
    p = mmc_deterministic_patience(lam, mu, c, math.inf)
    r = mmc(lam, mu, c)
    assert p.p_wait == pytest.approx(r.p_wait, rel=1e-10)
    assert p.p_timeout == 0.0
    assert p.mean_wait_all == pytest.approx(r.mean_wait, rel=1e-10)
    assert p.mean_wait_served == pytest.approx(r.mean_wait, rel=1e-10)
    # a long but finite patience converges to the same
    q = mmc_deterministic_patience(lam, mu, c, 200.0 / (c * mu - lam))
    assert q.p_wait == pytest.approx(r.p_wait, rel=1e-9)
    assert q.mean_wait_all == pytest.approx(r.mean_wait, rel=1e-9)


@pytest.mark.parametrize(
    "lam,mu,c", [(0.5, 1.0, 1), (4.0, 1.0, 5), (15.0, 1.0, 10), (1000.0, 1.0, 1000)]
)
def test_patience_zero_is_erlang_b(lam, mu, c):
    b = erlang_b(c, lam / mu)
    p0 = mmc_deterministic_patience(lam, mu, c, 0.0)
    assert p0.p_timeout == pytest.approx(b, rel=1e-12)
    assert p0.p_wait == pytest.approx(b, rel=1e-12)
    assert p0.mean_wait_all == 0.0
    assert p0.throughput == pytest.approx(lam * (1 - b))
    small = mmc_deterministic_patience(lam, mu, c, 1e-9)
    assert small.p_timeout == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("rho", [0.3, 0.8, 0.99, 1.01, 1.5, 3.0])
@pytest.mark.parametrize("t", [0.1, 1.0, 5.0])
def test_patience_single_server_closed_form(rho, t):
    mu = 2.0
    lam = rho * mu
    p = mmc_deterministic_patience(lam, mu, 1, t)
    assert p.p_timeout == pytest.approx(mm1_plus_d_timeout(lam, mu, t), rel=1e-10)


def test_patience_critical_load_is_continuous():
    # at λ = μ (c = 1) the closed form's limit is 1 / (2 + μT)
    mu, t = 2.0, 1.5
    p = mmc_deterministic_patience(mu, mu, 1, t)
    assert p.p_timeout == pytest.approx(1 / (2 + mu * t), rel=1e-12)
    # (the relative derivative is of order cμT, so step by 1e-10 of the load)
    for c in (1, 10, 1000):
        at = mmc_deterministic_patience(c * mu, mu, c, t)
        for eps in (-1e-10, 1e-10):
            near = mmc_deterministic_patience(c * mu * (1 + eps), mu, c, t)
            for field in ("p_wait", "p_timeout", "mean_wait_all", "mean_wait_served"):
                assert getattr(near, field) == pytest.approx(getattr(at, field), rel=1e-5)


def test_patience_internal_identities():
    for lam, c, t in [(3.0, 4, 0.5), (12.0, 10, 0.3), (1500.0, 1000, 100.0), (0.2, 1, 2.0)]:
        p = mmc_deterministic_patience(lam, 1.0, c, t)
        assert p.throughput == pytest.approx(lam * (1 - p.p_timeout), rel=1e-10)
        assert p.utilisation == pytest.approx(p.throughput / c, rel=1e-10)
        # all arrivals = served (wait mean_wait_served) + timed out (wait T)
        split = (1 - p.p_timeout) * p.mean_wait_served + p.p_timeout * t
        assert p.mean_wait_all == pytest.approx(split, rel=1e-9)
        assert 0.0 <= p.p_timeout <= p.p_wait <= 1.0
        assert p.mean_wait_served <= t


def test_patience_heavy_overload_stable():
    # λ = 1.5 cμ with long patience: a third of requests must time out
    p = mmc_deterministic_patience(1500.0, 1.0, 1000, 1e6)
    assert p.p_timeout == pytest.approx(1 / 3, rel=1e-9)
    assert p.utilisation == pytest.approx(1.0, rel=1e-9)
    assert math.isfinite(p.mean_wait_all)
    with pytest.raises(ValueError, match="unstable"):
        mmc_deterministic_patience(1500.0, 1.0, 1000, math.inf)


# The simulation cross-check.  simulate_fifo_patience reports batch-means
# standard errors: 20 consecutive batches of n/20 = 15,000-25,000 requests,
# each batch many times longer than the system's memory (waits are capped by T,
# and a busy period at these loads spans at most a few hundred requests), so
# batch means are close to independent and the SE is honest.  Under a correct
# formula (estimate - formula)/SE is then roughly Student-t with 19 d.f.,
# and P(|t_19| > 5) ≈ 1e-4, so 5 SE leaves room for the small bias left after
# the warm-up (the system starts empty) across the ~20 comparisons here while
# still catching real mistakes: mis-indexing the atom of V (treating "all c
# busy, nobody queued" as V = 0) is off by 4 to 100 SE on these same cases.
# Seeds are fixed, so the test is deterministic.
PATIENCE_CASES = [
    # (c, rho, T) with μ = 1
    (1, 0.8, 1.0),
    (1, 1.5, 2.0),  # overload, single connection
    (5, 0.8, 0.5),
    (10, 1.0, 1.0),  # critical load
    (10, 1.5, 0.3),  # overload, a pool with a short timeout
    (20, 0.95, 0.2),
]


@pytest.mark.parametrize("c,rho,t", PATIENCE_CASES)
def test_patience_formula_matches_exact_simulation(c, rho, t):
    lam, mu = rho * c, 1.0
    sim = simulate_fifo_patience(
        lam, mu, c, t, 300_000, rng=np.random.default_rng(2024 + c), warmup=10_000
    )
    assert isinstance(sim, FifoPatienceSimulation)
    f = mmc_deterministic_patience(lam, mu, c, t)
    for field in ("p_wait", "p_timeout", "mean_wait_all"):
        estimate, se = getattr(sim, field), getattr(sim, "se_" + field)
        assert se > 0.0
        assert abs(getattr(f, field) - estimate) <= 5 * se, (field, getattr(f, field), estimate, se)


def test_simulation_infinite_patience_matches_erlang_c():
    # Without timeouts and at ρ = 0.7 batches of 10,000 are still long compared
    # with the busy periods; same 5-SE argument as above.
    lam, mu, c = 2.8, 1.0, 4
    sim = simulate_fifo_patience(lam, mu, c, math.inf, 200_000, rng=7, warmup=5_000)
    r = mmc(lam, mu, c)
    assert sim.p_timeout == 0.0
    assert abs(sim.p_wait - r.p_wait) <= 5 * sim.se_p_wait
    assert abs(sim.mean_wait_all - r.mean_wait) <= 5 * sim.se_mean_wait_all


def test_simulation_zero_patience_matches_erlang_b():
    # T = 0 is the loss system; the observed loss share is a batch mean too.
    lam, mu, c = 6.0, 1.0, 8
    sim = simulate_fifo_patience(lam, mu, c, 0.0, 200_000, rng=11, warmup=5_000)
    assert sim.p_timeout == sim.p_wait
    assert abs(sim.p_timeout - erlang_b(c, lam / mu)) <= 5 * sim.se_p_timeout


def test_simulation_is_reproducible():
    a = simulate_fifo_patience(3.0, 1.0, 3, 0.5, 1000, rng=5)
    b = simulate_fifo_patience(3.0, 1.0, 3, 0.5, 1000, rng=np.random.default_rng(5))
    assert a == b


# ---------------------------------------------------------------------------
# machine repairman M/M/c//N


def repairman_by_linear_algebra(n_clients, think, mu, c):
    births = [(n_clients - n) / think for n in range(n_clients)]
    deaths = [min(n + 1, c) * mu for n in range(n_clients)]
    pi = birth_death_stationary(births, deaths)
    n = np.arange(n_clients + 1)
    x = (np.minimum(n, c) * mu * pi).sum()
    arrivals = (n_clients - n) / think * pi  # arrival rate in each state
    p_wait = arrivals[c:].sum() / arrivals.sum()
    return x, (n * pi).sum(), p_wait


@pytest.mark.parametrize(
    "n_clients,think,mu,c",
    [(10, 1.0, 2.0, 3), (50, 0.2, 1.0, 8), (5, 3.0, 1.0, 1), (30, 0.05, 10.0, 4)],
)
def test_repairman_against_ctmc(n_clients, think, mu, c):
    x, mean_n, p_wait = repairman_by_linear_algebra(n_clients, think, mu, c)
    r = machine_repairman(n_clients, think, mu, c)
    assert r.throughput == pytest.approx(x, rel=1e-9)
    assert r.mean_in_system == pytest.approx(mean_n, rel=1e-9)
    # Little on the pool: L = X R, and R = N/X - Z (Little on the whole loop)
    assert r.mean_response == pytest.approx(mean_n / x, rel=1e-9)
    assert r.mean_wait == pytest.approx(mean_n / x - 1 / mu, rel=1e-8, abs=1e-12)
    # arrival theorem == arrival-rate-weighted time average
    assert r.p_wait == pytest.approx(p_wait, rel=1e-9, abs=1e-14)
    assert r.utilisation == pytest.approx(x / (c * mu), rel=1e-9)


@pytest.mark.parametrize("n_clients,c", [(1, 1), (5, 5), (5, 9)])
def test_repairman_enough_connections_means_no_waiting(n_clients, c):
    think, mu = 0.5, 4.0
    r = machine_repairman(n_clients, think, mu, c)
    assert r.throughput == pytest.approx(n_clients / (think + 1 / mu))
    assert r.mean_response == pytest.approx(1 / mu)
    assert r.mean_wait == pytest.approx(0.0, abs=1e-12)
    assert r.p_wait == 0.0
    assert r.mean_queue_length == 0.0


def test_repairman_zero_think_time():
    r = machine_repairman(12, 0.0, 2.0, 4)
    assert r.throughput == pytest.approx(8.0)
    assert r.mean_in_system == 12
    assert r.mean_response == pytest.approx(12 / 8.0)
    assert r.p_wait == 1.0
    assert machine_repairman(3, 0.0, 2.0, 4).p_wait == 0.0
    # continuity as the think time shrinks
    assert machine_repairman(12, 1e-9, 2.0, 4).throughput == pytest.approx(8.0, rel=1e-6)


def test_repairman_bounds_and_size():
    r = machine_repairman(2000, 1.0, 1.0, 1000)  # large, must not overflow
    assert r.throughput <= min(2000 / 2.0, 1000.0) + 1e-9
    assert 0.0 <= r.p_wait <= 1.0 and math.isfinite(r.mean_response)


# ---------------------------------------------------------------------------
# processor sharing, P-K, Allen-Cunneen


def test_mm1_ps():
    lam, mu = 3.0, 5.0
    assert mm1_ps_mean_response(lam, mu) == pytest.approx(0.5)
    assert mm1_ps_mean_response(lam, mu) == pytest.approx(mmc(lam, mu, 1).mean_response)
    # averaging x/(1-ρ) over Exp(μ) job sizes gives 1/(μ-λ)
    assert mm1_ps_mean_response_given_size(1 / mu, lam, mu) == pytest.approx(
        mm1_ps_mean_response(lam, mu)
    )
    assert mm1_ps_mean_response_given_size(0.4, lam, mu) == pytest.approx(0.4 / (1 - 0.6))
    with pytest.raises(ValueError, match="unstable"):
        mm1_ps_mean_response(5.0, 5.0)


def test_mmk_ps_against_direct_chain():
    lam, mu, k, cap = 3.0, 1.0, 4, 300
    pi = birth_death_stationary([lam] * cap, [min(n + 1, k) * mu for n in range(cap)])
    mean_n = (np.arange(cap + 1) * pi).sum()
    assert mmk_ps_mean_response(lam, mu, k) == pytest.approx(mean_n / lam, rel=1e-9)


def test_pollaczek_khinchine():
    assert md1_mean_response(0.5, 1.0) == pytest.approx(1.5)  # D + ρD/(2(1-ρ))
    assert pk_mean_wait(0.5, 1.0, 0.0) == pytest.approx(0.5)
    assert mg1_mean_response(0.5, 1.0, 1.0) == pytest.approx(mm1_ps_mean_response(0.5, 1.0))
    assert pk_mean_wait(0.5, 1.0, 1.0) == pytest.approx(mmc(0.5, 1.0, 1).mean_wait)
    # the lesson: for constant-length queries FCFS beats sharing the core
    assert md1_mean_response(0.8, 1.0) < mm1_ps_mean_response(0.8, 1.0)


def test_allen_cunneen():
    # exact for exponential service and for c = 1
    assert allen_cunneen_mean_wait(8.0, 1.0, 1.0, 10) == pytest.approx(mmc(8.0, 1.0, 10).mean_wait)
    assert allen_cunneen_mean_wait(0.7, 1.0, 0.5, 1) == pytest.approx(pk_mean_wait(0.7, 1.0, 0.5))
    assert allen_cunneen_mean_wait(8.0, 1.0, 0.0, 10) == pytest.approx(
        mmc(8.0, 1.0, 10).mean_wait / 2
    )


# ---------------------------------------------------------------------------
# property tests

loads = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)
servers = st.integers(min_value=1, max_value=1000)


@settings(max_examples=150, deadline=None)
@given(c=servers, a=loads)
def test_erlang_b_probability_and_decreasing_in_c(c, a):
    b = erlang_b(c, a)
    assert 0.0 <= b <= 1.0
    assert erlang_b(c + 1, a) <= b * (1 + 1e-12)
    assert erlang_b(c, a * 1.1 + 0.1) >= b * (1 - 1e-12)


@settings(max_examples=150, deadline=None)
@given(c=servers, frac=st.floats(min_value=0.0, max_value=0.999))
def test_erlang_c_probability_and_decreasing_in_c(c, frac):
    a = frac * c
    cc = erlang_c(c, a)
    assert 0.0 <= cc <= 1.0
    assert cc >= erlang_b(c, a) * (1 - 1e-12)
    assert erlang_c(c + 1, a) <= cc * (1 + 1e-12)


@settings(max_examples=150, deadline=None)
@given(
    c=st.integers(min_value=1, max_value=300),
    rho=st.floats(min_value=0.01, max_value=3.0),
    t=st.floats(min_value=0.0, max_value=100.0),
)
def test_patience_probabilities_and_monotone_in_patience(c, rho, t):
    p = mmc_deterministic_patience(rho * c, 1.0, c, t)
    for value in (p.p_wait, p.p_timeout, p.utilisation):
        assert 0.0 <= value <= 1.0 + 1e-12
    assert p.p_timeout <= p.p_wait + 1e-12
    assert 0.0 <= p.mean_wait_served <= t * (1 + 1e-12)
    assert 0.0 <= p.mean_wait_all <= t * (1 + 1e-12)
    longer = mmc_deterministic_patience(rho * c, 1.0, c, t * 2 + 0.01)
    assert longer.p_timeout <= p.p_timeout * (1 + 1e-9) + 1e-300


@settings(max_examples=100, deadline=None)
@given(
    n_clients=st.integers(min_value=1, max_value=200),
    think=st.floats(min_value=0.0, max_value=10.0),
    c=st.integers(min_value=1, max_value=50),
)
def test_repairman_probabilities_and_bounds(n_clients, think, c):
    r = machine_repairman(n_clients, think, 1.0, c)
    assert 0.0 <= r.p_wait <= 1.0
    assert 0.0 <= r.utilisation <= 1.0 + 1e-12
    assert r.throughput <= min(n_clients / (think + 1.0), c) * (1 + 1e-9)
    assert r.mean_response >= 1.0 - 1e-9


def test_mmc_response_time_tail_is_mm1s_exponential_and_a_simulations():
    # M/M/1: the FIFO response time is exactly Exp(mu - lambda)
    q = theory.mmc(80.0, 100.0, 1)
    for t in (0.0, 0.01, 0.05, 0.2):
        assert q.response_longer_than(t) == pytest.approx(math.exp(-20.0 * t), rel=1e-9)
    assert q.response_quantile(0.99) == pytest.approx(math.log(100) / 20.0, rel=1e-9)
    # M/M/3: against the empirical tail of Lindley's recursion for c servers (FIFO)
    rng = np.random.default_rng(5)
    lam, mu, c, n = 240.0, 100.0, 3, 200_000
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    service = rng.exponential(1 / mu, n)
    free = np.zeros(c)
    response = np.empty(n)
    for i in range(n):
        k = int(np.argmin(free))
        start = max(arrivals[i], free[k])
        free[k] = start + service[i]
        response[i] = free[k] - arrivals[i]
    q3 = theory.mmc(lam, mu, c)
    tail = response[n // 10:]
    for t in (0.01, 0.03, 0.06):
        p = q3.response_longer_than(t)
        se = math.sqrt(p * (1 - p) / len(tail)) * 10   # autocorrelated samples: a wide margin
        assert abs(np.mean(tail > t) - p) < max(se, 0.01)
