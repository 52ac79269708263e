"""Serverless functions: environments created on demand, cold starts, connection storms.

The scenario's ``[serverless]`` replaces the application process with
functions as AWS Lambda (and its likes) runs them:

* **An execution environment serves one invocation at a time.**  An
  invocation takes a warm idle environment if there is one (the one idle
  the shortest time, as a pool of warm sandboxes reuses the hottest);
  otherwise a new environment is created, while fewer than
  ``concurrency_limit`` exist; beyond that the invocation is **throttled**
  (refused at once: ``TooManyRequestsException``, counted in ``error_rate``
  and in ``throttle_rate``).
* **A new environment pays a cold start** (``cold_start``: the runtime's and
  the module's init, imports included) before its first invocation runs,
  and that invocation's latency includes it.
* **Connections.**  ``connection = "global"``: the handler's module opens one
  connection on first use and keeps it, so later (warm) invocations reuse
  it.  A burst that creates many environments opens that many connections at
  once: a connection storm.  ``"per_invocation"``: every invocation connects
  and closes, paying ``connect_time`` each time (cheap behind PgBouncer, dear
  against Postgres).  Either way an invocation's query, reset and the
  client's costs are those of the request path (:mod:`simlib.request`).
* **Reclaiming.**  An environment idle for ``keep_warm`` seconds is
  reclaimed.  Its process is frozen and killed without running any cleanup,
  so a global connection is *not* closed: it stays open on the server, an
  idle session, until the server drops it (``[database]
  idle_session_timeout``; with 0, Postgres's default, it never does in the
  run).  Such leftovers count against ``max_connections`` like any other.

Each environment is its own process, so its Python never waits for another
invocation's (no shared GIL); with ``[host] shared_cores`` it still runs on the
database's cores.  ``[pool]`` gives only the driver (``kind``) the labs use:
an environment holds at most one connection whatever a pool would allow.

This module is the section; the model, :class:`simlib.environments.ServerlessWorkload`,
is built on the workload, which the scenario module must not import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from simlib.config import Rule, Section, choice, integer, number
from simlib.distributions import Constant, Distribution, parse_distribution


@dataclass(frozen=True, slots=True)
class Serverless(Section):
    """The scenario's ``[serverless]``: environments on demand instead of a fixed process."""

    RULES: ClassVar[Mapping[str, Rule]] = {
        "concurrency_limit": integer(">=", 1),
        "cold_start": parse_distribution,
        "keep_warm": number(">", 0),
        "connection": choice("global", "per_invocation"),
    }

    concurrency_limit: int = 1000  # AWS Lambda's default per account and region
    cold_start: Distribution = Constant(0.25)
    keep_warm: float = 300.0
    connection: Literal["global", "per_invocation"] = "global"
