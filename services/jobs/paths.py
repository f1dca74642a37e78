"""Where jobs may read and write: every path a spec names must lie under a root the operator
configured (`WALDO_JOBS_DATA_ROOTS`, `WALDO_JOBS_STORAGE_ROOTS`, `WALDO_JOBS_MODEL_ROOTS`).

A location has one spelling before it is compared, and the job is handed that spelling, so the
job cannot read a path differently from the check:
- a local path must be absolute; `os.path.realpath` resolves `.`, `..`, `//`, a trailing `/`
  and the symlinks this host sees (the API runs beside the Ray nodes, with their mounts; a path
  it cannot see is normalized lexically). Relative paths are refused: a Ray job's working folder
  is a temporary one, so a relative path would mean nothing there.
- `file:/abs`, `file:///abs` and `file://localhost/abs` are local paths; a `file:` URI of any
  other host is refused.
- `s3://bucket/key` must name a plain bucket, with no credentials, port, query, fragment or
  percent-escape (Arrow's S3 filesystem reads `?endpoint_override=` and `user:secret@` from a
  URI, and decodes escapes); `.`, `..` and empty segments of the key are resolved.
- every other scheme is refused.
A location is under a root when it is the root or continues it at a `/`: `s3://b/prefix-evil`
is not under `s3://b/prefix`, nor is `/data-evil` under `/data`.

This module needs only the standard library (settings.py normalizes the roots with it).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's rules for bucket names
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadLocation(ValueError):
    """A value that is no absolute local path nor a plain s3://bucket/key; says why."""


def normalize(value: str) -> str:
    """The one spelling of a location (see the module's docstring), or BadLocation."""
    if _CONTROL.search(value):
        raise BadLocation("holds control characters")
    if value.startswith("/"):
        return _local(value)
    match = _SCHEME.match(value)
    if match is None:
        raise BadLocation("is a relative path; give an absolute one")
    scheme = match.group(1).lower()
    if scheme == "file":
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise BadLocation("is a file: URI of another host, or has a query; give a local path")
        path = unquote(parts.path)
        if not path.startswith("/") or _CONTROL.search(path):
            raise BadLocation("is not a file: URI of an absolute path")
        return _local(path)
    if scheme == "s3":
        return _s3(value[len(match.group(0)):])
    raise BadLocation(f"uses the scheme {scheme!r}; accepted: absolute local paths and s3://bucket/key")


def _local(path: str) -> str:
    resolved = os.path.realpath(path)
    # POSIX lets '//' at the start mean something else; realpath keeps it, nothing here does.
    return "/" + resolved.lstrip("/")


def _s3(rest: str) -> str:
    if not rest.startswith("//"):
        raise BadLocation("is not s3://bucket/key")
    bucket, _, key = rest[2:].partition("/")
    if any(c in rest for c in "?#%\\"):
        raise BadLocation("has a query, a fragment, '%' or '\\'; give a plain s3://bucket/key")
    if not _BUCKET.fullmatch(bucket):
        raise BadLocation(f"names no plain bucket ({bucket!r}: lowercase letters, digits, '.' and '-'; "
                          "no credentials or port)")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def is_under(location: str, root: str) -> bool:
    """Whether normalized `location` is normalized `root` or lies inside it (at a `/`)."""
    return location == root or location.startswith(root.rstrip("/") + "/")


def check(field: str, value: str, roots: Sequence[str], setting: str) -> str:
    """`value` normalized, when it lies under one of `roots` (normalized); else ValueError whose
    message names `field`, the value and the roots (`setting` is their environment variable)."""
    if not roots:
        raise ValueError(f"field {field!r}: this server accepts no path here ({value!r}): {setting} "
                         "names no roots; leave the field out for the server's default")
    allowed = ", ".join(roots)
    try:
        location = normalize(value)
    except BadLocation as exc:
        raise ValueError(f"field {field!r}: {value!r} {exc}; allowed roots: {allowed}") from None
    if not any(is_under(location, root) for root in roots):
        seen = "" if location == value else f" (= {location!r})"
        raise ValueError(f"field {field!r}: {value!r}{seen} is outside the allowed roots: {allowed}")
    return location
