"""The model repository that serving loads: `<root>/<name>/<version>/{model.onnx, modelcard.json}`.

A repository is either a local folder in that layout (`./models`, written by `waldo export`)
or a model in the MLflow registry, `models:/<name>@<alias>` or `models:/<name>/<version>`,
which is downloaded into a local cache with the same layout. Versions never change once
written, so a cached version is reused as it is.

mlflow is imported only when a `models:/` URI is resolved: a service that loads a local folder
does not need it installed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.modelcard import CARD_FILE, MODEL_FILE, ModelCard

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))/?$")


class RepositoryError(Exception):
    """A model that cannot be found or read, with a message that says which and why."""


@dataclass(frozen=True)
class ModelVersion:
    """One version folder of the repository."""

    name: str
    version: str
    path: Path  # holds MODEL_FILE and CARD_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE

    def card(self) -> ModelCard:
        return load_card(self.card_path)


def load_card(path: str | Path) -> ModelCard:
    try:
        return ModelCard.model_validate_json(Path(path).read_text())
    except FileNotFoundError:
        raise RepositoryError(f"no model card at {path}") from None
    except ValueError as exc:
        raise RepositoryError(f"{path} is not a valid model card: {exc}") from None


def _complete(path: Path) -> bool:
    return (path / MODEL_FILE).is_file() and (path / CARD_FILE).is_file()


def _newest_version(model_dir: Path) -> ModelVersion | None:
    versions = [p for p in model_dir.iterdir() if p.name.isdigit() and _complete(p)]
    if not versions:
        return None
    newest = max(versions, key=lambda p: int(p.name))
    return ModelVersion(model_dir.name, newest.name, newest)


def scan(root: str | Path) -> dict[str, ModelVersion]:
    """The newest complete version of each model in a local repository folder."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {str(root)!r} is not a folder")
    found = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (version := _newest_version(model_dir)) is not None:
            found[model_dir.name] = version
    return found


def holds(root: str | Path, name: str) -> bool:
    """Whether the local repository folder `root` holds a complete version of model `name`
    (what `scan` would find for it, without reading the rest of the folder)."""
    model_dir = Path(root) / name
    return not name.startswith(".") and model_dir.is_dir() and _newest_version(model_dir) is not None


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, alias, None); `models:/name/3` -> (name, None, "3")."""
    match = _MODELS_URI.match(uri)
    if not match:
        raise RepositoryError(f"malformed model URI {uri!r}: expected models:/NAME@ALIAS or "
                              "models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def fetch(uri: str, cache: str | Path, tracking_uri: str | None = None) -> ModelVersion:
    """Download a registered model version into `<cache>/<name>/<version>/`.

    The alias is resolved to its version number first, so the cache holds versions, never
    aliases: moving the alias and fetching again brings the new version next to the old one.
    """
    # A service's log gets one line per fetch, not MLflow's progress bars (a user's own setting
    # of the variable wins).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_models_uri(uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    where = f" in the MLflow registry at {tracking_uri or mlflow.get_registry_uri()}"
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RepositoryError(_not_found(client, uri, name, alias, where, exc)) from None
    except Exception as exc:  # unreachable server
        raise RepositoryError(f"cannot resolve {uri}{where}: {exc}") from None
    target = Path(cache) / name / str(mv.version)
    if _complete(target):
        return ModelVersion(name, str(mv.version), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
    try:
        location = client.get_model_version_download_uri(name, str(mv.version)).rstrip("/")
        for filename in (MODEL_FILE, CARD_FILE):
            try:
                download_artifacts(artifact_uri=f"{location}/{filename}", dst_path=str(tmp),
                                   tracking_uri=tracking_uri, registry_uri=tracking_uri)
            except MlflowException as exc:
                raise RepositoryError(f"{uri} (version {mv.version}) has no {filename}; was "
                                      f"it registered by `waldo export`? ({exc.message})") from None
        load_card(tmp / CARD_FILE)  # refuse a version whose card does not parse
        try:
            os.rename(tmp, target)
        except OSError:  # another process cached the same version meanwhile
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ModelVersion(name, str(mv.version), target)


def _not_found(client, uri: str, name: str, alias: str | None, where: str, exc) -> str:
    try:
        model = client.get_registered_model(name)
    except Exception:
        return f"unknown model {name!r}{where} ({uri})"
    if alias is not None:
        known = ", ".join(sorted(model.aliases)) or "none"
        return f"model {name!r} has no alias {alias!r}{where}; its aliases: {known}"
    return f"model {name!r} has no version {uri.rsplit('/', 1)[-1]}{where}"


def resolve(source: str | Path, cache: str | Path | None = None,
            tracking_uri: str | None = None) -> dict[str, ModelVersion]:
    """Models to serve from `source`: a `models:/` URI (downloaded into `cache`) or a local
    repository folder (its newest version of each model)."""
    if str(source).startswith("models:/"):
        if cache is None:
            raise RepositoryError(f"resolving {source} needs a cache folder to download into")
        version = fetch(str(source), cache, tracking_uri)
        return {version.name: version}
    return scan(source)
