"""Fault injection for crash tests: ``DOCINGEST_FAULT=<point>:<n>`` SIGKILLs this process the n-th time the flow
passes <point> (``hold:<point>:<n>`` blocks there instead). Unset (always, outside tests) it does nothing. Points:
after-prepare, in-embed, after-upsert, after-finalize, mid-delete; and inside parse workers segfault:<file name>,
hog:<file name>, stall:<file name> and slow-ocr:<seconds per page>."""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()


def checkpoint(point: str) -> None:
    """``DOCINGEST_FAULT=<point>:<n>`` SIGKILLs this process the n-th time it passes ``point``;
    ``hold:<point>:<n>`` blocks the thread there instead, forever (a run to cancel or kill while in that stage)."""
    spec = os.environ.get("DOCINGEST_FAULT")
    if not spec:
        return
    hold = spec.startswith("hold:")
    name, _, n = spec.removeprefix("hold:").partition(":")
    if name != point:
        return
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        reached = _counts[point] >= int(n or 1)
    if reached and hold:
        _report()
        threading.Event().wait()
    if reached:
        os.kill(os.getpid(), signal.SIGKILL)


def _report() -> None:
    """Tell a waiting test that a held fault was reached: the pid in DOCINGEST_FAULT_REPORT's file, when set."""
    if report := os.environ.get("DOCINGEST_FAULT_REPORT"):
        with open(report, "w") as fh:
            fh.write(str(os.getpid()))


def in_parser(name: str) -> None:
    """Inside a parse worker: ``DOCINGEST_FAULT=segfault:<file>`` crashes it, ``hog:<file>`` eats memory,
    ``stall:<file>`` never returns (a parser stuck on a hostile document)."""
    spec = os.environ.get("DOCINGEST_FAULT", "")
    kind, _, target = spec.partition(":")
    if target != name:
        return
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "stall":
        _report()
        threading.Event().wait()
    if kind == "hog":
        import time

        hog = []
        while True:
            hog.append(b"x" * (64 << 20))  # written, so it is resident
            time.sleep(0.02)


def ocr_page() -> None:
    """Before each page OCR reads: ``DOCINGEST_FAULT=slow-ocr:<seconds>`` makes every page take that long more."""
    kind, _, seconds = os.environ.get("DOCINGEST_FAULT", "").partition(":")
    if kind == "slow-ocr":
        import time

        time.sleep(float(seconds))
