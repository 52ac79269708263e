"""Postgres, Redis, PgBouncer and Prometheus for live runs: found in the environment, started
earlier with ``python -m labs services up``, or started for one run and removed
afterwards.

The layer is built around kinds of service (:mod:`labs.services.base`): each kind
-- Postgres (:mod:`.postgres`), Redis (:mod:`.redis`), PgBouncer
(:mod:`.pgbouncer`), Prometheus (:mod:`.prometheus`) -- is one module that
registers one :class:`ServiceKind`, and everything else loops over the registered
kinds.  See :mod:`labs.services.discovery` for the order servers are looked for
and :func:`services_for` (which hands a run a :class:`labs.topology.Topology`);
:mod:`labs.services.cluster` for local servers as one unit and the state file of
``services up``; :mod:`labs.services.checks` for how connection strings from the
environment are checked; :mod:`labs.services.common` for the life cycle every
kind of local server shares.  The environment variables it reads:

- ``LABS_PG_PRIMARY``, ``LABS_PG_REPLICAS`` (comma separated), ``LABS_REDIS``,
  ``LABS_PGBOUNCER`` (a DSN through it, used when a scenario has a ``[pgbouncer]``),
  ``LABS_PROMETHEUS`` (a URL, used when a run asks for ``prometheus=True``):
  servers of your own, used instead of starting any;
- ``LABS_STATE_DIR``: where ``services up`` records what it started
  (default ``~/.cache/dbperf-labs``);
- ``LABS_PG_BINDIR``: the directory with ``initdb``, ``pg_ctl``, ``postgres`` and
  ``pg_basebackup`` (default: found on PATH, by ``pg_config``, or in
  ``/usr/lib/postgresql/*/bin``); ``LABS_REDIS_SERVER``: the ``redis-server``
  program (default: on PATH); ``LABS_PGBOUNCER_BIN``: the ``pgbouncer`` program
  (default: on PATH, else ``/usr/sbin/pgbouncer``); ``LABS_PROMETHEUS_BIN``: the
  ``prometheus`` program (default: on PATH, else ``/usr/bin/prometheus``).  When set,
  they are the only place looked in;
- ``LABS_PG_USER``: the unprivileged user Postgres and PgBouncer run as when labs
  runs as root (default ``labs-postgres``, created when missing).
"""

# Importing a kind's module (postgres, redis, pgbouncer, prometheus) registers its kind: a new
# kind is its module and one more import here.
from labs.services.base import ServiceKind, Tier, kinds, register_kind
from labs.services.common import ServiceError, free_port, processes_in
from labs.services.discovery import (
    LocalCluster,
    Services,
    configure,
    configure_pgbouncer,
    describe,
    from_env,
    from_state,
    missing_binaries,
    read_state,
    remove_state,
    requirements,
    services_for,
    services_for_scenario,
    state_path,
    throwaway,
    write_state,
)
from labs.services.pgbouncer import (
    PGBOUNCER,
    PgBouncerServer,
    apply_config,
    find_pgbouncer,
    start_pgbouncer,
)
from labs.services.postgres import (
    PostgresServer,
    connection_limit,
    find_bindir,
    replica_delay,
    server_max_connections,
    start_primary,
    start_replica,
)
from labs.services.prometheus import (
    PROMETHEUS,
    PrometheusAPI,
    PrometheusError,
    PrometheusServer,
    find_prometheus,
    local_prometheus,
    start_prometheus,
)
from labs.services.redis import RedisServer, find_redis_server, start_redis

__all__ = [
    "PGBOUNCER",
    "PROMETHEUS",
    "LocalCluster",
    "PgBouncerServer",
    "PostgresServer",
    "PrometheusAPI",
    "PrometheusError",
    "PrometheusServer",
    "RedisServer",
    "ServiceError",
    "ServiceKind",
    "Services",
    "Tier",
    "apply_config",
    "configure",
    "configure_pgbouncer",
    "connection_limit",
    "describe",
    "find_bindir",
    "find_pgbouncer",
    "find_prometheus",
    "find_redis_server",
    "free_port",
    "from_env",
    "from_state",
    "kinds",
    "local_prometheus",
    "missing_binaries",
    "processes_in",
    "read_state",
    "register_kind",
    "remove_state",
    "replica_delay",
    "requirements",
    "server_max_connections",
    "services_for",
    "services_for_scenario",
    "start_pgbouncer",
    "start_primary",
    "start_prometheus",
    "start_redis",
    "start_replica",
    "state_path",
    "throwaway",
    "write_state",
]
