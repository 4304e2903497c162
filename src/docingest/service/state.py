"""What every route of the service shares (settings, upload store, jobs, limits, metrics, authentication) and the
FastAPI dependencies that hand it out: ``ServiceDep`` and ``User`` (the authenticated, rate-limited caller and its
grants)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from docingest.service.auth import Authenticator, Caller, bearer
from docingest.service.jobs import JobManager
from docingest.service.metrics import ServiceMetrics
from docingest.service.ratelimit import RateLimits
from docingest.service.uploads import UploadStore
from docingest.settings import DocingestSettings

if TYPE_CHECKING:
    from docingest.service.watches import Watches
    from docingest.targets import QdrantTarget


@dataclass
class Service:
    settings: DocingestSettings
    store: UploadStore
    jobs: JobManager
    auth: Authenticator
    limits: RateLimits
    metrics: ServiceMetrics
    watches: Watches | None = None  # the live sources of `serve --watch`
    probes: dict = field(default_factory=dict)  # health check -> its running probe (concurrent calls share one)

    @property
    def qdrant(self) -> QdrantTarget | None:
        """Where search reads: the service's Qdrant server when its settings name one, else the settings' store."""
        from docingest.targets import QdrantTarget

        return QdrantTarget(url=self.settings.qdrant.url) if self.settings.qdrant.url else None

    async def caller(self, token: str | None) -> Caller:
        """The token's holder; a check that may fetch an identity provider's keys runs off the event loop."""
        if self.auth.uses_network:
            return await asyncio.to_thread(self.auth.caller, token)
        return self.auth.caller(token)


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def current_user(service: ServiceDep,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    """The caller named by the bearer token (401 without a valid one), within the per-user request limit (429)."""
    who = await service.caller(credentials.credentials if credentials else None)
    service.limits.check(who.user, "requests", service.settings.rate_limit.requests_per_min)
    return who


User = Annotated[Caller, Depends(current_user)]
