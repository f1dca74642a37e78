"""The ModelCard's one author: `build_card` makes it from a checkpoint's own record.

The card says how to feed the network and read its answer (README: Export and register). Everything
in it comes from the checkpoint (the task's saved hyperparameters and the data module's saved
state) plus what the export adds: name, version, source run, metrics, opset, precision. The
output declarations are chosen here by task name, and the ONNX graph's output names are taken
from them. This is the only training module that imports `serving.modelcard`; the rest of the
export package takes the repository's file names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from serving.modelcard import (
    CARD_FILE,
    CLASSIFY_OUTPUTS,
    LOCALIZE_OUTPUTS,
    MODEL_FILE,
    ONNX_METADATA_KEY,
    ConstantSpec,
    ExplainSpec,
    FirstConvSpec,
    InputSpec,
    ModelCard,
    OutputSpec,
    StageSpec,
)
from training.errors import unknown_choice

if TYPE_CHECKING:
    from training.export.source import CheckpointRecord

# What each task's network returns, by task name.
TASK_OUTPUTS: dict[str, list[OutputSpec]] = {"classify": CLASSIFY_OUTPUTS,
                                             "localize": LOCALIZE_OUTPUTS}


def card_outputs(task: str) -> list[OutputSpec]:
    """The output declarations of a task's network."""
    if task not in TASK_OUTPUTS:
        raise unknown_choice("task", task, TASK_OUTPUTS)
    return TASK_OUTPUTS[task]


def output_names(task: str) -> list[str]:
    """The ONNX graph's output names for a task: those the card declares."""
    return [o.name for o in card_outputs(task)]


def default_name(record: CheckpointRecord) -> str:
    """The architecture (cnn), with the task appended when it is not classification
    (cnn-localize)."""
    arch = record.hparams["model_name"]
    return arch if record.task == "classify" else f"{arch}-{record.task}"


def build_card(record: CheckpointRecord, *, name: str | None = None, version: int = 1,
               source_run: str | None = None, metrics: Mapping[str, float] | None = None,
               opset: int | None = None, precision: str = "fp32",
               explain: ExplainSpec | None = None) -> ModelCard:
    """The card of version `version` of the checkpoint described by `record`.

    `weights` is the provenance the task saved (where its network started).
    Labels, mean and std come from the task's hyperparameters, else from the data module's
    saved state, else are the identity (class indices, mean 0, std 1). `explain` names the
    file's extra outputs (`training.export.explain`).
    """
    h, data = record.hparams, record.data or {}
    channels, size = h["in_channels"], h["image_size"]
    labels = h.get("labels") or data.get("labels") or [str(i) for i in range(h["num_classes"])]
    return ModelCard(
        name=name or default_name(record),
        version=str(version),
        task=record.task,
        labels=[str(label) for label in labels],
        architecture=h["model_name"],
        input=InputSpec(
            channels=channels, height=size, width=size,
            mean=list(h.get("mean") or data.get("mean") or [0.0] * channels),
            std=list(h.get("std") or data.get("std") or [1.0] * channels),
        ),
        outputs=card_outputs(record.task),
        source_run=source_run,
        weights=dict(h.get("provenance") or {}) or None,
        metrics=dict(metrics or {}),
        opset=opset,
        precision=precision,
        explain=explain,
    )


__all__ = ["CARD_FILE", "MODEL_FILE", "ONNX_METADATA_KEY", "TASK_OUTPUTS", "ConstantSpec", "ExplainSpec",
           "FirstConvSpec", "ModelCard", "StageSpec",
           "build_card", "card_outputs", "default_name", "output_names"]
