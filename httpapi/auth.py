"""The one bearer-token check of both Waldo services (the inference service and the jobs API).

Each service's `deps.py` wires it to its own setting; the comparison is constant-time
(`secrets.compare_digest`), so response times do not reveal how much of a guess was right.
`check_authorization` takes the raw `Authorization` header, for pure ASGI middleware that must
refuse a request before anything reads its body (the jobs API), and gRPC's metadata. A request
with two Authorization headers (or metadata entries) is refused (400): which one counts would
otherwise depend on the framework or proxy that reads it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr

from httpapi.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="the bearer token the service was started with")


def single_authorization(values: Sequence[str]) -> str | None:
    """The request's one Authorization value, None without one; 400 for two or more."""
    if len(values) > 1:
        raise ApiError(400, "bad_request", f"{len(values)} Authorization headers (gRPC: authorization "
                                           "metadata entries); send exactly one")
    return values[0] if values else None


async def _credentials(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                                Depends(bearer)]):
    single_authorization(request.headers.getlist("authorization"))  # HTTPBearer reads the first
    return credentials


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_credentials)]


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


def check_authorization(token: SecretStr | None, header: str | Sequence[str] | None) -> None:
    """`check_token` for a raw `Authorization` header value (or all of a request's values, which
    must be one at most), parsed as HTTPBearer parses it (no header, another scheme or an empty
    token count as no bearer token)."""
    if header is not None and not isinstance(header, str):
        header = single_authorization(header)
    scheme, credentials = get_authorization_scheme_param(header)
    presented = credentials if header and scheme.lower() == "bearer" and credentials else None
    check_token(token, presented)
