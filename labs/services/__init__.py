"""Postgres and Redis for live runs: found in the environment, started earlier with
``python -m labs services up``, or started for one run and removed afterwards.

See :mod:`labs.services.discovery` for the order and :func:`services_for`.
"""

from labs.services.common import ServiceError, free_port, processes_in
from labs.services.discovery import (
    LocalCluster,
    Services,
    describe,
    from_env,
    from_state,
    read_state,
    remove_state,
    requirements,
    services_for,
    services_for_scenario,
    state_path,
    throwaway,
    write_state,
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
from labs.services.redis import RedisServer, find_redis_server, start_redis

__all__ = [
    "LocalCluster",
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "Services",
    "connection_limit",
    "describe",
    "find_bindir",
    "find_redis_server",
    "free_port",
    "from_env",
    "from_state",
    "processes_in",
    "read_state",
    "remove_state",
    "replica_delay",
    "requirements",
    "server_max_connections",
    "services_for",
    "services_for_scenario",
    "start_primary",
    "start_redis",
    "start_replica",
    "state_path",
    "throwaway",
    "write_state",
]
