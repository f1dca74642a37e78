"""How the `waldo` command reads numbers from its flags (`training.cli`).

Torch-free and small, like the specs it feeds.
"""

from __future__ import annotations

import argparse
import math
import re

from training.spec import WORKER_RANGE


class Number:
    """The `type` of every integer and float flag: the text as a number, or one line naming the
    value and what the flag accepts (argparse puts the flag in front). The one place flags are
    read as numbers: Python's own int() and float() also take digits such as '²' and then fail
    with an error that names no flag. A number outside a spec field's range goes on to the
    spec, which names the field and its range as it does for a YAML file; `low`/`high`
    (inclusive) and `above`/`below` (exclusive) bound the flags that are no spec field."""

    _INTEGER = re.compile(r"[+-]?\d+", re.ASCII)

    def __init__(self, kind: str, *, low: float | None = None, high: float | None = None,
                 above: float | None = None, below: float | None = None, ranges: bool = False):
        self.kind, self.ranges = kind, ranges  # kind: "an integer" or "a number"
        self.low, self.high, self.above, self.below = low, high, above, below

    def accepted(self) -> str:
        if self.ranges:
            return "a count (e.g. 2) or a range MIN-MAX (e.g. 2-4)"
        if self.low is not None and self.high is not None:
            bounds = [f"from {self.low:g} to {self.high:g}"]
        else:
            bounds = [f"{word} {value:g}" for word, value in (
                ("of at least", self.low), ("of at most", self.high), ("above", self.above),
                ("below", self.below)) if value is not None]
        example = "(e.g. 3)" if self.kind == "an integer" else "(e.g. 0.5 or 1e-3)"
        return f"{self.kind} {' and '.join(bounds) or example}"

    def __call__(self, text: str) -> int | float | str:
        value = self._parse(text.strip())
        if value is None or not self._within(value):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expects {self.accepted()}")
        return value

    def _parse(self, text: str) -> int | float | str | None:
        if self._INTEGER.fullmatch(text):
            return int(text)
        if self.ranges and WORKER_RANGE.fullmatch(text):
            return text  # the spec reads MIN-MAX
        if self.kind == "a number" and text.isascii():
            try:
                return float(text)
            except ValueError:
                return None
        return None

    def _within(self, value: int | float | str) -> bool:
        if isinstance(value, str):
            return True
        bounded = any(b is not None for b in (self.low, self.high, self.above, self.below))
        if bounded and not math.isfinite(value):
            return False
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above)
                and (self.below is None or value < self.below))


__all__ = ["Number"]
