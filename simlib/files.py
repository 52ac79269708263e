"""Writing result files atomically: a reader never sees half a file.

Each writer writes to a temporary file in the same directory, flushes it to
disk, then renames it over the target; a rename within one filesystem is
atomic, so an interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[Any]], object], binary: bool = False
) -> None:
    """Call ``write(file)`` on a temporary file, then move it to ``path``.

    The file is opened for text, or for bytes with ``binary``; whatever
    ``write`` returns is ignored.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates the file private (0600); give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text))


def atomic_savefig(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Save a matplotlib figure atomically (format from the file's extension)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110), binary=True)
