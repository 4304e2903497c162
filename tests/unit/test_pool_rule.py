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


@pytest.mark.parametrize(("documents", "threads", "given", "per_pool"), [
    (1000, 2, None, 125),  # about four pools per worker thread...
    (1000, 1, None, 128),  # ...never more than DOCS_PER_POOL documents in one
    (10_000, 8, None, 128),  # 79 task runs for 10,000 documents, not one per document or chunk
    (5, 2, None, 1),  # a small run: one document per pool, so every worker has work
    (3, 0, None, 1),  # no worker yet: sized as for one thread
    (1000, 2, 16, 16),  # options.docs_per_task wins
])
def test_docs_per_pool_on_a_dask_cluster(documents, threads, given, per_pool):
    from docingest.flows.cluster import DOCS_PER_POOL, docs_per_pool
    from docingest.options import IngestOptions

    options = IngestOptions(docs_per_task=given) if given else IngestOptions()
    assert docs_per_pool(options, documents, threads) == per_pool <= max(DOCS_PER_POOL, given or 0)
