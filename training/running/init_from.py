"""Where a run's network starts: `--weights` (torchvision's or a state dict file, see
`training.models.pretrained`) or `--init-from` an earlier Waldo network: an MLflow run id (its
best checkpoint, through the storage record of `training.tracking.storage`), a .ckpt file, or a
registered version, `models:/NAME@ALIAS` or `models:/NAME/VERSION` (its source run).

The run's best checkpoint is found the way `training.export.source.RunSource` finds it (the
recorded storage location first, then the recorded artifact). It cannot be imported from
there: the runners and export are independent (pyproject's import contracts), and the runners
import this module.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from training.errors import WaldoError, one_line
from training.models.pretrained import Pretrained, load_matching, load_weights, per_channel
from training.spec import TrainSpec
from training.tracking import storage
from training.tracking.runs import read_run

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class Start(Pretrained):
    """A `Pretrained` state plus what the source network was trained for (None: unknown, e.g.
    torchvision's weights), to decide whether its head still fits."""

    def __init__(self, pretrained: Pretrained, *, model: str | None = None,
                 task: str | None = None, labels: list[str] | None = None):
        super().__init__(pretrained.state, pretrained.mean, pretrained.std,
                         dict(pretrained.provenance), dict(pretrained.model_args))
        self.model, self.task, self.labels = model, task, labels

    def load_into(self, net: Any, *, task: str, labels: list[str], source: str) -> int:
        """Load into `net`; the head only from a network trained for the same task and labels."""
        keep_head = self.task == task and self.labels is not None and list(self.labels) == list(labels)
        if self.task is None:  # torchvision's or a file's: a head whose shape fits is kept
            keep_head = True
        return load_matching(net, self.state, keep_head=keep_head, source=source)


def starting_point(spec: TrainSpec, *, in_channels: int) -> Start | None:
    """The spec's starting weights for a network on `in_channels`-channel data, or None."""
    if spec.weights is not None:
        return Start(load_weights(spec.model, spec.weights, in_channels=in_channels))
    if spec.init_from is not None:
        return from_earlier(spec.init_from, spec.tracking_uri, model=spec.model,
                            in_channels=in_channels)
    return None


def from_earlier(value: str, tracking_uri: str | None, *, model: str, in_channels: int) -> Start:
    """`--init-from VALUE`: the network of a run, a checkpoint file or a registered version."""
    provenance: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="waldo-init-") as tmp:
        match = _MODEL_URI.match(value)
        if match:
            provenance["init_from.model_uri"] = value
            run_id = _registered_run(match, value, tracking_uri)
            path = _run_checkpoint(run_id, tracking_uri, Path(tmp))
        elif value.startswith("models:/"):
            raise WaldoError(f"--init-from {value!r}: a model URI is models:/NAME@ALIAS or "
                             "models:/NAME/VERSION")
        elif value.endswith(".ckpt") or "/" in value or Path(value).exists():
            path, run_id = Path(value).expanduser(), None
            if not path.is_file():
                raise WaldoError(f"--init-from checkpoint {value!r} does not exist")
        else:
            run_id = value
            path = _run_checkpoint(run_id, tracking_uri, Path(tmp))
        checkpoint = _read_checkpoint(path)
    if run_id is not None:
        provenance["init_from.run_id"] = run_id
    else:
        provenance["init_from.checkpoint"] = str(path.resolve())
    h = checkpoint.get("hyper_parameters") or {}
    source_model = h.get("model_name")
    if source_model != model:
        raise WaldoError(f"--init-from {value!r} holds a {source_model!r} network, and this run "
                         f"trains {model!r}: start from a run of the same model")
    state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    mean, std = h.get("mean"), h.get("std")
    args = {k: v for k, v in (h.get("model_args") or {}).items() if k == "transform_input"}
    pretrained = Pretrained(
        state, per_channel(mean, in_channels) if mean else None,
        per_channel(std, in_channels) if std else None, provenance, args)
    return Start(pretrained, model=source_model, task=checkpoint.get("waldo_task", "classify"),
                 labels=h.get("labels"))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # not a torch file
        raise WaldoError(f"--init-from {str(path)!r} is not a Waldo checkpoint "
                         f"({type(exc).__name__}: {one_line(exc)})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WaldoError(f"--init-from {str(path)!r} is not a Waldo checkpoint (no state_dict)")
    return checkpoint


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _registered_run(match: re.Match, uri: str, tracking_uri: str | None) -> str:
    """The source run of a registered model version."""
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        client = _client(tracking_uri)
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, version))
    except Exception as exc:  # unknown name, alias or version; unreachable server
        raise WaldoError(f"--init-from {uri!r}: no such registered model version in the MLflow "
                         f"registry at {tracking_uri} ({one_line(exc)})") from None
    if not mv.run_id:
        raise WaldoError(f"--init-from {uri!r}: version {mv.version} of {name!r} records no "
                         "source run to take a checkpoint from")
    return mv.run_id


def _run_checkpoint(run_id: str, tracking_uri: str | None, downloads: Path) -> Path:
    """A local copy of the run's best checkpoint: its storage location, else its artifact."""
    client = _client(tracking_uri)
    run = read_run(
        client, run_id, tracking_uri,
        unknown=f"--init-from {run_id!r}: no such run, nor checkpoint file, in the MLflow store at "
                f"{tracking_uri} (see --tracking-uri)",
        unreadable=f"--init-from {run_id!r}: cannot read the run from MLflow at {tracking_uri}",
        missing_codes=("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"))
    try:
        return storage.fetch_best_checkpoint(
            run.data.tags, downloads,
            lambda artifact: client.download_artifacts(run_id, artifact, str(downloads)))
    except LookupError as exc:
        if not str(exc):
            raise WaldoError(f"--init-from {run_id!r}: the run records no best checkpoint (tag "
                             f"{storage.BEST_CHECKPOINT_TAG}); it has not finished training") from None
        raise WaldoError(f"--init-from {run_id!r}: cannot read its best checkpoint: {exc}") from None


__all__ = ["Start", "from_earlier", "starting_point"]
