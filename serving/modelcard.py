"""The ModelCard: what a served model is and how to feed it. The one contract that training
(which writes it) and serving (which reads it) share.

It lives inside the ONNX file's metadata and as `modelcard.json` beside it. Serving derives
all pre- and post-processing from it and never from training code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The repository layout: <root>/<name>/<version>/{MODEL_FILE, CARD_FILE}.
MODEL_FILE = "model.onnx"
CARD_FILE = "modelcard.json"
# Key of the card (as JSON) in the ONNX file's metadata_props.
ONNX_METADATA_KEY = "waldo.modelcard"


class InputSpec(BaseModel):
    """How an image becomes the network's input tensor."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(gt=0)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    dtype: Literal["float32"] = "float32"
    layout: Literal["NCHW"] = "NCHW"
    scale: float = Field(1 / 255, description="multiply uint8 pixels by this first")
    mean: list[float]
    std: list[float]
    resize: Literal["stretch-bilinear"] = Field(
        "stretch-bilinear", description="resize to height x width, bilinear, aspect not kept"
    )


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    meaning: str


CLASSIFY_OUTPUTS = [OutputSpec(name="logits", meaning="(B, K) class scores before softmax")]
LOCALIZE_OUTPUTS = [OutputSpec(
    name="y",
    meaning="(B, 5+K) [p_c, x, y, w, h, p_1..p_K]: object probability, box top-left corner "
            "and size as fractions of the input width/height, class probabilities",
)]


class StageSpec(BaseModel):
    """One conv stage whose activations the ONNX file gives as an extra output."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(description="the graph output holding the stage's maps (B, C, h, w)")
    module: str = Field(description="where in the network the maps come from, e.g. features.1")
    shape: list[int] = Field(description="C, h, w at the card's input size")


class ConstantSpec(BaseModel):
    """A weight tensor the ONNX file gives as an extra output (no batch axis)."""

    model_config = ConfigDict(extra="forbid")

    output: str
    shape: list[int]


class FirstConvSpec(BaseModel):
    """The first conv layer, which the service applies to the image itself (numpy, with the
    `filters` output) rather than read from the file: its maps as a graph output would keep ONNX
    Runtime from fusing the layer with what follows, a cost to every prediction."""

    model_config = ConfigDict(extra="forbid")

    module: str = Field(description="the layer in the network, e.g. features.0")
    stride: list[int] = Field(description="(y, x)")
    padding: list[int] = Field(description="(y, x) zeros on both sides")
    dilation: list[int] = Field(description="(y, x)")
    bias: list[float] | None = Field(None, description="one per filter; none: no bias")
    shape: list[int] = Field(description="F, h, w at the card's input size")


class ExplainSpec(BaseModel):
    """Extra outputs of the ONNX file that explain an answer without torch. Prediction never
    requests them (it costs what it did without them); `POST /v1/models/{name}/explain` and v2
    requests that name them do."""

    model_config = ConfigDict(extra="forbid")

    stages: list[StageSpec] = Field(description="the conv stages in forward order")
    first_conv: FirstConvSpec | None = Field(
        None, description="the first conv layer, whose maps before any activation the service "
        "computes from `filters`")
    filters: ConstantSpec | None = Field(
        None, description="the first conv layer's weights (F, C, kh, kw)")
    cam_weight: ConstantSpec | None = Field(
        None, description="(K, C) classifier weights over the last stage's channels, present when "
        "the head averages that stage globally and is then linear, so that the class activation "
        "map of class k is cam_weight[k] applied to the last stage's maps (CAM)")

    def shapes(self) -> dict[str, list[int]]:
        """Every extra output by name, in the file's order: its shape per image (maps) or
        whole (weights)."""
        weights = [c for c in (self.filters, self.cam_weight) if c is not None]
        return {m.output: m.shape for m in self.stages} | {c.output: c.shape for c in weights}

    def per_image(self, name: str) -> bool:
        """Whether output `name` has a batch axis (maps) or not (weights)."""
        return name in {s.output for s in self.stages}


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    version: str = "1"
    task: Literal["classify", "localize"]
    labels: list[str]
    input: InputSpec
    outputs: list[OutputSpec]
    architecture: str = ""
    source_run: str | None = Field(None, description="MLflow run that trained the weights")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="the run's test metrics and the export's own checks"
    )
    weights: dict[str, str] | None = Field(
        None, description="where training started: pretrained weights (weights.name, weights.url "
        "or weights.path, weights.sha256) or an earlier run (init_from.run_id, "
        "init_from.model_uri); absent for random initialization")
    opset: int | None = None
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="weights and arithmetic in the file; inputs and outputs stay float32"
    )
    explain: ExplainSpec | None = Field(
        None, description="the extra outputs that explain an answer; absent in files exported "
        "without them (a forward-only explanation still works)")

    def incompatibility(self, other: ModelCard) -> str | None:
        """One line saying what keeps `other` from replacing this card's model behind the same
        name (another task, other labels, another input shape C,H,W), or None when clients could
        not tell the two apart by their requests and the meaning of the answers."""
        if other.task != self.task:
            return f"task {other.task!r} differs from {self.task!r}"
        if other.labels != self.labels:
            added = [x for x in other.labels if x not in self.labels]
            dropped = [x for x in self.labels if x not in other.labels]
            if not added and not dropped:
                return "labels are the same but in another order (the class numbers differ)"
            parts = [f"{verb} {', '.join(map(repr, names[:5]))}"
                     + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
                     for verb, names in (("adds", added), ("drops", dropped)) if names]
            return "labels differ: " + "; ".join(parts)
        mine = (self.input.channels, self.input.height, self.input.width)
        theirs = (other.input.channels, other.input.height, other.input.width)
        if mine != theirs:
            return "input shape C,H,W {} differs from {}".format(
                ",".join(map(str, theirs)), ",".join(map(str, mine)))
        return None
