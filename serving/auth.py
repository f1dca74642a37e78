"""The one bearer-token check of both Waldo services (the inference service and the jobs API).

Each service's `deps.py` wires it to its own setting; the comparison is constant-time
(`secrets.compare_digest`), so response times do not reveal how much of a guess was right.
`check_authorization` takes the raw `Authorization` header, for pure ASGI middleware that must
refuse a request before anything reads its body (the jobs API).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr

from serving.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="the bearer token the service was started with")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def check_token(token: SecretStr | None, presented: str | None) -> None:
    """Pass when `token` is unset (an open endpoint) or `presented` is it; else 401 (no bearer
    token at all) or 403 (a wrong one)."""
    if token is None:
        return
    if presented is None:
        raise ApiError(401, "unauthorized", "this endpoint needs an Authorization: Bearer <token> header",
                       headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(presented.encode(), token.get_secret_value().encode()):
        raise ApiError(403, "forbidden", "the bearer token is not valid for this endpoint")


def check_bearer(token: SecretStr | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    """`check_token` for FastAPI's HTTPBearer dependency."""
    check_token(token, credentials.credentials if credentials is not None else None)


def check_authorization(token: SecretStr | None, header: str | None) -> None:
    """`check_token` for a raw `Authorization` header value, parsed as HTTPBearer parses it (no
    header, another scheme or an empty token count as no bearer token)."""
    scheme, credentials = get_authorization_scheme_param(header)
    presented = credentials if header and scheme.lower() == "bearer" and credentials else None
    check_token(token, presented)
