"""Throwaway Redis: ``redis-server`` on a free loopback port, no persistence.

Attached (for one run): a child process with ``--daemonize no``.  Detached (for
``python -m labs services up``): ``--daemonize yes`` with a pidfile, so it outlives
the command.  Either way its working directory (``--dir``) is its own temp
directory ``labs-redis-XXXX``, which is how leftovers are found and killed.

The program is ``$LABS_REDIS_SERVER`` when that is set (a path, or a name looked
up on PATH), else ``redis-server`` on PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from labs.services.common import (
    LOOPBACK,
    LocalServer,
    ServiceError,
    check_port_free,
    checked_dir,
    install_hint,
    poll,
    read_pidfile,
    start_retrying_port,
)

START_TIMEOUT = 15.0
PACKAGE = "redis-server"  # what to install when the program is missing
ENV_SERVER = "LABS_REDIS_SERVER"


def find_redis_server() -> str:
    """The redis-server program: ``$LABS_REDIS_SERVER`` if set (and only that), else PATH."""
    explicit = os.environ.get(ENV_SERVER, "").strip()
    if explicit:
        found = shutil.which(explicit)  # a path to an executable, or a name on PATH
        if not found:
            raise ServiceError(
                f"{ENV_SERVER}: must name an executable redis-server, got {explicit!r} "
                f"(not found or not executable); correct it, or unset it to use redis-server "
                f"from PATH ({install_hint(PACKAGE)})"
            )
        return found
    path = shutil.which("redis-server")
    if not path:
        raise ServiceError(
            f"redis: redis-server not found on PATH; {install_hint(PACKAGE)}, "
            f"or set {ENV_SERVER} to its path"
        )
    return path


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

    dir: Path
    port: int
    detached: bool = False
    _proc: subprocess.Popen | None = field(default=None, repr=False)  # attached only

    @property
    def label(self) -> str:
        return "redis"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.dir / "redis.log"

    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        return read_pidfile(self.pidfile)

    def to_state(self) -> dict[str, object]:
        return {"dir": str(self.dir), "port": self.port, "pid": self.pid(), "url": self.url}

    @classmethod
    def from_state(cls, d: dict) -> RedisServer:
        return cls(dir=checked_dir(d["dir"], cls.PREFIX), port=int(d["port"]), detached=True)

    def start(self, binary: str) -> None:
        check_port_free(self.port, self.label)
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
            argv += ["--daemonize", "yes", "--pidfile", str(self.pidfile)]
        else:
            argv += ["--daemonize", "no"]
        try:
            proc = subprocess.Popen(
                argv,
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

        if not poll(answers, START_TIMEOUT, 0.02):
            raise self.start_failed("no PONG")
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
