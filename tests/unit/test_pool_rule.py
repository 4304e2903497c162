"""When gathered chunks go to the encoder (flows/writer.pool_ready): a pure rule."""

import pytest

from docingest.flows.writer import MIN_POOL, pool_ready

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("pending", "pool_size", "busy", "idle", "ready"), [
    (0, 1024, False, True, False),  # nothing to encode, ever
    (1024, 1024, True, False, True),  # a full pool goes even while the encoder works
    (1500, 1024, True, False, True),
    (MIN_POOL, 1024, False, False, True),  # an idle encoder starts on 64 chunks
    (MIN_POOL - 1, 1024, False, False, False),  # ...not fewer, unless nothing else is coming
    (MIN_POOL - 1, 1024, False, True, True),
    (500, 1024, True, False, False),  # a busy encoder: the pool keeps growing
    (500, 1024, True, True, False),
    (16, 16, True, False, True),  # a small pool size is full early
    (10, 16, False, False, False),  # min(64, pool size) = 16
])
def test_pool_ready(pending, pool_size, busy, idle, ready):
    assert pool_ready(pending, pool_size, encoder_busy=busy, idle=idle) is ready
