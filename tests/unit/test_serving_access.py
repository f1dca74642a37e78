"""Who may do what on the inference service, in-process (FastAPI's TestClient runs the
lifespan) on a repository folder without models, so no training is needed: repository control
is off unless an admin key or WALDO_MODEL_CONTROL=explicit turns it on; `protect_info` puts
the information endpoints behind the key while liveness and readiness stay open; callers see
no absolute server path without the admin key."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.app import create_app
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.settings import Settings

CONTROL = [("POST", "/v2/repository/models/cnn/load"), ("POST", "/v2/repository/models/cnn/unload"),
           ("POST", "/v1/models/cnn/reload")]
INFO = [("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/v1/models/cnn"), ("GET", "/docs"),
        ("GET", "/openapi.json"), ("GET", "/redoc"), ("GET", "/v2"), ("GET", "/v2/models/cnn"),
        ("GET", "/v2/models/cnn/config"), ("GET", "/v2/models/cnn/stats"), ("GET", "/v2/models/stats"),
        ("POST", "/v2/repository/index")]
OPEN = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/cnn/ready"), ("GET", "/"), ("GET", "/page.js")]


def client(root: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(models=[str(root)], **settings)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("keys", [{}, {"api_key": "user-key-0123"}, {"model_control": "none",
                                                                      "admin_key": "admin-key-0123"}])
def test_repository_control_is_off_unless_asked_for(tmp_path, keys) -> None:
    with client(tmp_path, **keys) as c:
        for method, path in CONTROL:
            for headers in ({}, bearer("user-key-0123"), bearer("admin-key-0123")):
                answer = c.request(method, path, headers=headers)
                assert answer.status_code == 403, (path, answer.text)
                message = answer.json()["error"]
                message = message if path.startswith("/v2") else message["message"]
                assert "WALDO_ADMIN_KEY" in message and "WALDO_MODEL_CONTROL=explicit" in message


@pytest.mark.parametrize("keys, token", [({"admin_key": "admin-key-0123"}, "admin-key-0123"),
                                         ({"model_control": "explicit"}, None),
                                         ({"model_control": "explicit", "api_key": "user-key-0123"},
                                          "user-key-0123")])
def test_repository_control_on_asks_for_its_key(tmp_path, keys, token) -> None:
    """On, it answers as the repository does (404: the folder holds no `cnn`) for its key only."""
    with client(tmp_path, **keys) as c:
        for method, path in CONTROL:
            if token is not None:
                assert c.request(method, path).status_code == 401, path
                assert c.request(method, path, headers=bearer("wrong-key-0123")).status_code == 403, path
            answer = c.request(method, path, headers=bearer(token) if token else {})
            assert answer.status_code == 404, (path, answer.text)


def test_the_api_key_alone_does_not_open_repository_control(tmp_path) -> None:
    settings = Settings(models=[str(tmp_path)], api_key="user-key-0123")
    assert not settings.repository_control
    assert Settings(models=[str(tmp_path)], admin_key="a-0123").repository_control
    assert Settings(models=[str(tmp_path)], model_control="explicit").repository_control


@pytest.mark.parametrize("keys, token", [({"api_key": "user-key-0123"}, "user-key-0123"),
                                         ({"api_key": "user-key-0123", "admin_key": "admin-key-0123"},
                                          "admin-key-0123"),
                                         ({"admin_key": "admin-key-0123"}, "admin-key-0123")])
def test_protect_info_puts_information_behind_the_key(tmp_path, keys, token) -> None:
    with client(tmp_path, protect_info=True, **keys) as c:
        for method, path in INFO:
            assert c.request(method, path).status_code == 401, path
            assert c.request(method, path, headers=bearer("wrong-key-0123")).status_code == 403, path
            answer = c.request(method, path, headers=bearer(token))
            assert answer.status_code in (200, 404), (path, answer.text)  # 404: no model `cnn` here
        assert c.get("/openapi.json", headers=bearer(token)).json()["info"]["title"] == "Waldo inference"
        assert "swagger-ui" in c.get("/docs", headers=bearer(token)).text
        for method, path in OPEN:
            assert c.request(method, path).status_code in (200, 400, 404, 503), path


def test_without_protect_info_information_is_open(tmp_path) -> None:
    with client(tmp_path, api_key="user-key-0123") as c:
        for method, path in INFO:
            assert c.request(method, path).status_code in (200, 404), path


def test_protect_info_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="protect_info is set but there is no key"):
        Settings(protect_info=True)


def test_server_paths_are_shown_by_name(tmp_path) -> None:
    repo, cache = tmp_path / "srv" / "models", tmp_path / "cache" / "waldo"
    manager = ModelManager(Settings(models=[str(repo), "digits@production"], cache_dir=str(cache)), Metrics())
    assert manager.public(f"{repo}/cnn/2/model.onnx does not load") == "models/cnn/2/model.onnx does not load"
    assert manager.public(f"no model card at {cache}/digits/3/modelcard.json") == \
        "no model card at waldo/digits/3/modelcard.json"
    assert manager.public(f"model repository {str(repo)!r} is not a folder") == \
        "model repository 'models' is not a folder"
    assert str(tmp_path) not in manager.public(f"{repo} and {cache}")
    assert manager.public("digits@production") == "digits@production"
    uri = f"sqlite:///{tmp_path}/m/db.sqlite"
    store = ModelManager(Settings(models=["digits@production"], tracking_uri=uri), Metrics())
    assert store.public(f"cannot resolve at {uri}") == "cannot resolve at sqlite:///m/db.sqlite"
    assert store.public(f"{Path.cwd()}/x.onnx") == "./x.onnx"


def test_readyz_and_errors_show_no_absolute_path(tmp_path) -> None:
    missing = tmp_path / "secret-place" / "models"
    with client(missing) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["errors"] == ["model repository 'models' is not a folder"]
        assert str(tmp_path) not in ready.text
