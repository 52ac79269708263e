"""What the local servers share: the error type, ports, processes, temp dirs, cleanup.

Everything labs starts lives in its own ``tempfile.mkdtemp`` directory, and every
server process (Postgres' postmaster and backends, redis-server) runs with its
current directory inside that directory.  That makes "what did we start?" easy to
answer without bookkeeping that a crash could lose: a process is ours exactly
when ``/proc/PID/cwd`` (or its command line) points into one of our directories.
``reap`` uses that as the last line of defence after the polite shutdown.

``LocalServer`` is the life cycle every kind of server follows (Postgres,
Redis, the next ones): created in a fresh directory and registered for clean-up
at exit, started (retrying on a fresh port when another process took the one we
picked), recorded in and restored from the state file of ``services up``, and
stopped by a polite shutdown, then ``reap``, then deleting the directory --
whatever state the start left it in.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A server that cannot be found, started or reached, explained in one line.

    The command line prints ``str(error)`` as it is, so the message is folded
    onto a single line whatever the caller passes in (server logs and driver
    errors often span several).
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: object, limit: int = 400) -> str:
    """Fold whitespace (newlines included) to single spaces and cap the length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def install_hint(package: str) -> str:
    """How to get a missing server program (the Debian/Ubuntu package's name)."""
    return f"install it with: apt-get install {package}"


def find_program(program: str, env_var: str, package: str, *, fallback: Path | None = None,
                 service: str | None = None) -> str:
    """The server program to run: ``$env_var`` if set (and only that), else ``program`` on
    PATH, else ``fallback`` (where the Debian package puts it, off a non-root PATH).

    One :class:`ServiceError` line when it is missing, naming the variable or the
    package that provides it (``service``: the error's subject, default ``program``).
    """
    explicit = os.environ.get(env_var, "").strip()
    if explicit:
        found = shutil.which(explicit)  # a path to an executable, or a name on PATH
        if not found:
            raise ServiceError(
                f"{env_var}: must name an executable {program}, got {explicit!r} (not found "
                f"or not executable); correct it, or unset it to use {program} from PATH "
                f"({install_hint(package)})"
            )
        return found
    found = shutil.which(program)
    if found:
        return found
    if fallback is not None and os.access(fallback, os.X_OK):
        return str(fallback)
    where = "on PATH" + (f" or at {fallback}" if fallback is not None else "")
    raise ServiceError(f"{service or program}: {program} not found {where}; "
                       f"{install_hint(package)}, or set {env_var} to its path")


def poll(ready: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call ``ready()`` until it returns true (then True) or ``timeout`` s pass (False).

    ``ready`` is always called at least once, and once more at the deadline, so
    a condition that became true while we slept is not reported as a timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str) -> None:
    """Raise ServiceError unless 127.0.0.1:port can be bound."""
    if not 1 <= port <= 65535:
        raise ServiceError(f"{what}: port must be 1..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the servers do: a port whose old connections linger in TIME_WAIT
        # (a restart) is free; one with a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError as e:
            reason = "in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise ServiceError(
                f"{what}: port {LOOPBACK}:{port} must be free, got {reason}; "
                "stop what holds it or let labs pick a free port"
            ) from None


def start_retrying_port(
    make: Callable[[], Any],
    start: Callable[[Any], None],
    port: int | None,
    what: str = "server",
    attempts: int = 3,
) -> Any:
    """Make a server and start it; stop it again if starting fails.

    A port asked for (``port`` given) is checked before anything is made, so
    that fault costs no directory.  When we chose the port ourselves
    (``port is None``), another process can take it between choosing and
    binding: then try again with a fresh one.
    """
    if port is not None:
        check_port_free(port, what)
    for attempt in range(attempts):
        server = make()
        try:
            start(server)
            return server
        except ServiceError as e:
            server.stop()
            if port is None and "in use" in str(e).lower() and attempt < attempts - 1:
                continue
            raise
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie has exited: treat it as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def read_pidfile(path: Path) -> int | None:
    """The pid on the first line of a server's pidfile, if that process runs."""
    try:
        pid = int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def processes_in(path: str | os.PathLike) -> list[int]:
    """Live processes whose working directory or command line is inside ``path``."""
    root = os.path.realpath(path)
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if cwd.removesuffix(" (deleted)") == root or cwd.startswith(root + "/"):
            if pid_alive(pid):
                found.append(pid)
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if root in cmdline and pid_alive(pid):
            found.append(pid)
    return found


def reap(path: str | os.PathLike, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process living in ``path``; wait until they are gone.

    Returns the pids that were still running afterwards (normally none).
    """
    left: list[int] = []

    def all_gone() -> bool:
        left[:] = processes_in(path)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return not left

    poll(all_gone, timeout)
    return left


def wait_gone(pid: int, timeout: float) -> bool:
    return poll(lambda: not pid_alive(pid), timeout)


# ---------------------------------------------------------------------------
# Temporary directories
# ---------------------------------------------------------------------------


def make_dir(prefix: str, owner: str | None = None) -> Path:
    """A fresh private directory (``labs-pg-XXXX`` ...), owned by ``owner`` if given."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def checked_dir(path: object, prefix: str) -> Path:
    """A directory named in a state file, refused unless it looks like one of ours.

    ``stop`` kills every process inside the directory and deletes it, so a
    damaged state file must not be able to point it at anything else.
    """
    p = Path(str(path))
    if not (p.is_absolute() and p.name.startswith(prefix) and len(p.parts) > 2):
        raise ServiceError(f"state file: directory must be a labs {prefix}* directory, got {path}")
    return p


def remove_dir(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # a file appeared while deleting (a dying server's log)
        time.sleep(0.1)
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------
# Cleanup of everything still running when the interpreter exits
# ---------------------------------------------------------------------------

_live: dict[int, Callable[[], None]] = {}
_live_lock = threading.Lock()


def register(obj: object, stop: Callable[[], None]) -> None:
    """Remember a running thing so ``atexit`` stops it if nobody else does."""
    with _live_lock:
        _live[id(obj)] = stop


def unregister(obj: object) -> None:
    with _live_lock:
        _live.pop(id(obj), None)


@atexit.register
def stop_everything() -> None:
    """Stop whatever was registered and is still running (newest first)."""
    while True:
        with _live_lock:
            if not _live:
                return
            key = next(reversed(_live))
            stop = _live.pop(key)
        with contextlib.suppress(Exception):
            stop()


# ---------------------------------------------------------------------------
# One server's life cycle
# ---------------------------------------------------------------------------


@dataclass
class LocalServer:
    """A server labs started in its own temp directory (see the module doc).

    Subclasses are dataclasses that add their own fields after ``dir`` and
    ``port``; they say what they are (``KIND``, ``LOG``, ``PIDFILE``,
    ``SCHEME``...), how to start and to ask the server to stop (``shutdown``),
    and what of them a state file of ``services up`` keeps.  A client reaches every one of them
    through a URL of one shape, ``SCHEME://[USER@]127.0.0.1:PORT/PATH``.
    """

    PREFIX: ClassVar[str]  # of the temp directory: how state files are checked
    KIND: ClassVar[str]  # the program, as messages name it: "postgres", "redis"
    LOG: ClassVar[str]  # the log's file name inside ``dir``
    PIDFILE: ClassVar[str]  # the main process's pidfile, relative to ``dir``
    SCHEME: ClassVar[str]  # of the URL clients connect with
    PATH: ClassVar[str] = ""  # the URL's path: a database name or number
    USER: ClassVar[str] = ""  # who a run connects as ("": the URL names nobody)
    ADMIN_USER: ClassVar[str] = ""  # who labs monitors as ("": the same as USER)
    ADDRESS_KEY: ClassVar[str] = "dsn"  # under which key a state file keeps ``dsn``
    STOP_GRACE: ClassVar[float] = 3.0  # seconds the polite shutdown may take

    dir: Path
    port: int

    @property
    def label(self) -> str:
        """How messages name this server (``postgres replica1``, ``redis``)."""
        return self.KIND

    @property
    def logfile(self) -> Path:
        return self.dir / self.LOG

    def address(self, user: str = "") -> str:
        """The URL a client connects to this server with, as ``user`` if given."""
        at = f"{user}@" if user else ""
        return f"{self.SCHEME}://{at}{LOOPBACK}:{self.port}/{self.PATH}"

    @property
    def dsn(self) -> str:
        """What the run connects with."""
        return self.address(self.USER)

    @property
    def admin_dsn(self) -> str:
        """What labs monitors and sets up through."""
        return self.address(self.ADMIN_USER or self.USER)

    def pid(self) -> int | None:
        """The server's main process (its pidfile names it), if it is running."""
        return read_pidfile(self.dir / self.PIDFILE)

    def check_port(self) -> None:
        """Raise ServiceError unless the port is free: checked again before each start,
        since another process may have taken it since it was picked."""
        check_port_free(self.port, self.label)

    def wait_ready(
        self, ready: Callable[[], bool], timeout: float, fallback: str, interval: float = 0.05
    ) -> None:
        """Wait until ``ready()``; ``start_failed(fallback)`` when ``timeout`` s pass first."""
        if not poll(ready, timeout, interval):
            raise self.start_failed(fallback)

    def shutdown(self, pid: int) -> None:
        """Ask the running server (main process ``pid``) to stop."""
        raise NotImplementedError

    def to_state(self) -> dict[str, object]:
        """What a state file keeps of this server; subclasses add their own fields."""
        return {"dir": str(self.dir), "port": self.port, "pid": self.pid(),
                self.ADDRESS_KEY: self.dsn}

    @classmethod
    def from_state(cls, entry: Mapping[str, Any]) -> Self:
        """The server a state file entry describes (refused unless its directory is ours)."""
        return cls(dir=checked_dir(entry["dir"], cls.PREFIX), port=int(entry["port"]),
                   **cls.fields_from_state(entry))

    @classmethod
    def fields_from_state(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The subclass's own fields from a state file entry (none here)."""
        return {}

    @classmethod
    def create(cls, port: int | None = None, owner: str | None = None, **fields: Any) -> Self:
        """A server (not started) in a fresh directory, stopped at exit if nobody does."""
        server = cls(dir=make_dir(cls.PREFIX, owner), port=port or free_port(), **fields)
        register(server, server.stop)
        return server

    def start_failed(self, fallback: str) -> ServiceError:
        """The error for a start that failed, with the log's most telling line.

        The log is not named: a failed start is followed by ``stop``, which
        deletes the directory it is in.
        """
        detail = last_meaningful_line(tail(self.logfile)) or fallback
        return ServiceError(
            f"{self.label} on {LOOPBACK}:{self.port} did not start: {detail}"
        )

    def stop(self) -> None:
        """Stop the server, kill whatever is left in its directory, delete the directory.

        Safe in any state: not started, half started, running, already stopped.
        """
        unregister(self)
        pid = self.pid()
        if pid is not None:
            # a shutdown that fails is no reason to stop: reap comes next
            with contextlib.suppress(ServiceError, OSError):
                self.shutdown(pid)
            wait_gone(pid, self.STOP_GRACE)
        reap(self.dir)
        remove_dir(self.dir)


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------

_SIGNALS = {
    signal.SIGINT: lambda: KeyboardInterrupt(),
    signal.SIGTERM: lambda: SystemExit(128 + signal.SIGTERM),
    signal.SIGHUP: lambda: SystemExit(128 + signal.SIGHUP),
}


@contextlib.contextmanager
def _handling(handler: Callable[[int, Any], None]) -> Iterator[dict | None]:
    """Handle SIGINT/SIGTERM/SIGHUP with ``handler`` for the block; yield the old handlers.

    Outside the main thread signal handlers cannot be set; there this does
    nothing and yields None.
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    try:
        yield previous
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into exceptions, so ``finally`` blocks run.

    Python already raises KeyboardInterrupt on SIGINT, but SIGTERM (``kill``,
    a CI job being cancelled) and SIGHUP (a closed terminal) would otherwise end
    the process on the spot and leave the servers running.
    """

    def handler(signum: int, frame: Any) -> None:
        raise _SIGNALS[signal.Signals(signum)]()

    with _handling(handler):
        yield


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back while cleaning up, then deliver them.

    A second Ctrl-C during teardown must not interrupt the teardown itself.
    """
    pending: list[int] = []
    previous: dict | None = None
    try:
        with _handling(lambda signum, frame: pending.append(signum)) as previous:
            yield
    finally:
        if pending and previous is not None:  # deliver the first as its old handler would
            signum = pending[0]
            old = previous[signum]
            if callable(old):
                old(signum, None)
            elif old == signal.SIG_DFL:
                raise _SIGNALS[signal.Signals(signum)]()


# ---------------------------------------------------------------------------
# Running commands (as an unprivileged user when we are root)
# ---------------------------------------------------------------------------


def run(
    cmd: list[str],
    *,
    user: str | None = None,
    timeout: float = 60.0,
    what: str,
    package: str = "postgresql",
) -> subprocess.CompletedProcess:
    """Run a command (as ``user`` via runuser/setpriv), raising ServiceError on failure.

    ``package`` is what to install when the program is not there.
    """
    argv = as_user(cmd, user)
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            # the servers these commands start must not share our terminal's
            # process group: Ctrl-C is ours to handle, then we stop them.
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{what}: no result after {timeout:g} s ({' '.join(cmd)})") from None
    except OSError as e:
        raise ServiceError(
            f"{what}: cannot run {e.filename or cmd[0]}: {e.strerror}; {install_hint(package)}"
        ) from None
    if proc.returncode != 0:
        detail = last_meaningful_line(proc.stderr or proc.stdout) or f"exit {proc.returncode}"
        raise ServiceError(f"{what} failed: {detail}")
    return proc


def last_meaningful_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        low = ln.lower()
        if "error" in low or "fatal" in low or "could not" in low or "cannot" in low:
            return one_line(ln, 300)
    return one_line(lines[-1], 300) if lines else ""


def as_user(cmd: list[str], user: str | None) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    if shutil.which("setpriv"):
        entry = pwd.getpwnam(user)
        return [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--init-groups",
            "--",
            *cmd,
        ]
    raise ServiceError(
        "running Postgres as root: runuser or setpriv is needed to switch to an "
        "unprivileged user, got neither; install util-linux"
    )


def tail(path: str | os.PathLike, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
