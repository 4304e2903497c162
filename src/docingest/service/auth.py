"""Bearer tokens: HS256 with ``DOCINGEST_JWT_SECRET``, or RS256/ES256/PS256/EdDSA with the keys of
``DOCINGEST_JWT_JWKS_URL``; the user is the ``sub`` claim, and ``exp`` is required."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.security import HTTPBearer

from docingest.exceptions import ConfigurationError
from docingest.settings import DocingestSettings

bearer = HTTPBearer(auto_error=False, description="A JWT whose `sub` claim names the user.")


class Authenticator:
    """Checks a token's signature and claims; the keys of an identity provider are cached (refetched for an unknown
    key id). ``uses_network``: a check may fetch keys, so callers keep it off the event loop."""

    def __init__(self, settings: DocingestSettings) -> None:
        import jwt

        if not settings.jwt_secret and not settings.jwt_jwks_url:
            raise ConfigurationError("the upload service needs DOCINGEST_JWT_SECRET (HS256 key for bearer tokens) or "
                                     "DOCINGEST_JWT_JWKS_URL (an identity provider's keys)")
        self.secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300, timeout=10) \
            if settings.jwt_jwks_url else None
        self.checks = {"options": {"require": ["sub", "exp"]}, "audience": settings.jwt_audience,
                       "issuer": settings.jwt_issuer}
        self.uses_network = self.jwks is not None

    def user(self, token: str | None) -> str:
        """The token's user; HTTPException 401 for a missing or invalid token, 503 when the keys are unreachable."""
        import jwt

        if not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            if self.jwks is not None and jwt.get_unverified_header(token).get("alg") != "HS256":
                key = self.jwks.get_signing_key_from_jwt(token).key
                claims = jwt.decode(token, key, algorithms=["RS256", "ES256", "PS256", "EdDSA"], **self.checks)
            elif self.secret is not None:
                claims = jwt.decode(token, self.secret, algorithms=["HS256"], **self.checks)
            else:
                raise jwt.InvalidTokenError("no key for this token")
        except jwt.PyJWKClientConnectionError:
            raise HTTPException(503, "the identity provider's keys are unreachable; retry later") from None
        except (jwt.PyJWTError, ValueError):
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"}) from None
        return str(claims["sub"])
