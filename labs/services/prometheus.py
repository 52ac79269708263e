"""Prometheus, one kind of service: a throwaway server that scrapes a run's pool exporter.

Lesson 12 watches a pool the way production does: the application exports its
pool's statistics (:mod:`labs.monitoring`), a Prometheus server scrapes them
every second, PromQL turns them into P(wait), saturation and the server's
session states, and an alerting rule derived from the model
(:mod:`labs.alerts`) fires when the pool runs hotter than the SLO allows.
This module is the server: Debian's ``prometheus`` package (bookworm ships
2.42), started like the other local servers, in its own temporary directory
``labs-prometheus-XXXX`` (its config, its TSDB in ``data/``, its log), on a free
loopback port, and removed afterwards.  Attached (one run) it is a child
process; detached (``services up``) it runs in a session of its own with a
pidfile we write (Prometheus writes none), so it outlives the command.
Either way it is stopped with SIGTERM (Prometheus shuts down cleanly on it),
then whatever is left in its directory is killed.

What the config does, and why:

* ``scrape_interval``, ``scrape_timeout`` and ``evaluation_interval`` are 1 s, so a
  lesson sees a change within seconds (production uses 15-60 s);
* targets come from **file-based service discovery**: ``file_sd_configs`` over
  ``targets/*.json`` in its directory, re-read every second
  (``refresh_interval: 1s``; Prometheus also watches the directory with
  inotify).  An exporter started later registers itself with
  :meth:`PrometheusServer.add_target`, which writes ``targets/NAME.json``
  atomically (a temporary file, then ``os.replace``) so Prometheus never reads
  half a file.  Measured here: the first successful scrape of a new target
  comes 4-5 s after its file is written -- Prometheus's discovery manager
  hands target updates to the scrape manager at most every 5 s (fixed in
  2.42) -- so a lesson registers its exporter before it starts the load;
* alerting and recording rules come from ``rules/*.yml`` (``rule_files``).
  Prometheus reads rule files only at start and on a reload, so
  :meth:`PrometheusServer.add_rules` writes the file atomically and then asks for
  a reload with ``POST /-/reload`` (the server runs with
  ``--web.enable-lifecycle``), and waits until ``/api/v1/rules`` lists the new
  group: a rule file Prometheus refuses is reported in one line with its
  reason, and the rule file is removed again.

The HTTP API is read with urllib (no client library): :meth:`PrometheusAPI.query`
(``/api/v1/query``), :meth:`PrometheusAPI.alerts` (``/api/v1/alerts``),
:meth:`PrometheusAPI.targets`; :class:`PrometheusAPI` works on any server's URL,
a server of your own too.

As a kind of service (:class:`Prometheus`, registered at the end) it is the
``prometheus`` tier: one server, for runs that ask for ``prometheus=True``
(``services_for(prometheus=True)``, ``Lab(prometheus=True)``).  No scenario
needs one (:meth:`Prometheus.needs` is always ``{"prometheus": False}``): it
watches a run, it takes no part in it.  It is ``optional``, so a machine
without the program runs every other lesson.  A server of your own is named by
``LABS_PROMETHEUS`` (its URL, e.g. ``http://127.0.0.1:9090``) and must answer
``GET /-/ready`` with 200; it must then scrape the exporter itself (labs does
not write its configuration).  The program is ``$LABS_PROMETHEUS_BIN`` when
set, else ``prometheus`` on PATH, else Debian's ``/usr/bin/prometheus``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from labs.services.base import Member, ServiceKind, Tier, register_kind
from labs.services.checks import CHECK_TIMEOUT, Probe, bad_port, first_line, scheme
from labs.services.common import (
    LOOPBACK,
    LocalServer,
    ServiceError,
    find_program,
    install_hint,
    one_line,
    poll,
    start_retrying_port,
)

if TYPE_CHECKING:  # for annotations only
    from simlib.scenario import Scenario

#: The Topology role of the Prometheus endpoint: ``topology.endpoint(PROMETHEUS)``.
PROMETHEUS = "prometheus"
PACKAGE = "prometheus"  # what to install when the program is missing
ENV_PROMETHEUS = "LABS_PROMETHEUS"  # a server of your own
ENV_BIN = "LABS_PROMETHEUS_BIN"
DEBIAN_BINARY = Path("/usr/bin/prometheus")
START_TIMEOUT = 30.0
#: seconds :meth:`PrometheusServer.add_rules` waits for a reload to list the new group
RELOAD_TIMEOUT = 10.0
CONFIG, TARGETS, RULES = "prometheus.yml", "targets", "rules"
#: what a target file, a rule file and a job may be called: they become file names
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


def find_prometheus() -> str:
    """The prometheus program: ``$LABS_PROMETHEUS_BIN`` if set (only that), else PATH,
    else Debian's ``/usr/bin/prometheus``."""
    return find_program("prometheus", ENV_BIN, PACKAGE, fallback=DEBIAN_BINARY)


# ---------------------------------------------------------------------------
# The HTTP API, for any server
# ---------------------------------------------------------------------------


class PrometheusError(ServiceError):
    """A query Prometheus refused or a server that did not answer, in one line."""


@dataclass(frozen=True)
class PrometheusAPI:
    """Prometheus's HTTP API at ``url`` (``http://HOST:PORT``), read with urllib.

    Every failure is one :class:`PrometheusError` line: the server's own
    ``error`` for a refused query (``bad_data: parse error ...``), or why it
    did not answer.
    """

    url: str
    timeout: float = 5.0

    def _request(self, path: str, params: Mapping[str, str] | None = None,
                 method: str = "GET") -> bytes:
        target = self.url.rstrip("/") + path
        data = None
        if params and method == "GET":
            target += "?" + urllib.parse.urlencode(params)
        elif params:
            data = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(target, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                doc = json.loads(body)
                why = f"{doc.get('errorType', e.code)}: {doc.get('error', '')}"
            except ValueError:
                why = f"HTTP {e.code}: {body.decode(errors='replace')}"
            raise PrometheusError(f"prometheus at {self.url}: {path} refused: {why}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise PrometheusError(
                f"prometheus at {self.url}: {path} did not answer: {reason}") from None

    def _data(self, path: str, params: Mapping[str, str] | None = None,
              method: str = "GET") -> Any:
        doc = json.loads(self._request(path, params, method))
        if doc.get("status") != "success":
            raise PrometheusError(f"prometheus at {self.url}: {path}: {doc.get('errorType')}: "
                                  f"{doc.get('error')}")
        return doc.get("data")

    def ready(self) -> bool:
        """``GET /-/ready`` answers 200 (the server is up and serving queries)."""
        try:
            self._request("/-/ready")
            return True
        except PrometheusError:
            return False

    def query_raw(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """The ``data`` of ``/api/v1/query`` for ``promql`` at the instant ``at`` (Unix
        seconds, as ``time.time()`` gives them; default: now)."""
        params = {"query": _promql(promql)}
        if at is not None:
            params["time"] = _unix_time(at, "at")
        data: dict[str, Any] = self._data("/api/v1/query", params)
        return data

    def query(self, promql: str, at: float | None = None) -> float | dict[str, float]:
        """The value of ``promql`` at ``at`` (default now): a float for a scalar or a vector
        of one series (whatever its labels), else ``{labels: value}`` with labels as
        ``k=v,k=v`` (``{}``: no series, e.g. nothing scraped yet).  ``NaN`` is kept as
        ``nan``."""
        data = self.query_raw(promql, at)
        kind, result = data["resultType"], data["result"]
        if kind in ("scalar", "string"):
            return float(result[1])
        if kind == "matrix":
            raise PrometheusError(f"promql: must be an instant expression, got a range "
                                  f"vector from {promql!r}; wrap it in a function such as rate()")
        values = {_labels(s["metric"]): float(s["value"][1]) for s in result}
        if len(values) == 1:
            return next(iter(values.values()))
        return values

    def value(self, promql: str, at: float | None = None) -> float:
        """``promql``'s one value at ``at`` (default now; NaN when there is no series, the
        sum when several)."""
        got = self.query(promql, at)
        if isinstance(got, float):
            return got
        return math.fsum(got.values()) if got else math.nan

    def query_range(self, promql: str, start: float, end: float, step: float = 1.0
                    ) -> dict[str, list[tuple[float, float]]]:
        """``/api/v1/query_range``: ``promql`` evaluated every ``step`` s from ``start`` to
        ``end`` (Unix seconds), as ``{labels: [(time, value), ...]}`` (labels as in
        :meth:`query`; a series has no point where it had no value)."""
        if not (isinstance(step, int | float) and 0 < step <= 3600):
            raise PrometheusError(f"step: must be seconds in (0, 3600], got {step!r}")
        first, last = _unix_time(start, "start"), _unix_time(end, "end")
        if not float(first) < float(last):
            raise PrometheusError(f"end: must be after start ({start}), got {end}")
        data = self._data("/api/v1/query_range", {"query": _promql(promql), "start": first,
                                                  "end": last, "step": f"{step:g}"})
        if data["resultType"] != "matrix":
            raise PrometheusError(f"promql: must give series over time, got a "
                                  f"{data['resultType']} from {promql!r}")
        return {_labels(s["metric"]): [(float(t), float(v)) for t, v in s["values"]]
                for s in data["result"]}

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts now pending or firing (``/api/v1/alerts``): labels, state, value."""
        data = self._data("/api/v1/alerts")
        return list(data.get("alerts", []))

    def firing(self, alertname: str) -> bool:
        """Whether an alert named ``alertname`` is firing now."""
        return any(a.get("labels", {}).get("alertname") == alertname
                   and a.get("state") == "firing" for a in self.alerts())

    def rules(self) -> list[dict[str, Any]]:
        """The rule groups the server has loaded (``/api/v1/rules``)."""
        return list(self._data("/api/v1/rules").get("groups", []))

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, with ``health`` (``up``/``down``/``unknown``)."""
        return list(self._data("/api/v1/targets").get("activeTargets", []))

    def wait_for(self, promql: str, timeout: float = 10.0) -> float:
        """Poll until ``promql`` has a value that is not NaN (then it), within ``timeout`` s."""
        seen: list[float] = []

        def has_value() -> bool:
            seen[:] = [self.value(promql)]
            return not math.isnan(seen[0])

        if not poll(has_value, timeout, 0.2):
            raise PrometheusError(f"prometheus at {self.url}: {promql!r} must have a value "
                                  f"within {timeout:g} s, got none")
        return seen[0]


def _promql(promql: object) -> str:
    if not isinstance(promql, str) or not promql.strip():
        raise PrometheusError(f"promql: must be a non-empty PromQL expression, got {promql!r}")
    return promql


def _unix_time(t: object, what: str) -> str:
    # Prometheus takes RFC 3339 or Unix seconds; a float of time.time() is the latter
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
        raise PrometheusError(f"{what}: must be Unix seconds (time.time()), got {t!r}")
    return f"{float(t):.3f}"


def _labels(metric: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__")


# ---------------------------------------------------------------------------
# The local server
# ---------------------------------------------------------------------------


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ServiceError(f"{what}: must be a name of letters, digits, _ and - "
                           f"(starting with a letter or _), got {name!r}")
    return name


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class PrometheusServer(LocalServer):
    """One local prometheus in its own temp directory, attached or detached.

    ``dsn`` (also ``url``) is its base URL ``http://127.0.0.1:PORT/``.
    """

    PREFIX: ClassVar[str] = "labs-prometheus-"
    KIND: ClassVar[str] = "prometheus"
    LOG: ClassVar[str] = "prometheus.log"
    PIDFILE: ClassVar[str] = "prometheus.pid"  # written by us (prometheus writes none)
    SCHEME: ClassVar[str] = "http"
    ADDRESS_KEY: ClassVar[str] = "url"
    STOP_GRACE: ClassVar[float] = 5.0

    detached: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: seconds from the process start to ``/-/ready`` answering 200 (set by ``start``)
    ready_seconds: float | None = None

    @property
    def url(self) -> str:
        return self.dsn

    @property
    def api(self) -> PrometheusAPI:
        return PrometheusAPI(self.dsn)

    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        return super().pid()

    @classmethod
    def fields_from_state(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"detached": True}  # only `services up` writes state: a daemon

    def config_text(self) -> str:
        """``prometheus.yml``: 1 s intervals, file SD over ``targets/``, rules from ``rules/``.

        JSON is YAML, so the file is written with :func:`json.dumps`, no YAML library.
        """
        doc = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(self.dir / RULES / "*.yml")],
            "scrape_configs": [{
                "job_name": "labs",
                "file_sd_configs": [{"files": [str(self.dir / TARGETS / "*.json")],
                                     "refresh_interval": "1s"}],
            }],
        }
        return json.dumps(doc, indent=2) + "\n"

    def _argv(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.dir / CONFIG}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]

    def start(self, binary: str) -> None:
        self.check_port()
        (self.dir / TARGETS).mkdir(exist_ok=True)
        (self.dir / RULES).mkdir(exist_ok=True)
        _atomic_write(self.dir / CONFIG, self.config_text())
        t0 = time.monotonic()
        try:
            with open(self.logfile, "ab") as log:
                proc = subprocess.Popen(
                    self._argv(binary), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    cwd=self.dir, start_new_session=True,
                )
        except OSError as e:
            raise ServiceError(
                f"prometheus: cannot run {binary}: {e.strerror}; {install_hint(PACKAGE)}"
            ) from None
        (self.dir / self.PIDFILE).write_text(f"{proc.pid}\n")
        if not self.detached:
            self._proc = proc
        api = self.api

        def answers() -> bool:
            if proc.poll() is not None:
                raise self.start_failed(f"exited with status {proc.returncode}")
            return api.ready()

        self.wait_ready(answers, START_TIMEOUT, "/-/ready did not answer 200", interval=0.05)
        self.ready_seconds = time.monotonic() - t0

    def shutdown(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    def stop(self) -> None:
        super().stop()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None

    # -- what a lesson does with it -------------------------------------------

    def add_target(self, name: str, address: str,
                   labels: Mapping[str, str] | None = None) -> Path:
        """Have the server scrape ``address`` (``HOST:PORT``, path ``/metrics``) from now on.

        Writes ``targets/NAME.json`` atomically; Prometheus picks it up within
        about a second (file SD).  ``labels`` are added to every series scraped
        from it.  Calling it again with the same ``name`` replaces the target.
        """
        _check_name(name, "add_target: name")
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ServiceError(f"add_target: address must be HOST:PORT (port 1..65535), "
                               f"got {address!r}")
        extra = dict(labels or {})
        for key, value in extra.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)) or str(key).startswith("__"):
                raise ServiceError(f"add_target: label names must match [A-Za-z_][A-Za-z0-9_]* "
                                   f"without a leading __, got {key!r}")
            if not isinstance(value, str):
                raise ServiceError(f"add_target: label {key} must be a string, got {value!r}")
        path = self.dir / TARGETS / f"{name}.json"
        _atomic_write(path, json.dumps([{"targets": [address],
                                         "labels": {"target": name, **extra}}]) + "\n")
        return path

    def remove_target(self, name: str) -> None:
        """Stop scraping the target ``name`` (its file is removed)."""
        (self.dir / TARGETS / f"{_check_name(name, 'remove_target: name')}.json").unlink(
            missing_ok=True)

    def wait_for_target(self, name: str, timeout: float = 10.0) -> float:
        """Wait until the target ``name`` has been scraped successfully; seconds waited."""
        _check_name(name, "wait_for_target: name")
        t0 = time.monotonic()

        def up() -> bool:
            return any(t.get("labels", {}).get("target") == name and t.get("health") == "up"
                       for t in self.api.targets())

        if not poll(up, timeout, 0.1):
            raise ServiceError(f"prometheus: target {name} must be scraped within "
                               f"{timeout:g} s, got no successful scrape")
        return time.monotonic() - t0

    def add_rules(self, name: str, yaml_text: str) -> Path:
        """Load a rule file (Prometheus's YAML ``groups:``) as ``rules/NAME.yml``, now.

        Written atomically, then ``POST /-/reload``; returns once
        ``/api/v1/rules`` lists every group of the file.  A file Prometheus
        refuses is removed again and reported in one line with Prometheus's
        reason (its log's last error).
        """
        _check_name(name, "add_rules: name")
        if not isinstance(yaml_text, str) or "groups:" not in yaml_text:
            raise ServiceError("add_rules: yaml_text must be a Prometheus rule file "
                               f"(a YAML document with groups:), got {str(yaml_text)[:60]!r}")
        groups = re.findall(r"^\s*-\s*name:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", yaml_text, re.M)
        path = self.dir / RULES / f"{name}.yml"
        _atomic_write(path, yaml_text)
        try:
            self.api._request("/-/reload", {"_": "1"}, method="POST")
        except PrometheusError as e:
            path.unlink(missing_ok=True)
            with contextlib.suppress(PrometheusError):
                self.api._request("/-/reload", {"_": "1"}, method="POST")
            raise ServiceError(f"add_rules: prometheus refused rules/{name}.yml: "
                               f"{one_line(str(e).split('refused: ', 1)[-1], 300)}") from None

        def loaded() -> bool:
            have = {g.get("name") for g in self.api.rules()}
            return all(g in have for g in groups)

        if not poll(loaded, RELOAD_TIMEOUT, 0.1):
            raise ServiceError(f"add_rules: groups {groups} must be loaded within "
                               f"{RELOAD_TIMEOUT:g} s of a reload, got none")
        return path

    # the API, on the server itself
    def query(self, promql: str, at: float | None = None) -> float | dict[str, float]:
        """:meth:`PrometheusAPI.query` on this server."""
        return self.api.query(promql, at)

    def alerts(self) -> list[dict[str, Any]]:
        """:meth:`PrometheusAPI.alerts` on this server."""
        return self.api.alerts()


def start_prometheus(
    *, port: int | None = None, detached: bool = False, binary: str | None = None
) -> PrometheusServer:
    """Start prometheus on ``port`` (default: a free one). Stop it with ``.stop()``."""
    program = binary or find_prometheus()
    server: PrometheusServer = start_retrying_port(
        lambda: PrometheusServer.create(port, detached=detached),
        lambda s: s.start(program),
        port,
        "prometheus",
    )
    return server


def local_prometheus(svc: Any) -> PrometheusServer:
    """The Prometheus of labs' own behind a :class:`~labs.services.Services` (the one
    ``services_for(prometheus=True)`` or ``Lab(prometheus=True)`` started).

    ServiceError, in one line, when the services have none of labs' own (none
    was asked for, or ``LABS_PROMETHEUS`` names a server labs cannot configure).
    """
    cluster = getattr(svc, "cluster", None)
    found = [s for s in (cluster.servers(PROMETHEUS) if cluster is not None else [])
             if isinstance(s, PrometheusServer)]
    if found:
        return found[0]
    endpoint = svc.topology.endpoint(PROMETHEUS)
    if endpoint is not None:
        raise ServiceError(
            f"prometheus: {ENV_PROMETHEUS} names a server of your own ({endpoint.dsn}); labs "
            f"cannot add targets or rules to it: scrape the exporter from its own config, "
            f"or unset {ENV_PROMETHEUS}")
    raise ServiceError("prometheus: these services have none; ask for one with "
                       "services_for(prometheus=True) or Lab(prometheus=True)")


# ---------------------------------------------------------------------------
# A URL of a server of your own
# ---------------------------------------------------------------------------

PROMETHEUS_FORM = "a Prometheus URL (http://HOST:PORT)"


def prometheus_form_problem(url: str) -> str | None:
    """Why ``url`` is not a Prometheus base URL (None: it is)."""
    found = scheme(url)
    if found not in ("http", "https"):
        got = f"{found}://" if found else "no scheme"
        return f"scheme must be http:// or https://, got {got}"
    try:
        port = urlsplit(url).port
    except ValueError as e:
        return first_line(e)
    return bad_port(None if port is None else str(port))


def prometheus_address(url: str) -> str:
    """host:port of a Prometheus URL, for messages ("?" when it is none)."""
    if scheme(url) not in ("http", "https"):
        return "?"
    parts = urlsplit(url)
    try:
        default = 443 if parts.scheme == "https" else 80
        return f"{parts.hostname or 'localhost'}:{parts.port or default}"
    except ValueError:
        return "?"


def prometheus_problem(url: str) -> str | None:
    """None if ``GET URL/-/ready`` answers 200 within the check timeout, else why not."""
    try:
        PrometheusAPI(url, timeout=CHECK_TIMEOUT)._request("/-/ready")
    except PrometheusError as e:
        return str(e).split(": ", 1)[-1]
    return None


# ---------------------------------------------------------------------------
# The kind
# ---------------------------------------------------------------------------

PROMETHEUS_TIER = Tier(
    PROMETHEUS, "prometheus", ENV_PROMETHEUS,
    Probe("Prometheus", PROMETHEUS_FORM, "must answer GET /-/ready with 200",
          prometheus_form_problem, prometheus_problem, prometheus_address),
    env_missing="{var}: the run asks for a Prometheus and needs its URL, got nothing; "
    "export e.g. {var}=http://127.0.0.1:9090, or unset the LABS_* variables",
    state_missing="prometheus: `labs services up` started no Prometheus and the run asks for "
    "one; run `python -m labs services down`, then `python -m labs services up --prometheus`, "
    "or set LABS_PROMETHEUS",
)


class Prometheus(ServiceKind[str]):
    """One prometheus, the ``prometheus`` tier, for runs that ask for ``prometheus=True``."""

    name = "prometheus"
    tiers = (PROMETHEUS_TIER,)
    keywords: ClassVar[Mapping[str, object]] = {"prometheus": False}
    server = PrometheusServer
    rank = 5  # up in about a second: a broken one shows before initdb runs
    optional = True  # only runs that ask for it need the program

    def find_binary(self) -> str:
        return find_prometheus()

    def check(self, wants: Mapping[str, object]) -> None:
        if not isinstance(wants["prometheus"], bool):
            raise ServiceError(f"prometheus: must be true or false, got {wants['prometheus']!r}")

    def count(self, tier: Tier, wants: Mapping[str, object]) -> int:
        return 1 if wants["prometheus"] else 0

    def start(
        self, wants: Mapping[str, object], binary: str, *, detached: bool,
        started: Sequence[Member],
    ) -> Iterator[tuple[Tier, LocalServer]]:
        yield PROMETHEUS_TIER, start_prometheus(detached=detached, binary=binary)

    def needs(self, scenario: Scenario) -> dict[str, object]:
        # A scenario describes the workload; watching it is the lesson's choice.
        return {"prometheus": False}


register_kind(Prometheus())
