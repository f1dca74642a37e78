"""Where a scoring run writes: Parquet parts, committed one at a time, in a folder or a bucket.

    DEST/part-<run>-<n>.parquet   the answers, one row per image: path, the top-k labels and
                                  probabilities (classify) or p_c, object, label, probability and
                                  the box in the image's pixels (localize), the image's width and
                                  height, the model's name and version. Its key-value metadata
                                  (`waldo.scoring`) names the model and settings, and lists the
                                  images of the part that could not be scored, with the reason.
    DEST/_errors.csv              path,reason of every image that could not be scored
    DEST/_manifest.json           what was scored: the model, the sources, the counts, the parts

A part appears whole or not at all: a local part is written under a temporary name and renamed
(an atomic step), an object in a bucket appears only once its upload completes. So the parts
that exist are the record of what is done: a run killed part way and started again with the
same model and DEST reads their `path` columns and error lists, skips those images and scores
the rest, and every image ends in exactly one part's rows. An image that could not even be read
(a lost connection, an expired credential, a file missing for now) is tried again by that later
run; one that was read and did not decode is not. `_errors.csv` and `_manifest.json` are
written last, from all parts (the names start with `_`, which Parquet readers such as
`pandas.read_parquet(DEST)` skip).
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from training.errors import WaldoError, one_line

FORMAT = "waldo-scores/1"
META_KEY = b"waldo.scoring"
MANIFEST, ERRORS = "_manifest.json", "_errors.csv"
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
TEMP_PREFIX = ".part-"  # a local part being written; removed when found by a later run


def schema(task: str):
    import pyarrow as pa

    head = [("path", pa.string())]
    if task == "classify":
        body = [("label", pa.string()), ("probability", pa.float64()),
                ("top_k_labels", pa.list_(pa.string())), ("top_k_probabilities", pa.list_(pa.float64()))]
    else:
        box = pa.struct([(k, pa.float64()) for k in ("x", "y", "w", "h")])
        body = [("p_c", pa.float64()), ("object", pa.bool_()), ("label", pa.string()),
                ("probability", pa.float64()), ("box", box)]
    tail = [("width", pa.int32()), ("height", pa.int32()), ("model_name", pa.string()),
            ("model_version", pa.string())]
    return pa.schema(head + body + tail)


def columns(task: str, name: str, version: str, paths: Sequence[str], sizes: Sequence[tuple[int, int]],
            results: Sequence[dict[str, Any]]) -> dict[str, list]:
    """The service's answers (`serving.processing.postprocess`) as output columns."""
    out: dict[str, list] = {"path": list(paths)}
    if task == "classify":
        out["label"] = [r["label"] for r in results]
        out["probability"] = [r["probability"] for r in results]
        out["top_k_labels"] = [[t["label"] for t in r["top_k"]] for r in results]
        out["top_k_probabilities"] = [[t["probability"] for t in r["top_k"]] for r in results]
    else:
        for key in ("p_c", "object", "label", "probability", "box"):
            out[key] = [r[key] for r in results]
    out["width"] = [w for w, _ in sizes]
    out["height"] = [h for _, h in sizes]
    out["model_name"] = [name] * len(results)
    out["model_version"] = [version] * len(results)
    return out


class Problem(NamedTuple):
    """An image that was not scored: why, and whether it could not even be read (then a later
    run with the same DEST tries it again) or was read and did not decode (for good)."""

    path: str
    reason: str
    unread: bool = False


@dataclass
class Done:
    """What the committed parts of DEST hold."""

    paths: set[str] = field(default_factory=set)  # answered, or unreadable for good
    scored: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), one per image
    unread: int = 0  # of the errors, images that could not be read: the next run tries them
    parts: list[str] = field(default_factory=list)


class Output:
    """DEST, a folder or `s3://bucket/prefix`, through Arrow's filesystems (picklable: Ray Data
    write tasks commit parts with a copy of it)."""

    def __init__(self, location: str):
        from pyarrow import fs

        from training.data.objects import is_object_store, s3_filesystem

        self.remote = is_object_store(location)
        if self.remote:
            self.location = location.rstrip("/")
            self.fs, self.base = s3_filesystem(), self.location.split("://", 1)[1]
        else:
            self.location = self.base = os.path.abspath(os.path.expanduser(location))
            self.fs = fs.LocalFileSystem()

    def where(self, name: str) -> str:
        return f"{self.location}/{name}"

    def check(self) -> None:
        """One line (WaldoError) now when nothing can be written here; nothing is created."""
        from training.tracking import storage

        storage.check_writable(self.location, what="--output")

    def prepare(self) -> None:
        """The folder made, and temporary files of a killed run removed."""
        if not self.remote:
            try:
                os.makedirs(self.base, exist_ok=True)
            except OSError as exc:
                raise WaldoError(f"cannot write to --output {self.location!r}: {one_line(exc)}") from None
            for name in os.listdir(self.base):
                if name.startswith(TEMP_PREFIX):
                    os.remove(os.path.join(self.base, name))

    def part_names(self) -> list[str]:
        from pyarrow import fs

        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.base, allow_not_found=True))
        except OSError as exc:
            raise WaldoError(f"cannot list --output {self.location}: {one_line(exc)}") from None
        return sorted(info.base_name for info in infos if info.type == fs.FileType.File
                      and info.base_name.startswith(PART_PREFIX) and info.base_name.endswith(PART_SUFFIX))

    def done(self, settings: dict[str, Any]) -> Done:
        """The images the committed parts cover. A part written with another model or other
        settings (`settings`: model, version, task, top_k, threshold) is one line: the output
        would mix two runs' answers."""
        import pyarrow.parquet as pq

        done, problems = Done(), {}
        for name in self.part_names():
            try:
                table = pq.read_table(f"{self.base}/{name}", filesystem=self.fs, columns=["path"])
            except Exception as exc:
                raise WaldoError(f"{self.where(name)} is no readable part of a scoring run "
                                 f"({one_line(exc)}); remove it or give another --output") from None
            meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
            theirs = {key: meta.get(key) for key in settings}
            if theirs != settings:
                differ = ", ".join(f"{k} {theirs[k]!r} (this run: {settings[k]!r})"
                                   for k in settings if theirs[k] != settings[k])
                raise WaldoError(f"--output {self.location} holds answers of another run ({differ}); "
                                 "give another --output, or the same model and settings to complete it")
            paths = table.column("path").to_pylist()
            done.paths.update(paths)
            done.scored += len(paths)
            problems.update((str(e[0]), Problem(str(e[0]), str(e[1]), bool(e[2:3] and e[2])))
                            for e in meta.get("errors", []))
            done.parts.append(name)
        # An image read again by a later run has its answer or its newer problem.
        problems = {path: p for path, p in problems.items() if path not in done.paths}
        done.paths.update(path for path, p in problems.items() if not p.unread)
        done.errors = [(p.path, p.reason) for p in problems.values()]
        done.unread = sum(p.unread for p in problems.values())
        return done

    def commit(self, task: str, data: dict[str, list], errors: Sequence[Problem],
               settings: dict[str, Any], name: str) -> str:
        """Write one part (rows `data`, `columns`' layout; `errors` in its metadata) whole or not
        at all; its name."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = {**settings, "format": FORMAT, "errors": [list(e) for e in errors]}
        table = pa.Table.from_pydict(data, schema=schema(task)).replace_schema_metadata(
            {META_KEY: json.dumps(meta).encode()})
        final = f"{self.base}/{name}"
        if self.remote:  # an object appears once its upload completes
            pq.write_table(table, final, filesystem=self.fs)
            return name
        temp = f"{self.base}/{TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        pq.write_table(table, temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the name says it is done
        os.replace(temp, final)
        return name

    def write_text(self, name: str, text: str) -> None:
        data = text.encode()
        if self.remote:
            with self.fs.open_output_stream(f"{self.base}/{name}") as out:
                out.write(data)
            return
        temp = f"{self.base}/{TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, f"{self.base}/{name}")

    def finish(self, manifest: dict[str, Any], errors: Sequence[tuple[str, str]]) -> None:
        """`_errors.csv` and `_manifest.json`, from the whole output."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows(errors)
        self.write_text(ERRORS, buffer.getvalue())
        self.write_text(MANIFEST, json.dumps(manifest, indent=1) + "\n")


def part_name(run: str, *numbers: int) -> str:
    """`part-<run>-<n>[-<m>].parquet`: unique per run (a random token) and writer."""
    return f"{PART_PREFIX}{run}-{'-'.join(f'{n:05d}' for n in numbers)}{PART_SUFFIX}"


def new_run_token() -> str:
    return uuid.uuid4().hex[:8]


__all__ = ["ERRORS", "FORMAT", "MANIFEST", "META_KEY", "Done", "Output", "Problem", "columns",
           "new_run_token", "part_name", "schema"]
