"""/docs and /redoc work without a network: Swagger UI's and ReDoc's files come from the service
(httpapi/docs.py), not a CDN. One real `python -m serving` (the CLI of `waldo serve`, as the
serving image runs it) on an empty model folder, and headless Chromium with every address but
127.0.0.1 cut off: its names do not resolve and anything else goes to a proxy that refuses, so
a page that still needs a CDN renders nothing and the test fails."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Server, free_port, start_server
from support.browser import chromium

pytestmark = pytest.mark.servers

OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
           "--proxy-server=http://127.0.0.1:9")  # the discard port: nothing listens, every fetch fails
# ReDoc's sidebar ends in a link to Redocly with its logo, always fetched from Redocly's CDN and
# dropped when it fails to load: decoration, the one outside request either page makes.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The inference service with no models: the docs need none (ready means alive here)."""
    root = tmp_path_factory.mktemp("docs-offline")
    (root / "models").mkdir()
    running = start_server(lambda port: [sys.executable, "-m", "serving", "--models", str(root / "models"),
                                         "--host", "127.0.0.1", "--port", str(port)],
                           workdir=root, ready="/healthz")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    with chromium(tmp_path, *OFFLINE, console_log=True) as driver:
        yield driver


def operation_count(server: Server) -> int:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    return sum(1 for item in schema["paths"].values() for method in item
               if method in {"get", "put", "post", "delete", "patch", "head", "options"})


def test_assets_come_from_the_service(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
                             ("/redoc", ("redoc.standalone.js",))):
            html = client.get(page).text
            assert "cdn." not in html and "fonts.googleapis" not in html, html
            for asset in assets:
                assert f'"/docs-assets/{asset}"' in html, html
                answer = client.get(f"/docs-assets/{asset}")
                assert answer.status_code == 200 and len(answer.content) > 10_000, asset


def test_the_jobs_api_serves_the_same_docs() -> None:
    """The jobs API's pages use the same files (in-process: its app needs no Ray to show them);
    its /v1 stays behind the token."""
    from fastapi.testclient import TestClient

    from services.jobs.app import create_app
    from services.jobs.settings import JobsSettings

    settings = JobsSettings(token="a-token-of-sufficient-length", ray_address=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as client:
        for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            html = client.get(page).text
            assert f'"/docs-assets/{asset}"' in html and "cdn." not in html, html
            assert client.get(f"/docs-assets/{asset}").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "Waldo jobs"
        assert client.get("/v1/jobs").status_code == 401


def test_docs_render_in_a_browser_without_network(browser, server: Server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = operation_count(server)
    for page, operation in (("/docs", ".opblock"), ("/redoc", "[data-section-id^='operation/']")):
        browser.get(server.url + page)
        WebDriverWait(browser, 60).until(
            lambda d, op=operation: len(d.find_elements(By.CSS_SELECTOR, op)) >= expected,
            message=f"{page}: fewer than {expected} operations rendered")
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        outside = [url for url in loaded if not url.startswith(server.url) and url != REDOC_LOGO]
        assert loaded and not outside, (page, loaded)
        failed = [e["message"] for e in browser.get_log("browser")
                  if e["level"] == "SEVERE" and REDOC_LOGO not in e["message"]]
        assert not failed, (page, failed)
