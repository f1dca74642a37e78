"""The names the registry accepts, with no MLflow import: the specs (torch- and mlflow-free)
check aliases with the same rules as the registry's commands."""

from __future__ import annotations

import re

_ALIAS = re.compile(r"[\w-]{1,255}")
_VERSION_LIKE = re.compile(r"[vV]\d+")


def alias_problem(alias: str) -> str | None:
    """What breaks MLflow's rules for alias names, as one line that says what is accepted; None
    for a good name. The one statement of the rules (the specs' AliasName uses it too)."""
    if not _ALIAS.fullmatch(alias or ""):
        return f"invalid alias {alias!r}: use letters, digits, '_' and '-', e.g. production or staging"
    if alias.lower() == "latest" or _VERSION_LIKE.fullmatch(alias):
        return (f"invalid alias {alias!r}: 'latest' and version-like names (v1, V2) are reserved "
                "by MLflow; use e.g. production or staging")
    return None
