"""Finding the services a live run uses, in the contract's order.

1. connection strings in the environment: ``LABS_PG_PRIMARY``, ``LABS_PG_REPLICAS``
   (comma separated) and ``LABS_REDIS`` -- e.g. ``docker compose up`` (compose.yaml);
2. servers started earlier with ``python -m labs services up`` (a state file in
   ``$LABS_STATE_DIR``, default ``~/.cache/dbperf-labs/``);
3. otherwise throwaway local servers for the duration of one ``with`` block.

``services_for`` is the one entry point::

    with services_for(replicas=1, redis=True, max_connections=20) as svc:
        svc.primary, svc.replicas, svc.redis      # DSNs / URL
        svc.can_configure                         # True only for throwaway servers
        svc.set_max_connections(50)               # restart with a new limit
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from labs.services.common import (
    ServiceError,
    one_line,
    pid_alive,
    signals_deferred,
    signals_raise,
    unregister,
)
from labs.services.postgres import (
    PostgresServer,
    check_delay,
    check_max_connections,
    connection_limit,
    query_one,
    replica_delay,
    server_max_connections,
    start_primary,
    start_replica,
    wait_streaming,
)
from labs.services.redis import RedisServer, start_redis
from simlib.files import atomic_write_text

log = logging.getLogger("labs.services")

ENV_PRIMARY = "LABS_PG_PRIMARY"
ENV_REPLICAS = "LABS_PG_REPLICAS"
ENV_REDIS = "LABS_REDIS"
ENV_STATE_DIR = "LABS_STATE_DIR"
CHECK_TIMEOUT = 3.0
STATE_VERSION = 1


# ---------------------------------------------------------------------------
# Local servers as one unit
# ---------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """A primary, its streaming replicas and a Redis, all started by labs."""

    primary: PostgresServer | None = None
    replicas: list[PostgresServer] = field(default_factory=list)
    redis: RedisServer | None = None

    @classmethod
    def start(
        cls,
        replicas: int = 0,
        redis: bool = False,
        max_connections: int = 100,
        replica_delay: float = 0.0,
        detached: bool = False,
    ) -> LocalCluster:
        """Start everything; on any failure stop what was started and re-raise."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ServiceError(f"replicas.count: must be an integer >= 0, got {replicas!r}")
        check_max_connections(max_connections)
        check_delay(replica_delay)
        cluster = cls()
        try:
            if redis:  # quick, and fails early if redis-server is missing
                cluster.redis = start_redis(detached=detached)
            cluster.primary = start_primary(max_connections)
            for i in range(replicas):
                cluster.replicas.append(
                    start_replica(cluster.primary, delay=replica_delay, index=i + 1)
                )
            return cluster
        except BaseException:
            with signals_deferred():
                cluster.stop()
            raise

    def stop(self) -> None:
        """Stop everything (replicas first) and delete the directories."""
        for server in [*reversed(self.replicas), self.primary, self.redis]:
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        self.replicas = []
        self.primary = None
        self.redis = None

    def set_max_connections(self, n: int) -> None:
        """Restart the servers with ``max_connections = n``.

        A hot standby refuses to run with a smaller ``max_connections`` than its
        primary, so when raising the limit the replicas go first, when lowering
        it the primary goes first.
        """
        check_max_connections(n)
        assert self.primary is not None
        if n == self.primary.max_connections:
            return
        order = [*self.replicas, self.primary]
        if n < self.primary.max_connections:
            order.reverse()
        for server in order:
            server.max_connections = n
            server.restart()
        for replica in self.replicas:
            wait_streaming(self.primary, replica, 30)

    def set_replica_delay(self, seconds: float) -> None:
        """Set ``recovery_min_apply_delay`` on every replica (a reload, no restart)."""
        check_delay(seconds)
        for replica in self.replicas:
            replica.delay = seconds
            replica.reload()

    def detach(self) -> None:
        """Let the servers outlive this process (``services up``): no atexit stop."""
        for server in [*self.replicas, self.primary, self.redis]:
            if server is not None:
                unregister(server)

    def to_state(self) -> dict[str, object]:
        return {
            "version": STATE_VERSION,
            "started": time.time(),
            "primary": self.primary.to_state() if self.primary else None,
            "replicas": [r.to_state() for r in self.replicas],
            "redis": self.redis.to_state() if self.redis else None,
        }

    @classmethod
    def from_state(cls, d: Mapping) -> LocalCluster:
        return cls(
            primary=PostgresServer.from_state(d["primary"]) if d.get("primary") else None,
            replicas=[PostgresServer.from_state(r) for r in d.get("replicas") or []],
            redis=RedisServer.from_state(d["redis"]) if d.get("redis") else None,
        )


# ---------------------------------------------------------------------------
# What a run gets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    """Where the services are, and whether this run may reconfigure them."""

    primary: str  # Postgres DSN for the run
    replicas: tuple[str, ...]  # streaming replicas' DSNs, as many as asked for
    redis: str | None  # redis:// URL, when asked for
    source: str  # "env" | "services-up" | "throwaway"
    # superuser DSN for monitoring/set-up; on labs' own servers it uses reserved
    # slots, so it never takes one of the run's max_connections (env: = primary)
    primary_admin: str = ""
    cluster: LocalCluster | None = field(default=None, repr=False, compare=False)

    @property
    def can_configure(self) -> bool:
        """True when labs may restart the servers (max_connections, replica delay)."""
        return self.source == "throwaway" and self.cluster is not None

    def __post_init__(self) -> None:
        if not self.primary_admin:
            object.__setattr__(self, "primary_admin", self.primary)

    def max_connections(self) -> int:
        """Connections the run's role may open on the primary (its connection limit)."""
        return connection_limit(self.primary)

    def server_max_connections(self) -> int:
        """The primary's raw ``max_connections`` setting."""
        return server_max_connections(self.primary)

    def replica_delay(self) -> float:
        """The first replica's ``recovery_min_apply_delay``, seconds (0 without replicas)."""
        return replica_delay(self.replicas[0]) if self.replicas else 0.0

    def set_max_connections(self, n: int) -> None:
        self._configurable("max_connections").set_max_connections(n)

    def set_replica_delay(self, seconds: float) -> None:
        self._configurable("the replica delay").set_replica_delay(seconds)

    def _configurable(self, what: str) -> LocalCluster:
        if not self.can_configure:
            raise ServiceError(
                f"{what}: can only be changed on throwaway servers, got services from "
                f"{self.source}; unset the LABS_* variables or run `python -m labs services down`"
            )
        assert self.cluster is not None
        return self.cluster


def _from_cluster(cluster: LocalCluster, source: str, replicas: int, redis: bool) -> Services:
    assert cluster.primary is not None
    return Services(
        primary=cluster.primary.dsn,
        primary_admin=cluster.primary.admin_dsn,
        replicas=tuple(r.dsn for r in cluster.replicas[:replicas]),
        redis=cluster.redis.url if (redis and cluster.redis) else None,
        source=source,
        cluster=cluster,
    )


# ---------------------------------------------------------------------------
# Checking that a DSN answers
# ---------------------------------------------------------------------------


def redact(dsn: str) -> str:
    """A DSN without its password, for printing."""
    dsn = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def dsn_address(dsn: str) -> str:
    """host:port of a Postgres DSN (URI or key=value) or a redis:// URL, for messages."""
    if dsn.startswith(("redis://", "rediss://", "unix://")):
        parts = urlsplit(dsn)
        try:
            return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        except ValueError:
            return "?"
    try:
        from psycopg2.extensions import parse_dsn

        params = parse_dsn(dsn)
    except Exception:
        return "?"
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"


def postgres_problem(dsn: str, standby: bool | None = None) -> str | None:
    """None if the DSN answers (and is/is not a standby as asked), else why not."""
    try:
        in_recovery = query_one(dsn, "SELECT pg_is_in_recovery()", timeout=CHECK_TIMEOUT)
    except Exception as e:
        return one_line(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    if standby is True and not in_recovery:
        return "answers but is not a standby (pg_is_in_recovery() is false)"
    if standby is False and in_recovery:
        return "answers but is a standby, not a primary"
    return None


def redis_problem(url: str) -> str | None:
    try:
        import redis as redis_py

        client = redis_py.Redis.from_url(
            url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:
        return one_line(e) or type(e).__name__
    return None


# ---------------------------------------------------------------------------
# 1. The environment
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvConfig:
    primary: str
    replicas: tuple[str, ...]
    redis: str


def env_config(env: Mapping[str, str] | None = None) -> EnvConfig | None:
    env = os.environ if env is None else env
    primary = env.get(ENV_PRIMARY, "").strip()
    replicas = tuple(s.strip() for s in env.get(ENV_REPLICAS, "").split(",") if s.strip())
    redis = env.get(ENV_REDIS, "").strip()
    if not (primary or replicas or redis):
        return None
    return EnvConfig(primary, replicas, redis)


def _fix(var: str) -> str:
    return f"start that server, correct {var}, or unset the LABS_* variables to use throwaway ones"


def from_env(
    replicas: int = 0, redis: bool = False, env: Mapping[str, str] | None = None
) -> Services | None:
    cfg = env_config(env)
    if cfg is None:
        return None
    if not cfg.primary:
        set_ = ENV_REPLICAS if cfg.replicas else ENV_REDIS
        raise ServiceError(
            f"{ENV_PRIMARY}: must be set when {set_} is, got nothing; export e.g. "
            f"{ENV_PRIMARY}=postgresql://postgres@127.0.0.1:55432/postgres"
        )
    if len(cfg.replicas) < replicas:
        raise ServiceError(
            f"{ENV_REPLICAS}: the scenario needs {replicas} replica DSN(s) (comma separated), "
            f"got {len(cfg.replicas)}; add them or unset the LABS_* variables"
        )
    if redis and not cfg.redis:
        raise ServiceError(
            f"{ENV_REDIS}: the scenario has a [cache] and needs a Redis URL, got nothing; "
            f"export e.g. {ENV_REDIS}=redis://127.0.0.1:56379/0"
        )
    problem = postgres_problem(cfg.primary, standby=False)
    if problem:
        raise ServiceError(
            f"{ENV_PRIMARY}: {dsn_address(cfg.primary)} must answer within "
            f"{CHECK_TIMEOUT:g} s, got: {problem}; {_fix(ENV_PRIMARY)}"
        )
    for dsn in cfg.replicas[:replicas]:
        problem = postgres_problem(dsn, standby=True)
        if problem:
            raise ServiceError(
                f"{ENV_REPLICAS}: {dsn_address(dsn)} must answer as a standby within "
                f"{CHECK_TIMEOUT:g} s, got: {problem}; {_fix(ENV_REPLICAS)}"
            )
    if redis:
        problem = redis_problem(cfg.redis)
        if problem:
            raise ServiceError(
                f"{ENV_REDIS}: {dsn_address(cfg.redis)} must answer PING within "
                f"{CHECK_TIMEOUT:g} s, got: {problem}; {_fix(ENV_REDIS)}"
            )
    return Services(
        primary=cfg.primary,
        replicas=cfg.replicas[:replicas],
        redis=cfg.redis if redis else None,
        source="env",
    )


# ---------------------------------------------------------------------------
# 2. `python -m labs services up`
# ---------------------------------------------------------------------------


def state_dir() -> Path:
    if os.environ.get(ENV_STATE_DIR):
        return Path(os.environ[ENV_STATE_DIR])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dbperf-labs"


def state_path() -> Path:
    return state_dir() / "services.json"


def read_state() -> dict | None:
    try:
        doc = json.loads(state_path().read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("labs: ignoring unreadable %s (%s)", state_path(), one_line(e, 120))
        return None
    return doc if isinstance(doc, dict) and doc.get("version") == STATE_VERSION else None


def write_state(cluster: LocalCluster) -> Path:
    path = state_path()
    atomic_write_text(path, json.dumps(cluster.to_state(), indent=2) + "\n")
    return path


def remove_state() -> None:
    state_path().unlink(missing_ok=True)


def state_problems(doc: Mapping) -> list[str]:
    """Why the servers in a state file are not usable (empty list: all fine)."""
    problems = []
    entries = [("primary", doc.get("primary"))]
    entries += [(f"replica {i + 1}", r) for i, r in enumerate(doc.get("replicas") or [])]
    for name, entry in entries:
        if not entry:
            problems.append(f"{name}: missing")
        elif not pid_alive(entry.get("pid")):
            problems.append(f"{name}: process {entry.get('pid')} is not running")
        else:
            problem = postgres_problem(entry["dsn"], standby=name != "primary")
            if problem:
                problems.append(f"{name}: {problem}")
    if doc.get("redis"):
        entry = doc["redis"]
        if not pid_alive(entry.get("pid")):
            problems.append(f"redis: process {entry.get('pid')} is not running")
        else:
            problem = redis_problem(entry["url"])
            if problem:
                problems.append(f"redis: {problem}")
    return problems


def from_state(replicas: int = 0, redis: bool = False) -> Services | None:
    doc = read_state()
    if doc is None:
        return None
    problems = state_problems(doc)
    if problems:
        log.warning(
            "labs: services from `python -m labs services up` are not usable (%s); "
            "starting throwaway servers (clean up with `python -m labs services down`)",
            "; ".join(problems),
        )
        return None
    have = len(doc.get("replicas") or [])
    if have < replicas:
        raise ServiceError(
            f"replicas.count: `labs services up` started {have} replica(s), the scenario "
            f"needs {replicas}; run `python -m labs services down` then "
            f"`python -m labs services up --replicas {replicas}`"
        )
    if redis and not doc.get("redis"):
        raise ServiceError(
            "cache: `labs services up` started no Redis and the scenario has a [cache]; "
            "run `python -m labs services down` then `python -m labs services up`"
        )
    return _from_cluster(LocalCluster.from_state(doc), "services-up", replicas, redis)


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway(
    replicas: int = 0,
    redis: bool = False,
    max_connections: int | None = None,
    replica_delay: float = 0.0,
) -> Iterator[Services]:
    """Start local servers for the block; stop them and delete their directories after.

    Cleans up after a normal exit, an exception, Ctrl-C (SIGINT), SIGTERM and
    SIGHUP; an ``atexit`` hook catches anything that slips past.
    """
    with signals_raise():
        cluster = LocalCluster.start(
            replicas=replicas,
            redis=redis,
            max_connections=100 if max_connections is None else max_connections,
            replica_delay=replica_delay,
        )
        try:
            yield _from_cluster(cluster, "throwaway", replicas, redis)
        finally:
            with signals_deferred():
                cluster.stop()


@contextlib.contextmanager
def services_for(
    replicas: int = 0,
    redis: bool = False,
    max_connections: int | None = None,
    replica_delay: float = 0.0,
) -> Iterator[Services]:
    """The services one run uses, found in the contract's order (see the module doc).

    ``max_connections`` and ``replica_delay`` are applied only to throwaway
    servers; for the others ``Services.can_configure`` is False and the caller
    can read what the servers use with ``.max_connections()`` / ``.replica_delay()``.
    """
    found = from_env(replicas, redis) or from_state(replicas, redis)
    if found is not None:
        yield found
        return
    with throwaway(replicas, redis, max_connections, replica_delay) as svc:
        yield svc


def requirements(scenario) -> dict[str, object]:
    """What a scenario needs from the services, as ``services_for`` keywords.

    ``[replicas].count`` streaming replicas, Redis when there is a ``[cache]``,
    ``database.max_connections``, and a replica delay equal to a constant
    ``[replicas].lag`` (other lag distributions: no delay is imposed).
    """
    reps = getattr(scenario, "replicas", None)
    delay = 0.0
    if reps is not None:
        value = getattr(reps.lag, "value", None)
        if type(reps.lag).__name__ == "Constant" and isinstance(value, int | float):
            delay = float(value)
    return {
        "replicas": reps.count if reps is not None else 0,
        "redis": getattr(scenario, "cache", None) is not None,
        "max_connections": scenario.database.max_connections,
        "replica_delay": delay,
    }


@contextlib.contextmanager
def services_for_scenario(scenario) -> Iterator[Services]:
    """``services_for`` with what ``scenario`` needs (see :func:`requirements`)."""
    with services_for(**requirements(scenario)) as svc:
        yield svc


def describe(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """What ``services status`` shows: each source and whether its servers answer."""
    out: dict[str, object] = {"state_file": str(state_path())}
    cfg = env_config(env)
    if cfg is not None:
        servers = []
        if cfg.primary:
            servers.append(("primary", ENV_PRIMARY, cfg.primary, postgres_problem(cfg.primary)))
        for dsn in cfg.replicas:
            servers.append(("replica", ENV_REPLICAS, dsn, postgres_problem(dsn, standby=True)))
        if cfg.redis:
            servers.append(("redis", ENV_REDIS, cfg.redis, redis_problem(cfg.redis)))
        out["route"] = "env"
        out["servers"] = [
            {"role": role, "variable": var, "dsn": redact(dsn), "address": dsn_address(dsn),
             "answers": problem is None, "problem": problem}
            for role, var, dsn, problem in servers
        ]
        problems = [f"{s['variable']}: {s['address']}: {s['problem']}"
                    for s in out["servers"] if s["problem"]]
        if not cfg.primary:
            problems.insert(0, f"{ENV_PRIMARY}: not set")
        out["ok"] = not problems
        out["problems"] = problems
        return out
    doc = read_state()
    if doc is not None:
        servers = []
        entries = [("primary", doc.get("primary"))]
        entries += [("replica", r) for r in doc.get("replicas") or []]
        for role, entry in entries:
            if entry:
                alive = pid_alive(entry.get("pid"))
                problem = (postgres_problem(entry["dsn"], standby=role == "replica")
                           if alive else f"process {entry.get('pid')} is not running")
                servers.append({"role": role, "dsn": entry["dsn"], "pid": entry.get("pid"),
                                "dir": entry.get("dir"), "answers": problem is None,
                                "problem": problem})
        if doc.get("redis"):
            entry = doc["redis"]
            alive = pid_alive(entry.get("pid"))
            problem = (redis_problem(entry["url"]) if alive
                       else f"process {entry.get('pid')} is not running")
            servers.append({"role": "redis", "dsn": entry["url"], "pid": entry.get("pid"),
                            "dir": entry.get("dir"), "answers": problem is None,
                            "problem": problem})
        out["route"] = "services-up"
        out["servers"] = servers
        out["problems"] = [f"{s['role']}: {s['problem']}" for s in servers if s["problem"]]
        out["ok"] = not out["problems"]
        return out
    out["route"] = "throwaway"
    out["servers"] = []
    out["problems"] = []
    out["ok"] = True
    return out
