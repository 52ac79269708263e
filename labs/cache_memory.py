"""Redis as a bounded cache: what a key costs, how many keys a ``maxmemory`` holds,
and how close Redis's approximate LRU comes to the exact LRU that simlib models.

The scenario's ``[cache] capacity`` is a number of keys; Redis bounds memory in
bytes.  The live executor realises a capacity of C keys with ``maxmemory`` and
``maxmemory-policy allkeys-lru``, so this module measures the exchange rate and
sets the limit:

* :func:`bytes_per_key` stores ``sample`` keys shaped exactly as the executor
  stores them (``prefix + str(k)``, a short decimal version as the value,
  ``SET ... PX ttl`` or plain ``SET``) and reads ``used_memory`` before and
  after.  On Redis 7 (jemalloc) each key costs 64 bytes (its dict entry, the
  key string, the value object) and 96 with a TTL (one more entry in the
  ``expires`` dict), plus its share of the hash tables' bucket arrays: 8 bytes
  per bucket, a power of two at least the number of keys, so another 8 to 16
  bytes per key and per dict.  That share is why the measurement stores as
  many keys as the capacity asks for (:func:`apply_capacity`): the bucket
  array is then the one the full cache will have.
* :func:`apply_capacity` sets ``maxmemory = used_memory now + C * bytes per
  key``.  The baseline is what the server uses *now*, not zero, because Redis
  compares its whole ``used_memory`` with ``maxmemory``: its own start-up
  allocations, every client's buffers, the script cache and any other keys
  count as well (only replica and AOF buffers are left out).  The keys can
  only have what is left above that, so the limit adds the keys on top of
  what is already there.  Consequences the caller must respect: open the
  application's connections first (each client costs some kilobytes of
  buffers), and run every command the run will use once before (Redis 7
  allocates a latency histogram of about 24 KB for each command the first
  time it runs, ``latency-tracking yes``: taken after the baseline, that
  comes out of the keys' share; :func:`warm_up_commands` does it for the
  cache-aside commands).  :func:`keys_held` shows what the limit holds.
* :func:`lru_experiment` replays one trace of Zipf key requests, cache-aside
  (``GET``, on a miss ``SET``), against Redis with the capacity applied, and
  computes on the same trace the hit ratio of exact LRU
  (:class:`simlib.cache.CacheStore`), of random replacement and Che's
  approximation (:func:`simlib.theory.lru_cache_hit_ratio`).

How Redis's ``allkeys-lru`` really chooses (``src/evict.c``, ``src/server.h``,
Redis 7): every object has a 24-bit LRU field set to the server's LRU clock
when it is created or read, and that clock counts in units of
``LRU_CLOCK_RESOLUTION = 1000`` ms: updated by ``serverCron`` (every 100 ms at
the default ``hz 10``), it has one-second resolution.  When ``used_memory``
exceeds ``maxmemory``, before running the next command, Redis samples
``maxmemory-samples`` random keys (``dictGetSomeKeys``), merges them into a
16-entry eviction pool ordered by idle time (``EVPOOL_SIZE``) and evicts the
idlest one in the pool, repeating until it is under the limit again.  Two
things follow.  Sampling makes it approximate: the victim is the oldest of a
few keys, not the oldest of all.  And the one-second clock makes every key
touched in the same second look equally recent: when the cache turns over
faster than that (a replay at tens of thousands of requests per second
inserts the whole capacity many times a second), most keys in the pool are
tied and Redis evicts nearly at random among them.  Measured
(``bench/bench_redis_lru.py``): at replay speed Redis hits like random
replacement (0 to 0.011 below it, 0.047-0.056 below exact LRU for Zipf 0.9,
whether ``maxmemory-samples`` is 5 or 10); paced at 2000 requests/s, where a
key stays in the cache for seconds (``rate``), within 0.001 of exact LRU.

The replay runs a small Lua script (``GET``; if nil, ``SET`` and return 0, else
return 1) with ``EVALSHA`` in pipelined batches: the same commands as the
executor's ``GET`` and ``SET``, in one round trip per batch.  Eviction happens
before each ``EVALSHA`` as before any command, so the cache sees the same
sequence.  Batches stay at a few hundred commands because the replies Redis
holds for a client count toward ``used_memory`` too, and would push keys out.

``allkeys-lru`` evicts any key of the server, in every database: run this on a
Redis of your own (labs' throwaway one), never on one holding other data.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from labs.services.common import ServiceError
from simlib.cache import CacheStore
from simlib.scenario import Popularity
from simlib.theory import lru_cache_hit_ratio

POLICY = "allkeys-lru"
LRU_CLOCK_RESOLUTION_MS = 1000  # server.h: #define LRU_CLOCK_RESOLUTION 1000 /* in ms */
EVPOOL_SIZE = 16  # evict.c: candidates kept across evictions

# While measuring, the limit must not evict anything, and it must not be 0:
# with ``maxmemory 0`` (or a policy that is neither LRU nor LFU) Redis stores
# values 0..9999 as pointers to shared integer objects, 16 bytes less per key
# than under allkeys-lru, where every key needs its own object for its LRU
# field.  1 PiB with allkeys-lru measures the shape the run will have.
MEASURE_MAXMEMORY = 1 << 50
# Keys stored with a TTL while measuring live this long whatever the run's TTL
# (the expiry time is an 8-byte field whatever its value): none may expire
# while we count.
MEASURE_TTL_MS = 3_600_000
MAX_MEASURE_SAMPLE = 200_000  # apply_capacity: cap on the keys stored to measure
CHUNK = 500  # commands per pipeline: keeps the replies Redis holds small
SETTLE_STEP = 0.12  # s: a little over one serverCron tick at hz 10
SETTLE_TIMEOUT = 3.0  # s
PACE_TICK = 0.005  # s: a paced replay sends one batch per tick

# GET; on a miss SET (no TTL) and answer 0; on a hit answer 1.  GET returns
# false to Lua for a missing key.
CACHE_ASIDE_LUA = """
local v = redis.call('GET', KEYS[1])
if v then return 1 end
redis.call('SET', KEYS[1], ARGV[1])
return 0
"""


# ---------------------------------------------------------------------------
# Reading the server
# ---------------------------------------------------------------------------


def _memory(r: redis.Redis) -> tuple[int, int]:
    """(``used_memory``, the part of it that is normal clients' buffers)."""
    info = r.info("memory")
    return int(info["used_memory"]), int(info.get("mem_clients_normal", 0))


def settled_used_memory(
    r: redis.Redis, *, without_clients: bool = False, timeout: float = SETTLE_TIMEOUT
) -> int:
    """``used_memory`` once it stops changing (at most ``timeout`` s).

    After many keys come or go, Redis still resizes its hash tables in the
    background: a table that grew is rehashed incrementally into the larger
    one (both are allocated meanwhile), and one that emptied is shrunk by
    ``serverCron``.  Two equal readings a cron tick apart mean that is over.
    ``without_clients``: leave out the clients' buffers (``mem_clients_normal``),
    which Redis 7 grows and shrinks on its own clock (a reply buffer follows
    its peak use over 5 s windows), so that a measurement of keys does not
    pick up a buffer that happened to shrink meanwhile.  On a server others
    are using it may never settle; then the last reading.
    """

    def reading() -> int:
        used, clients = _memory(r)
        return used - clients if without_clients else used

    deadline = time.monotonic() + timeout
    last = reading()
    while True:
        time.sleep(SETTLE_STEP)
        now = reading()
        if now == last or time.monotonic() >= deadline:
            return now
        last = now


def _config_get(r: redis.Redis, names: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        try:
            value = r.config_get(name).get(name)
        except redis.ResponseError as e:
            raise _config_refused("CONFIG GET", name, e) from None
        if value is None:
            raise ServiceError(f"redis: CONFIG GET {name} returned nothing; is this Redis >= 4?")
        out[name] = str(value)
    return out


def _config_set(r: redis.Redis, name: str, value: str | int | float) -> None:
    try:
        r.config_set(name, value)
    except redis.ResponseError as e:
        raise _config_refused("CONFIG SET", name, e) from None


def _config_refused(command: str, name: str, error: Exception) -> ServiceError:
    # Managed Redis services (and ACL users without +config) refuse CONFIG;
    # the capacity cannot be set there, and saying so beats a traceback.
    return ServiceError(
        f"redis: {command} {name} was refused ({error}); a cache capacity needs "
        f"CONFIG SET maxmemory, maxmemory-policy and maxmemory-samples: use a Redis "
        f"you administer (labs' throwaway one, or your own), or drop [cache] capacity"
    )


def _names(prefix: str, keys: Iterable[int]) -> list[str]:
    return [f"{prefix}{k}" for k in keys]


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unlink(r: redis.Redis, names: Sequence[str | bytes]) -> None:
    for chunk in _chunks(names, 1000):
        r.unlink(*chunk)


def warm_up_commands(r: redis.Redis, prefix: str) -> None:
    """Run each command of the cache-aside path once, on a scratch key.

    Redis 7 allocates a latency histogram (about 24 KB) per command the
    first time the command runs.  Run after the capacity is set, that would
    come out of the keys' memory (about 350 keys' worth each), so everything
    the run and the measurement use runs once first.
    """
    scratch = f"{prefix}warm-up"
    r.ping()
    r.set(scratch, "1", px=MEASURE_TTL_MS)
    r.get(scratch)
    r.exists(scratch)
    r.delete(scratch)
    r.unlink(scratch)
    r.dbsize()
    r.scan(0, match=f"{_glob_escape(prefix)}*", count=10)
    r.info("stats")
    r.config_get("maxmemory")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# ---------------------------------------------------------------------------
# Bytes per key, and the capacity
# ---------------------------------------------------------------------------


def bytes_per_key(
    r: redis.Redis, prefix: str, ttl_ms: int | None, sample: int = 5000, value: str = "1"
) -> float:
    """Memory one cached key costs, measured by storing ``sample`` of them.

    Stores ``prefix + str(k)`` for k < ``sample`` with ``value`` (with
    ``PX`` when ``ttl_ms`` is not None), reads the change in ``used_memory``
    less the clients' buffers (they move on their own, see
    :func:`settled_used_memory`), then deletes them again.  Includes the keys'
    share of the hash tables' bucket arrays as they are with ``sample`` more
    keys in the database.
    While measuring, ``maxmemory`` is 1 PiB and the policy ``allkeys-lru`` (see
    ``MEASURE_MAXMEMORY``); both are put back afterwards.  Call it before the
    run stores anything under ``prefix``: it refuses to overwrite keys.
    """
    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    names = _names(prefix, range(sample))
    present = sum(r.exists(*chunk) for chunk in _chunks(names, 1000))
    if present:
        raise ValueError(
            f"bytes_per_key: {present} keys named {prefix}<k> (k < {sample}) already "
            f"exist; measure before the run stores keys under this prefix"
        )
    previous = _config_get(r, ("maxmemory", "maxmemory-policy"))
    px = None if ttl_ms is None else MEASURE_TTL_MS
    try:
        _config_set(r, "maxmemory-policy", POLICY)
        _config_set(r, "maxmemory", MEASURE_MAXMEMORY)
        warm_up_commands(r, prefix)
        before = settled_used_memory(r, without_clients=True)
        for chunk in _chunks(names):
            pipe = r.pipeline(transaction=False)
            for name in chunk:
                pipe.set(name, value, px=px)
            pipe.execute()
        after = settled_used_memory(r, without_clients=True)
    finally:
        try:
            _unlink(r, names)
        finally:
            _config_set(r, "maxmemory", previous["maxmemory"])
            _config_set(r, "maxmemory-policy", previous["maxmemory-policy"])
    # let the emptied tables shrink, so the caller's next reading is the baseline
    settled_used_memory(r)
    return (after - before) / sample


@dataclass(frozen=True)
class CapacitySetting:
    """A capacity in keys as Redis holds it: the limit set and what it replaced."""

    capacity_keys: int
    bytes_per_key: float
    baseline_bytes: int  # used_memory just before the limit was set
    maxmemory_bytes: int  # baseline + capacity * bytes per key
    policy: str
    samples: int  # maxmemory-samples
    previous: dict[str, str] = field(default_factory=dict)  # CONFIG values replaced


def apply_capacity(
    r: redis.Redis,
    capacity: int,
    prefix: str,
    ttl_ms: int | None,
    samples: int = 5,
    value: str = "1",
) -> CapacitySetting:
    """Bound Redis to about ``capacity`` keys shaped as the run stores them.

    Measures the bytes per key with as many keys as the capacity (so the
    bucket arrays are those of a full cache; at most ``MAX_MEASURE_SAMPLE``),
    each storing ``value`` (a value shaped as the run's), then sets
    ``maxmemory-policy allkeys-lru``, ``maxmemory-samples`` and
    ``maxmemory = used_memory now + capacity * bytes per key``.  Open the
    application's connections and run its commands once before calling it
    (see the module docstring).  :func:`restore_capacity` undoes it.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if not 1 <= samples <= 64:
        raise ValueError(f"samples must be 1..64 (maxmemory-samples), got {samples}")
    previous = _config_get(r, ("maxmemory", "maxmemory-policy", "maxmemory-samples"))
    per_key = bytes_per_key(
        r, prefix, ttl_ms, sample=min(capacity, MAX_MEASURE_SAMPLE), value=value
    )
    baseline = settled_used_memory(r)
    limit = baseline + math.ceil(capacity * per_key)
    try:
        _config_set(r, "maxmemory-policy", POLICY)
        _config_set(r, "maxmemory-samples", samples)
        _config_set(r, "maxmemory", limit)
    except BaseException:
        _restore(r, previous)
        raise
    return CapacitySetting(
        capacity_keys=capacity,
        bytes_per_key=per_key,
        baseline_bytes=baseline,
        maxmemory_bytes=limit,
        policy=POLICY,
        samples=samples,
        previous=previous,
    )


def _restore(r: redis.Redis, previous: dict[str, str]) -> None:
    # maxmemory first: lifting the limit before changing the policy means no
    # moment with the old policy (often noeviction) under our tight limit.
    for name in ("maxmemory", "maxmemory-policy", "maxmemory-samples"):
        if name in previous:
            _config_set(r, name, previous[name])


def restore_capacity(r: redis.Redis, setting: CapacitySetting) -> None:
    """Put back the ``maxmemory`` settings that :func:`apply_capacity` replaced."""
    _restore(r, setting.previous)


def keys_held(r: redis.Redis, prefix: str, *, exact: bool = False) -> int:
    """How many of the run's keys Redis holds now.

    ``DBSIZE`` (O(1)): right when the database holds only this run's keys, as
    labs' throwaway Redis does; it counts every key in the database.
    ``exact=True`` counts only names starting with ``prefix`` with ``SCAN``
    (a full pass over the database: fine for thousands of keys, not for a
    busy production instance).
    """
    if not exact:
        return int(r.dbsize())
    return sum(1 for _ in r.scan_iter(match=f"{_glob_escape(prefix)}*", count=1000))


# ---------------------------------------------------------------------------
# The LRU experiment
# ---------------------------------------------------------------------------


def _trace(keys: int, s: float, requests: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Popularity and a trace of key indices 0..keys-1 (rank 0 the most popular).

    Zipf is simlib's: ``p_k`` proportional to ``k^-s`` for k = 1..keys (so
    ``s = 0`` is uniform), drawn by inverse CDF as ``simlib.streams`` does.
    """
    popularity = Popularity("uniform") if s == 0 else Popularity("zipf", s)
    p = popularity.probabilities(keys)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    rng = np.random.default_rng(seed)
    trace = np.searchsorted(cdf, rng.random(requests), side="right").astype(np.int64)
    return p, trace.tolist()


def exact_lru_hits(trace: Sequence[int], capacity: int, warmup: int) -> int:
    """Hits of an exact LRU cache (simlib's ``CacheStore``) after ``warmup`` requests."""
    store = CacheStore(math.inf, capacity)
    hits = 0
    for i, key in enumerate(trace):
        if store.get(key, 0.0) is None:
            store.set(key, 1, 0.0)
        elif i >= warmup:
            hits += 1
    return hits


def random_replacement_hits(trace: Sequence[int], capacity: int, warmup: int, seed: int) -> int:
    """Hits when a full cache evicts a uniformly random key: what Redis tends to.

    Redis with every key's LRU time tied evicts a random sampled key; this is
    the lower reference for its hit ratio (under independent requests random
    replacement hits less than LRU whenever popularity is skewed).
    """
    rng = np.random.default_rng([seed, 1])
    victims = rng.integers(0, capacity, size=len(trace)).tolist()
    slots: list[int] = []
    where: dict[int, int] = {}
    hits = 0
    for i, key in enumerate(trace):
        if key in where:
            if i >= warmup:
                hits += 1
            continue
        if len(slots) < capacity:
            where[key] = len(slots)
            slots.append(key)
            continue
        j = victims[i]
        del where[slots[j]]
        slots[j] = key
        where[key] = j
    return hits


def _replay(
    r: redis.Redis,
    sha: str,
    names: Sequence[bytes],
    trace: Sequence[int],
    warmup: int,
    rate: float | None,
) -> tuple[int, float]:
    """Send the trace through the cache-aside script; (hits after warm-up, seconds)."""
    per_batch = CHUNK if rate is None else max(1, round(rate * PACE_TICK))
    hits = 0
    start = time.perf_counter()
    for first in range(0, len(trace), per_batch):
        if rate is not None:
            # open loop: batch b leaves at its scheduled time, late or not
            delay = start + first / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        batch = trace[first : first + per_batch]
        pipe = r.pipeline(transaction=False)
        for key in batch:
            pipe.evalsha(sha, 1, names[key], b"1")
        results = pipe.execute()
        skip = max(0, warmup - first)
        hits += sum(results[skip:])
    return hits, time.perf_counter() - start


def lru_experiment(
    url: str,
    *,
    keys: int = 10000,
    s: float = 0.9,
    capacity: int = 2000,
    requests: int = 200_000,
    samples: tuple[int, ...] = (5, 10),
    seed: int = 1,
    rate: float | None = None,
) -> dict[str, Any]:
    """Redis's ``allkeys-lru`` against exact LRU on one trace of cache-aside reads.

    One trace of ``requests`` keys from Zipf(``s``) over ``keys`` keys
    (uniform when ``s == 0``), seeded.  For each ``maxmemory-samples`` value
    the trace is replayed against Redis at ``url`` (no TTL, ``GET`` then
    ``SET`` on a miss) with ``capacity`` applied by :func:`apply_capacity`, on
    a fresh key prefix.  ``rate`` (requests/s) paces the replay, which then
    takes ``requests / rate`` seconds; None sends as fast as Redis answers.
    The same trace gives exact LRU's hit ratio, random replacement's, and
    Che's approximation.  Hits count after the first ``5 * capacity``
    requests for all of them (the cache is full by then: it takes at least
    ``capacity`` misses to fill it).  Leaves the server's settings as found
    and deletes its keys.
    """
    warmup = _warmup(keys, s, capacity, requests, rate)
    p, trace = _trace(keys, s, requests, seed)
    counted = requests - warmup
    exact = exact_lru_hits(trace, capacity, warmup) / counted
    r = redis.Redis.from_url(url, socket_timeout=30)
    try:
        try:
            info = r.info("server")
        except redis.ConnectionError as e:
            raise ServiceError(f"redis: cannot reach {url}: {e}") from None
        hz = int(_config_get(r, ("hz",))["hz"])
        sha = r.script_load(CACHE_ASIDE_LUA)
        runs = [_lru_run(r, sha, n, keys, capacity, trace, warmup, rate) for n in samples]
    finally:
        r.close()
    for run in runs:
        run.update(exact_lru_hit_ratio=exact, difference=run["redis_hit_ratio"] - exact)
    return {
        "keys": keys,
        "s": s,
        "popularity": "uniform" if s == 0 else f"zipf {s}",
        "capacity": capacity,
        "requests": requests,
        "warmup_requests": warmup,
        "seed": seed,
        "rate": rate,
        "redis_version": info.get("redis_version"),
        "hz": hz,
        "lru_clock_resolution_ms": LRU_CLOCK_RESOLUTION_MS,
        "exact_lru_hit_ratio": exact,
        "che_hit_ratio": lru_cache_hit_ratio(1.0, p, capacity),
        "random_replacement_hit_ratio": random_replacement_hits(trace, capacity, warmup,
                                                                seed) / counted,
        "runs": runs,
    }


def _warmup(keys: int, s: float, capacity: int, requests: int, rate: float | None) -> int:
    """The requests before hits count (``5 * capacity``), once the arguments are checked."""
    if keys < 2 or not 1 <= capacity < keys:
        raise ValueError(f"need 1 <= capacity < keys, got capacity={capacity}, keys={keys}")
    warmup = 5 * capacity
    if requests <= warmup:
        raise ValueError(f"requests must exceed the warm-up of 5 * capacity = {warmup}")
    if s < 0:
        raise ValueError(f"s must be >= 0, got {s}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 (requests/s) or None, got {rate}")
    return warmup


def _lru_run(
    r: redis.Redis, sha: str, samples: int, keys: int, capacity: int, trace: Sequence[int],
    warmup: int, rate: float | None,
) -> dict[str, Any]:
    """One replay of the trace with ``maxmemory-samples = samples``, on a fresh key prefix."""
    prefix = f"l:{secrets.token_hex(3)}:"
    names = [name.encode() for name in _names(prefix, range(keys))]
    _unlink(r, names)
    # EVALSHA and everything else run once before the baseline is read
    r.evalsha(sha, 1, f"{prefix}warm-up", b"1")
    r.unlink(f"{prefix}warm-up")
    setting = apply_capacity(r, capacity, prefix, None, samples=samples)
    try:
        evicted_before = int(r.info("stats")["evicted_keys"])
        hits, elapsed = _replay(r, sha, names, trace, warmup, rate)
        held = keys_held(r, prefix)
        memory = r.info("memory")
        evicted = int(r.info("stats")["evicted_keys"]) - evicted_before
    finally:
        try:
            restore_capacity(r, setting)
        finally:
            _unlink(r, names)
    ratio = hits / (len(trace) - warmup)
    ops = len(trace) / elapsed
    return {
        "maxmemory_samples": samples,
        "redis_hit_ratio": ratio,
        "keys_held_end": held,
        "keys_held_over_capacity": held / capacity,
        "used_memory_end": int(memory["used_memory"]),
        "maxmemory": setting.maxmemory_bytes,
        "baseline_bytes": setting.baseline_bytes,
        "bytes_per_key": setting.bytes_per_key,
        "evicted_keys": evicted,
        "elapsed_s": elapsed,
        "ops_per_s": ops,
        # misses per LRU clock tick (1 s) over the capacity: how many times
        # the cache's content turns over while every key touched shows the
        # same LRU time
        "turnover_per_lru_tick": ops * (1 - ratio) / capacity,
    }
