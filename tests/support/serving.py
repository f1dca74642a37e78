"""`waldo serve` as a real process on 127.0.0.1, and reading its Prometheus metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from support.processes import Server, clean_env, start_server
from support.waldo import waldo_command


def serve_argv(models: Path, port: int, *extra: str, prefix: Sequence[str] = ()) -> list[str]:
    """`[prefix...] waldo serve --models MODELS --host 127.0.0.1 --port PORT EXTRA...`."""
    return [*prefix, *waldo_command(), "serve", "--models", str(models), "--host", "127.0.0.1",
            "--port", str(port), *extra]


def waldo_serve(models: Path, workdir: Path, *extra: str, prefix: Sequence[str] = (),
                env: Mapping[str, str] | None = None) -> Server:
    """`waldo serve` on a free port, with `clean_env(**env)`, waited for until /readyz answers
    200. `prefix` runs it under another command (e.g. `prlimit --nofile=256:256 --`)."""
    return start_server(lambda port: serve_argv(models, port, *extra, prefix=prefix),
                        workdir=workdir, env=clean_env(**(env or {})))


def metric(text: str, sample: str, default: float | None = None) -> float:
    """The value of one sample in Prometheus text, named with its labels as the service writes
    them (`waldo_model_version{model="cnn"}`); `default` when it is absent, else a failure."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    if default is None:
        raise AssertionError(f"{sample} is not in the metrics")
    return default
