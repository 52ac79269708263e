"""The live labs: a scenario run on real Postgres and Redis through the real pool
libraries, and measured with simlib's metrics (README: "The live labs" and "Layout")."""
