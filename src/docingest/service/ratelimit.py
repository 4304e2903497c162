"""Per-user rate limits (moving one-minute windows, the ``limits`` library); a refusal is 429 with Retry-After."""

from __future__ import annotations

import math
import time

from fastapi import HTTPException
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class RateLimits:
    def __init__(self) -> None:
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, user: str, bucket: str, per_minute: int) -> None:
        item = RateLimitItemPerMinute(per_minute)
        if not self.limiter.hit(item, bucket, user):
            reset_at, _remaining = self.limiter.get_window_stats(item, bucket, user)
            raise HTTPException(429, f"rate limit: {per_minute} {bucket} per minute",
                                headers={"Retry-After": str(max(1, math.ceil(reset_at - time.time())))})
