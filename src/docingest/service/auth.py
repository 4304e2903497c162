"""Bearer tokens and what they grant.

Tokens are HS256 with ``DOCINGEST_JWT_SECRET``, or RS256/ES256/PS256/EdDSA with the keys of
``DOCINGEST_JWT_JWKS_URL``; ``sub`` (the user, not blank) and ``exp`` are required. Grants are claims:

- ``collections`` (name set by ``DOCINGEST_JWT_COLLECTIONS_CLAIM``): the collections its holder may write (upload
  into) and read, as names or glob patterns (``team-a-*``; ``*`` for all). Without it, nothing.
- ``read`` (``DOCINGEST_JWT_READ_CLAIM``): collections it may only read (search), in the same shape.
- ``priorities``: the job priorities it may ask for; default ``["normal"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from fastapi import HTTPException
from fastapi.security import HTTPBearer

from docingest.exceptions import ConfigurationError
from docingest.service.uploads import PRIORITIES
from docingest.settings import DocingestSettings

bearer = HTTPBearer(auto_error=False, description="A JWT whose `sub` claim names the user and whose `collections` "
                                                  "claim names what it may write.")
DEFAULT_PRIORITIES = ("normal",)


def _patterns(value: object) -> tuple[str, ...]:
    """A claim's collection patterns: a list of strings (one string is taken as a list of one); anything else grants
    nothing."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(p for p in value if isinstance(p, str) and p.strip())


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Caller:
    """The authenticated holder of a token and its grants."""

    user: str
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    priorities: tuple[str, ...] = DEFAULT_PRIORITIES

    def may_write(self, collection: str) -> bool:
        return _matches(collection, self.write)

    def may_read(self, collection: str) -> bool:
        return _matches(collection, self.read) or self.may_write(collection)

    def check_write(self, collection: str, priority: str = "normal") -> None:
        """403 unless the token may upload into ``collection`` at ``priority``; the answer says nothing about the
        collection (whether it exists, who may write it)."""
        if not self.may_write(collection):
            raise HTTPException(403, "forbidden")
        if priority in PRIORITIES and priority not in self.priorities:
            raise HTTPException(403, f"priority {priority!r} is not granted to this token")

    def check_read(self, collection: str) -> None:
        if not self.may_read(collection):
            raise HTTPException(403, "forbidden")


class Authenticator:
    """Checks a token's signature and claims; the keys of an identity provider are cached (refetched for an unknown
    key id). ``uses_network``: a check may fetch keys, so callers keep it off the event loop."""

    def __init__(self, settings: DocingestSettings) -> None:
        import jwt

        if not settings.jwt.secret and not settings.jwt.jwks_url:
            raise ConfigurationError("the upload service needs DOCINGEST_JWT_SECRET (HS256 key for bearer tokens) or "
                                     "DOCINGEST_JWT_JWKS_URL (an identity provider's keys)")
        self.secret = settings.jwt.secret.get_secret_value() if settings.jwt.secret else None
        self.jwks = jwt.PyJWKClient(settings.jwt.jwks_url, cache_keys=True, lifespan=300, timeout=10) \
            if settings.jwt.jwks_url else None
        self.checks: dict[str, Any] = {"options": {"require": ["sub", "exp"]}, "audience": settings.jwt.audience,
                       "issuer": settings.jwt.issuer}
        self.collections_claim, self.read_claim = settings.jwt.collections_claim, settings.jwt.read_claim
        self.uses_network = self.jwks is not None

    def caller(self, token: str | None) -> Caller:
        """The token's holder and grants; HTTPException 401 for a missing or invalid token (a blank ``sub`` too),
        503 when the identity provider's keys are unreachable."""
        claims = self._claims(token)
        user = claims.get("sub")
        if not isinstance(user, str) or not user.strip():
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        priorities = claims.get("priorities", list(DEFAULT_PRIORITIES))
        priorities = tuple(p for p in _patterns(priorities) if p in PRIORITIES)
        return Caller(user=user, write=_patterns(claims.get(self.collections_claim)),
                      read=_patterns(claims.get(self.read_claim)), priorities=priorities)

    def _claims(self, token: str | None) -> dict:
        import jwt

        if not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            if self.jwks is not None and jwt.get_unverified_header(token).get("alg") != "HS256":
                key = self.jwks.get_signing_key_from_jwt(token).key
                return jwt.decode(token, key, algorithms=["RS256", "ES256", "PS256", "EdDSA"], **self.checks)
            if self.secret is not None:
                return jwt.decode(token, self.secret, algorithms=["HS256"], **self.checks)
            raise jwt.InvalidTokenError("no key for this token")
        except jwt.PyJWKClientConnectionError:
            raise HTTPException(503, "the identity provider's keys are unreachable; retry later") from None
        except (jwt.PyJWTError, ValueError):
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"}) from None
