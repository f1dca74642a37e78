"""What `waldo predict --model` scores: its SOURCE arguments expanded into images, each once.

A SOURCE is
- a folder, walked recursively in sorted order (links to folders are not followed), or an
  `s3://bucket/prefix` with every object under it: the files with an image extension
  (`training.data.objects.IMAGE_EXTENSIONS`, as training reads folders);
- a pack made by `waldo data pack` (a folder or prefix holding its `manifest.json`): every row
  of every split, named by the file it was packed from;
- a file listing images (local or in a bucket), one path or `s3://` URL a line; blank lines and
  lines starting with `#` are skipped, relative paths are relative to the listing's folder;
- an image file or object.

Each image becomes an `Item`: its `path` (the name written in the output, and what a resumed
run compares: an absolute path, an s3:// URL, or a pack row's file name) and where its bytes
are. An image reached twice (a file inside a folder also given) is scored once. Only names are
listed here; the bytes are read where they are decoded (`read_blobs`), a batch at a time.
"""

from __future__ import annotations

import functools
import os
import posixpath
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from training.data.objects import IMAGE_EXTENSIONS, READ_THREADS, is_object_store, list_objects, read_objects
from training.data.packmanifest import MANIFEST as PACK_MANIFEST
from training.errors import WaldoError, one_line

ACCEPTED = ("a folder, an s3:// prefix, a pack made by `waldo data pack`, a file listing images, "
            "or image files")


@dataclass(frozen=True)
class Item:
    """One image to score: `path` names it in the output; `where` is the file, the object URL
    or, with `row` >= 0, the pack shard whose row it is."""

    path: str
    where: str
    row: int = -1

    @property
    def packed(self) -> bool:
        return self.row >= 0


@dataclass
class Sources:
    """The images of a run's SOURCE arguments, in order, each once, and what each argument was."""

    items: list[Item] = field(default_factory=list)
    described: list[dict] = field(default_factory=list)  # {"source", "kind", "images"} per argument
    shard_rows: dict[str, int] = field(default_factory=dict)  # rows of each pack shard listed

    def __len__(self) -> int:
        return len(self.items)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def expand(arguments: Sequence[str]) -> Sources:
    """The images of `arguments` (see the module's docstring); one line naming the argument
    when it does not exist or holds no images."""
    seen: dict[str, Item] = {}
    sources = Sources()
    for argument in arguments:
        kind, items = _expand_one(argument)
        if not items:
            raise WaldoError(f"source {argument!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                             f"a source is {ACCEPTED}")
        new = 0
        for item in items:
            if item.packed:
                sources.shard_rows[item.where] = sources.shard_rows.get(item.where, 0) + 1
            if item.path not in seen:
                seen[item.path] = item
                new += 1
        sources.described.append({"source": argument, "kind": kind, "images": len(items),
                                  "new": new})
    sources.items = list(seen.values())
    return sources


def _expand_one(argument: str) -> tuple[str, list[Item]]:
    if is_object_store(argument):
        return _bucket(argument)
    path = Path(argument).expanduser()
    if path.is_dir():
        if (path / PACK_MANIFEST).is_file():
            return "pack", _pack(str(path.absolute()))
        return "folder", _folder(path)
    if path.is_file():
        absolute = str(path.absolute())
        if is_image_name(path.name):
            return "image", [Item(absolute, absolute)]
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise WaldoError(f"source {argument!r} is no image (by its extension) and no readable "
                             f"list of images: {one_line(exc)}") from None
        return "list", _listing(text, str(path.absolute().parent))
    raise WaldoError(f"source {argument!r} does not exist; a source is {ACCEPTED}")


def _folder(root: Path) -> list[Item]:
    """The image files under `root`, each folder's files (sorted) before its sub-folders' (in
    sorted order)."""
    found = []
    def unreadable(exc: OSError) -> None:  # os.walk would leave such a folder out silently
        raise WaldoError(f"cannot list {exc.filename}: {exc.strerror or exc}")

    for folder, dirs, names in os.walk(root, onerror=unreadable):  # links to folders: unentered
        dirs.sort()
        found += [os.path.abspath(os.path.join(folder, name)) for name in sorted(names)
                  if is_image_name(name)]
    return [Item(path, path) for path in found]


def _bucket(location: str) -> tuple[str, list[Item]]:
    """An object (an image or a listing) or a prefix (a pack, or every image under it)."""
    location = location.rstrip("/")
    if is_image_name(location):
        return "image", [Item(location, location)]
    objects = list_objects(location)
    if not objects:  # no prefix of that name: perhaps one object, a listing
        try:
            (data,) = read_objects([location])
        except WaldoError:
            raise WaldoError(f"source {location!r} holds no objects; a source is {ACCEPTED}") from None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise WaldoError(f"source {location!r} is no image (by its extension) and no list of "
                             "images (not text)") from None
        return "list", _listing(text, posixpath.dirname(location))
    if PACK_MANIFEST in objects:
        return "pack", _pack(location)
    return "prefix", [Item(f"{location}/{key}", f"{location}/{key}") for key in sorted(objects)
                      if is_image_name(key)]


def _listing(text: str, base: str) -> list[Item]:
    items = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_object_store(entry):
            items.append(Item(entry, entry))
        elif is_object_store(base):
            url = f"{base}/{entry}" if not entry.startswith("/") else entry
            items.append(Item(url, url))
        else:
            path = os.path.abspath(os.path.join(base, os.path.expanduser(entry)))
            items.append(Item(path, path))
    return items


def _pack(location: str) -> list[Item]:
    """Every row of every split of the pack at `location`, named by the file it was packed from
    (only the shards' `name` columns are read here)."""
    import pyarrow.parquet as pq

    from training.data.packmanifest import SPLITS, read_manifest
    from training.tracking import storage

    manifest = read_manifest(location, None)
    # Arrow's own filesystems, not Python file objects (see training.data.packed.read_pack).
    filesystem = None
    if is_object_store(location):
        from training.data.objects import s3_filesystem

        filesystem = s3_filesystem()
    items = []
    for split in SPLITS:
        for shard in manifest.splits[split].shards:
            where = storage.join(location, shard.file)
            try:
                path = where.split("://", 1)[1] if filesystem is not None else where
                names = pq.read_table(path, filesystem=filesystem, columns=["name"]).column("name")
                names = names.to_pylist()
            except Exception as exc:
                raise WaldoError(f"cannot read {where}: {one_line(exc)}") from None
            if len(names) != shard.rows:
                raise WaldoError(f"{where} holds {len(names)} rows, its manifest says {shard.rows}; "
                                 "pack again")
            items += [Item(name or f"{where}#{row}", where, row) for row, name in enumerate(names)]
    return items


# -- reading ----------------------------------------------------------------------------------
_SHARD_LOCKS: dict[str, threading.Lock] = {}
_SHARD_LOCKS_LOCK = threading.Lock()


def shard_images(where: str) -> list[bytes] | str:
    """The `image` column of a pack shard, or why it cannot be read. A few are kept
    (consecutive batches share one), a failure too (one reason for all its rows); threads that
    want the same shard wait for one read of it."""
    with _SHARD_LOCKS_LOCK:
        lock = _SHARD_LOCKS.setdefault(where, threading.Lock())
    with lock:
        return _shard_images(where)


@functools.lru_cache(maxsize=4)
def _shard_images(where: str) -> list[bytes] | str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.tracking import storage

    try:
        fs, path = storage.filesystem(where)
        data = fs.cat_file(path)
        # Arrow's own buffer, not a Python file object (see training.data.packed.read_pack).
        return pq.read_table(pa.BufferReader(data), columns=["image"]).column("image").to_pylist()
    except Exception as exc:
        return f"cannot read its pack shard {where}: {one_line(exc)}"


def forget_shards() -> None:
    """Drop the kept shards (at the end of a run: they hold encoded images)."""
    _shard_images.cache_clear()
    with _SHARD_LOCKS_LOCK:
        _SHARD_LOCKS.clear()


@functools.lru_cache(maxsize=1)
def _s3():
    """One S3 filesystem per process (Arrow's is thread-safe), as the environment configures it."""
    from training.data.objects import s3_filesystem

    return s3_filesystem()


def _read_file(path: str) -> bytes | str:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is a folder"
    except OSError as exc:
        return f"cannot be read: {one_line(exc)}"


def _read_object(url: str, filesystem) -> bytes | str:
    try:
        return read_objects([url], filesystem)[0]
    except WaldoError as exc:
        return str(exc).removeprefix(f"cannot read {url}: ")


def read_blobs(items: Sequence[Item], filesystem=None) -> list[bytes | str]:
    """Each item's encoded bytes, or why they cannot be read (a missing file, an object that
    cannot be fetched, a shard that cannot be read), in order. Local files are read one after
    another (the caller decodes batches on several threads already), objects `READ_THREADS` at
    a time (each is a round trip); a pack's rows come from its shard, read once for many rows."""
    out: list[bytes | str] = [b""] * len(items)
    remote = []
    for i, item in enumerate(items):
        if item.packed:
            images = shard_images(item.where)
            out[i] = images if isinstance(images, str) else images[item.row]
        elif is_object_store(item.where):
            remote.append(i)
        else:
            out[i] = _read_file(item.where)
    if not remote:
        return out
    filesystem = filesystem or _s3()
    with ThreadPoolExecutor(min(READ_THREADS, len(remote)), thread_name_prefix="waldo-read") as pool:
        for i, blob in zip(remote, pool.map(lambda i: _read_object(items[i].where, filesystem), remote)):
            out[i] = blob
    return out


__all__ = ["ACCEPTED", "Item", "Sources", "expand", "forget_shards", "read_blobs", "shard_images"]
