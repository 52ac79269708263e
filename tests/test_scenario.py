"""Tests for simlib.scenario: parsing, error messages, overrides, round trips.

The central promise of the parser is the one-line error: any bad input, from
a file or from ``--set``, becomes a ScenarioError that names the offending
field and what was found.  The big tables below check that for many mistakes,
and two Hypothesis tests throw random garbage at it and check that nothing
else (a TypeError, a traceback) ever comes out.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simlib.distributions import Constant, Empirical, Exponential, Lognormal, Uniform
from simlib.pools.asyncpg import AsyncpgPoolConfig
from simlib.pools.none import NoPoolConfig
from simlib.pools.psycopg2 import ThreadedPoolConfig
from simlib.pools.psycopg_pool import PsycopgPoolConfig
from simlib.pools.sqlalchemy import QueuePoolConfig
from simlib.scenario import (
    POOL_KINDS,
    Cache,
    Database,
    Popularity,
    Query,
    Replicas,
    Scenario,
    ScenarioError,
    Workload,
    apply_override,
    load_scenario,
    parse_assignment,
    parse_scenario,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
DEMO = SCENARIOS / "demo.toml"
INF = math.inf
NAN = math.nan


def error_for(data: object) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)  # type: ignore[arg-type]
    return info.value


def check_message(error: ScenarioError, field: str) -> None:
    message = str(error)
    assert error.field == field
    assert message.startswith(field + ": ")
    assert len(message.splitlines()) == 1
    assert "got" in message


# --- bad inputs: (scenario data, the field the error must name) --------------

BAD_DATA: list[tuple[dict, str]] = [
    # top level
    ({"extra": 1}, "extra"),
    ({"Pool": {}}, "Pool"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"replications": 0}, "replications"),
    ({"replications": 1001}, "replications"),
    ({"replications": True}, "replications"),
    # [workload]
    ({"workload": []}, "workload"),
    ({"workload": {"rat": 1}}, "workload.rat"),
    ({"workload": {"kind": "half-open"}}, "workload.kind"),
    ({"workload": {"rate": 0}}, "workload.rate"),
    ({"workload": {"rate": INF}}, "workload.rate"),
    ({"workload": {"rate": False}}, "workload.rate"),
    ({"workload": {"rate": 10**400}}, "workload.rate"),
    ({"workload": {"rate": -(10**5000)}}, "workload.rate"),
    ({"workload": {"clients": 0}}, "workload.clients"),
    ({"workload": {"clients": 10.0}}, "workload.clients"),
    ({"workload": {"think_time": -0.1}}, "workload.think_time"),
    ({"workload": {"duration": 0}}, "workload.duration"),
    ({"workload": {"warmup": -1}}, "workload.warmup"),
    ({"workload": {"warmup": NAN}}, "workload.warmup"),
    ({"workload": {"keys": 0}}, "workload.keys"),
    ({"workload": {"write_fraction": 1.5}}, "workload.write_fraction"),
    ({"workload": {"popularity": "zipf"}}, "workload.popularity"),
    ({"workload": {"popularity": {"dist": "pareto"}}}, "workload.popularity.dist"),
    ({"workload": {"popularity": {"s": 1}}}, "workload.popularity.dist"),
    ({"workload": {"popularity": {"dist": "uniform", "s": 1}}}, "workload.popularity.s"),
    ({"workload": {"popularity": {"dist": "zipf", "s": -1}}}, "workload.popularity.s"),
    ({"workload": {"popularity": {"dist": "zipf", "alpha": 1}}}, "workload.popularity.alpha"),
    # [query]
    ({"query": {"service_time": {"dist": "gamma"}}}, "query.service_time.dist"),
    ({"query": {"service_time": -1}}, "query.service_time"),
    ({"query": {"service_time": {"dist": "exponential", "mean": 0}}}, "query.service_time.mean"),
    ({"query": {"service_time": {"dist": "exponential"}}}, "query.service_time.mean"),
    ({"query": {"cpu_bound": 1}}, "query.cpu_bound"),
    ({"query": {"cpu_bound": "true"}}, "query.cpu_bound"),
    # [pool], sqlalchemy
    ({"pool": 5}, "pool"),
    ({"pool": {"kind": "hikari"}}, "pool.kind"),
    ({"pool": {"kind": 3}}, "pool.kind"),
    ({"pool": {"pool_size": -3}}, "pool.pool_size"),
    ({"pool": {"pool_size": 2.5}}, "pool.pool_size"),
    ({"pool": {"pool_size": True}}, "pool.pool_size"),
    ({"pool": {"pool_size": "5"}}, "pool.pool_size"),
    ({"pool": {"max_overflow": -2}}, "pool.max_overflow"),
    ({"pool": {"pool_timeout": -1}}, "pool.pool_timeout"),
    ({"pool": {"pool_timeout": NAN}}, "pool.pool_timeout"),
    ({"pool": {"pool_recycle": 0}}, "pool.pool_recycle"),
    ({"pool": {"pool_recycle": INF}}, "pool.pool_recycle"),
    ({"pool": {"pool_pre_ping": 1}}, "pool.pool_pre_ping"),
    ({"pool": {"use_lifo": "yes"}}, "pool.use_lifo"),
    ({"pool": {"maxconn": 10}}, "pool.maxconn"),
    # [pool], the other kinds
    ({"pool": {"kind": "psycopg2", "maxconn": 5}}, "pool.minconn"),
    ({"pool": {"kind": "psycopg2", "minconn": 1}}, "pool.maxconn"),
    ({"pool": {"kind": "psycopg2", "minconn": 6, "maxconn": 5}}, "pool.minconn"),
    ({"pool": {"kind": "psycopg2", "minconn": 0, "maxconn": 0}}, "pool.maxconn"),
    ({"pool": {"kind": "psycopg2", "minconn": 1, "maxconn": 2, "pool_size": 3}}, "pool.pool_size"),
    ({"pool": {"kind": "psycopg_pool", "min_size": 5, "max_size": 4}}, "pool.max_size"),
    ({"pool": {"kind": "psycopg_pool", "min_size": 0}}, "pool.max_size"),
    ({"pool": {"kind": "psycopg_pool", "timeout": 0}}, "pool.timeout"),
    ({"pool": {"kind": "psycopg_pool", "num_workers": 0}}, "pool.num_workers"),
    ({"pool": {"kind": "psycopg_pool", "max_waiting": -1}}, "pool.max_waiting"),
    ({"pool": {"kind": "psycopg_pool", "max_idle": 0}}, "pool.max_idle"),
    ({"pool": {"kind": "asyncpg", "min_size": 11}}, "pool.min_size"),
    ({"pool": {"kind": "asyncpg", "max_size": 5}}, "pool.max_size"),
    ({"pool": {"kind": "asyncpg", "max_queries": 0}}, "pool.max_queries"),
    ({"pool": {"kind": "asyncpg", "timeout": 0}}, "pool.timeout"),
    (
        {"pool": {"kind": "asyncpg", "max_inactive_connection_lifetime": -1}},
        "pool.max_inactive_connection_lifetime",
    ),
    ({"pool": {"kind": "asyncpg", "pool_size": 5}}, "pool.pool_size"),
    ({"pool": {"kind": "none", "pool_size": 5}}, "pool.pool_size"),
    # [database]
    (
        {"database": {"connect_time": {"dist": "exponential", "mean": -1}}},
        "database.connect_time.mean",
    ),
    ({"database": {"connect_time": True}}, "database.connect_time"),
    ({"database": {"network_rtt": -0.1}}, "database.network_rtt"),
    ({"database": {"network_rtt": INF}}, "database.network_rtt"),
    ({"database": {"cores": -1}}, "database.cores"),
    ({"database": {"max_connections": 0}}, "database.max_connections"),
    ({"database": {"max_conections": 10}}, "database.max_conections"),
    # [cache]
    ({"cache": True}, "cache"),
    ({"cache": {"ttl": 0}}, "cache.ttl"),
    ({"cache": {"capacity": 0}}, "cache.capacity"),
    ({"cache": {"capacity": 1.5}}, "cache.capacity"),
    ({"cache": {"on_write": "refresh"}}, "cache.on_write"),
    ({"cache": {"hit_time": -1}}, "cache.hit_time"),
    ({"cache": {"single_flight": 1}}, "cache.single_flight"),
    # [replicas]
    ({"replicas": {"count": 0}}, "replicas.count"),
    ({"replicas": {"lag": {"dist": "uniform", "low": 1, "high": 0}}}, "replicas.lag.high"),
    ({"replicas": {"lag": {"dist": "empirical", "samples": [0.1, -1]}}}, "replicas.lag.samples[1]"),
    ({"replicas": {"route_reads": "random"}}, "replicas.route_reads"),
    ({"replicas": {"ryw_window": -1}}, "replicas.ryw_window"),
    # keys that are not bare TOML keys are quoted, so the line stays one line
    ({"workload": {"ra\nte": 1}}, 'workload."ra\\nte"'),
]


@pytest.mark.parametrize(("data", "field"), BAD_DATA, ids=[f for _, f in BAD_DATA])
def test_bad_data_names_the_field(data: dict, field: str) -> None:
    check_message(error_for(data), field)


# --- bad --set assignments, applied to scenarios/demo.toml ---------------------

BAD_SETS: list[tuple[str, str]] = [
    ("pool.pool_size=-3", "pool.pool_size"),
    ("pool.pool_size=2.5", "pool.pool_size"),
    ("pool.pool_size=true", "pool.pool_size"),
    ("pool.pool_size=five", "pool.pool_size"),
    ("pool.pool_size=", "pool.pool_size"),
    ("pool.pool_timeout=nan", "pool.pool_timeout"),
    ("pool.pool_timeout=-inf", "pool.pool_timeout"),
    ("pool.kind=asyncpg", "pool.pool_size"),  # demo's sqlalchemy parameters stay behind
    ("pool.kind=hikari", "pool.kind"),
    ("pool.maxconn=3", "pool.maxconn"),
    ("workload.rate=0", "workload.rate"),
    ("workload.rat=5", "workload.rat"),
    ("workload.kind=closed-ish", "workload.kind"),
    ("workload.rate.x=1", "workload.rate"),
    ("query.service_time.mean=-1", "query.service_time.mean"),
    ('query.service_time={dist="gamma"}', "query.service_time.dist"),
    ("query.service_time=fast", "query.service_time"),
    ("cache.ttl=0", "cache.ttl"),
    ("cache=5", "cache"),
    ("replicas.lag.value=1", "replicas.lag.dist"),
    ("pool_size=5", "pool_size"),
    ("seed=-1", "seed"),
    ("name=", "name"),
    ("database.cores=[1, 2]", "database.cores"),
    ("pool.pool_size", "--set"),
    ("=5", "--set"),
    ("pool..pool_size=5", "--set"),
    (".pool=1", "--set"),
    ("pool.=1", "--set"),
]


@pytest.mark.parametrize(("assignment", "field"), BAD_SETS, ids=[a for a, _ in BAD_SETS])
def test_bad_set_names_the_field(assignment: str, field: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(DEMO, [assignment])
    check_message(info.value, field)


def test_enough_bad_inputs() -> None:
    assert len(BAD_DATA) + len(BAD_SETS) >= 40


def test_exact_messages() -> None:
    assert str(error_for({"pool": {"pool_size": -3}})) == (
        "pool.pool_size: must be an integer >= 0, got -3"
    )
    assert str(error_for({"pool": {"pool_size": 2.5}})) == (
        "pool.pool_size: must be an integer >= 0, got 2.5"
    )
    assert str(error_for({"host": {"threads": -1}})) == (
        "host.threads: must be an integer >= 0, got -1"
    )
    assert str(error_for({"pool": {"maxconn": 10}})) == (
        'pool.maxconn: not a parameter of pool kind "sqlalchemy" (allowed: pool_size, '
        "max_overflow, pool_timeout, pool_recycle, pool_pre_ping, use_lifo, reset_on_return), "
        "got 10"
    )
    assert str(error_for({"workload": {"rat": 1}})).startswith(
        "workload.rat: unknown field (allowed: kind, rate, clients, "
    )
    assert str(error_for({"query": {"service_time": {"dist": "gamma"}}})) == (
        'query.service_time.dist: must be one of "constant", "exponential", "lognormal", '
        '"uniform", "empirical", got "gamma"'
    )
    assert str(error_for({"pool": {"kind": "psycopg2", "maxconn": 5}})) == (
        "pool.minconn: required, must be an integer >= 0, got nothing"
    )


def test_error_is_a_value_error_and_pickles() -> None:
    error = error_for({"seed": -1})
    assert isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.field == "seed"


# --- defaults ------------------------------------------------------------------


def test_empty_scenario_is_all_defaults() -> None:
    s = parse_scenario({})
    assert s == Scenario(name="scenario")
    assert s.seed == 0 and s.replications == 5
    assert s.workload == Workload(
        kind="open",
        rate=400.0,
        clients=50,
        think_time=0.0,
        duration=30.0,
        warmup=5.0,
        keys=10000,
        popularity=Popularity("zipf", 0.9),
        write_fraction=0.0,
    )
    assert s.query == Query(Exponential(0.005), cpu_bound=False)
    assert s.database == Database(Constant(0.004), 0.0001, cores=2, max_connections=100)
    assert s.pool == QueuePoolConfig(5, 10, 30.0, -1.0, False, False, True)
    assert s.cache is None and s.replicas is None


def test_default_name() -> None:
    assert parse_scenario({}, default_name="x").name == "x"
    assert parse_scenario({"name": "y"}, default_name="x").name == "y"


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-case.toml"
    path.write_text("[pool]\npool_size = 3\n")
    assert load_scenario(path).name == "my-case"


def test_empty_sections_give_defaults() -> None:
    s = parse_scenario({"cache": {}, "replicas": {}})
    assert s.cache == Cache(ttl=60.0, capacity=None, hit_time=0.0002, on_write="invalidate")
    assert s.replicas == Replicas(
        count=1, lag=Constant(0.2), route_reads="replicas", ryw_window=1.0
    )


def test_pool_kind_defaults() -> None:
    def pool(table: dict) -> object:
        return parse_scenario({"pool": table}).pool

    assert pool({}) == QueuePoolConfig()
    assert pool({"kind": "psycopg2", "minconn": 1, "maxconn": 4}) == ThreadedPoolConfig(1, 4, True)
    p = pool({"kind": "psycopg_pool"})
    assert p == PsycopgPoolConfig(4, None, 30.0, 3600.0, 600.0, 0, 3, True)
    assert p.effective_max_size == 4
    assert pool({"kind": "psycopg_pool", "max_size": 9}).effective_max_size == 9
    assert pool({"kind": "psycopg_pool", "min_size": 0, "max_size": 2}).effective_max_size == 2
    assert pool({"kind": "asyncpg"}) == AsyncpgPoolConfig(10, 10, INF, 300.0, 50000, True)
    assert pool({"kind": "none"}) == NoPoolConfig()
    assert {cls.kind for cls in POOL_KINDS.values()} == set(POOL_KINDS)


def test_zipf_without_s_defaults_to_one() -> None:
    s = parse_scenario({"workload": {"popularity": {"dist": "zipf"}}})
    assert s.workload.popularity == Popularity("zipf", 1.0)
    s = parse_scenario({"workload": {"popularity": {"dist": "uniform"}}})
    assert s.workload.popularity == Popularity("uniform")


def test_limits_that_are_allowed() -> None:
    s = parse_scenario(
        {
            "replications": 1000,
            "workload": {"write_fraction": 1, "warmup": 0, "think_time": 0},
            "pool": {"pool_size": 0, "max_overflow": -1, "pool_timeout": INF, "pool_recycle": 1},
            "database": {"cores": 0, "network_rtt": 0, "connect_time": 0},
            "cache": {"ttl": INF, "capacity": 1, "hit_time": 0},
            "replicas": {"ryw_window": 0},
        }
    )
    assert s.pool == QueuePoolConfig(0, -1, INF, 1.0)
    assert s.cache is not None and s.cache.ttl == INF


# --- types -------------------------------------------------------------------


def test_bool_is_not_a_number_and_number_is_not_a_bool() -> None:
    for data in (
        {"pool": {"pool_size": True}},
        {"pool": {"pool_timeout": False}},
        {"workload": {"rate": True}},
        {"pool": {"pool_pre_ping": 1}},
        {"pool": {"pool_pre_ping": 0}},
        {"query": {"cpu_bound": 1.0}},
        {"pool": {"pool_size": np.bool_(True)}},
    ):
        with pytest.raises(ScenarioError):
            parse_scenario(data)


def test_ints_accepted_for_floats_and_stored_as_floats() -> None:
    s = parse_scenario({"workload": {"rate": 100, "duration": 10}, "pool": {"pool_timeout": 5}})
    assert s.workload.rate == 100.0 and type(s.workload.rate) is float
    assert type(s.pool.pool_timeout) is float  # type: ignore[union-attr]


def test_numpy_scalars_are_accepted_as_plain_numbers() -> None:
    s = parse_scenario({"pool": {"pool_size": np.int64(7)}, "workload": {"rate": np.float64(5)}})
    assert s.pool.pool_size == 7 and type(s.pool.pool_size) is int  # type: ignore[union-attr]
    assert type(s.workload.rate) is float


# --- immutability ----------------------------------------------------------------


def test_scenario_is_immutable_and_hashable() -> None:
    s = load_scenario(DEMO)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.pool.pool_size = 1  # type: ignore[misc, union-attr]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workload.rate = 1.0  # type: ignore[misc]
    assert hash(s) == hash(load_scenario(DEMO))
    assert pickle.loads(pickle.dumps(s)) == s


# --- round trips -----------------------------------------------------------------

FULL = {
    "name": "full",
    "seed": 3,
    "replications": 2,
    "workload": {
        "kind": "closed",
        "clients": 7,
        "think_time": 0.1,
        "popularity": {"dist": "uniform"},
        "write_fraction": 0.25,
    },
    "query": {"service_time": {"dist": "lognormal", "mean": 0.005, "cv": 2}, "cpu_bound": True},
    "pool": {"kind": "psycopg_pool", "min_size": 2, "timeout": INF},
    "database": {"connect_time": {"dist": "empirical", "samples": [0.003, 0.004]}},
    "cache": {"ttl": INF, "capacity": 100, "on_write": "write_through"},
    "replicas": {"count": 2, "lag": {"dist": "uniform", "low": 0, "high": 1}},
}


def toml_types_only(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and toml_types_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(toml_types_only(v) for v in value)
    return type(value) in (str, int, float, bool)


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_file_loads_and_round_trips(path: Path) -> None:
    s = load_scenario(path)
    assert parse_scenario(s.to_dict()) == s
    assert toml_types_only(s.to_dict())


def test_example_files_exist() -> None:
    names = {p.name for p in SCENARIOS.glob("*.toml")}
    assert {
        "demo.toml",
        "mmc.toml",
        "overload-timeouts.toml",
        "psycopg2-exhaustion.toml",
        "asyncpg.toml",
        "psycopg-pool.toml",
        "no-pool.toml",
        "cpu-bound.toml",
        "closed.toml",
    } <= names


def test_demo_file_values() -> None:
    s = load_scenario(DEMO)
    assert s.name == "pool-sizing-demo" and s.seed == 42 and s.replications == 5
    assert s.workload.rate == 400.0 and s.workload.duration == 20.0 and s.workload.warmup == 2.0
    assert s.pool == QueuePoolConfig(pool_size=5, max_overflow=10, pool_timeout=30.0)
    assert s.query.service_time == Exponential(0.005)
    assert s.database == Database(Constant(0.004), 0.0001, 2, 100)
    assert s.cache is None and s.replicas is None


def test_mmc_file_has_nothing_but_the_queue() -> None:
    s = load_scenario(SCENARIOS / "mmc.toml")
    assert s.pool == QueuePoolConfig(4, 0, INF, reset_on_return=False)
    assert s.database.connect_time == Constant(0.0) and s.database.network_rtt == 0.0
    assert s.query.service_time == Exponential(0.01) and s.workload.rate == 300.0


def test_full_scenario_round_trips() -> None:
    s = parse_scenario(FULL)
    data = s.to_dict()
    assert parse_scenario(data) == s
    assert data["cache"] == {
        "ttl": INF,
        "capacity": 100,
        "hit_time": 0.0002,
        "on_write": "write_through",
        "single_flight": False,
    }
    assert (
        data["pool"]["kind"] == "psycopg_pool" and "max_size" not in data["pool"]
    )  # None left out
    assert data["workload"]["popularity"] == {"dist": "uniform"}
    assert toml_types_only(data)


def test_to_dict_is_a_fresh_copy() -> None:
    s = parse_scenario(FULL)
    data = s.to_dict()
    data["pool"]["min_size"] = 99
    data["database"]["connect_time"]["samples"].append(5.0)
    assert s.to_dict() == parse_scenario(FULL).to_dict()


# --- overrides -------------------------------------------------------------------


def test_parse_assignment_values() -> None:
    assert parse_assignment("pool.pool_size=8") == ("pool.pool_size", 8)
    assert parse_assignment(" pool . pool_size = 8 ") == ("pool.pool_size", 8)
    assert parse_assignment("pool.pool_timeout=inf") == ("pool.pool_timeout", INF)
    assert parse_assignment("pool.kind=asyncpg") == ("pool.kind", "asyncpg")
    assert parse_assignment('name="a b"') == ("name", "a b")
    assert parse_assignment("name=a b") == ("name", "a b")
    assert parse_assignment("name=a=b") == ("name", "a=b")
    assert parse_assignment("x=true") == ("x", True)
    assert parse_assignment("x=[1, 2]") == ("x", [1, 2])
    assert parse_assignment('x={dist="constant", value=0}') == (
        "x",
        {"dist": "constant", "value": 0},
    )


def test_apply_override_returns_a_new_dict() -> None:
    data = {"pool": {"pool_size": 5}}
    before = copy.deepcopy(data)
    new = apply_override(data, "pool.pool_size=8")
    assert new == {"pool": {"pool_size": 8}}
    assert data == before


def test_apply_override_creates_missing_tables() -> None:
    assert apply_override({}, "cache.ttl=5") == {"cache": {"ttl": 5}}
    assert apply_override({"pool": {"kind": "none"}}, "replicas.lag.value=0.5") == {
        "pool": {"kind": "none"},
        "replicas": {"lag": {"value": 0.5}},
    }


def test_bare_string_pool_kind(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[pool]\nkind = "sqlalchemy"\n')
    s = load_scenario(path, ["pool.kind=asyncpg", "pool.max_size=20"])
    assert s.pool == AsyncpgPoolConfig(max_size=20)
    s = load_scenario(path, ["pool.kind=none"])
    assert s.pool == NoPoolConfig()


def test_override_infinity_and_later_wins() -> None:
    s = load_scenario(DEMO, ["pool.pool_timeout=inf"])
    assert s.pool.pool_timeout == INF  # type: ignore[union-attr]
    s = load_scenario(DEMO, ["pool.pool_size=2", "pool.pool_size=3"])
    assert s.pool.pool_size == 3  # type: ignore[union-attr]


def test_override_adds_sections_and_tables() -> None:
    s = load_scenario(
        DEMO,
        [
            "cache.ttl=5",
            'replicas.lag={dist="exponential", mean=0.1}',
            "workload.popularity.dist=uniform",
            "query.service_time=0.002",
        ],
    )
    assert s.cache == Cache(ttl=5.0)
    assert s.replicas == Replicas(lag=Exponential(0.1))
    assert s.workload.popularity == Popularity("uniform")
    assert s.query.service_time == Constant(0.002)


def test_with_overrides_and_with_values() -> None:
    s = load_scenario(DEMO)
    assert s.with_overrides(["pool.pool_size=8"]).pool.pool_size == 8  # type: ignore[union-attr]
    t = s.with_values({"pool.pool_size": 8, "workload.rate": 100})
    assert t.pool.pool_size == 8 and t.workload.rate == 100.0  # type: ignore[union-attr]
    assert t.name == s.name and t.seed == s.seed
    assert s.pool.pool_size == 5  # type: ignore[union-attr]  # the original is untouched
    # Sweeps hand over NumPy numbers and simlib objects.
    u = s.with_values({"pool.pool_size": np.int64(3), "query.service_time": Lognormal(0.01, 1)})
    assert u.pool.pool_size == 3 and u.query.service_time == Lognormal(0.01, 1.0)  # type: ignore[union-attr]
    assert s.with_values({}) == s


def test_with_values_switching_pool_kind_starts_from_its_defaults() -> None:
    s = load_scenario(DEMO)
    assert s.with_values({"pool.kind": "asyncpg"}).pool == AsyncpgPoolConfig()
    t = s.with_overrides(["pool.max_size=4", "pool.kind=asyncpg", "pool.min_size=2"])
    assert t.pool == AsyncpgPoolConfig(min_size=2, max_size=4)
    # Same kind: the existing parameters stay.
    assert s.with_values({"pool.kind": "sqlalchemy"}) == s


def test_with_values_validates() -> None:
    s = load_scenario(DEMO)
    with pytest.raises(ScenarioError) as info:
        s.with_values({"pool.pool_size": -1})
    check_message(info.value, "pool.pool_size")
    with pytest.raises(ScenarioError) as info:
        s.with_values({"query.service_time": Uniform(2.0, 1.0)})
    check_message(info.value, "query.service_time.high")
    with pytest.raises(ScenarioError) as info:
        s.with_values({"": 1})
    check_message(info.value, "with_values")


# --- files -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.field == str(path)
    assert str(info.value).startswith(f"{path}: cannot read")
    assert len(str(info.value).splitlines()) == 1


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text("name = 'x'\n[pool]\nfoo bar\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "(at line 3, column 5)" in message
    assert len(message.splitlines()) == 1


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.field == str(path)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path)
    assert info.value.field == str(tmp_path)


# --- popularity --------------------------------------------------------------------


def test_popularity_probabilities() -> None:
    p = Popularity("zipf", 1.2).probabilities(1000)
    assert p.shape == (1000,) and p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(2**1.2)  # p_k proportional to k^-s
    assert (np.diff(p) < 0).all()
    u = Popularity("uniform").probabilities(10)
    assert np.allclose(u, 0.1)
    assert np.allclose(Popularity("zipf", 0.0).probabilities(4), 0.25)
    assert Popularity("zipf", 0.9).probabilities(1).tolist() == [1.0]
    with pytest.raises(ValueError):
        Popularity("zipf", 1.0).probabilities(0)


# --- Hypothesis: garbage in, Scenario or ScenarioError out ---------------------------

FIELDS = [
    "name", "seed", "replications",
    "workload", "workload.kind", "workload.rate", "workload.clients", "workload.think_time",
    "workload.duration", "workload.warmup", "workload.keys", "workload.popularity",
    "workload.popularity.dist", "workload.popularity.s", "workload.write_fraction",
    "query", "query.service_time", "query.service_time.dist", "query.service_time.mean",
    "query.service_time.cv", "query.service_time.samples", "query.cpu_bound",
    "pool", "pool.kind", "pool.pool_size", "pool.max_overflow", "pool.pool_timeout",
    "pool.pool_recycle", "pool.pool_pre_ping", "pool.use_lifo", "pool.reset_on_return",
    "pool.minconn", "pool.maxconn", "pool.min_size", "pool.max_size", "pool.timeout",
    "pool.max_lifetime", "pool.max_idle", "pool.max_waiting", "pool.num_workers",
    "pool.max_inactive_connection_lifetime", "pool.max_queries",
    "database", "database.connect_time", "database.connect_time.value",
    "database.connect_time.low", "database.connect_time.high", "database.network_rtt",
    "database.cores", "database.max_connections",
    "cache", "cache.ttl", "cache.capacity", "cache.hit_time", "cache.on_write",
    "replicas", "replicas.count", "replicas.lag", "replicas.route_reads", "replicas.ryw_window",
    "unknown", "pool.unknown",
]  # fmt: skip

WORDS = [
    "zipf", "uniform", "constant", "exponential", "lognormal", "empirical", "open", "closed",
    "sqlalchemy", "psycopg2", "psycopg_pool", "asyncpg", "none", "invalidate",
    "write_through", "replicas", "primary", "read_your_writes",
]  # fmt: skip

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=30),
    st.integers(),
    st.just(10**400),
    # Built lazily: Hypothesis prints its strategies, and an int this long has no str().
    st.builds(lambda: -(10**5000)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=100),
    st.text(max_size=8),
    st.sampled_from(WORDS),
    st.dates(),
    st.binary(max_size=3),
    st.builds(Exponential, st.floats(min_value=-1, max_value=1)),
)
KEYS = st.one_of(
    st.sampled_from(["dist", "mean", "value", "cv", "low", "high", "samples", "s", "kind"]),
    st.text(max_size=4),
)
GARBAGE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=8,
)
# Values a real file might hold, so that many examples are valid scenarios too
# (and exercise the round trip), not only errors.
PLAUSIBLE = st.one_of(
    st.integers(min_value=0, max_value=30),
    st.floats(min_value=0.001, max_value=100),
    st.sampled_from(WORDS),
    st.booleans(),
    st.just(INF),
)
VALUES = st.one_of(PLAUSIBLE, GARBAGE)
BASES = [{}, FULL, {"pool": {"kind": "psycopg2", "minconn": 1, "maxconn": 2}}]


def set_dotted(data: dict, path: str, value: object) -> dict:
    """A test-side setter that, unlike apply_override, bulldozes non-tables."""
    data = copy.deepcopy(data)
    table = data
    for part in path.split(".")[:-1]:
        if not isinstance(table.get(part), dict):
            table[part] = {}
        table = table[part]
    table[path.split(".")[-1]] = value
    return data


def scenario_or_error(make: Callable[[], Scenario]) -> None:
    try:
        s = make()
    except ScenarioError as error:
        message = str(error)
        assert len(message.splitlines()) == 1
        assert message.startswith(error.field + ": ")
    else:
        assert isinstance(s, Scenario)
        assert parse_scenario(s.to_dict()) == s


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(BASES),
    changes=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=3),
)
def test_garbage_gives_a_scenario_or_a_scenario_error(
    base: dict, changes: list[tuple[str, object]]
) -> None:
    data = base
    for path, value in changes:
        data = set_dotted(data, path, value)
    scenario_or_error(lambda: parse_scenario(data))
    scenario_or_error(lambda: parse_scenario(base).with_values(dict(changes)))


# --set strings: pure noise, and known fields with a noisy value after the "=".
ASSIGNMENTS = st.one_of(
    st.text(max_size=30),
    st.builds(lambda key, text: f"{key}={text}", st.sampled_from(FIELDS), st.text(max_size=12)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ASSIGNMENTS, max_size=3))
def test_garbage_set_strings_give_a_scenario_or_a_scenario_error(assignments: list[str]) -> None:
    scenario_or_error(lambda: load_scenario(DEMO, assignments))
    scenario_or_error(lambda: load_scenario(DEMO).with_overrides(assignments))


def test_distribution_classes_are_exported_for_scenarios() -> None:
    # A scenario's distributions are the objects of simlib.distributions.
    s = parse_scenario(FULL)
    assert isinstance(s.query.service_time, Lognormal)
    assert isinstance(s.database.connect_time, Empirical)
