"""ONNX export and its validation: a trained checkpoint becomes `<output>/<name>/<version>/`
holding `model.onnx` (its ModelCard inside the metadata) and `modelcard.json`.

One job per module:
    exporters   the TorchScript and dynamo ONNX exporters (`to_onnx`)
    parity      ONNX Runtime against torch (`check_parity`); `export_checked` exports and checks
    card        the ModelCard's one author (`build_card`) and the output declarations per task
    layout      the repository layout: card embedding, version numbers, atomic `write_version`
    source      a run's best checkpoint (through the storage record) or a checkpoint file
    precision   fp16/int8 copies scored against fp32 on the validation split
    publish     registration as a new MLflow model version, undone on any failure
    pipeline    `export_run`, which strings them together, and its `ExportResult`

Importing this package is cheap: `export_run` and `ExportResult` load the pipeline (and torch)
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.export.pipeline import ExportResult, export_run

__all__ = ["ExportResult", "export_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from training.export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
