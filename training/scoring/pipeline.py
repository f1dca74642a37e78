"""`predict(spec)`: score every image of the spec's sources with an exported model, into Parquet.

The steps: the output is checked writable, the model opened (`training.scoring.model`), the
sources listed (`training.scoring.sources`): each a one-line WaldoError when wrong, before any
image is read. The parts already in the output are read (`training.scoring.writer`), and only
the images they do not cover are scored, in-process (`training.scoring.local`) or on Ray Data
(`training.scoring.raydata`), in an MLflow run (experiment `waldo-predict`) that records the
model version, the data, the counts and the throughput, with the manifest as an artifact. A
progress line goes to stderr every few seconds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from training.errors import WaldoError, one_line
from training.scoring.model import open_model
from training.scoring.sources import expand, forget_shards
from training.scoring.writer import ERRORS, FORMAT, MANIFEST, Output, new_run_token
from training.spec import PredictSpec

PROGRESS_S = 5.0  # seconds between progress lines (a terminal gets one line, redrawn each second)


class Progress:
    """`predict: 1,200/5,000 images (3 errors), 850 images/s` on stderr, now and then."""

    def __init__(self, total: int, before: int, stream: TextIO | None = None):
        self.total, self.before = total, before
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start()

    def start(self) -> None:
        """The clock starts now (after the model, the sources and the MLflow run are ready)."""
        self.started = self.last = time.monotonic()

    def __call__(self, scored: int, errors: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (1.0 if self.tty else PROGRESS_S):
            return
        self.last = now
        rate = (scored + errors) / max(now - self.started, 1e-9)
        done = self.before + scored + errors
        line = (f"predict: {done:,}/{self.total:,} images ({errors:,} errors), {rate:,.1f} images/s"
                + (f"; {self.before:,} done before" if self.before else ""))
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


@dataclass
class PredictResult:
    model: str
    version: str
    output: str
    images: int  # images of the sources
    scored: int  # scored by this run
    errors: int  # unreadable, found by this run
    before: int  # covered by an earlier run's parts
    seconds: float
    run_id: str
    ui_hint: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return (self.scored + self.errors) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> list[str]:
        lines = [f"scored {self.scored:,} images with {self.model} version {self.version} in "
                 f"{self.seconds:.1f} s ({self.images_per_second:,.0f} images/s) into {self.output}"]
        if self.before:
            lines.append(f"{self.before:,} of the {self.images:,} images were done by an earlier "
                         "run (scored, or listed as unreadable)")
        unreadable = self.manifest.get("errors", self.errors)
        if unreadable:
            lines.append(f"{unreadable:,} {'image' if unreadable == 1 else 'images'} could not be "
                         f"read: {self.output.rstrip('/')}/{ERRORS}")
        if self.manifest.get("unread"):
            lines.append(f"{self.manifest['unread']:,} of them could not be fetched or opened; a run "
                         "with the same model and --output tries them again")
        lines.append(f"see the run: {self.ui_hint}")
        return lines


def predict(spec: PredictSpec, *, stream: TextIO | None = None) -> PredictResult:
    """Score `spec.sources` with `spec.model` into `spec.output` (see the module's docstring)."""
    from training.tracking.runs import quiet_artifact_downloads, resolve_tracking_uri, start_run

    quiet_artifact_downloads()
    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    output = Output(spec.output)
    output.check()
    with tempfile.TemporaryDirectory(prefix="waldo-predict-") as cache:
        model = open_model(spec.model, cache, tracking_uri)
        settings = {"model": model.name, "version": model.version, "task": model.card.task,
                    "top_k": spec.top_k, "threshold": spec.threshold}
        sources = expand(spec.sources)
        output.prepare()
        done = output.done(settings)
        todo = [item for item in sources.items if item.path not in done.paths]
        before = len(sources) - len(todo)
        progress = Progress(len(sources), before, stream)
        run_token = new_run_token()
        with start_run(spec.experiment, run_name=f"predict {model.name} v{model.version}",
                       tracking_uri=tracking_uri, tags={"waldo.kind": "predict"}) as run:
            run.log_params({
                "model_name": model.name, "model_version": model.version, "model_uri": spec.model,
                "task": model.card.task, "source": ", ".join(spec.sources)[:5000],
                "output": spec.output, "workers": spec.workers, "batch_size": spec.batch_size,
                "top_k": spec.top_k, "threshold": spec.threshold})
            started = time.monotonic()
            progress.start()
            try:
                counts = _score(spec, model, todo, output, settings, run_token, sources.shard_rows,
                                progress) if todo else None
            except OSError as exc:  # a full disk, a bucket that stopped answering, ...
                raise WaldoError(f"scoring into {output.location} stopped: {one_line(exc)}; the "
                                 "parts written so far are kept, and the same command goes on "
                                 "from them") from None
            finally:
                forget_shards()
            seconds = time.monotonic() - started
            scored, errors = (counts.scored, counts.errors) if counts else (0, 0)
            progress(scored, errors, final=True)
            final = output.done(settings)
            manifest = {
                "format": FORMAT, "output": output.location,
                "model": {"name": model.name, "version": model.version, "uri": spec.model,
                          "task": model.card.task, "labels": model.card.labels},
                "settings": {"top_k": spec.top_k, "threshold": spec.threshold},
                "sources": sources.described, "images": len(sources),
                "scored": final.scored, "errors": len(final.errors), "unread": final.unread,
                "parts": final.parts,
                "missing": len(sources) - len(set(i.path for i in sources.items) & final.paths),
                "last_run": {"mlflow_run_id": run.run_id, "scored": scored, "errors": errors,
                             "before": before, "seconds": round(seconds, 3),
                             "workers": spec.workers},
            }
            output.finish(manifest, final.errors)
            run.log_metrics({"images_scored": scored, "errors": errors, "images_before": before,
                             "seconds": seconds,
                             "images_per_second": (scored + errors) / seconds if seconds > 0 else 0.0})
            with tempfile.TemporaryDirectory(prefix="waldo-manifest-") as tmp:
                path = Path(tmp) / MANIFEST
                path.write_text(_json(manifest))
                run.log_artifact(path)
    return PredictResult(model.name, model.version, output.location, len(sources), scored, errors,
                         before, seconds, run.run_id, run.ui_hint, manifest)


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=1) + "\n"


def _score(spec: PredictSpec, model, todo, output: Output, settings: dict[str, Any], run_token: str,
           shard_rows: dict[str, int], progress):
    if spec.workers > 0:
        from training.scoring.raydata import score_ray

        return score_ray(model, todo, output, settings, run=run_token, batch_size=spec.batch_size,
                         part_size=spec.part_size, workers=spec.workers,
                         cpus_per_worker=spec.cpus_per_worker, ray_address=spec.ray_address,
                         pack_rows=shard_rows, progress=progress)
    from training.scoring.local import score_local

    return score_local(model, todo, output, settings, run=run_token, batch_size=spec.batch_size,
                       part_size=spec.part_size, threads=spec.threads, progress=progress)


__all__ = ["PredictResult", "Progress", "predict"]
