"""Redis, one kind of service: ``redis-server`` on a free loopback port, no persistence.

Attached (for one run): a child process with ``--daemonize no``.  Detached (for
``python -m labs services up``): ``--daemonize yes`` with a pidfile, so it outlives
the command.  Either way its working directory (``--dir``) is its own temp
directory ``labs-redis-XXXX``, which is how leftovers are found and killed.

The program is ``$LABS_REDIS_SERVER`` when that is set (a path, or a name looked
up on PATH), else ``redis-server`` on PATH.

As a kind of service (:class:`Redis`, registered at the end of this module) it is
the cache tier: one server, for runs that ask for ``redis=True`` -- scenarios with
a ``[cache]``.  A server of your own is named by ``LABS_REDIS`` (a URL redis-py's
``from_url`` takes) and must answer ``PING``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from labs.services.base import Member, ServiceKind, Tier, register_kind
from labs.services.checks import CHECK_TIMEOUT, Probe, bad_port, first_line, scheme, scrub
from labs.services.common import (
    LOOPBACK,
    LocalServer,
    ServiceError,
    find_program,
    install_hint,
    one_line,
    start_retrying_port,
)
from labs.topology import CACHE

if TYPE_CHECKING:  # for annotations only
    from simlib.scenario import Scenario

START_TIMEOUT = 15.0
PACKAGE = "redis-server"  # what to install when the program is missing
ENV_SERVER = "LABS_REDIS_SERVER"
ENV_REDIS = "LABS_REDIS"  # a server of your own


def find_redis_server() -> str:
    """The redis-server program: ``$LABS_REDIS_SERVER`` if set (and only that), else PATH."""
    return find_program("redis-server", ENV_SERVER, PACKAGE, service="redis")


def ping(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """A bare RESP PING (no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer(LocalServer):
    """One local redis-server in its own temp directory, attached or detached."""

    PREFIX: ClassVar[str] = "labs-redis-"
    KIND: ClassVar[str] = "redis"
    LOG: ClassVar[str] = "redis.log"
    PIDFILE: ClassVar[str] = "redis.pid"  # written when detached
    SCHEME: ClassVar[str] = "redis"
    PATH: ClassVar[str] = "0"  # database 0
    ADDRESS_KEY: ClassVar[str] = "url"

    detached: bool = False
    _proc: subprocess.Popen | None = field(default=None, repr=False)  # attached only

    @property
    def url(self) -> str:
        """The ``redis://`` URL (what redis-py's ``from_url`` takes): ``dsn`` by its name."""
        return self.dsn

    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        return super().pid()

    @classmethod
    def fields_from_state(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"detached": True}  # only `services up` writes state: a daemon

    def _argv(self, binary: str) -> list[str]:
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.logfile),
        ]
        if self.detached:
            return [*argv, "--daemonize", "yes", "--pidfile", str(self.dir / self.PIDFILE)]
        return [*argv, "--daemonize", "no"]

    def start(self, binary: str) -> None:
        self.check_port()
        try:
            proc = subprocess.Popen(
                self._argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,  # our Ctrl-C is ours to handle
            )
        except OSError as e:
            raise ServiceError(
                f"redis: cannot run {binary}: {e.strerror}; {install_hint(PACKAGE)}"
            ) from None
        if not self.detached:
            self._proc = proc

        def answers() -> bool:
            if ping(self.port, timeout=0.5):
                return True
            if not self.detached and proc.poll() is not None:
                raise self.start_failed(f"exited with status {proc.returncode}")
            return False

        self.wait_ready(answers, START_TIMEOUT, "no PONG", interval=0.02)
        if self.detached:
            # the parent of the daemon exits at once; collect it (it is no server)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def shutdown(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    def stop(self) -> None:
        super().stop()
        if self._proc is not None:
            # dead by now (SIGTERM, else reap's SIGKILL): collect its exit status
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None


def start_redis(
    *, port: int | None = None, detached: bool = False, binary: str | None = None
) -> RedisServer:
    """Start redis-server on ``port`` (default: a free one). Stop it with ``.stop()``.

    ``binary``: the program (default: :func:`find_redis_server`).
    """
    program = binary or find_redis_server()
    return start_retrying_port(
        lambda: RedisServer.create(port, detached=detached),
        lambda server: server.start(program),
        port,
        "redis",
    )


# ---------------------------------------------------------------------------
# A URL of a server of your own
# ---------------------------------------------------------------------------

REDIS_SCHEMES = ("redis", "rediss", "unix")  # the URL schemes redis-py accepts
REDIS_FORM = "a Redis URL (redis://HOST:PORT/DB)"


def redis_form_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL redis-py can use (None: it is)."""
    found = scheme(url)
    if found not in REDIS_SCHEMES:
        got = f"{found}://" if found else "no scheme"
        return f"scheme must be {', '.join(s + '://' for s in REDIS_SCHEMES)}, got {got}"
    try:
        port = urlsplit(url).port
    except ValueError as e:
        return scrub(first_line(e), url)
    return bad_port(None if port is None else str(port))


def redis_address(url: str) -> str:
    """host:port of a Redis URL, for messages ("?" when it is none)."""
    if scheme(url) not in REDIS_SCHEMES:
        return "?"
    parts = urlsplit(url)
    try:
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "?"


def redis_problem(url: str) -> str | None:
    """None if the server at ``url`` answers PING, else why not."""
    try:
        # redis-py only when a URL is checked: throwaway runs need no client to start
        import redis as redis_py

        client = redis_py.Redis.from_url(
            url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:
        return scrub(one_line(e), url) or type(e).__name__
    return None


# ---------------------------------------------------------------------------
# The kind
# ---------------------------------------------------------------------------

CACHE_TIER = Tier(
    CACHE, "redis", ENV_REDIS,
    Probe("Redis", REDIS_FORM, "must answer PING", redis_form_problem, redis_problem,
          redis_address),
    env_missing="{var}: the scenario has a [cache] and needs a Redis URL, got nothing; "
    "export e.g. {var}=redis://127.0.0.1:56379/0",
    state_missing="cache: `labs services up` started no Redis and the scenario has a [cache]; "
    "run `python -m labs services down` then `python -m labs services up`",
)


class Redis(ServiceKind[str]):
    """One redis-server, the cache tier, for runs that ask for ``redis=True``."""

    name = "redis"
    tiers = (CACHE_TIER,)
    keywords: ClassVar[Mapping[str, object]] = {"redis": False}
    server = RedisServer
    rank = 0  # starts in a blink: a broken redis-server shows before initdb runs

    def find_binary(self) -> str:
        return find_redis_server()

    def count(self, tier: Tier, wants: Mapping[str, object]) -> int:
        return 1 if wants["redis"] else 0

    def start(
        self, wants: Mapping[str, object], binary: str, *, detached: bool,
        started: Sequence[Member],
    ) -> Iterator[tuple[Tier, LocalServer]]:
        yield CACHE_TIER, start_redis(detached=detached, binary=binary)

    def needs(self, scenario: Scenario) -> dict[str, object]:
        return {"redis": scenario.cache is not None}


register_kind(Redis())
