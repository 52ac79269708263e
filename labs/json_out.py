"""JSON at the edges: what the command line prints and result files hold.

Results travel as typed objects (:class:`labs.executor.LiveResult`,
:class:`labs.compare.Comparison`, ...); each knows its contract document
(``to_json()``), and this is the one conversion they share: NaN and the
infinities, which JSON has no words for, become ``null``, and NumPy scalars
become plain numbers.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["finite", "json_safe"]


def json_safe(x: object) -> object:
    """JSON-safe: NaN and infinities become None; NumPy scalars become Python ones."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def finite(x: object) -> float | None:
    """A finite number as a float; None for NaN, the infinities and anything not a number."""
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None
