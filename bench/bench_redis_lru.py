"""Redis as a bounded cache: bytes per key, and ``allkeys-lru`` against exact LRU.

Starts a throwaway ``redis-server`` (``labs.services.start_redis``: free
loopback port, no persistence, removed afterwards) and measures, with
:mod:`labs.cache_memory`:

* the memory one cached key costs, for the executor's two key shapes
  (``SET l:xxxxxx:<k> <version>`` and the same with ``PX``), at 5000 keys;
* for capacities of 2000 and 500 of 10000 keys, Zipf 0.9 and uniform
  popularity, and ``maxmemory-samples`` 5 and 10: the hit ratio of one
  200,000-request cache-aside trace replayed against Redis as fast as it
  answers, beside exact LRU's on the same trace (simlib's ``CacheStore``),
  random replacement's, and Che's approximation;
* one paced replay at 2000 requests/s (18 s), a live scenario's rate, where a
  key stays in the cache for seconds and Redis's one-second LRU clock can
  tell keys apart.

Usage::

    python bench/bench_redis_lru.py                    # full, about 1.5 min
    python bench/bench_redis_lru.py --quick            # smoke run, about 20 s
    python bench/bench_redis_lru.py --out bench/results/redis_lru.json

The result file is written atomically (default ``bench/results/redis_lru.json``,
``redis_lru-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from labs.cache_memory import bytes_per_key, lru_experiment  # noqa: E402
from labs.json_out import json_safe  # noqa: E402
from labs.services import ServiceError, start_redis  # noqa: E402
from simlib.files import atomic_write_text  # noqa: E402

KEYS = 10000
TTL_MS = 60_000  # the TTL shape; its value does not change the memory
SEED = 1


def plan(quick: bool) -> list[dict[str, Any]]:
    """The lru_experiment calls, as keyword arguments."""
    if quick:
        return [
            {"capacity": 2000, "s": 0.9, "requests": 50_000, "samples": (5,)},
            {"capacity": 500, "s": 0.9, "requests": 8000, "samples": (5,), "rate": 2000.0},
        ]
    return [
        {"capacity": capacity, "s": s, "requests": 200_000, "samples": (5, 10)}
        for capacity in (2000, 500)
        for s in (0.9, 0.0)
    ] + [{"capacity": 2000, "s": 0.9, "requests": 36_000, "samples": (5,), "rate": 2000.0}]


def machine_info(r: redis.Redis) -> dict[str, Any]:
    server = r.info("server")
    return {
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis_server": server.get("redis_version"),
        "redis_allocator": r.info("memory").get("mem_allocator"),
        "redis_py": redis.__version__,
    }


def rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for exp in doc["experiments"]:
        for run in exp["runs"]:
            out.append({**{k: v for k, v in exp.items() if k != "runs"}, **run})
    return out


def report(doc: dict[str, Any]) -> str:
    bpk = doc["bytes_per_key"]
    lines = [
        f"bytes per key at {bpk['sample']} keys: {bpk['no_ttl']:.1f} (SET), "
        f"{bpk['ttl']:.1f} (SET PX)",
        "",
        "| popularity | capacity | maxmemory-samples | rate /s | Redis hit | exact LRU | Che "
        "| random repl. | Redis − LRU | keys held | ops/s | turnover per 1 s tick |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows(doc):
        rate = "as fast" if row["rate"] is None else f"{row['rate']:,.0f}"
        lines.append(
            f"| {row['popularity']} | {row['capacity']:,} of {row['keys']:,} "
            f"| {row['maxmemory_samples']} | {rate} "
            f"| {row['redis_hit_ratio']:.4f} | {row['exact_lru_hit_ratio']:.4f} "
            f"| {row['che_hit_ratio']:.4f} | {row['random_replacement_hit_ratio']:.4f} "
            f"| {row['difference']:+.4f} | {row['keys_held_end']:,} "
            f"| {row['ops_per_s']:,.0f} | {row['turnover_per_lru_tick']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="result JSON (default bench/results/redis_lru.json)",
    )
    p.add_argument("--quick", action="store_true", help="smaller runs, about 20 s")
    args = p.parse_args(argv)
    path = args.out or ROOT / "bench" / "results" / (
        "redis_lru-quick.json" if args.quick else "redis_lru.json"
    )

    began = time.perf_counter()
    try:
        server = start_redis()
    except ServiceError as e:
        print(f"bench_redis_lru: {e}", file=sys.stderr)
        return 2
    try:
        r = redis.Redis.from_url(server.url)
        machine = machine_info(r)
        shapes = {
            "sample": 5000,
            "ttl_ms": TTL_MS,
            "no_ttl": bytes_per_key(r, "l:0a0b0c:", None),
            "ttl": bytes_per_key(r, "l:0a0b0c:", TTL_MS),
        }
        r.close()
        experiments = []
        for kwargs in plan(args.quick):
            t = time.perf_counter()
            exp = lru_experiment(server.url, keys=KEYS, seed=SEED, **kwargs)
            exp["wall_s"] = time.perf_counter() - t
            experiments.append(exp)
            print(
                f"{exp['popularity']}, capacity {exp['capacity']}, rate {exp['rate']}: "
                f"{exp['wall_s']:.1f} s",
                flush=True,
            )
    finally:
        server.stop()
    machine["load_average_at_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "bench_redis_lru",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "bench/bench_redis_lru.py" + (" --quick" if args.quick else ""),
        "machine": machine,
        "bytes_per_key": shapes,
        "experiments": experiments,
        "elapsed_s": time.perf_counter() - began,
    }
    print(report(doc))
    print(f"elapsed {doc['elapsed_s']:.0f} s")
    atomic_write_text(path, json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
