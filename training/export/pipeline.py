"""`export_run`: one checkpoint in, one checked version of the model repository out.

The steps, each in its own module: read the source (`source`: a run's best checkpoint or a
checkpoint file), export and check parity with torch (`parity`), make the fp16/int8 copy and
score it (`precision`), make the card (`card`), lay the version out (`layout`) and, when asked,
register it (`publish`), and with an alias, promote it through the gate
(training.promotion). Nothing is written or registered unless every check passes. A published
version is written only to the registry, never under `output`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import WaldoError
from training.export.card import MODEL_FILE, ModelCard, build_card, default_name, output_names
from training.export.explain import attach_constants, explain_graph
from training.export.layout import write_version
from training.export.parity import export_checked
from training.export.precision import compare_precision, spec_from_record, validation_data
from training.export.publish import publish
from training.export.source import open_source
from training.spec import ExportSpec, PromoteSpec, TrainSpec

if TYPE_CHECKING:
    from training.promotion import PromotionResult


class NotPromoted(WaldoError):
    """The version was published, but its promotion could not be judged (e.g. an incompatible
    card, no data): it stays registered without the alias, and `waldo promote` retries."""


@dataclass
class ExportResult:
    """What `export_run` wrote (and registered)."""

    name: str
    version: int
    path: Path | None  # the version folder; None when published (the registry holds it)
    card: ModelCard
    checkpoint: Path
    max_abs_diff: float
    exporter: str
    seconds: float
    reference: dict[str, float] = field(default_factory=dict)  # fp32 on the validation split
    data: str | None = None  # the data set fp16/int8 were scored on
    model_uri: str | None = None  # models:/<name>/<version> when registered
    alias: str | None = None  # the alias that moved to this version
    size: int = 0  # bytes of model.onnx
    promotion: PromotionResult | None = None  # with an alias: the gate's verdict

    @property
    def model_path(self) -> Path | None:
        return self.path / MODEL_FILE if self.path is not None else None

    @property
    def refused(self) -> bool:
        """Whether the promotion gate refused the alias (the version stays registered)."""
        return self.promotion is not None and self.promotion.refused

    def summary(self) -> list[str]:
        c = self.card
        size_text = f"{self.size / 1e6:.1f} MB" if self.size >= 1e6 else f"{self.size / 1e3:.0f} kB"
        where = f": {self.model_path}" if self.model_path is not None else " to the registry"
        lines = [
            f"exported {self.name} version {self.version}{where} ({size_text}, "
            f"{c.precision}, opset {c.opset}, {self.exporter} exporter, {self.seconds:.1f} s)",
            f"parity: max |onnxruntime - torch| = {self.max_abs_diff:.2g} (fp32)",
        ]
        for key, ref in self.reference.items():
            got = c.metrics.get(key, float("nan"))
            lines.append(f"{c.precision} on the {self.data} validation split: {key} {got:.4f} "
                         f"(fp32 {ref:.4f}, {100 * (got - ref):+.2f} points)")
        if self.model_uri:
            lines.append(f"registered {self.model_uri} (serve it as {self.name}/{self.version}"
                         f"{f' or {self.name}@{self.alias}' if self.alias else ''})")
        if self.promotion is not None:
            lines.extend(self.promotion.summary())
        return lines


def export_run(spec: ExportSpec, *, train_spec: TrainSpec | None = None) -> ExportResult:
    """Export the spec's checkpoint (a run's best, or a file), check it, and write it into the
    repository at `spec.output`, or with `spec.publish` (implied by `spec.alias`) register it
    in MLflow instead; with `spec.alias`, the new version then goes through the promotion gate
    (`training.promotion.promote`), which moves the alias or refuses (`ExportResult.refused`).

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
        # With explain: the network that also returns its stages' maps (extra outputs).
        graph = explain_graph(source.task.net, record.input_shape) if spec.explain else None
        exported = export_checked(graph.net if graph else source.task.net, record.input_shape,
                                  output_names=[*output_names(record.task),
                                                *(graph.outputs if graph else [])],
                                  opset=spec.opset, atol=spec.atol, exporter=spec.exporter)
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
        if graph is not None:
            model = attach_constants(model, graph.constants)

    def card_for(version: int) -> ModelCard:
        return build_card(record, name=name, version=version, source_run=source.run_id,
                          metrics=metrics, opset=spec.opset, precision=spec.precision,
                          explain=graph.spec if graph else None)

    written: list[tuple[Path, ModelCard]] = []

    def write(version: int | None, output: Path | str) -> Path:
        written.append(write_version(model, card_for, output=output, name=name,
                                     version=version))
        return written[-1][0]

    model_uri, size, promotion = None, 0, None
    if spec.registers:
        arch = record.hparams["model_name"]
        run_text = f", run {source.run_id}" if source.run_id else ""

        def write_and_measure(version: int, folder: Path) -> Path:
            nonlocal size
            path = write(version, folder)
            size = (path / MODEL_FILE).stat().st_size
            return path

        version = publish(uri, name=name, run_id=source.run_id, write=write_and_measure,
                          tags={"waldo.precision": spec.precision, "waldo.task": record.task,
                                "waldo.architecture": arch},
                          description=f"{arch} ({record.task}), {spec.precision}, "
                                      f"opset {spec.opset}{run_text}")
        model_uri = f"models:/{name}/{version}"
        folder, card = None, written[-1][1]
        if spec.alias is not None:  # publish without the alias, then the gate decides
            from training.promotion import promote

            data_spec = train_spec or source.train_spec
            if data_spec is None and source.run_id is None:
                data_spec = spec_from_record(record, source.checkpoint)
            try:
                promotion = promote(PromoteSpec(name=name, version=str(version),
                                                alias=spec.alias, tracking_uri=uri),
                                    data_spec=data_spec)
            except WaldoError as exc:
                raise NotPromoted(f"{exc} (version {version} is registered, without the alias; "
                                  f"`waldo promote {name} {version} --alias {spec.alias}` "
                                  "tries again)") from None
    else:
        write(None, spec.output)
        folder, card = written[-1]
        size = (folder / MODEL_FILE).stat().st_size
    moved = spec.alias if promotion is not None and promotion.moved else None
    return ExportResult(name, int(card.version), folder, card, source.checkpoint,
                        exported.max_abs_diff, exported.exporter, time.perf_counter() - start,
                        reference, scored_on, model_uri, moved, size, promotion)
