"""Per-layer output shapes and parameter counts, from Lightning's ModelSummary."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pytorch_lightning.utilities.model_summary import ModelSummary

from training.models import create_model, get_model_info
from training.tasks import ClassificationTask


@dataclass(frozen=True)
class Layer:
    name: str
    type: str
    output: str  # "HxWxC" for feature maps (the source's convention), "F" for vectors
    params: int


def _shape(size) -> str:
    dims = list(size)[1:]  # drop the batch axis
    if len(dims) == 3:
        c, h, w = dims
        return f"{h}x{w}x{c}"
    return "x".join(str(d) for d in dims)


def summarize(name: str, input_shape: tuple[int, int, int], num_classes: int) -> dict:
    """Run one zero image through the network and report every leaf layer."""
    c, h, w = input_shape
    info = get_model_info(name)
    if info.sized and h != w:
        from training.errors import WaldoError

        raise WaldoError(f"model {name!r} needs square inputs (got {h}x{w})")
    net = create_model(name, num_classes=num_classes, in_channels=c, image_size=h)
    task = ClassificationTask(model_name=name, num_classes=num_classes, in_channels=c,
                              image_size=h, net=net)
    task.example_input_array = task.example_input_array.new_zeros(1, c, h, w)
    summary = ModelSummary(task, max_depth=-1)
    modules = dict(task.named_modules())
    layers = [
        Layer(lname.removeprefix("net."), ltype, _shape(out), params)
        for lname, ltype, out, params in zip(
            summary.layer_names, summary.layer_types, summary.out_sizes, summary.param_nums
        )
        if lname.startswith("net.") and not any(modules[lname].children())
    ]
    total = sum(p.numel() for p in net.parameters())
    return {"model": name, "input_shape": [c, h, w], "num_classes": num_classes,
            "layers": [asdict(layer) for layer in layers], "total_params": total}


def format_summary(report: dict) -> str:
    """The text table. Feature maps are shown HxWxC (the source's convention) and the input
    C,H,W (as --input-shape takes it): the header and the last line name each order."""
    rows = [("layer", "type", "output (HxWxC)", "params")]
    rows += [(r["name"], r["type"], r["output"], f"{r['params']:,}") for r in report["layers"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    c, h, w = report["input_shape"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    lines.append(f"{report['model']} on input C,H,W = {c},{h},{w}, {report['num_classes']} classes: "
                 f"{report['total_params']:,} parameters")
    return "\n".join(lines)
