"""A small client for the jobs API (standard library only), used by `waldo jobs`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class JobsApiError(Exception):
    """The API answered with an error, or could not be reached; the message says which."""


class JobsClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def _request(self, method: str, path: str, body: Any = None, raw: bool = False):
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read().decode()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = text[:300] or exc.reason
            raise JobsApiError(f"{exc.code} from {self.url}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JobsApiError(f"cannot reach the jobs API at {self.url}: {reason}") from None
        return payload if raw else json.loads(payload)

    def submit(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/v1/jobs", {"kind": kind, "spec": spec})

    def list(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/jobs")["jobs"]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def logs(self, job_id: str, tail: int | None = None) -> str:
        query = f"?tail={tail}" if tail else ""
        return self._request("GET", f"/v1/jobs/{job_id}/logs{query}", raw=True)

    def stop(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/jobs/{job_id}")
