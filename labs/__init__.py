"""Live executor: runs the same scenarios against real Postgres and Redis
(arrives in a later issue)."""
