"""API keys in ``X-API-Key``: compared in constant time, never logged, never stored."""

from __future__ import annotations

import hashlib
import hmac
import logging

from fastapi import Request

from service.problems import Problem

log = logging.getLogger("midiffusion.service")
ANONYMOUS = "anonymous"


class AuthConfigError(RuntimeError):
    """The gateway would run open without meaning to."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyAuth:
    """Checks a presented key against every configured key.

    Keys are hashed first, so every comparison is between equal-length digests, and the loop
    never stops early, so the time taken says nothing about which key (or how much of one)
    matched. The principal recorded on a job is a short hash of the key, never the key.
    """

    def __init__(self, keys: list[str], *, disabled: bool) -> None:
        if not keys and not disabled:
            raise AuthConfigError(
                "no API keys configured: set MIDIFF_API_KEYS (comma-separated), or set "
                "MIDIFF_AUTH_DISABLED=1 to run without authentication (local use only)"
            )
        self.disabled = disabled
        self._digests = [_digest(k) for k in keys]
        if disabled:
            log.warning(
                "AUTHENTICATION IS DISABLED (MIDIFF_AUTH_DISABLED=1): anyone who can reach this "
                "port can submit jobs and read results"
            )

    def principal_for(self, presented: str | None) -> str | None:
        """The principal for a presented key, or None if it matches no key."""
        if presented is None:
            return None
        digest = _digest(presented)
        matched = None
        for known in self._digests:
            if hmac.compare_digest(digest, known) and matched is None:
                matched = known
        return None if matched is None else matched.hex()[:16]

    def __call__(self, request: Request) -> str:
        """FastAPI dependency: the caller's principal, or 401."""
        if self.disabled:
            return ANONYMOUS
        presented = request.headers.get("x-api-key")
        if not presented:
            raise Problem(
                401,
                "missing-api-key",
                "this endpoint needs an API key in the X-API-Key header",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        principal = self.principal_for(presented)
        if principal is None:
            raise Problem(
                401,
                "invalid-api-key",
                "the API key in X-API-Key is not valid",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        return principal
