"""A cache-aside store in front of the database: Redis with SETEX, TTL and LRU.

What it models, and which real behaviour it follows (the scenario's ``[cache]``):

* **Cache-aside reads.**  The application asks the cache first (a Redis
  ``GET``, costing ``hit_time``).  On a hit it answers from the cache.  On a
  miss it queries the database through its pool as usual, then stores the
  value with ``SETEX key ttl value`` (one more ``hit_time``) and answers.
* **TTL.**  A value lives ``ttl`` seconds from the ``SETEX`` that stored it.
  Reading it does not extend its life (Redis ``GET`` never touches the TTL);
  a later ``SETEX`` replaces the value and restarts the clock.  ``ttl = inf``
  stores with plain ``SET``: no expiry.  Expired keys are removed when next
  looked at or when they reach the cold end of the LRU order (Redis also
  removes them in the background; the difference only shows when a capacity
  and a TTL both bind).
* **LRU capacity.**  With ``capacity`` the cache holds at most that many keys
  and evicts the least recently used one to make room (Redis with
  ``maxmemory`` and ``maxmemory-policy allkeys-lru``).  The model is *exact*
  LRU: every hit and every store makes a key the most recent.  Redis samples
  ``maxmemory-samples`` (5) keys and evicts the oldest of them, an
  approximation whose hit ratio is slightly lower than exact LRU's.
* **Writes.**  A write updates the primary, then (``on_write``)
  ``"invalidate"``: ``DEL key``; ``"write_through"``: ``SETEX`` the new value
  with a fresh TTL; ``"none"``: leaves the cached value to expire.  Either
  cache call costs ``hit_time``.  "Update the database, then delete the key"
  is the usual cache-aside order and it keeps its well-known race: a read
  that missed and fetched the old value *before* the write committed can
  store it *after* the delete, and that old value is then served until it
  expires.  The model reproduces the race rather than hiding it.
* **Stampede, and single flight.**  Plain cache-aside lets every read that
  misses query the database: when a hot key expires, all its readers in the
  next query time query at once (a cache stampede, or dog-pile), and each of
  them stores its result again.  With ``single_flight = true`` the first
  miss for a key becomes its *leader*; later misses for the same key while
  the leader's query is in flight wait for it and take its result (as Go's
  ``singleflight``, or a Redis ``SET NX`` lock with waiters, do).  The
  followers count as misses for ``cache_hit_ratio`` (the key was not in the
  cache) and as ``cache_coalesced_ratio``; they send no query.  If the
  leader's query fails (pool timeout, refused connection), its followers
  fail with the same error, as ``singleflight`` hands its error to all.

Values are represented by their *version*: the number of writes to the key
committed on the primary when the value was read from the database.  That is
all the model needs to tell a fresh read from a stale one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import simpy

from simlib.config import Rule, Section, choice, flag, integer, number


@dataclass(frozen=True, slots=True)
class Cache(Section):
    """The scenario's ``[cache]``: a cache-aside store (Redis) in front of reads.

    ``single_flight``: stampede protection.  False (the plain cache-aside
    pattern): every read that misses queries the database, so when a hot key
    expires all its concurrent readers query at once.  True: one query per key
    is in flight; other readers that miss wait for it and take its result.
    """

    RULES: ClassVar[Mapping[str, Rule]] = {
        "ttl": number(">", 0, inf=True),
        "capacity": integer(">=", 1),
        "hit_time": number(">=", 0),
        "on_write": choice("invalidate", "write_through", "none"),
        "single_flight": flag,
    }

    ttl: float = 60.0  # inf = no expiry
    capacity: int | None = None  # None = unbounded; else LRU eviction
    hit_time: float = 0.0002
    on_write: Literal["invalidate", "write_through", "none"] = "invalidate"
    single_flight: bool = False



class CacheStore:
    """The key-value store itself: versions with expiry times, in LRU order.

    Pure bookkeeping, no simulated time passes here; the request path in
    :mod:`simlib.access` charges ``hit_time`` around each call.
    """

    __slots__ = ("ttl", "capacity", "_entries")

    def __init__(self, ttl: float, capacity: int | None) -> None:
        self.ttl = ttl
        self.capacity = capacity
        # key -> (version, expires_at); order = recency, most recent last.
        self._entries: OrderedDict[int, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: int, now: float) -> int | None:
        """``GET``: the cached version, or None on a miss.  Does not touch the TTL."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]  # expired: Redis deletes it when it is looked at
            return None
        if self.capacity is not None:
            self._entries.move_to_end(key)  # a hit makes the key the most recent
        return entry[0]

    def set(self, key: int, version: int, now: float) -> None:
        """``SETEX key ttl value`` (``SET`` when ``ttl`` is inf), evicting the LRU key if full."""
        entries = self._entries
        entries[key] = (version, now + self.ttl)  # inf stays inf: SET without expiry
        entries.move_to_end(key)
        if self.capacity is not None and len(entries) > self.capacity:
            entries.popitem(last=False)

    def delete(self, key: int) -> None:
        """``DEL key``."""
        self._entries.pop(key, None)


class CacheAside:
    """The cache as the application uses it: the store, its costs, fills in flight."""

    def __init__(self, env: simpy.Environment, config: Cache) -> None:
        self.env = env
        self.config = config
        self.store = CacheStore(config.ttl, config.capacity)
        self.hit_time = config.hit_time
        self.on_write = config.on_write
        self.single_flight = config.single_flight
        # single_flight: key -> event of the leader's fill, which succeeds with
        # the version it read (or None if its query failed) once it is stored.
        self.inflight: dict[int, simpy.Event] = {}

    def lookup(self, key: int) -> int | None:
        """The version a ``GET`` issued now returns (None: miss)."""
        return self.store.get(key, self.env.now)

    def fill(self, key: int, version: int) -> None:
        """Store what a miss read from the database (``SETEX``)."""
        self.store.set(key, version, self.env.now)

    def after_write(self, key: int, version: int) -> bool:
        """Apply ``on_write`` for a committed write; True if a cache call was made."""
        if self.on_write == "invalidate":
            self.store.delete(key)
            return True
        if self.on_write == "write_through":
            self.store.set(key, version, self.env.now)
            return True
        return False
