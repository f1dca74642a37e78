"""The storage contract: where checkpoints live, and how a run says which one is its best.

One function, `storage_root`, resolves `--storage` for every runner: a local folder (relative
paths become absolute, so Ray workers and Tune trials, which run in other working folders, write
where the user meant) or an object-store URI such as `s3://bucket/path` (`AWS_ENDPOINT_URL`
points it at MinIO or any S3-compatible server). Files are read and written through fsspec, the
layer Lightning's own checkpointing uses, so a local folder and a bucket take the same code.

Before a run starts, `check_writable` makes sure the storage can be written: a bucket must
exist already (Waldo never creates one, so a typo cannot make a new bucket) and take a write.

Both runners record the best checkpoint on their MLflow run, as tags: its location in storage
(`waldo.best_checkpoint`) and the run artifact holding a copy (`waldo.best_checkpoint_artifact`).
Export reads that record; it never re-derives paths or guesses among artifact names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from training.errors import WaldoError

DEFAULT_STORAGE = "waldo_runs"
BEST_CHECKPOINT_TAG = "waldo.best_checkpoint"
BEST_ARTIFACT_TAG = "waldo.best_checkpoint_artifact"
CHECKPOINT_ARTIFACT_DIR = "best"  # run artifact folder holding the best checkpoint's copy


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def storage_root(storage: str | None) -> str:
    """`--storage` as every process of a job must see it: an absolute local folder, or a URI
    whose filesystem is known here (else a WaldoError naming what is supported)."""
    location = storage or DEFAULT_STORAGE
    if location.startswith("file:"):  # file:///abs, file:/abs, file://localhost/abs
        location = url2pathname(urlparse(location).path)
    if is_remote(location):
        filesystem(location)  # an unknown scheme or a missing package fails here, up front
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


def check_writable(location: str, *, what: str = "--storage") -> None:
    """Fail now, with one line, when nothing can be written at `location`, before a run or a
    pack does any work: a bucket must exist and take a write (`objects.check_writable`; Waldo
    never creates buckets); a local folder need not exist yet, but no file may stand where it
    or a parent folder would be, and the nearest folder that exists must be writable. Nothing
    is created here. Other URI schemes are written as they come."""
    if is_remote(location):
        if location.startswith("s3://"):
            from training.data.objects import check_writable as check_bucket

            check_bucket(location, what)
        return
    path = Path(location).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be made: {str(existing)!r} is a file"
        raise WaldoError(f"{what} {location!r} {where}; it needs a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WaldoError(f"cannot write to {what} {location!r}: {str(existing)!r} is not writable")


def join(root: str, *parts: str) -> str:
    """`root/part/...` for a folder or a URI alike."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def with_scheme(root: str, path: str) -> str:
    """`path` on the filesystem of `root`: Ray reports checkpoint paths without the scheme."""
    if is_remote(root) and "://" not in path:
        return f"{root.split('://', 1)[0]}://{path}"
    return path


def filesystem(location: str):
    """(fsspec filesystem, path within it) for a folder, a file or a URI."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        scheme = location.split("://", 1)[0]
        raise WaldoError(f"cannot use storage {location!r}: {exc} (supported: a local folder, "
                         f"s3://bucket/path; {scheme}:// needs its fsspec package)") from None


def fetch(location: str, into: str | Path) -> Path:
    """A local path to the file at `location`: itself when local, else a download into `into`."""
    if not is_remote(location):
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(location)
        return path
    fs, path = filesystem(location)
    local = Path(into) / os.path.basename(path)
    fs.get_file(path, str(local))
    return local


def record_best_checkpoint(run: Any, location: str, artifact: str | None = None) -> None:
    """Tag the MLflow run (a `training.tracking.runs.Run`) with its best checkpoint's location and,
    when the checkpoint was also logged, the artifact path of that copy."""
    tags = {BEST_CHECKPOINT_TAG: location}
    if artifact is not None:
        tags[BEST_ARTIFACT_TAG] = artifact
    run.set_tags(tags)


def best_checkpoint_record(tags: dict[str, str]) -> tuple[str | None, str | None]:
    """(storage location, artifact path) of a run's best checkpoint, from the run's tags."""
    return tags.get(BEST_CHECKPOINT_TAG), tags.get(BEST_ARTIFACT_TAG)


def fetch_best_checkpoint(tags: dict[str, str], into: str | Path,
                          download_artifact: Callable[[str], str]) -> Path:
    """A local copy of a run's best checkpoint (from its tags): the recorded storage location,
    else the recorded artifact (`download_artifact(artifact_path)` -> local path). LookupError
    when the run records neither (an empty message) or neither can be read (what was tried)."""
    location, artifact = best_checkpoint_record(tags)
    problems = []
    if location is not None:
        try:
            return fetch(location, into)
        except FileNotFoundError:
            problems.append(f"{location} does not exist")
        except Exception as exc:  # unreachable bucket, no credentials, unknown scheme
            problems.append(f"{location}: {' '.join(str(exc).split())[:300]}")
    if artifact is not None:
        try:
            return Path(download_artifact(artifact))
        except Exception as exc:
            problems.append(f"artifact {artifact!r}: {' '.join(str(exc).split())[:300]}")
    raise LookupError("; ".join(problems))


__all__ = ["BEST_ARTIFACT_TAG", "BEST_CHECKPOINT_TAG", "DEFAULT_STORAGE", "best_checkpoint_record",
           "check_writable", "fetch", "fetch_best_checkpoint", "filesystem", "is_remote", "join",
           "record_best_checkpoint", "storage_root", "with_scheme"]
