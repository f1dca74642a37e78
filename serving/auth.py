"""The one bearer-token check of both Waldo services (the inference service and the jobs API).

Each service's `deps.py` wires it to its own setting; the comparison is constant-time
(`secrets.compare_digest`), so response times do not reveal how much of a guess was right.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from serving.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="the bearer token the service was started with")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def check_bearer(token: SecretStr | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Pass when `token` is unset (an open endpoint) or the request carries it; else 401
    (no bearer token at all) or 403 (a wrong one)."""
    if token is None:
        return
    if credentials is None:
        raise ApiError(401, "unauthorized", "this endpoint needs an Authorization: Bearer <token> header",
                       headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise ApiError(403, "forbidden", "the bearer token is not valid for this endpoint")
