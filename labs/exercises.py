"""Checks for the lessons' exercises: one line of feedback, or a hint.

Every exercise's check compares the learner's answer with something the
learner's cell did not compute: a closed form, a simulation with other
settings, or a live measurement.  These helpers only phrase the verdict.  A
right answer prints ``correct: ...``.  A wrong one raises ``AssertionError``
with the hint, so nbval fails on a solution that went wrong, and a learner
sees what to look at again.

:func:`diagnosis` is for the exercises that name a cause from a snapshot.
Their answer is one of a few labelled choices.  The check holds only a digest
of the right label, so the answer is not written in the learner's copy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

__all__ = ["close_to", "at_most_value", "diagnosis", "digest"]

# close_to takes abs= as check() does, which hides the builtin inside it.
builtin_abs = abs


def close_to(what: str, answer: float, reference: float, *, rel: float | None = None,
             abs: float | None = None, source: str, hint: str) -> str:
    """``answer`` within ``rel`` (relative) or ``abs`` (absolute) of ``reference``.

    ``source`` names where the reference comes from ("simlib, 20 replications",
    "the live run"), and ``hint`` is what a learner should look at again.
    """
    if (rel is None) == (abs is None):
        raise ValueError("give exactly one of rel= or abs=")
    if not isinstance(answer, int | float) or isinstance(answer, bool) or math.isnan(answer):
        raise AssertionError(f"{what}: the answer must be a number, not {answer!r}")
    error = answer - reference
    bound = rel * builtin_abs(reference) if rel is not None else abs
    assert bound is not None
    shown = (f"{error / reference:+.1%}" if rel is not None and reference
             else f"{error:+.4g}")
    line = (f"{what}: yours {answer:.4g}, {source} {reference:.4g} ({shown}; "
            f"within {'±' + format(rel, '.0%') if rel is not None else '±' + format(abs, 'g')})")
    if builtin_abs(error) > bound:
        raise AssertionError(f"not yet: {line}. Hint: {hint}")
    return "correct: " + line


def at_most_value(what: str, value: float, limit: float, *, hint: str) -> str:
    """A value that must not exceed a limit (an SLO, ``max_connections``)."""
    if value > limit:
        raise AssertionError(f"not yet: {what} is {value:.4g}, above {limit:.4g}. Hint: {hint}")
    return f"ok: {what} is {value:.4g}, at most {limit:.4g}"


def digest(exercise: str, label: str) -> str:
    """The digest a diagnosis check holds: of the exercise's name and the label."""
    return hashlib.sha256(f"{exercise}:{label.strip().lower()}".encode()).hexdigest()[:16]


def diagnosis(exercise: str, answer: str, choices: Mapping[str, str], right: str,
              *, hint: str) -> str:
    """``answer`` is the label in ``choices`` whose digest is ``right``."""
    label = str(answer).strip().lower()
    if label not in {k.lower() for k in choices}:
        raise AssertionError(f"answer with one of {', '.join(map(repr, choices))}, "
                             f"not {answer!r}")
    if digest(exercise, label) != right:
        raise AssertionError(f"not yet: {label!r} does not explain every line of the "
                             f"snapshot. Hint: {hint}")
    chosen = next(v for k, v in choices.items() if k.lower() == label)
    return f"correct: {label}, {chosen}"

