"""The registry client and the small questions every registry operation asks: who is acting,
what a version's card says, which version an alias points at.

mlflow is imported inside the functions (as in serving.repository), so importing this module
costs nothing where no registry is used.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from pathlib import Path

from serving.modelcard import CARD_FILE, ModelCard


class RegistryError(Exception):
    """A registry operation refused, in one line that names the bad value and what is accepted."""


class UnknownModel(RegistryError):
    """The model, version or alias named does not exist (an API answers 404)."""


def default_tracking_uri(uri: str | None = None) -> str:
    """The URI asked for, else $MLFLOW_TRACKING_URI, else a SQLite store in the working folder:
    the same default as training's runs, so `waldo history` reads what `waldo export` wrote."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def registry_client(tracking_uri: str | None):
    """An MlflowClient whose registry is the tracking server (as Waldo publishes there)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def actor(explicit: str | None = None) -> str:
    """Who acts, for the history: `explicit` (e.g. the jobs API's caller), else $WALDO_USER,
    else the local `user@host`."""
    if explicit:
        return explicit
    if os.environ.get("WALDO_USER"):
        return os.environ["WALDO_USER"]
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (e.g. a container's numeric uid)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _mlflow_error(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException)


def registered_model(client, name: str):
    """The registered model `name`, or RegistryError naming it and the registry."""
    try:
        return client.get_registered_model(name)
    except Exception as exc:
        if _mlflow_error(exc) and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownModel(f"unknown model {name!r} in the registry at "
                                f"{_where(client)}") from None
        raise RegistryError(f"cannot read model {name!r} from the registry at "
                            f"{_where(client)}: {one_line(exc)}") from None


def versions(client, name: str) -> list[str]:
    """The version numbers of `name`, ascending."""
    found = client.search_model_versions(f"name = '{_quoted(name)}'")
    return sorted((str(mv.version) for mv in found), key=int)


def model_version(client, name: str, version: str):
    """Version `version` of `name`, or RegistryError listing the versions there are."""
    registered_model(client, name)
    if not str(version).isdigit():
        raise UnknownModel(f"version {version!r} of {name!r} is not a version number; "
                            f"its versions: {_listed(versions(client, name))}")
    try:
        return client.get_model_version(name, str(version))
    except Exception as exc:
        if _mlflow_error(exc) and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownModel(f"model {name!r} has no version {version}; its versions: "
                                f"{_listed(versions(client, name))}") from None
        raise RegistryError(f"cannot read version {version} of {name!r}: {one_line(exc)}") from None


def version_card(client, name: str, version: str) -> ModelCard:
    """The model card of one version, downloading only its modelcard.json."""
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as repository.fetch
    from mlflow.artifacts import download_artifacts

    model_version(client, name, version)
    location = client.get_model_version_download_uri(name, str(version)).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="waldo-card-") as tmp:
        try:
            path = download_artifacts(artifact_uri=f"{location}/{CARD_FILE}", dst_path=tmp,
                                      tracking_uri=client.tracking_uri,
                                      registry_uri=_where(client))
            return ModelCard.model_validate_json(Path(path).read_text())
        except ValueError as exc:
            raise RegistryError(f"version {version} of {name!r} has no valid {CARD_FILE}: "
                                f"{one_line(exc)}") from None
        except Exception as exc:
            raise RegistryError(f"version {version} of {name!r} has no {CARD_FILE}; was it "
                                f"registered by `waldo export`? ({one_line(exc)})") from None


def holder(client, name: str, alias: str) -> str | None:
    """The version `alias` points at, or None where the model has no such alias."""
    model = registered_model(client, name)
    version = (model.aliases or {}).get(alias)
    return None if version is None else str(version)


def aliases(client, name: str) -> dict[str, str]:
    """{alias: version} of model `name`."""
    return {a: str(v) for a, v in (registered_model(client, name).aliases or {}).items()}


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def _listed(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def one_line(exc: Exception) -> str:
    """An exception as one short line (MLflow's messages may span lines and embed bodies)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:300]


def tag_json(model, key: str) -> dict | None:
    """The JSON value of one registered-model tag, or None (absent or not JSON)."""
    raw = (model.tags or {}).get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _where(client) -> str:
    """The registry's URI (Waldo's clients keep it equal to the tracking URI)."""
    return getattr(client, "_registry_uri", None) or client.tracking_uri
