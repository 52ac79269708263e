"""Readable output: the results table, and a figure of one run.

The JSON form of a result is :meth:`SimulationResult.to_json`; this module is
for people.  Numbers are shown with their 95% interval as ``value ± half``,
because the half-width is what a reader compares with a difference between
two runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from simlib.files import atomic_savefig
from simlib.metrics import Estimate

UNITS = {
    "throughput_rps": "req/s",
    "offered_rps": "req/s",
    "connections_opened_per_s": "conn/s",
    "db_queries_per_s": "query/s",
}
DESCRIPTIONS = {
    "throughput_rps": "completed requests per second",
    "latency_mean_ms": "arrival to response, mean",
    "latency_p50_ms": "arrival to response, median",
    "latency_p95_ms": "arrival to response, 95th percentile",
    "latency_p99_ms": "arrival to response, 99th percentile",
    "checkout_mean_ms": "arrival to connection in hand, mean",
    "checkout_p95_ms": "arrival to connection in hand, p95",
    "p_wait": "share that queued for a connection",
    "timeout_rate": "share that got no connection",
    "error_rate": "share that failed otherwise",
    "connections_opened_per_s": "new server connections per second",
    "connections_mean": "open server connections, time average",
    "offered_rps": "requests arriving per second",
    "query_mean_ms": "query round trip incl. server time, mean",
    "connections_busy_mean": "connections checked out, time average",
    "in_flight_mean": "requests in the system, time average",
    "incomplete_rate": "share unfinished at the drain limit",
    "cache_hit_ratio": "reads found in the cache",
    "stale_read_ratio": "reads older than the primary's newest at their start",
    "db_queries_per_s": "queries sent to the primary or a replica",
    "cache_coalesced_ratio": "reads that shared another read's query (single flight)",
    "replica_read_share": "database reads sent to a replica",
    "replica_reads_max_share": "busiest replica's share of replica reads",
}


def format_number(x: float | None) -> str:
    """``x`` as a table shows it, or ``n/a`` when it is missing (None or NaN).

    Whole from 1000 (with thousands separators), one decimal from 100, two
    from 1 and four below.
    """
    if x is None or math.isnan(x):
        return "n/a"
    if x == 0:
        return "0"
    magnitude = abs(x)
    if magnitude >= 1000:
        return f"{x:,.0f}"
    if magnitude >= 100:
        return f"{x:.1f}"
    if magnitude >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def format_estimate(est: Estimate) -> str:
    """``value ± half-width`` of the 95% interval, or the value alone when there is none."""
    text = format_number(est.value)
    if est.ci95 is not None and not math.isnan(est.value):
        half = (est.ci95[1] - est.ci95[0]) / 2
        text += f" ± {format_number(half)}"
    return text


def table(title: str, metrics: Mapping[str, Estimate], note: str = "") -> str:
    """A plain-text table: metric, value ± 95% half-width, meaning."""
    rows = [
        (name, format_estimate(est), UNITS.get(name, ""), DESCRIPTIONS.get(name, ""))
        for name, est in metrics.items()
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [title]
    if note:
        lines.append(note)
    lines.append(f"{'metric':<{w0}}  {'value ± 95% CI':>{w1}}  {'':<{w2}}  meaning")
    lines.append("-" * (w0 + w1 + w2 + 40))
    for name, value, unit, meaning in rows:
        lines.append(f"{name:<{w0}}  {value:>{w1}}  {unit:<{w2}}  {meaning}")
    return "\n".join(lines)


def plot_run(metrics: Mapping[str, Estimate], title: str, path: str) -> None:
    """Bar chart of latency and checkout percentiles with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        "latency_p50_ms",
        "latency_mean_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "checkout_mean_ms",
        "checkout_p95_ms",
    ]
    labels = ["p50", "mean", "p95", "p99", "checkout\nmean", "checkout\np95"]
    values, errors = [], []
    for name in names:
        est = metrics[name]
        values.append(0.0 if math.isnan(est.value) else est.value)
        half = 0.0 if est.ci95 is None else (est.ci95[1] - est.ci95[0]) / 2
        errors.append(0.0 if math.isnan(half) else half)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(labels, values, yerr=errors, capsize=4, color=["#4c72b0"] * 4 + ["#dd8452"] * 2)
    ax.set_ylabel("milliseconds")
    thr = metrics["throughput_rps"]
    ax.set_title(
        f"{title}\nthroughput {format_estimate(thr)} req/s, "
        f"timeouts {format_number(metrics['timeout_rate'].value)}"
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
