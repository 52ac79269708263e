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
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labs.services.checks import (  # noqa: F401  (re-exported: tests and callers use them)
    CHECK_TIMEOUT,
    dsn_address,
    env_problem,
    postgres_problem,
    redact,
    redis_problem,
    server_problem,
)
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
    find_bindir,
    replica_delay,
    server_max_connections,
    start_primary,
    start_replica,
    wait_streaming,
)
from labs.services.redis import RedisServer, find_redis_server, start_redis
from simlib.files import atomic_write_text

log = logging.getLogger("labs.services")

ENV_PRIMARY = "LABS_PG_PRIMARY"
ENV_REPLICAS = "LABS_PG_REPLICAS"
ENV_REDIS = "LABS_REDIS"
ENV_STATE_DIR = "LABS_STATE_DIR"
STATE_VERSION = 1


# ---------------------------------------------------------------------------
# Local servers as one unit
# ---------------------------------------------------------------------------


def missing_binaries(*, postgres: bool = True, redis: bool = True) -> str | None:
    """What stops local servers from starting: the missing programs' error, or None.

    The same search :meth:`LocalCluster.start` makes (``LABS_PG_BINDIR`` /
    PATH / ``pg_config`` / ``/usr/lib/postgresql/*/bin``, ``LABS_REDIS_SERVER``
    / PATH), without starting anything; live tests skip with this reason.
    """
    try:
        if postgres:
            find_bindir()
        if redis:
            find_redis_server()
    except ServiceError as exc:
        return str(exc)
    return None


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
        # every program first: a missing one costs no start and no clean-up
        bindir = find_bindir()
        redis_server = find_redis_server() if redis else None
        cluster = cls()
        try:
            if redis_server:  # quick: a broken redis-server shows before initdb runs
                cluster.redis = start_redis(detached=detached, binary=redis_server)
            cluster.primary = start_primary(max_connections, bindir=bindir)
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
        """The cluster a state file describes; ServiceError/KeyError/... if it is damaged."""
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


def _primary_missing(cfg: EnvConfig) -> str:
    set_ = ENV_REPLICAS if cfg.replicas else ENV_REDIS
    return (
        f"{ENV_PRIMARY}: must be set when {set_} is, got nothing; export e.g. "
        f"{ENV_PRIMARY}=postgresql://postgres@127.0.0.1:55432/postgres, or unset {set_}"
    )


def _env_servers(
    cfg: EnvConfig, replicas: int | None = None, redis: bool = True
) -> list[tuple[str, str, str]]:
    """(role, variable, DSN) of the servers ``cfg`` names that a run would use.

    ``replicas``: how many replica DSNs (None: all); ``redis``: the Redis URL too.
    """
    out = [("primary", ENV_PRIMARY, cfg.primary)] if cfg.primary else []
    out += [("replica", ENV_REPLICAS, dsn) for dsn in cfg.replicas[:replicas]]
    if redis and cfg.redis:
        out.append(("redis", ENV_REDIS, cfg.redis))
    return out


def from_env(
    replicas: int = 0, redis: bool = False, env: Mapping[str, str] | None = None
) -> Services | None:
    cfg = env_config(env)
    if cfg is None:
        return None
    if not cfg.primary:
        raise ServiceError(_primary_missing(cfg))
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
    for role, var, dsn in _env_servers(cfg, replicas, redis):
        _, line = env_problem(var, dsn, role)
        if line:
            raise ServiceError(line)
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
    """The state file of ``services up``; None when there is none, or it is unusable.

    A file that cannot be read, or whose entries do not describe labs' own
    servers, is passed over with a warning: ``services down`` then deletes it
    and ``services up`` writes a fresh one, instead of both failing on it.
    """
    try:
        doc = json.loads(state_path().read_text())
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or nothing can be
        return None
    except (OSError, ValueError) as e:
        log.warning("labs: ignoring unreadable %s (%s)", state_path(), one_line(e, 120))
        return None
    if not (isinstance(doc, dict) and doc.get("version") == STATE_VERSION):
        return None
    try:
        LocalCluster.from_state(doc)  # directories must be ours, ports numbers
        for name, entry in _state_entries(doc):
            key = "url" if name == "redis" else "dsn"
            if entry and not isinstance(entry.get(key), str):
                raise ValueError(f"{name}: {key} must be a string, got {entry.get(key)!r}")
    except (ServiceError, LookupError, TypeError, ValueError, AttributeError) as e:
        why = f"no {e.args[0]!r} entry" if isinstance(e, KeyError) else one_line(e, 120)
        log.warning(
            "labs: ignoring damaged %s (%s); `python -m labs services down` deletes it",
            state_path(), why,
        )
        return None
    return doc


def _state_dir_error(e: OSError) -> ServiceError:
    return ServiceError(
        f"{ENV_STATE_DIR}: {state_dir()} must be a writable directory, got: "
        f"{e.strerror or e}; set {ENV_STATE_DIR} to one"
    )


def check_state_dir() -> None:
    """Raise ServiceError unless the state file can be written (creates the directory).

    ``services up`` can ask this before starting anything, rather than start
    servers it then cannot record.
    """
    path = state_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise _state_dir_error(e) from None


def write_state(cluster: LocalCluster) -> Path:
    path = state_path()
    try:
        atomic_write_text(path, json.dumps(cluster.to_state(), indent=2) + "\n")
    except OSError as e:
        raise _state_dir_error(e) from None
    return path


def remove_state() -> None:
    state_path().unlink(missing_ok=True)


def _state_entries(doc: Mapping) -> list[tuple[str, Mapping | None]]:
    """(name, entry) of each server a state file names: primary, replica N, redis."""
    entries = [("primary", doc.get("primary"))]
    entries += [(f"replica {i + 1}", r) for i, r in enumerate(doc.get("replicas") or [])]
    if doc.get("redis"):
        entries.append(("redis", doc["redis"]))
    return entries


def _state_servers(doc: Mapping) -> list[dict[str, object]]:
    """Each server of a state file, checked: name, role, dsn, pid, dir, problem."""
    servers = []
    for name, entry in _state_entries(doc):
        role = name.split()[0]
        if not entry:
            servers.append({"name": name, "role": role, "problem": "missing"})
            continue
        dsn = entry.get("url" if role == "redis" else "dsn")
        if pid_alive(entry.get("pid")):
            problem = server_problem(role, dsn)
        else:
            problem = f"process {entry.get('pid')} is not running"
        servers.append({"name": name, "role": role, "dsn": dsn, "pid": entry.get("pid"),
                        "dir": entry.get("dir"), "problem": problem})
    return servers


def state_problems(doc: Mapping) -> list[str]:
    """Why the servers in a state file are not usable (empty list: all fine)."""
    return [f"{s['name']}: {s['problem']}" for s in _state_servers(doc) if s["problem"]]


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
        servers, problems = [], []
        if not cfg.primary:
            problems.append(_primary_missing(cfg))
        for role, var, dsn in _env_servers(cfg):
            problem, line = env_problem(var, dsn, role)
            servers.append({"role": role, "variable": var, "dsn": redact(dsn),
                            "address": dsn_address(dsn), "answers": problem is None,
                            "problem": problem})
            if line:
                problems.append(line)
        out.update(route="env", servers=servers, ok=not problems, problems=problems)
        return out
    doc = read_state()
    if doc is not None:
        checked = _state_servers(doc)
        out["route"] = "services-up"
        out["servers"] = [
            {key: s[key] for key in ("role", "dsn", "pid", "dir")} | {
                "answers": s["problem"] is None, "problem": s["problem"]}
            for s in checked if "dsn" in s
        ]
        out["problems"] = [
            f"{s['name']}: {s['problem']}; restart them with `python -m labs services down` "
            "then `python -m labs services up`"
            for s in checked if s["problem"]
        ]
        out["ok"] = not out["problems"]
        return out
    out["route"] = "throwaway"
    out["servers"] = []
    out["problems"] = []
    out["ok"] = True
    return out
