"""User-facing errors.

A `WaldoError` is a mistake the user can fix (a bad name, path or value). The CLI prints its
message as one line and exits with status 2; the HTTP layers turn it into a 4xx. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WaldoError(Exception):
    """An error caused by user input, with a message that says what is accepted."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> WaldoError:
    """Build the error for a name that is not one of `choices`, with a close match if any."""
    choices = sorted(choices)
    hint = difflib.get_close_matches(str(value), choices, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return WaldoError(
        f"unknown {kind} {value!r}{did_you_mean}; valid {kind}s: {', '.join(choices)}"
    )


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut at `limit` characters, for a WaldoError."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
