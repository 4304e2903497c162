"""The run locks of a collection and scope: a whole-source run excludes every other run of that source; runs narrowed
by different filters (two uploads' folders) go at once."""

import subprocess
import sys
import threading
import time

import pytest

from docingest.flows.locks import narrowed, scope_lock
from docingest.settings import DocingestSettings

SCOPE = "file:///uploads"
A = (["u1/**"], [])
B = (["u2/**"], [])


@pytest.fixture
def settings(tmp_path):
    return DocingestSettings(home=tmp_path, prefect={"lock_timeout_s": 0.3})


def waits():
    return pytest.raises(TimeoutError, match=f"another run holds 'kb' / {SCOPE}")


def test_a_narrowed_scope_is_its_own_key():
    assert narrowed(SCOPE) is None
    assert narrowed(SCOPE, ["a/**", "b/**"]) == narrowed(SCOPE, ["b/**", "a/**"])
    assert narrowed(SCOPE, ["a/**"]) != narrowed(SCOPE, ["a/**"], ["*.tmp"]) != narrowed(SCOPE, [], ["*.tmp"])


def test_runs_narrowed_by_different_filters_go_at_once(settings):
    # the same filters wait:
    with scope_lock("kb", SCOPE, settings, A), scope_lock("kb", SCOPE, settings, B), waits(), \
            scope_lock("kb", SCOPE, settings, A):
        pass
    with scope_lock("kb", SCOPE, settings, A):  # released: taken again at once
        pass


def test_a_whole_source_run_and_a_narrowed_one_exclude_each_other(settings):
    with scope_lock("kb", SCOPE, settings), waits(), scope_lock("kb", SCOPE, settings, A):
        pass
    with scope_lock("kb", SCOPE, settings, A), waits(), scope_lock("kb", SCOPE, settings):
        pass
    with scope_lock("kb", SCOPE, settings), scope_lock("kb", "file:///other", settings):  # other scopes: free
        pass


def test_a_whole_source_run_waits_for_narrowed_runs_in_other_threads(settings):
    settings.prefect.lock_timeout_s = None
    entered, order = threading.Barrier(3), []

    def narrowed_run(filters):
        with scope_lock("kb", SCOPE, settings, filters):
            entered.wait(5)  # both narrowed runs hold their locks at once (thread starts: milliseconds)
            time.sleep(0.5)  # a window for a whole-source lock that did not wait to get in first (no condition to
            # wait for: what is tested is that nothing happens); a loaded machine can only make the test miss a bug
            order.append("narrowed")

    runs = [threading.Thread(target=narrowed_run, args=(f,)) for f in (A, B)]
    for run in runs:
        run.start()
    entered.wait(5)
    with scope_lock("kb", SCOPE, settings):
        order.append("whole")
    for run in runs:
        run.join()
    assert order == ["narrowed", "narrowed", "whole"]


def test_a_lock_held_by_another_process_is_waited_for_and_freed_when_it_dies(settings, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from docingest.settings import DocingestSettings;"
         "from docingest.flows.locks import scope_lock;"
         f"s = DocingestSettings(home=Path({str(tmp_path)!r}), prefect={{'lock_timeout_s': None}});"
         f"l = scope_lock('kb', {SCOPE!r}, s, ({A[0]!r}, [])); l.__enter__(); print('held', flush=True);"
         "import threading; threading.Event().wait()"], stdout=subprocess.PIPE, text=True)  # held until killed
    try:
        assert holder.stdout.readline().strip() == "held"
        with waits(), scope_lock("kb", SCOPE, settings):
            pass
        with scope_lock("kb", SCOPE, settings, B):  # another upload's folder: not held
            pass
    finally:
        holder.kill()
        holder.wait()
    with scope_lock("kb", SCOPE, settings):  # the kernel freed the dead holder's locks
        pass
