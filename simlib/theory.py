"""Queueing and caching theory: closed forms to check simulations against.

A connection pool is a small queueing system.  The *servers* are the ``c``
connections; a *customer* is a request that checks a connection out, holds it
for a service time (its queries plus round trips), and returns it.  Which model
applies depends on what the pool does when every connection is in use and on
where the requests come from.

Little's law
    ``L = λ W`` holds for any stable system in steady state, whatever the
    distributions: the mean number of requests inside (``L``) is the arrival
    rate (``λ``) times the mean time each spends inside (``W``).  Apply it to
    the whole pool, to the wait queue alone, or to the connections alone
    (mean busy connections = throughput x mean holding time).

Erlang B (M/M/c/c, the loss system)
    A pool that fails at once when all ``c`` connections are in use, like
    psycopg2's ``ThreadedConnectionPool`` raising ``PoolError("connection pool
    exhausted")`` once ``maxconn`` are out.  Poisson arrivals, no queue.  The
    share of refused requests is Erlang B, and it is *insensitive*: it depends
    on the holding-time distribution only through its mean.

Erlang C (M/M/c, waiting forever)
    A pool whose callers wait as long as it takes, like asyncpg's
    ``acquire()`` without a timeout.  Poisson arrivals, exponential holding
    times, FIFO queue of unlimited length.  Erlang C is the probability that a
    request has to wait; the wait of those who do is exponential.  Only
    meaningful when the load is below capacity (``λ < cμ``).

M/M/c with deterministic patience (M/M/c+D, a pool timeout)
    A pool that waits at most ``T`` seconds and then raises, like SQLAlchemy's
    ``QueuePool`` (``timeout=30``) or psycopg_pool (``timeout=30``).  A request
    that would have to wait longer than ``T`` gives up at ``T``.  With FIFO
    service this is exactly solvable through the *virtual waiting time* (the
    wait a request arriving now would face), it stays finite in overload
    (``λ >= cμ``), it becomes Erlang C as ``T → ∞`` and Erlang B as
    ``T → 0``.  :func:`simulate_fifo_patience` simulates the same system with
    the exact Kiefer–Wolfowitz recursion, so the two can be checked against
    each other.

Machine repairman (M/M/c//N, a closed workload)
    ``N`` clients (threads, workers, benchmark connections) each think for a
    while, send one request, and wait for its answer before thinking again;
    ``c`` connections serve them FIFO.  The load throttles itself: a slow
    pool slows its clients down, so there is no instability.  Use it for
    ``pgbench -c N`` style load and for a fixed-size web worker pool.

Processor sharing (M/M/1-PS, M/M/k-PS)
    When every request gets its own connection and the database's cores are
    shared among all running queries, the cores behave like processor
    sharing.  PS mean response times are insensitive to the service-time
    distribution, so they are the same as for exponential work; FCFS with a
    small pool (M/D/1, M/G/1, M/G/c) can do better when queries are all of
    similar length (low coefficient of variation), which is one argument for
    small pools.

Pollaczek–Khinchine and Allen–Cunneen
    The M/G/1 mean wait is exact (Pollaczek–Khinchine); Allen–Cunneen is a
    widely used *approximation* for M/G/c that scales the Erlang C wait by
    ``(1 + cv²)/2``.

Caches and replicas (open workloads, key k requested with probability p_k)
    Cache-aside with a TTL: per key ``λ_k T / (1 + λ_k T)`` by renewal-reward,
    with corrections for the fill time, stampedes and invalidating writes
    (:func:`ttl_cache_keys`).  LRU with capacity C: Che's approximation
    (:func:`lru_cache_hit_ratio`).  Read replicas with a constant lag L and
    Poisson writes at ``w_k``: a read is stale with probability
    ``1 − e^{−w_k L}`` (:func:`replica_stale_read_ratio`); with read-your-writes
    routing only other clients' writes can make a read stale
    (:func:`read_your_writes_stale_read_ratio`).

Many processes: fleets, PgBouncer, serverless
    A fleet of ``N`` instances, each with its own pool of ``c`` connections,
    behind a load balancer that picks an instance at random, is ``N``
    independent M/G/c queues, each fed ``λ/N`` (a random split of a Poisson
    stream is Poisson): Erlang C or B per instance, and at most ``N·c``
    connections reach Postgres, or ``max_connections`` of them when that is
    less (:func:`fleet_server_connections_max`).  PgBouncer in transaction
    mode lends ``default_pool_size`` server connections to transactions, FIFO:
    M/M/c with ``c = default_pool_size`` whatever the number of clients, as
    long as their pools never run out first.  Serverless environments at low
    concurrency (``λ·d ≪ 1`` for invocations of ``d`` seconds): an invocation
    is cold when the last one's environment was reclaimed (the gap after it
    ended exceeded ``keep_warm``: memoryless, ``e^{−λ(d+k)}``) or is still
    busy (``1 − e^{−λd}``): :func:`serverless_cold_start_probability`.  After
    a step in the rate from 0 to ``λ``, no environment is free again until the
    first cold invocation ends, so for its ``D`` seconds (cold start, connect,
    query) every invocation is cold: ``λ`` cold starts per second, ``λ·D``
    environments (:func:`serverless_step_cold_starts`).

Notation throughout: ``λ`` arrival rate (requests per second), ``μ`` service
rate per connection (1 / mean holding time), ``c`` number of connections,
``a = λ/μ`` offered load in Erlangs, ``ρ = a/c`` utilisation.  All formulas are
evaluated with recursions or in log space, so ``c`` and ``a`` up to 1000 (and
beyond) neither overflow nor lose precision.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from numbers import Integral
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "FifoPatienceSimulation",
    "MMc",
    "MMcDeterministicPatience",
    "MachineRepairman",
    "allen_cunneen_mean_wait",
    "erlang_b",
    "erlang_c",
    "fleet_server_connections_max",
    "littles_law",
    "littles_law_L",
    "littles_law_W",
    "littles_law_lambda",
    "machine_repairman",
    "md1_mean_response",
    "mg1_mean_response",
    "mm1_ps_mean_response",
    "mm1_ps_mean_response_given_size",
    "mmc",
    "mmc_deterministic_patience",
    "mmk_ps_mean_response",
    "pk_mean_wait",
    "serverless_cold_start_probability",
    "serverless_environments_mean",
    "serverless_step_cold_starts",
    "simulate_fifo_patience",
    "TtlCacheKey",
    "che_characteristic_time",
    "lru_cache_hit_ratio",
    "read_your_writes_replica_share",
    "read_your_writes_stale_read_ratio",
    "replica_stale_read_ratio",
    "ttl_cache_hit_ratio",
    "ttl_cache_keys",
]


# ---------------------------------------------------------------------------
# argument checks


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0.0) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _non_negative(name: str, value: float, allow_inf: bool = False) -> float:
    value = float(value)
    if math.isnan(value) or value < 0.0 or (math.isinf(value) and not allow_inf):
        allowed = "a number >= 0 (or math.inf)" if allow_inf else "a finite number >= 0"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def _count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _unstable(what: str, arrival_rate: float, capacity: float) -> ValueError:
    return ValueError(
        f"{what} is infinite: the system is unstable because the arrival rate "
        f"{arrival_rate:g}/s is not below the capacity c*mu = {capacity:g}/s "
        "(the queue grows without bound)"
    )


def _logaddexp(x: float, y: float) -> float:
    """``log(exp(x) + exp(y))`` without overflow; either may be ``-inf``."""
    if x == -math.inf:
        return y
    if y == -math.inf:
        return x
    hi, lo = (x, y) if x >= y else (y, x)
    return hi + math.log1p(math.exp(lo - hi))


# ---------------------------------------------------------------------------
# Little's law


def littles_law_L(arrival_rate: float, mean_time: float) -> float:
    """Mean number in the system, ``L = λ W``.

    ``arrival_rate`` is λ (per second) and ``mean_time`` is W, the mean time a
    request spends in whatever part of the system ``L`` counts.
    """
    return _non_negative("arrival_rate", arrival_rate) * _non_negative("mean_time", mean_time)


def littles_law_lambda(mean_number: float, mean_time: float) -> float:
    """Arrival rate (= throughput in steady state), ``λ = L / W``."""
    return _non_negative("mean_number", mean_number) / _positive("mean_time", mean_time)


def littles_law_W(mean_number: float, arrival_rate: float) -> float:
    """Mean time in the system, ``W = L / λ``."""
    return _non_negative("mean_number", mean_number) / _positive("arrival_rate", arrival_rate)


def littles_law(
    mean_number: float | None = None,
    arrival_rate: float | None = None,
    mean_time: float | None = None,
) -> float:
    """Solve ``L = λ W`` for the one argument left as ``None``.

    >>> littles_law(arrival_rate=200.0, mean_time=0.05)   # L
    10.0
    >>> littles_law(mean_number=10.0, mean_time=0.05)     # λ
    200.0
    """
    missing = [mean_number is None, arrival_rate is None, mean_time is None]
    if sum(missing) != 1:
        raise ValueError("give exactly two of mean_number, arrival_rate, mean_time")
    if mean_number is None:
        return littles_law_L(arrival_rate, mean_time)  # type: ignore[arg-type]
    if arrival_rate is None:
        return littles_law_lambda(mean_number, mean_time)  # type: ignore[arg-type]
    return littles_law_W(mean_number, arrival_rate)


# ---------------------------------------------------------------------------
# Erlang B and C


def _log_erlang_b(c: int, offered_load: float) -> float:
    """``log B(c, a)`` by the Erlang B recursion carried out in log space."""
    if c == 0:
        return 0.0
    if offered_load == 0.0:
        return -math.inf
    log_a = math.log(offered_load)
    log_b = 0.0  # B(0) = 1
    for n in range(1, c + 1):
        log_ab = log_a + log_b  # log(a B(n-1))
        log_b = log_ab - _logaddexp(math.log(n), log_ab)
    return log_b


def erlang_b(c: int, offered_load: float) -> float:
    """Erlang B: probability that a request is refused in M/M/c/c (also M/G/c/c).

    With offered load ``a = λ/μ`` Erlangs and ``c`` connections::

        B(c, a) = (a^c / c!) / Σ_{k=0..c} a^k / k!

    evaluated by the stable recursion ``B(0) = 1``,
    ``B(n) = a B(n-1) / (n + a B(n-1))`` (in log space, so tiny values do
    not underflow on the way).  It is the share of requests that find all
    ``c`` connections busy (PASTA), and the model of a pool that fails at
    once, e.g. psycopg2's ``ThreadedConnectionPool`` with ``maxconn = c``.
    Insensitive: any holding-time distribution with mean ``1/μ`` gives the same.
    Accepts any ``a >= 0`` (overload is fine: requests are simply refused).
    """
    c = _count("c", c, 0)
    a = _non_negative("offered_load", offered_load)
    return math.exp(_log_erlang_b(c, a))


def erlang_c(c: int, offered_load: float) -> float:
    """Erlang C: probability that a request has to wait in M/M/c.

    With ``ρ = a/c < 1``::

        C(c, a) = B / (1 - ρ (1 - B)),   B = erlang_b(c, a)

    which equals ``(a^c/c!) (1/(1-ρ)) / (Σ_{k<c} a^k/k! + (a^c/c!)/(1-ρ))``.
    For ``a >= c`` there is no steady state; every request eventually waits,
    so the limit ``1.0`` is returned (mean waits are then infinite: see
    :func:`mmc`).
    """
    c = _count("c", c, 1)
    a = _non_negative("offered_load", offered_load)
    if a >= c:
        return 1.0
    rho = a / c
    log_b = _log_erlang_b(c, a)
    b = math.exp(log_b)
    return math.exp(log_b - math.log(1.0 - rho + rho * b))


# ---------------------------------------------------------------------------
# M/M/c


@dataclass(frozen=True)
class MMc:
    """Steady-state M/M/c results (see :func:`mmc`). Times in seconds."""

    arrival_rate: float
    service_rate: float
    c: int
    offered_load: float
    utilisation: float
    p_wait: float
    mean_wait: float
    mean_response: float
    mean_queue_length: float
    mean_in_system: float

    def p_wait_longer_than(self, t: float) -> float:
        """``P(W > t) = C e^{-(cμ - λ) t}`` for ``t >= 0`` (W = queueing time)."""
        t = _non_negative("t", t)
        return self.p_wait * math.exp(-(self.c * self.service_rate - self.arrival_rate) * t)

    def wait_quantile(self, p: float) -> float:
        """Smallest ``t`` with ``P(W <= t) >= p``.

        From ``P(W > t) = C e^{-(cμ-λ)t}``: ``t = 0`` if ``1 - C >= p``, else
        ``t = ln(C / (1 - p)) / (cμ - λ)``.  ``p`` must be in ``[0, 1)``.
        """
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p!r}")
        if self.p_wait <= 1.0 - p:
            return 0.0
        return math.log(self.p_wait / (1.0 - p)) / (self.c * self.service_rate - self.arrival_rate)

    def response_longer_than(self, t: float) -> float:
        """``P(T > t)`` of the response time ``T = W + S`` (FIFO), for ``t >= 0``.

        With probability ``1 - C`` a request does not wait and ``T = S ~ Exp(μ)``;
        with probability ``C`` it waits ``W' ~ Exp(θ)``, ``θ = cμ - λ``, and
        ``T = W' + S`` is hypoexponential:
        ``P(W' + S > t) = (θ e^{-μt} - μ e^{-θt}) / (θ - μ)`` (Erlang(2, μ) when θ = μ).
        """
        t = _non_negative("t", t)
        mu, theta = self.service_rate, self.c * self.service_rate - self.arrival_rate
        if abs(theta - mu) < 1e-12 * mu:
            waited = (1.0 + mu * t) * math.exp(-mu * t)
        else:
            waited = (theta * math.exp(-mu * t) - mu * math.exp(-theta * t)) / (theta - mu)
        return (1.0 - self.p_wait) * math.exp(-mu * t) + self.p_wait * waited

    def response_quantile(self, p: float) -> float:
        """Smallest ``t`` with ``P(T <= t) >= p`` (bisection on :meth:`response_longer_than`).

        ``p`` must be in ``(0, 1)``.
        """
        p = float(p)
        if not 0.0 < p < 1.0:
            raise ValueError(f"p must be in (0, 1), got {p!r}")
        lo, hi = 0.0, 1.0 / self.service_rate
        while self.response_longer_than(hi) > 1.0 - p:
            hi *= 2.0
        for _ in range(200):
            mid = (lo + hi) / 2.0
            if self.response_longer_than(mid) > 1.0 - p:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2.0


def mmc(arrival_rate: float, service_rate: float, c: int) -> MMc:
    """M/M/c: Poisson arrivals λ, ``c`` servers each Exp(μ), unlimited FIFO queue.

    With ``a = λ/μ``, ``ρ = a/c`` and ``C = erlang_c(c, a)``::

        utilisation        ρ
        p_wait             C
        mean_wait          Wq = C / (cμ - λ)
        mean_response      W  = Wq + 1/μ
        mean_queue_length  Lq = λ Wq          (Little)
        mean_in_system     L  = λ W = Lq + a  (Little)

    and the waiting time has ``P(W > t) = C e^{-(cμ-λ)t}``
    (:meth:`MMc.p_wait_longer_than`, :meth:`MMc.wait_quantile`); the response
    time's tail and quantiles are :meth:`MMc.response_longer_than` and
    :meth:`MMc.response_quantile`.
    Raises ``ValueError`` when ``λ >= cμ`` (the means are infinite).
    """
    lam = _non_negative("arrival_rate", arrival_rate)
    mu = _positive("service_rate", service_rate)
    c = _count("c", c, 1)
    if lam >= c * mu:
        raise _unstable("the M/M/c mean wait", lam, c * mu)
    a = lam / mu
    p_wait = erlang_c(c, a)
    wq = p_wait / (c * mu - lam)
    w = wq + 1.0 / mu
    return MMc(
        arrival_rate=lam,
        service_rate=mu,
        c=c,
        offered_load=a,
        utilisation=a / c,
        p_wait=p_wait,
        mean_wait=wq,
        mean_response=w,
        mean_queue_length=lam * wq,
        mean_in_system=lam * w,
    )


# ---------------------------------------------------------------------------
# M/M/c + D: FIFO with deterministic patience (a pool timeout)


def _psi0(x: float) -> float:
    """``∫_0^1 e^{-x u} du = (1 - e^{-x}) / x`` for ``x >= 0``."""
    return 1.0 if x == 0.0 else -math.expm1(-x) / x


def _phi(x: float) -> float:
    """``∫_0^1 u e^{-x u} du = (1 - e^{-x}(1 + x)) / x²`` for ``x >= 0``."""
    if x < 0.5:  # alternating series Σ (-x)^k / (k! (k+2)); 25 terms reach 1e-30
        total, term = 0.0, 1.0
        for k in range(25):
            total += term / (k + 2)
            term *= -x / (k + 1)
        return total
    return (-math.expm1(-x) - x * math.exp(-x)) / (x * x)


@dataclass(frozen=True)
class MMcDeterministicPatience:
    """Steady-state M/M/c+D results (see :func:`mmc_deterministic_patience`)."""

    arrival_rate: float
    service_rate: float
    c: int
    patience: float
    p_wait: float
    p_timeout: float
    mean_wait_all: float
    mean_wait_served: float
    throughput: float
    utilisation: float
    mean_queue_length: float


def mmc_deterministic_patience(
    arrival_rate: float, service_rate: float, c: int, patience: float
) -> MMcDeterministicPatience:
    """M/M/c with a FIFO queue and deterministic patience ``T`` (M/M/c+D).

    The model of a pool with a checkout timeout ``T``: a request that would
    wait longer than ``T`` gives up (times out) at ``T`` and never holds a
    connection.  Exact, derived from the *virtual waiting time* ``V`` (the
    wait a request arriving now would face), whose density ``f``
    :func:`_from_virtual_wait` derives.  With ``a = λ/μ``, ``δ = cμ - λ``
    (may be ``<= 0``: overload is fine), ``B = erlang_b(c, a)``,
    ``I0 = ∫_0^T e^{-δv} dv``, ``I1 = ∫_0^T v e^{-δv} dv`` and
    ``P_c = 1 / (1/B + λ I0)``, arrivals see the time-stationary ``V``
    (PASTA), so::

        p_wait           = P(V > 0)  = P_c (cμ I0 + e^{-δT})
        p_timeout        = P(V > T)  = P_c e^{-δT}
        mean_wait_all    = ∫_0^T v f(v) dv + T P(V > T)
                         = P_c (cμ I1 + T e^{-δT})
        mean_wait_served = cμ P_c I1 / (1 - p_timeout)
        throughput       = λ (1 - p_timeout)
        utilisation      = throughput / (cμ)   (mean busy connections / c)
        mean_queue_length= λ mean_wait_all      (Little, timed-out ones included)

    Limits: ``T → ∞`` (with ``λ < cμ``) gives Erlang C for ``p_wait`` and
    ``C/(cμ-λ)`` for the mean wait; ``T = 0`` gives ``p_timeout = B``
    (Erlang B); ``c = 1`` gives the M/M/1+D closed form
    ``p_timeout = (1-ρ) ρ e^{-(μ-λ)T} / (1 - ρ² e^{-(μ-λ)T})``.
    Large ``c`` and overload are handled in log space (the exponentials are
    factored out), so nothing overflows.  ``patience`` may be ``math.inf``
    only when ``λ < cμ``.
    """
    lam = _non_negative("arrival_rate", arrival_rate)
    mu = _positive("service_rate", service_rate)
    c = _count("c", c, 1)
    t = _non_negative("patience", patience, allow_inf=True)
    if lam == 0.0:
        return MMcDeterministicPatience(lam, mu, c, t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    c_mu = c * mu
    if math.isinf(t) and lam >= c_mu:
        raise _unstable("with infinite patience the mean wait", lam, c_mu)
    return _from_virtual_wait(lam, mu, c, t)


def _from_virtual_wait(lam: float, mu: float, c: int, t: float) -> MMcDeterministicPatience:
    """M/M/c+D from the distribution of the virtual waiting time ``V``, for ``λ > 0``.

    Let ``a = λ/μ``, ``δ = cμ - λ`` and ``P_n = P_0 a^n / n!`` for ``n = 0..c``.

    * ``V = 0`` exactly when fewer than ``c`` connections are busy; those
      states have probabilities ``P_0 .. P_{c-1}``.
    * For ``0 < v < T`` the density of ``V`` is
      ``f(v) = λ P_{c-1} e^{-δ v} = cμ P_c e^{-δ v}`` (level crossing:
      ``V`` falls at rate 1; an arrival that joins adds an Exp(cμ) amount).
    * For ``v > T`` arrivals no longer join, so ``f(v) = f(T) e^{-cμ (v-T)}``
      and ``P(V > T) = f(T)/(cμ) = P_c e^{-δT}``.
    * Normalisation ``Σ_{n<c} P_n + ∫_0^T f + P(V>T) = 1`` simplifies to
      ``Σ_{n<=c} P_n + λ P_c ∫_0^T e^{-δv} dv = 1``, i.e.
      ``P_c = 1 / (1/B + λ I0)`` with ``B = erlang_b(c, a)`` and
      ``I0 = ∫_0^T e^{-δv} dv = (1 - e^{-δT})/δ`` (``= T`` when ``δ = 0``).

    The results listed in :func:`mmc_deterministic_patience` follow by
    integrating ``f``.  They are computed from the integrals scaled by
    ``e^{-m}`` (:func:`_scaled_integrals`), with ``P_c = e^{-m} q``, so that
    neither a large ``c`` nor overload overflows.
    """
    c_mu = c * mu
    log_b = _log_erlang_b(c, lam / mu)
    b = math.exp(log_b)
    m, a0, a1, e_rel, t_e_rel = _scaled_integrals(c_mu - lam, t)
    # P_c = e^{-m} q with q = 1 / (e^{-m}/B + λ A0), all in log space.
    # lam * a0 can underflow to 0 for a subnormal patience (T = 5e-324).
    log_lam_a0 = math.log(lam * a0) if lam * a0 > 0.0 else -math.inf
    log_q = -_logaddexp(-m - log_b, log_lam_a0)
    q = math.exp(log_q)
    # Σ_{n<c} P_n = P_c (1/B - 1): computed directly, not as 1 - p_wait.
    p_no_wait = 0.0 if b >= 1.0 else math.exp(-m + log_q + math.log1p(-b) - log_b)
    served_share = p_no_wait + q * c_mu * a0
    waited_served = q * c_mu * a1  # ∫_0^T v f(v) dv
    mean_wait_all = waited_served + q * t_e_rel
    throughput = lam * served_share
    return MMcDeterministicPatience(
        arrival_rate=lam,
        service_rate=mu,
        c=c,
        patience=t,
        p_wait=min(1.0, q * (c_mu * a0 + e_rel)),
        p_timeout=q * e_rel,
        mean_wait_all=mean_wait_all,
        mean_wait_served=waited_served / served_share if served_share > 0.0 else 0.0,
        throughput=throughput,
        utilisation=throughput / c_mu,
        mean_queue_length=lam * mean_wait_all,
    )


class _ScaledIntegrals(NamedTuple):
    """``I0``, ``I1``, ``e^{-δT}`` and ``T e^{-δT}`` of M/M/c+D, each times ``e^{-m}``."""

    m: float  # the shift: 0, or |δ|T in overload
    a0: float  # e^{-m} I0
    a1: float  # e^{-m} I1
    e_rel: float  # e^{-m} e^{-δT}
    t_e_rel: float  # e^{-m} T e^{-δT}


def _scaled_integrals(delta: float, t: float) -> _ScaledIntegrals:
    """The integrals ``I0 = ∫_0^T e^{-δv} dv`` and ``I1 = ∫_0^T v e^{-δv} dv``, scaled.

    With ``u = v/T`` and ``x = δT``: ``I0 = T ∫_0^1 e^{-x u} du`` and
    ``I1 = T² ∫_0^1 u e^{-x u} du`` (:func:`_psi0`, :func:`_phi`), with no
    shift (``m = 0``) when ``δ >= 0``.  In overload ``e^{-δv}`` grows, so
    ``e^m`` with ``m = y = -δT = |δ|T`` is factored out (and ``u → 1 - u``):
    ``I0 = e^m T ∫_0^1 e^{-y u} du``, ``I1 = e^m T² ∫_0^1 (1-u) e^{-y u} du``.
    With ``T = ∞`` (which needs ``δ > 0``), ``I0 = 1/δ``, ``I1 = 1/δ²`` and
    ``e^{-δT} = 0``.
    """
    if math.isinf(t):
        return _ScaledIntegrals(0.0, 1.0 / delta, 1.0 / (delta * delta), 0.0, 0.0)
    if delta >= 0.0:
        x = delta * t
        e_rel = math.exp(-x)
        return _ScaledIntegrals(0.0, t * _psi0(x), t * t * _phi(x), e_rel, t * e_rel)
    y = -delta * t
    return _ScaledIntegrals(y, t * _psi0(y), t * t * (_psi0(y) - _phi(y)), 1.0, t)


@dataclass(frozen=True)
class FifoPatienceSimulation:
    """Estimates from :func:`simulate_fifo_patience`, with batch-means standard errors."""

    n: int
    p_wait: float
    p_timeout: float
    mean_wait_all: float
    mean_wait_served: float
    se_p_wait: float
    se_p_timeout: float
    se_mean_wait_all: float


def simulate_fifo_patience(
    arrival_rate: float,
    service_rate: float,
    c: int,
    patience: float,
    n: int,
    rng: np.random.Generator | int | None = None,
    *,
    warmup: int = 0,
    batches: int = 20,
) -> FifoPatienceSimulation:
    """Simulate M/M/c FIFO with deterministic patience by the Kiefer–Wolfowitz recursion.

    The recursion (:func:`_fifo_patience_batches`) is exact for FIFO and
    needs no event list, so it runs at around a million requests per second
    in pure Python: enough to check :func:`mmc_deterministic_patience`.

    The first ``warmup`` requests (the system starts empty) are simulated
    but not counted; the next ``n`` are split into ``batches`` consecutive
    batches whose means give the standard errors (batch means: batches of
    many requests are nearly independent even though successive waits are not).
    ``rng`` is a ``numpy.random.Generator`` or a seed.
    """
    lam = _positive("arrival_rate", arrival_rate)
    mu = _positive("service_rate", service_rate)
    c = _count("c", c, 1)
    t_max = _non_negative("patience", patience, allow_inf=True)
    n = _count("n", n, 1)
    warmup = _count("warmup", warmup, 0)
    batches = _count("batches", batches, 2)
    if n < batches:
        raise ValueError(f"n must be >= batches ({batches}), got {n}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)

    total = warmup + n
    gaps = rng.exponential(1.0 / lam, total).tolist()
    services = rng.exponential(1.0 / mu, total).tolist()
    edges = [warmup + (n * k) // batches for k in range(batches + 1)]
    segments = [(0, warmup)] + list(zip(edges[:-1], edges[1:]))
    stats = _fifo_patience_batches(gaps, services, c, t_max, segments)
    batch_stats = np.array(stats[1:], dtype=float)  # the warm-up segment left out
    size = batch_stats[:, 0]
    means = batch_stats[:, 1:4] / size[:, None]
    totals = batch_stats.sum(axis=0)
    served = totals[0] - totals[2]
    se = means.std(axis=0, ddof=1) / math.sqrt(batches)
    return FifoPatienceSimulation(
        n=n,
        p_wait=totals[1] / n,
        p_timeout=totals[2] / n,
        mean_wait_all=totals[3] / n,
        mean_wait_served=totals[4] / served if served > 0 else 0.0,
        se_p_wait=float(se[0]),
        se_p_timeout=float(se[1]),
        se_mean_wait_all=float(se[2]),
    )


def _fifo_patience_batches(
    gaps: list[float],
    services: list[float],
    c: int,
    t_max: float,
    segments: list[tuple[int, int]],
) -> list[tuple[int, int, int, float, float]]:
    """Run the Kiefer–Wolfowitz recursion; sums per segment of requests.

    Keep the ``c`` times at which the connections next become free in a
    heap.  Request ``i`` arrives at ``t_i`` (``gaps`` after the one before);
    its wait would be ``w_i = max(0, min(free) - t_i)``.  If ``w_i <= T`` it
    takes the earliest-free connection, which becomes free again at
    ``t_i + w_i + S_i``; otherwise it times out after waiting ``T`` and
    changes nothing.  This is exact for FIFO: requests start in arrival
    order, and one that will time out never holds a connection, so it cannot
    delay anyone.

    Per segment ``(start, stop)`` of request indices: the number of
    requests, how many waited, how many timed out, the sum of all waits and
    the sum of the served requests' waits.
    """
    free = [0.0] * c  # a heap of next-free times
    now = 0.0
    stats = []
    heapreplace = heapq.heapreplace
    for start, stop in segments:
        waited = timed_out = 0
        wait_sum = served_wait_sum = 0.0
        for i in range(start, stop):
            now += gaps[i]
            wait = free[0] - now
            if wait <= 0.0:
                heapreplace(free, now + services[i])
            elif wait <= t_max:
                waited += 1
                served_wait_sum += wait
                heapreplace(free, now + wait + services[i])
            else:
                waited += 1
                timed_out += 1
                wait_sum += t_max
        stats.append((stop - start, waited, timed_out, wait_sum + served_wait_sum, served_wait_sum))
    return stats


# ---------------------------------------------------------------------------
# Closed model: machine repairman M/M/c//N


@dataclass(frozen=True)
class MachineRepairman:
    """Steady-state M/M/c//N results (see :func:`machine_repairman`)."""

    clients: int
    think_time: float
    service_rate: float
    c: int
    throughput: float
    mean_response: float
    mean_wait: float
    p_wait: float
    utilisation: float
    mean_in_system: float
    mean_queue_length: float


def _repairman_distribution(clients: int, think_time: float, mu: float, c: int) -> list[float]:
    """Stationary ``π_n``, ``n = 0..clients``, of the M/M/c//N birth-death chain."""
    if clients == 0:
        return [1.0]
    if think_time == 0.0:
        return [0.0] * clients + [1.0]
    log_p = [0.0]
    for n in range(clients):
        # π_{n+1}/π_n = birth(n) / death(n+1) = ((N-n)/Z) / (min(n+1, c) μ)
        log_p.append(
            log_p[-1] + math.log(clients - n) - math.log(think_time) - math.log(min(n + 1, c) * mu)
        )
    top = max(log_p)
    weights = [math.exp(v - top) for v in log_p]
    total = math.fsum(weights)
    return [w / total for w in weights]


def machine_repairman(
    clients: int, think_time: float, service_rate: float, c: int
) -> MachineRepairman:
    """Closed M/M/c//N (machine repairman): N clients, think Exp(Z), c servers Exp(μ), FIFO.

    ``n`` (requests at the pool, waiting or being served) is a birth-death
    chain on ``0..N`` with birth rate ``(N - n)/Z`` and death rate
    ``min(n, c) μ``, so ``π_n ∝ Π_{k<n} ((N-k)/Z) / (min(k+1, c) μ)``
    (computed in log space).  Then::

        throughput      X = Σ_n min(n, c) μ π_n
        utilisation       = X / (cμ)
        mean_in_system  L = Σ_n n π_n
        mean_queue_length = Σ_n max(n - c, 0) π_n
        mean_response   R = N/X - Z             (Little on the whole loop; = L/X)
        mean_wait         = R - 1/μ
        p_wait            = Σ_{n >= c} π^{(N-1)}_n

    ``p_wait`` uses the *arrival theorem*: in a closed product-form network
    an arriving request sees the time-stationary distribution of the same
    system with one client fewer (``N - 1``).  ``think_time = 0`` is allowed:
    then all N requests are always at the pool (``n = N``).
    """
    n_clients = _count("clients", clients, 1)
    z = _non_negative("think_time", think_time)
    mu = _positive("service_rate", service_rate)
    c = _count("c", c, 1)
    pi = _repairman_distribution(n_clients, z, mu, c)
    x = math.fsum(min(n, c) * mu * p for n, p in enumerate(pi))
    seen = _repairman_distribution(n_clients - 1, z, mu, c)
    p_wait = min(1.0, math.fsum(p for n, p in enumerate(seen) if n >= c))
    r = n_clients / x - z
    return MachineRepairman(
        clients=n_clients,
        think_time=z,
        service_rate=mu,
        c=c,
        # in the order of the docstring's derivation
        throughput=x,
        utilisation=min(1.0, x / (c * mu)),
        mean_in_system=math.fsum(n * p for n, p in enumerate(pi)),
        mean_queue_length=math.fsum(max(n - c, 0) * p for n, p in enumerate(pi)),
        mean_response=r,
        mean_wait=max(0.0, r - 1.0 / mu),
        p_wait=p_wait,
    )


# ---------------------------------------------------------------------------
# Processor sharing and M/G/1


def _check_open(arrival_rate: float, service_rate: float, capacity: float, what: str) -> float:
    lam = _non_negative("arrival_rate", arrival_rate)
    if lam >= capacity:
        raise _unstable(what, lam, capacity)
    return lam


def mm1_ps_mean_response(arrival_rate: float, service_rate: float) -> float:
    """M/M/1 processor sharing (and M/M/1 FCFS) mean response ``1/(μ - λ)``.

    By insensitivity this also holds for M/G/1-PS with mean service ``1/μ``.
    """
    mu = _positive("service_rate", service_rate)
    lam = _check_open(arrival_rate, mu, mu, "the M/M/1-PS mean response")
    return 1.0 / (mu - lam)


def mm1_ps_mean_response_given_size(x: float, arrival_rate: float, service_rate: float) -> float:
    """M/G/1-PS mean response of a job needing ``x`` seconds of work: ``x / (1 - ρ)``.

    Linear in ``x``: under PS every job is slowed by the same factor ``1/(1-ρ)``.
    """
    x = _non_negative("x", x)
    mu = _positive("service_rate", service_rate)
    lam = _check_open(arrival_rate, mu, mu, "the M/M/1-PS mean response")
    return x / (1.0 - lam / mu)


def mmk_ps_mean_response(arrival_rate: float, service_rate: float, k: int) -> float:
    """Mean response with ``k`` cores shared by all ``n`` jobs, each at ``min(1, k/n)`` of a core.

    The number of jobs present is the same birth-death chain as M/M/k
    (total completion rate ``min(n, k) μ``), so ``L`` and, by Little, the
    mean response are those of M/M/k::

        W = C(k, a) / (kμ - λ) + 1/μ

    This limited processor sharing is *insensitive*: the mean is the same for
    any service distribution with mean ``1/μ``.  Compare
    :func:`mg1_mean_response` / :func:`allen_cunneen_mean_wait` to see that
    FCFS wins when service times vary little.
    """
    return mmc(arrival_rate, service_rate, k).mean_response


def pk_mean_wait(arrival_rate: float, mean_service: float, cv_service: float) -> float:
    """Pollaczek–Khinchine M/G/1 FCFS mean queueing time.

    ``Wq = λ E[S²] / (2 (1 - ρ)) = ρ E[S] (1 + cv²) / (2 (1 - ρ))``, with
    ``ρ = λ E[S]`` and ``cv`` the coefficient of variation of ``S``
    (0 deterministic, 1 exponential).
    """
    s = _positive("mean_service", mean_service)
    cv = _non_negative("cv_service", cv_service)
    lam = _check_open(arrival_rate, 1.0 / s, 1.0 / s, "the M/G/1 mean wait")
    rho = lam * s
    return rho * s * (1.0 + cv * cv) / (2.0 * (1.0 - rho))


def mg1_mean_response(arrival_rate: float, mean: float, cv: float) -> float:
    """M/G/1 FCFS mean response ``E[S] + Wq`` (Pollaczek–Khinchine, see :func:`pk_mean_wait`)."""
    return mean + pk_mean_wait(arrival_rate, mean, cv)


def md1_mean_response(arrival_rate: float, service_time: float) -> float:
    """M/D/1 FCFS mean response ``D + ρ D / (2 (1 - ρ))`` (P–K with ``cv = 0``)."""
    return mg1_mean_response(arrival_rate, service_time, 0.0)


def allen_cunneen_mean_wait(
    arrival_rate: float, mean_service: float, cv_service: float, c: int
) -> float:
    """Allen–Cunneen *approximation* to the M/G/c FCFS mean queueing time.

    ``Wq ≈ C(c, a) / (cμ - λ) · (ca² + cs²) / 2`` with ``ca = 1`` for Poisson
    arrivals and ``cs = cv_service``, i.e. the M/M/c wait scaled by
    ``(1 + cv²)/2``.  Exact for ``c = 1`` (it is then Pollaczek–Khinchine)
    and for exponential service; otherwise an approximation.  Spot checks
    against a FIFO simulation (c = 2..10, ρ = 0.5..0.9, cv = 0..2) found it
    within 6% (it slightly underestimates M/D/c waits); do not lean on it far
    outside such loads without simulating.
    """
    s = _positive("mean_service", mean_service)
    cv = _non_negative("cv_service", cv_service)
    return mmc(arrival_rate, 1.0 / s, c).mean_wait * (1.0 + cv * cv) / 2.0


# ---------------------------------------------------------------------------
# Caches and replicas
#
# The request stream of an open workload is Poisson at rate λ, and each
# request picks key k with probability p_k independently, so the requests for
# key k form their own Poisson process at rate λ_k = λ p_k (thinning), and
# keys can be analysed one at a time, then summed with weights p_k (a key's
# share of the reads).  Closed workloads are not Poisson per key: these
# formulas are for open workloads only.


def _popularity(probabilities: npt.ArrayLike) -> np.ndarray:
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not math.isclose(p.sum(), 1.0):
        raise ValueError("probabilities must be a non-empty 1-D array of shares summing to 1")
    return p


def _expected_last_arrival(rate: np.ndarray, window: float) -> np.ndarray:
    """E[time of the last Poisson(rate) arrival in (0, window)], 0 when there is none.

    ``P(D <= x) = exp(-rate (window - x))``, so ``E[D] = window - (1 - exp(-rate window)) / rate``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        d = window - (-np.expm1(-rate * window)) / rate
    return np.where(rate > 0, d, 0.0)


@dataclass(frozen=True)
class TtlCacheKey:
    """One key of a TTL cache-aside cache: hit ratio and database query rate."""

    hit_ratio: np.ndarray
    query_rate: np.ndarray  # database queries per second for the key


def ttl_cache_keys(
    read_rates: npt.ArrayLike,
    ttl: float,
    fill_time: float = 0.0,
    single_flight: bool = True,
    invalidation_rates: npt.ArrayLike = 0.0,
) -> TtlCacheKey:
    """Per-key hit ratio and query rate of cache-aside with a TTL, by renewal-reward.

    Each key's reads are Poisson at ``read_rates[k]`` (λ); a miss stores the
    value ``fill_time`` (S) after the ``GET`` that missed (the cache lookup,
    the query and the ``SETEX``); the value lives ``ttl`` (T) from the store,
    hits do not extend it.  A cycle starts when the key leaves the cache; the
    next read (after 1/λ on average) misses and fills.  Reads during the
    fill miss too.

    * ``single_flight`` (or S = 0): only the first miss queries; the value
      then lives T.  Per cycle: λS + 1 misses, λT hits, one query, so the hit
      ratio is ``λT / (1 + λS + λT)`` and the query rate ``1 / (1/λ + S + T)``.
      With S = 0 this is the textbook ``λT / (1 + λT)``.
    * without it (a stampede): each of the 1 + N misses (N ~ Poisson(λS))
      queries and stores again, and the last store, D after the first miss
      (``E[D] = S − (1 − e^{−λS})/λ``), restarts the TTL: λ(T + E[D]) hits
      per cycle and ``(1 + λS) / (1/λ + S + E[D] + T)`` queries per second.
      Assumes T >= S.
    * ``invalidation_rates`` (w, per key): writes with ``on_write =
      "invalidate"`` delete the key at Poisson times, which *reduces hits*:
      the value lives min(T, Exp(w)), ``(1 − e^{−wT}) / w`` on average, in
      place of T.  A delete during a fill does not stop the fill's store (the
      cache-aside race), which the formula follows.  Exact with
      ``single_flight`` (or S = 0); not offered for stampedes (raises).

    Exact for these assumptions; ``fill_time`` matters when it is not small
    against the time between a key's reads (for the hottest keys).
    """
    lam = np.asarray(read_rates, dtype=float)
    if np.any(lam < 0):
        raise ValueError("read_rates must be >= 0")
    t = _positive("ttl", ttl) if not math.isinf(ttl) else math.inf
    s = _non_negative("fill_time", fill_time)
    w = np.broadcast_to(np.asarray(invalidation_rates, dtype=float), lam.shape)
    if np.any(w < 0):
        raise ValueError("invalidation_rates must be >= 0")
    if math.isinf(t) and not np.any(w > 0):
        # Never expires, never invalidated: every read after the first hits.
        return TtlCacheKey(np.where(lam > 0, 1.0, 0.0), np.zeros_like(lam))
    hits, misses, queries, cycle = _ttl_cycle(lam, t, s, single_flight, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(lam > 0, hits / (hits + misses), 0.0)
        rate = np.where(lam > 0, queries / cycle, 0.0)
    return TtlCacheKey(ratio, rate)


def _ttl_cycle(
    lam: np.ndarray, t: float, s: float, single_flight: bool, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float | np.ndarray, np.ndarray]:
    """Per key, the mean hits, misses and queries of one cycle, and its mean length.

    A cycle runs from the key leaving the cache to its leaving again; see
    :func:`ttl_cache_keys` for the three cases.  A key that is never read
    (λ = 0) gets NaN or infinities here, which the caller replaces.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        # mean life of a stored value: min(T, Exp(w)); 1/w when T is inf
        life = np.where(w > 0, -np.expm1(-w * t) / w, t)
        if single_flight or s == 0:
            return lam * life, 1 + lam * s, 1.0, 1 / lam + s + life
        if np.any(w > 0):
            raise ValueError("invalidation_rates are only modelled with single_flight")
        if t < s:
            raise ValueError("without single_flight the formula needs ttl >= fill_time")
        d = _expected_last_arrival(lam, s)
        return lam * (t + d), 1 + lam * s, 1 + lam * s, 1 / lam + s + d + t


def ttl_cache_hit_ratio(
    rate: float,
    probabilities: npt.ArrayLike,
    ttl: float,
    fill_time: float = 0.0,
    single_flight: bool = True,
    invalidation_rate: float = 0.0,
) -> float:
    """Cache-aside hit ratio over a popularity: ``Σ p_k h_k`` with ``h_k`` per key.

    ``rate``: reads per second in all; ``p_k`` a key's share of them (and of
    the writes behind ``invalidation_rate``, writes per second in all).  See
    :func:`ttl_cache_keys` for ``h_k`` and its assumptions; with the
    defaults it is ``λ_k T / (1 + λ_k T)``, which assumes a miss's fill is
    instantaneous: set ``fill_time`` to the hit time plus the query (and any
    connection wait) when those are not small against the time between a
    hot key's reads, and ``single_flight`` as the cache does.
    """
    p = _popularity(probabilities)
    keys = ttl_cache_keys(
        _positive("rate", rate) * p, ttl, fill_time, single_flight, invalidation_rate * p
    )
    return float(np.dot(p, keys.hit_ratio))


def che_characteristic_time(rate: float, probabilities: npt.ArrayLike, capacity: int) -> float:
    """Che's characteristic time ``t_C`` of an LRU cache holding ``capacity`` keys.

    The root of ``Σ_k (1 − e^{−λ_k t_C}) = C``: a key stays in an LRU cache
    while fewer than C other distinct keys have been requested since its
    last request, and Che's approximation treats that time as the same
    constant ``t_C`` for every key.  Infinite when the cache holds every key.
    """
    p = _popularity(probabilities)
    lam = _positive("rate", rate) * p
    c = _count("capacity", capacity, 1)
    if c >= np.count_nonzero(lam):
        return math.inf

    def excess(t: float) -> float:
        return float(np.sum(-np.expm1(-lam * t))) - c

    hi: float = 1.0 / lam.max()
    while excess(hi) < 0:
        hi *= 2.0
    lo = 0.0
    for _ in range(200):  # bisection: excess() increases with t
        mid = 0.5 * (lo + hi)
        if excess(mid) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def lru_cache_hit_ratio(rate: float, probabilities: npt.ArrayLike, capacity: int) -> float:
    """Che's approximation of an LRU cache's hit ratio: ``Σ_k p_k (1 − e^{−λ_k t_C})``.

    Independent requests (the independent reference model) with no expiry
    and an instantaneous fill.  An approximation, known to be very accurate
    for Zipf popularities once the cache holds tens of keys.  It describes
    *exact* LRU; Redis' sampled LRU (``maxmemory-samples = 5``) hits slightly
    less often.
    """
    p = _popularity(probabilities)
    t_c = che_characteristic_time(rate, p, capacity)
    if math.isinf(t_c):
        return 1.0
    return float(np.dot(p, -np.expm1(-rate * p * t_c)))


def replica_stale_read_ratio(write_rate: float, probabilities: npt.ArrayLike, lag: float) -> float:
    """Share of replica reads that are stale: ``Σ_k p_k (1 − e^{−w_k L})``, ``w_k = w p_k``.

    A read that begins at ``a`` and queries a replica at once sees the
    commits up to ``a − L``; it is stale when key k had a commit in
    ``(a − L, a]``, probability ``1 − e^{−w_k L}`` when the key's commits are
    Poisson at rate ``w_k`` (they are: Poisson writes shifted by a service
    time).  Assumes a constant lag L, every read sent to a replica, no
    cache, and no wait between the read's arrival and its query's start (a
    wait δ shortens the window to ``L − δ``).  Reads share the popularity p
    with writes.
    """
    p = _popularity(probabilities)
    w = _non_negative("write_rate", write_rate)
    lag = _non_negative("lag", lag)
    return float(np.dot(p, -np.expm1(-w * p * lag)))


def read_your_writes_replica_share(write_rate: float, window: float, clients: int) -> float:
    """Share of reads that ``read_your_writes`` still sends to a replica: ``e^{−w W / N}``.

    Each of N clients sends a random share of the requests, so a client's
    writes are Poisson at ``w / N``; its read goes to a replica unless it
    committed a write in the last ``W`` (the window) seconds.
    """
    w = _non_negative("write_rate", write_rate)
    n = _count("clients", clients, 1)
    return math.exp(-w * _non_negative("window", window) / n)


def read_your_writes_stale_read_ratio(
    write_rate: float, probabilities: npt.ArrayLike, lag: float, window: float, clients: int
) -> float:
    """Stale reads under ``read_your_writes``: ``Σ_k p_k e^{−wW/N} (1 − e^{−w_k L (N−1)/N})``.

    A read is stale only if it goes to a replica (its client wrote nothing in
    the last W, probability ``e^{−wW/N}``) and key k had a commit in the
    last L; with ``W >= L`` that commit was by *another* client, and other
    clients' commits to k are Poisson at ``w_k (N−1)/N`` whatever this one
    did.  Own writes are therefore never read stale.  The same assumptions
    as :func:`replica_stale_read_ratio`, clients picked uniformly per request.
    """
    p = _popularity(probabilities)
    w = _non_negative("write_rate", write_rate)
    lag = _non_negative("lag", lag)
    n = _count("clients", clients, 1)
    if _non_negative("window", window) < lag:
        raise ValueError("the formula needs window >= lag")
    others = w * p * lag * (n - 1) / n
    return read_your_writes_replica_share(w, window, n) * float(np.dot(p, -np.expm1(-others)))


# ---------------------------------------------------------------------------
# Many processes: fleets, serverless (PgBouncer in transaction mode is mmc)


def fleet_server_connections_max(instances: int, pool_limit: int, max_connections: int) -> int:
    """The most connections a fleet's pools can hold on Postgres at once.

    Each of ``instances`` processes opens up to ``pool_limit`` (SQLAlchemy's
    ``pool_size + max_overflow``, psycopg2's ``maxconn``); Postgres refuses
    the ones past ``max_connections`` (superuser slots left aside).  Under
    enough load to fill every pool the peak *is* this bound.
    """
    _count("instances", instances, 1)
    _count("pool_limit", pool_limit, 1)
    _count("max_connections", max_connections, 1)
    return min(instances * pool_limit, max_connections)


def serverless_cold_start_probability(rate: float, keep_warm: float, duration: float) -> float:
    """P(an invocation starts cold) at low concurrency (``rate * duration`` well below 1).

    The previous invocation's environment is busy for ``duration`` after it
    arrived, then idle for ``keep_warm`` before it is reclaimed.  The next
    arrival, a Poisson gap later, finds it busy with probability
    ``1 - e^{-λd}`` (so a new environment starts cold) and reclaimed with
    probability ``e^{-λ(d+k)}``; in between it is warm.  Neglects the rare
    second environment an overlap leaves behind (an error of order ``λd``).
    """
    lam = _positive("rate", rate)
    k = _non_negative("keep_warm", keep_warm)
    d = _non_negative("duration", duration)
    return math.exp(-lam * (d + k)) + 1.0 - math.exp(-lam * d)


def serverless_environments_mean(rate: float, keep_warm: float, duration: float) -> float:
    """Time-average environments alive at low concurrency: ``1 - e^{-λ(d+k)}``.

    One environment is alive from an invocation's arrival until the next
    arrival or ``duration + keep_warm`` later, whichever is first; over a
    Poisson gap that is ``E[min(G, d+k)] / E[G]`` of the time (renewal-reward).
    """
    lam = _positive("rate", rate)
    k = _non_negative("keep_warm", keep_warm)
    d = _non_negative("duration", duration)
    return 1.0 - math.exp(-lam * (d + k))


def serverless_step_cold_starts(rate: float, cold_duration: float) -> float:
    """Cold starts in the first ``cold_duration`` seconds after the rate steps from 0 to ``rate``.

    No environment is free before the first cold invocation has ended
    (``cold_duration``: cold start, connect, query), so every arrival in
    that time creates one: ``rate`` cold starts per second, ``rate *
    cold_duration`` in all, each holding a connection of its own: the storm.
    """
    return _positive("rate", rate) * _non_negative("cold_duration", cold_duration)
