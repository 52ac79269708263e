"""Throwaway Redis: ``redis-server`` on a free loopback port, no persistence.

Attached (for one run): a child process with ``--daemonize no``.  Detached (for
``python -m labs services up``): ``--daemonize yes`` with a pidfile, so it outlives
the command.  Either way its working directory (``--dir``) is its own temp
directory ``labs-redis-XXXX``, which is how leftovers are found and killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from labs.services.common import (
    INSTALL_HINT,
    ServiceError,
    check_port_free,
    checked_dir,
    free_port,
    last_meaningful_line,
    make_dir,
    pid_alive,
    reap,
    register,
    remove_dir,
    start_retrying_port,
    tail,
    unregister,
    wait_gone,
)

START_TIMEOUT = 15.0


def find_redis_server() -> str:
    path = os.environ.get("LABS_REDIS_SERVER") or shutil.which("redis-server")
    if not path:
        raise ServiceError(f"redis: redis-server not found on PATH; {INSTALL_HINT}")
    return path


def ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """A bare RESP PING (no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    dir: Path
    port: int
    detached: bool = False
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.dir / "redis.log"

    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def to_state(self) -> dict[str, object]:
        return {"dir": str(self.dir), "port": self.port, "pid": self.pid(), "url": self.url}

    @classmethod
    def from_state(cls, d: dict) -> RedisServer:
        return cls(dir=checked_dir(d["dir"], "labs-redis-"), port=int(d["port"]), detached=True)

    def start(self, binary: str) -> None:
        check_port_free(self.port, "redis")
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
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
                f"redis: cannot run {binary}: {e.strerror}; {INSTALL_HINT}"
            ) from None
        if not self.detached:
            self._proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ping(self.port, timeout=0.5):
                if self.detached:
                    proc.wait(5)  # the parent of the daemon exits at once
                return
            if not self.detached and proc.poll() is not None:
                break
            time.sleep(0.02)
        detail = last_meaningful_line(tail(self.logfile)) or "no PONG"
        raise ServiceError(
            f"redis on 127.0.0.1:{self.port} did not start: {detail} (log: {self.logfile})"
        )

    def stop(self) -> None:
        unregister(self)
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if self._proc is not None:
                try:
                    self._proc.wait(3)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(3)
            else:
                wait_gone(pid, 3)
        reap(self.dir)
        remove_dir(self.dir)


def start_redis(*, port: int | None = None, detached: bool = False) -> RedisServer:
    """Start redis-server on ``port`` (default: a free one). Stop it with ``.stop()``."""
    binary = find_redis_server()
    if port is not None:
        check_port_free(port, "redis")

    def make() -> RedisServer:
        server = RedisServer(dir=make_dir("labs-redis-"), port=port or free_port(),
                             detached=detached)
        register(server, server.stop)
        return server

    return start_retrying_port(make, lambda server: server.start(binary), port)
