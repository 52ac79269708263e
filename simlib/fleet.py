"""A fleet: many application processes, each with its own pool, sharing one Postgres.

The scenario's ``[fleet]`` runs ``instances`` application processes
(containers, Gunicorn workers, Kubernetes pods) instead of one.  Each is a
process of its own, with its own interpreter (its own GIL) and its own pool
of the scenario's ``[pool]`` kind and settings, and all of them connect to
the same server: the primary, or PgBouncer in front of it.  Nothing is shared
between the pools; only the server's ``max_connections`` sees them all.  So at
most ``instances x`` the pool's limit connections reach Postgres, and past
``max_connections`` it refuses the rest (``FATAL: sorry, too many clients
already``): the "too many clients" that scaling out brings.

How requests are spread, as a load balancer does it and as the labs split
their schedule: an open workload's arrivals go each to an instance picked
uniformly at random (stream ``instances``), so each instance sees a Poisson
stream of ``rate / instances``, and a fleet without PgBouncer is that many
independent M/G/c queues; a closed workload's clients are dealt out in
turn, client ``c`` to instance ``c mod instances``, since a load generator's
virtual user keeps its connection to one process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from simlib.config import Rule, Section, integer


@dataclass(frozen=True, slots=True)
class Fleet(Section):
    """The scenario's ``[fleet]``: how many application processes share the server."""

    RULES: ClassVar[Mapping[str, Rule]] = {"instances": integer(">=", 1)}

    instances: int = 1

