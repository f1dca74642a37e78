"""`export_run`: one checkpoint in, one checked version of the model repository out.

The steps, each in its own module: read the source (`source`: a run's best checkpoint or a
checkpoint file), export and check parity with torch (`parity`), make the fp16/int8 copy and
score it (`precision`), make the card (`card`), lay the version out (`layout`) and, when asked,
register it (`publish`). Nothing is written or registered unless every check passes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from training.export.card import MODEL_FILE, ModelCard, build_card, default_name, output_names
from training.export.layout import write_version
from training.export.parity import export_checked
from training.export.precision import compare_precision, spec_from_record, validation_data
from training.export.publish import publish
from training.export.source import open_source
from training.spec import ExportSpec, TrainSpec


@dataclass
class ExportResult:
    """What `export_run` wrote (and registered)."""

    name: str
    version: int
    path: Path  # the version folder
    card: ModelCard
    checkpoint: Path
    max_abs_diff: float
    exporter: str
    seconds: float
    reference: dict[str, float] = field(default_factory=dict)  # fp32 on the validation split
    data: str | None = None  # the data set fp16/int8 were scored on
    model_uri: str | None = None  # models:/<name>/<version> when registered
    alias: str | None = None

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def summary(self) -> list[str]:
        c = self.card
        size = self.model_path.stat().st_size if self.model_path.exists() else 0
        size_text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        lines = [
            f"exported {self.name} version {self.version}: {self.model_path} ({size_text}, "
            f"{c.precision}, opset {c.opset}, {self.exporter} exporter, {self.seconds:.1f} s)",
            f"parity: max |onnxruntime - torch| = {self.max_abs_diff:.2g} (fp32)",
        ]
        for key, ref in self.reference.items():
            got = c.metrics.get(key, float("nan"))
            lines.append(f"{c.precision} on the {self.data} validation split: {key} {got:.4f} "
                         f"(fp32 {ref:.4f}, {100 * (got - ref):+.2f} points)")
        if self.model_uri:
            moved = f", alias {self.alias!r} -> version {self.version}" if self.alias else ""
            lines.append(f"registered {self.model_uri}{moved}")
        return lines


def export_run(spec: ExportSpec, *, train_spec: TrainSpec | None = None) -> ExportResult:
    """Export the spec's checkpoint (a run's best, or a file), check it, write it into the
    repository at `spec.output`, and with `spec.publish` (implied by `spec.alias`) register it
    in MLflow.

    A run links the export to it: its test metrics go into the card, and the registered
    version points back to it. `train_spec` (else the run's spec.yaml, else the data record in
    the checkpoint) says which data to score fp16/int8 on.
    """
    from training.tracking.runs import resolve_tracking_uri

    start = time.perf_counter()
    uri = resolve_tracking_uri(spec.tracking_uri)
    with tempfile.TemporaryDirectory() as downloads:
        source = open_source(spec, uri, Path(downloads))
        record = source.record
        name = spec.name or default_name(record)
        exported = export_checked(source.task.net, record.input_shape,
                                  output_names=output_names(record.task), opset=spec.opset,
                                  atol=spec.atol, exporter=spec.exporter)
        model, reference, scored_on = exported.model, {}, None
        metrics = {**source.metrics, "onnx_max_abs_diff": exported.max_abs_diff}
        if spec.precision != "fp32":
            data_spec = (train_spec or source.train_spec
                         or spec_from_record(record, source.checkpoint))
            dm = validation_data(data_spec, record)
            model, reference, scores = compare_precision(model, spec.precision, dm, record.task,
                                                         spec.max_drop)
            metrics.update(scores)
            metrics.update({f"{k}_fp32": v for k, v in reference.items()})
            scored_on = data_spec.data

    def card_for(version: int) -> ModelCard:
        return build_card(record, name=name, version=version, source_run=source.run_id,
                          metrics=metrics, opset=spec.opset, precision=spec.precision)

    written: list[tuple[Path, ModelCard]] = []

    def write(version: int | None = None) -> Path:
        written.append(write_version(model, card_for, output=spec.output, name=name,
                                     version=version))
        return written[-1][0]

    model_uri = None
    if spec.registers:
        arch = record.hparams["model_name"]
        run_text = f", run {source.run_id}" if source.run_id else ""
        version = publish(uri, name=name, run_id=source.run_id, write=write, alias=spec.alias,
                          tags={"waldo.precision": spec.precision, "waldo.task": record.task,
                                "waldo.architecture": arch},
                          description=f"{arch} ({record.task}), {spec.precision}, "
                                      f"opset {spec.opset}{run_text}")
        model_uri = f"models:/{name}/{version}"
    else:
        write()
    folder, card = written[-1]
    return ExportResult(name, int(card.version), folder, card, source.checkpoint,
                        exported.max_abs_diff, exported.exporter, time.perf_counter() - start,
                        reference, scored_on, model_uri, spec.alias if model_uri else None)
