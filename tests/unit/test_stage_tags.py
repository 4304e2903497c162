"""A run's stage tasks keep their tags (and Prefect's tag concurrency limits) wherever a limit can apply, and drop
them on a temporary API server whose database holds none (each tagged task run would ask that server for slots)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from docingest.flows import locks
from docingest.tasks.common import STAGE_TAGS
from docingest.tasks.stages import Stages, stages_for_run

pytestmark = pytest.mark.unit


def test_untagged_stages_keep_everything_but_their_tags():
    tagged, untagged = Stages(), stages_for_run(tagged=False)
    for name, task in vars(untagged).items():
        original = getattr(tagged, name)
        assert task.tags == set() and original.tags  # the module's tasks are left as they are
        kept = ("name", "fn", "task_run_name", "retries", "retry_delay_seconds", "retry_condition_fn", "cache_key_fn",
                "cache_policy", "cache_expiration", "persist_result", "result_storage")
        assert {k: getattr(task, k) for k in kept} == {k: getattr(original, k) for k in kept}, name
    assert stages_for_run() == Stages()  # nothing to change: the module's own tasks


def test_result_storage_goes_to_the_parse_tasks_only():
    storage = "local-file-system/parse-cache"
    stages = stages_for_run(storage)
    assert stages.prepare.result_storage == storage == stages.prepare_batch.result_storage
    assert stages.prepare.tags == Stages().prepare.tags == {"docingest", "docingest-parse"}
    assert stages.embed is Stages().embed and stages.embed.result_storage is None


@pytest.mark.parametrize(("temporary", "limits", "expected"), [
    (False, [], True),  # a Prefect server: an operator may create a limit at any time
    (True, [], False),  # a temporary API without limits: no slot calls
    (True, ["tag:nightly"], False),  # limits on other tags do not matter
    (True, ["tag:docingest-embed"], True),  # a limit on a stage's tag holds on the temporary API too
    (True, None, True),  # the limits cannot be read: they may apply
])
def test_stage_limits_apply(monkeypatch, temporary, limits, expected):
    def read_global_concurrency_limits(limit, offset):
        if limits is None:
            raise ConnectionError("no API")
        return [SimpleNamespace(name=name) for name in limits]

    client = SimpleNamespace(read_global_concurrency_limits=read_global_concurrency_limits)
    monkeypatch.setattr("docingest.ephemeral.temporary_api", lambda: temporary)
    monkeypatch.setattr("prefect.context.FlowRunContext.get", staticmethod(lambda: SimpleNamespace(client=client)))
    assert locks.stage_limits_apply() is expected
    assert "docingest-embed" in STAGE_TAGS
