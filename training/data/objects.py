"""Image folders in an object store (`s3://bucket/prefix`): the same tree a local `folder`
data set is (one sub-folder per class, or `train/`, `val/`, `test/` of such folders), listed in
the order torchvision's ImageFolder walks a local one, so labels and splits come out the same.

Two readers use it:
- in-process training mirrors the prefix into a local cache (`mirror`) and reads that folder as
  any other: only new or changed objects are downloaded, objects gone from the bucket leave the
  mirror too, so a second run starts at once;
- a distributed run never copies the data set to one node: the driver lists the objects
  (`list_tree`), and Ray Data tasks read them (`read_objects`, a few requests at a time) where
  they decode them (`training.data.raydata`).

S3 goes through pyarrow's S3 filesystem, configured from the usual environment
(`AWS_ENDPOINT_URL` for MinIO or any S3-compatible store, `AWS_ACCESS_KEY_ID`, ...), with short
timeouts and few retries, so a wrong endpoint fails in seconds with one line instead of hanging.
"""

from __future__ import annotations

import logging
import os
import posixpath
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.links import SHOWN_SKIPS
from training.errors import WaldoError, one_line

log = logging.getLogger("waldo.data")

# torchvision.datasets.folder.IMG_EXTENSIONS, compared in lower case as ImageFolder does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
READ_THREADS = 8  # object reads in flight per task: each is a round trip to the store
_TIMEOUT_S = 10.0  # connect and request timeouts: an unreachable endpoint fails, never hangs


def is_object_store(location: str | None) -> bool:
    return bool(location) and str(location).startswith("s3://")


def s3_filesystem():
    """pyarrow's S3 filesystem as the environment configures it. It pickles with its options,
    credentials included, so Ray tasks on other nodes read with the driver's settings."""
    from pyarrow import fs

    options: dict[str, Any] = {
        "connect_timeout": _TIMEOUT_S, "request_timeout": _TIMEOUT_S,
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=3),
        "region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")),
    }
    if os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_override"] = os.environ["AWS_ENDPOINT_URL"]
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    return fs.S3FileSystem(**options)


def _key(url: str) -> str:
    """`s3://bucket/key` -> `bucket/key`, the path pyarrow's filesystem takes."""
    return url.split("://", 1)[1].strip("/")


def _problem(exc: Exception) -> str:
    """An S3 failure on one line, saying so when it is the credentials."""
    text = one_line(exc)
    if "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return f"access denied (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): {text}"
    return text


@dataclass(frozen=True)
class Folder:
    """One ImageFolder's worth of objects: its classes and (url, class index) in walk order."""

    where: str
    classes: list[str]
    samples: list[tuple[str, int]]
    sizes: dict[str, int]  # object size in bytes by url (the mirror's change check)


def _folder(where: str, files: dict[str, int]) -> Folder:
    """ImageFolder's view of `files` ({path relative to `where`: size}): classes are the
    sub-folders holding an image, files are walked folder by folder in sorted order."""
    by_class: dict[str, list[str]] = {}
    for rel in files:
        head, _, rest = rel.partition("/")
        if rest and rel.lower().endswith(IMAGE_EXTENSIONS):
            by_class.setdefault(head, []).append(rel)
    if not by_class:
        raise WaldoError(f"no images found in {where!r}: expected one sub-folder per class "
                         f"holding .jpg/.png files")
    classes = sorted(by_class)
    samples, sizes = [], {}
    for target, name in enumerate(classes):
        # os.walk visits a folder's files before its sub-folders', each in sorted order.
        for rel in sorted(by_class[name], key=lambda r: (posixpath.dirname(r), posixpath.basename(r))):
            url = f"{where}/{rel}"
            samples.append((url, target))
            sizes[url] = files[rel]
    return Folder(where, classes, samples, sizes)


def _plain_keys(location: str, files: dict[str, int]) -> dict[str, int]:
    """`files` without the keys whose path has a '.', '..' or empty segment: S3 keys are plain
    strings, so `c0/../c1/x.jpg` would be listed under class c0 and copied into c1 (and
    `../../x.jpg` out of the mirror's folder). Each one skipped is named in a warning line,
    the first SHOWN_SKIPS of them, then a count."""
    odd = [rel for rel in files if any(part in ("", ".", "..") for part in rel.split("/"))]
    for rel in odd[:SHOWN_SKIPS]:
        log.warning("skipping object %s/%s: its key holds a '.', '..' or empty path segment, "
                    "which would lead out of its folder", location, rel)
    if len(odd) > SHOWN_SKIPS:
        log.warning("skipped %d more objects with such keys in %s", len(odd) - SHOWN_SKIPS, location)
    skipped = set(odd)
    return {rel: size for rel, size in files.items() if rel not in skipped}


def _existing_bucket(key: str, doing: str, advice: str = ""):
    """The S3 filesystem, once the bucket of `key` (bucket/prefix) is known to exist; else a
    WaldoError `doing: bucket ... does not exist` + `advice`. pyarrow raises OSError for the
    rest (credentials, endpoint), which callers turn into their own line."""
    from pyarrow import fs

    bucket = key.split("/", 1)[0]
    filesystem = s3_filesystem()
    if filesystem.get_file_info(bucket).type == fs.FileType.NotFound:
        raise WaldoError(f"{doing}: bucket {bucket!r} does not exist{advice}")
    return filesystem


def list_objects(location: str) -> dict[str, int]:
    """Every object under the prefix `location` (s3://bucket/prefix), sub-prefixes included:
    {key relative to the prefix: size}, without the keys `_plain_keys` skips. One line naming
    the location when the bucket, the credentials or the endpoint is wrong."""
    from pyarrow import fs

    location = location.rstrip("/")
    base = _key(location)
    try:
        filesystem = _existing_bucket(base, f"cannot list {location}")
        infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as exc:  # pyarrow raises OSError for every S3 failure
        raise WaldoError(f"cannot list {location}: {_problem(exc)}") from None
    files = {info.path[len(base) + 1:]: info.size for info in infos if info.type == fs.FileType.File}
    return _plain_keys(location, files)


def list_tree(location: str) -> dict[str, Folder]:
    """The image folders under `location`: {"train": .., "val": .., "test": ..} (those present)
    when it holds a `train/` folder, else {"all": ..}. One line naming the location when the
    bucket, the prefix, the credentials or the endpoint is wrong."""
    location = location.rstrip("/")
    files = list_objects(location)
    if not files:
        raise WaldoError(f"{location} holds no objects: --data-dir must be a folder of images "
                         "(one sub-folder per class)")
    if any(rel.startswith("train/") for rel in files):
        parts = {}
        for split in SPLIT_FOLDERS:
            inner = {rel[len(split) + 1:]: size for rel, size in files.items()
                     if rel.startswith(f"{split}/")}
            if inner:
                parts[split] = _folder(f"{location}/{split}", inner)
        return parts
    return {"all": _folder(location, files)}


def check_writable(location: str, what: str) -> None:
    """One line, before any work, when nothing can be written under `location`
    (s3://bucket/prefix; `what` names it, e.g. "--storage"). The bucket must exist: Waldo never
    creates one, as a typo would make a new bucket (pyarrow's S3 filesystem creates none, and
    writers that go through s3fs come here first, as its `makedirs` would). A small marker object
    is written and deleted, so missing rights and a dead endpoint show here too."""
    location = location.rstrip("/")
    base = _key(location)
    try:
        filesystem = _existing_bucket(base, f"cannot write to {what} {location}",
                                      "; create it first (Waldo never creates buckets)")
        marker = f"{base}/.waldo-write-check-{uuid.uuid4().hex}"
        with filesystem.open_output_stream(marker) as out:
            out.write(b"")
        filesystem.delete_file(marker)
    except OSError as exc:  # pyarrow raises OSError for every S3 failure
        raise WaldoError(f"cannot write to {what} {location}: {_problem(exc)}") from None


def read_objects(urls: list[str], filesystem=None) -> list[bytes]:
    """The bytes of each object, `READ_THREADS` requests at a time; a WaldoError naming the
    first object that cannot be read."""
    filesystem = filesystem or s3_filesystem()

    def read(url: str) -> bytes:
        try:
            with filesystem.open_input_stream(_key(url)) as stream:
                return stream.readall()
        except Exception as exc:
            raise WaldoError(f"cannot read {url}: {_problem(exc)}") from None

    if len(urls) <= 1:
        return [read(u) for u in urls]
    with ThreadPoolExecutor(min(READ_THREADS, len(urls))) as pool:
        return list(pool.map(read, urls))


def cache_root() -> Path:
    """Where `mirror` keeps buckets' folders: WALDO_DATA_CACHE, else ~/.cache/waldo/objects."""
    configured = os.environ.get("WALDO_DATA_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "waldo" / "objects"


def mirror(location: str) -> Path:
    """A local folder equal to the image tree at `location`: objects missing from it or of
    another size are downloaded, files no longer in the bucket are removed."""
    location = location.rstrip("/")
    parts = list_tree(location)
    local = cache_root() / "s3" / _key(location)
    wanted: dict[Path, tuple[str, int]] = {}
    for folder in parts.values():
        for url, _ in folder.samples:
            path = local / url[len(location) + 1:]
            if not path.resolve().is_relative_to(local.resolve()):  # `list_tree` skipped those
                raise WaldoError(f"{url} would be copied outside the mirror {str(local)!r}")
            wanted[path] = (url, folder.sizes[url])
    stale = [p for p in local.rglob("*") if p.is_file() and p not in wanted] if local.exists() else []
    for path in stale:
        path.unlink()
    for folder in sorted((p for p in local.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):  # a class emptied in the bucket is no class here either
            folder.rmdir()
    todo = [(path, url) for path, (url, size) in wanted.items()
            if not path.is_file() or path.stat().st_size != size]
    filesystem = s3_filesystem()
    for start in range(0, len(todo), 256):
        chunk = todo[start:start + 256]
        for (path, _), data in zip(chunk, read_objects([u for _, u in chunk], filesystem)):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)  # a killed download never leaves a cut-short image behind
    return local


__all__ = ["Folder", "IMAGE_EXTENSIONS", "cache_root", "check_writable", "is_object_store",
           "list_objects", "list_tree", "mirror", "read_objects", "s3_filesystem"]
