"""Poison isolation: parse and chunk documents in worker processes that can be killed and replaced.

A document that hangs the parser (Docling on very deep HTML), crashes it (segfault in a native library) or blows up
its memory only fails itself: the parent waits with a time limit, watches the worker's resident memory, kills the
worker when a limit is passed and starts a fresh one for the next document. Workers are also recycled after a number
of documents, since long-running parsers grow in memory.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docingest.core import progress
from docingest.datamodel import Chunk
from docingest.options import ChunkOptions, ParseOptions, PdfMode

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkServerContext, SpawnContext

_POLL_S = 0.1


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to parse and chunk like the flow would (picklable)."""

    parse: ParseOptions
    chunk: ChunkOptions
    pdf_mode: PdfMode
    tokenizer_location: str
    max_tokens: int


@dataclass
class WorkerResult:
    """``kind`` is ok, skip or fail; ``stage`` names the failing stage."""

    kind: str
    parser: str | None = None
    chunks: list[Chunk] | None = None
    pages: int = 0
    stage: str | None = None
    error: str | None = None
    timings: dict[str, float] | None = None
    warning: str | None = None  # e.g. scanned pages OCR could not read, when others could
    ocr_pages: int = 0


def _end_with(owner: int) -> None:
    """Make this worker end as soon as the process that owns it (the flow run's process) is gone, even while it is
    parsing: a fork server's child is not the owner's child, and a run that crashed, was cancelled or killed must not
    leave a parser running for the rest of a document (minutes on a hostile one). A daemon thread waits on a pidfd
    (Linux 5.3+; elsewhere it polls every second) and then kills this process."""

    def wait_and_end() -> None:
        try:
            fd = os.pidfd_open(owner)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [])  # readable once the owner has exited
        else:
            while True:
                try:
                    os.kill(owner, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        os._exit(1)  # already gone before we started
    threading.Thread(target=wait_and_end, name="docingest-owner-watch", daemon=True).start()


def _worker_main(conn: Connection, config: WorkerConfig, env: dict[str, str] | None = None,
                 owner: int | None = None) -> None:  # runs in the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    if owner is not None:
        _end_with(owner)
    if env is not None:  # a fork server's child: take the environment the parent has now, as a spawned one would
        os.environ.clear()
        os.environ.update(env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    logging.getLogger("docling").setLevel(logging.ERROR)  # outcomes go back to the flow, not to our stderr
    warnings.filterwarnings("ignore")
    from transformers import AutoTokenizer

    from docingest.core import faults
    from docingest.core.chunk import build_chunker, chunk_document, model_tokenizer
    from docingest.core.parse import parse_document
    from docingest.exceptions import ChunkError, ParseError, UnsupportedDocumentError

    tokenizer = model_tokenizer(AutoTokenizer.from_pretrained(config.tokenizer_location), config.max_tokens)
    chunker = build_chunker(tokenizer, config.chunk)
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # parent gone (even after SIGKILL): exit quietly
            return
        if message is None:
            return
        path = Path(message)
        faults.in_parser(path.name)
        try:
            started = time.perf_counter()
            parsed = parse_document(path, config.parse, config.pdf_mode,
                                    on_page=lambda done, total: conn.send(("progress", done, total)))
            parsed_at = time.perf_counter()
            result = WorkerResult("ok", parser=parsed.parser, pages=parsed.pages, warning=parsed.warning,
                                  ocr_pages=parsed.ocr_pages)
            result.chunks = chunk_document(parsed.document, chunker)
            result.timings = {"parse": parsed_at - started, "chunk": time.perf_counter() - parsed_at}
        except UnsupportedDocumentError as exc:
            result = WorkerResult("skip", stage="parse", error=str(exc))
        except ParseError as exc:
            result = WorkerResult("fail", stage="parse", error=str(exc))
        except ChunkError as exc:
            result = WorkerResult("fail", stage="chunk", error=str(exc), parser=parsed.parser)
        except MemoryError:
            result = WorkerResult("fail", stage="parse", error="out of memory while parsing")
        except Exception as exc:  # noqa: BLE001 - anything else is this document's failure
            result = WorkerResult("fail", stage="parse", error=f"{type(exc).__name__}: {exc}")
        try:
            conn.send(("result", result))
        except (EOFError, OSError, BrokenPipeError):
            return


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


_context_lock = threading.Lock()
_ctx: Any = None


def _context() -> ForkServerContext | SpawnContext:
    """How workers start. Plain fork is unsafe with threads, torch and tokenizers in the parent; spawn is safe but
    each worker imports Docling again (~4.5 s of CPU). Where it exists (Linux), a fork server: a clean
    single-threaded process started once, which imports Docling once (``worker_preload``) and forks each worker.
    ``DOCINGEST_PARSE_START_METHOD=spawn`` turns it off."""
    global _ctx
    with _context_lock:
        if _ctx is None:
            from docingest.settings import get_settings

            if get_settings().parse.start_method != "spawn" and "forkserver" in mp.get_all_start_methods():
                _ctx = mp.get_context("forkserver")
                _ctx.set_forkserver_preload(["docingest.core.worker_preload"])
            else:
                _ctx = mp.get_context("spawn")
        return _ctx


_main_lock = threading.Lock()


@contextlib.contextmanager
def _callers_script_hidden() -> Iterator[None]:
    """While a worker starts, the caller's script is not named to it: multiprocessing would otherwise run the script
    again in the worker (as ``__mp_main__``), and a script without an ``if __name__ == "__main__":`` guard would start
    its ingest there. The worker needs nothing from the script: its target is docingest's own function. The one place
    that touches multiprocessing's behaviour; tests/integration/test_python_api.py runs an unguarded script."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if main is None or script is None or spec_name is not None:  # python -m, a console script, a notebook
        yield
        return
    with _main_lock:
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = script


def start_server() -> None:
    """Start the fork server now, so it imports Docling while this process does other things (no-op with spawn)."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _runs_once() -> bool:
    """Whether this process exists for one flow run: a deployment's flow-run process, started by a Prefect worker or
    runner (which names the run in PREFECT__FLOW_RUN_ID). There the fork server is stopped as the run's last parse
    worker is, before the run's final state is reported, so nothing of the run outlives it. A process that runs
    several (the upload service, a notebook, the tests) keeps it, and Docling's imports with it, between runs; a CLI
    command's ends with the command."""
    return bool(os.environ.get("PREFECT__FLOW_RUN_ID"))


def _stop_server() -> None:
    """Stop the fork server, if one runs, and wait for it to exit (at once: its workers are stopped first, and it
    skips the interpreter's teardown, see worker_preload). multiprocessing has no public call for this: its
    ``ForkServer._stop`` (Python 3.9+) closes the server's alive pipe and reaps it."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    stop = getattr(server, "_stop", None)
    if stop is not None and getattr(server, "_forkserver_pid", None) is not None:
        stop()


class ParseWorker:
    """One worker process; ``run`` parses one document under the time and memory limits."""

    def __init__(self, config: WorkerConfig, startup_timeout_s: float = 300.0) -> None:
        self.config = config
        self.startup_timeout_s = startup_timeout_s
        self.proc: Any = None
        self.conn: Any = None
        self.done = 0

    def _start(self) -> None:
        ctx = _context()
        parent, child = ctx.Pipe()
        env = dict(os.environ) if ctx.get_start_method() == "forkserver" else None
        proc = ctx.Process(target=_worker_main, args=(child, self.config, env, os.getpid()), daemon=True,
                           name="docingest-parse")
        try:
            with _callers_script_hidden():
                proc.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.proc, self.conn = proc, parent
        self.done = 0
        if not parent.poll(self.startup_timeout_s):
            self.stop()
            raise RuntimeError("parse worker did not start in time")
        try:
            parent.recv()
        except EOFError as exc:
            self.proc.join(5)
            code = self.proc.exitcode  # read before stop(), which forgets the process
            self.stop()
            raise RuntimeError(f"parse worker died at start (exit code {code})") from exc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def run(self, path: Path) -> WorkerResult:
        if not self.alive() or self.done >= self.config.parse.recycle_after:
            self.stop()
            self._start()
        limit_s, limit_mb = self.config.parse.timeout_s, self.config.parse.max_memory_mb
        self.conn.send(str(path))
        started = time.monotonic()
        deadline, extended = started + limit_s, False
        while True:
            while not self.conn.poll(_POLL_S):
                if not self.proc.is_alive():
                    return self._crashed()
                if time.monotonic() > deadline:
                    self.stop()
                    waited = time.monotonic() - started
                    error = (f"timeout: parsing took longer than {limit_s:g} s" if not extended else
                             f"timeout: parsing took {waited:.0f} s, past the {limit_s:g} s limit and the page limit "
                             f"after the last page read with OCR")
                    return WorkerResult("fail", stage="parse", error=error)
                rss = _rss_mb(self.proc.pid)
                if rss > limit_mb:
                    self.stop()
                    return WorkerResult(
                        "fail", stage="parse", error=f"memory limit: parser used {rss:.0f} MB > {limit_mb} MB"
                    )
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the pipe closed: the worker died
                return self._crashed()
            if message[0] == "progress":
                # A page was read with OCR: each page has its own limit, so a long scan never trips the document's
                # limit while it advances; a stuck page still ends at the page limit (and the document's then).
                deadline = max(deadline, time.monotonic() + self.config.parse.ocr_page_timeout_s + limit_s)
                extended = True
                progress.emit_page(progress.PageEvent(path.name, message[1], message[2]))
                continue
            self.done += 1
            return message[1]

    def _crashed(self) -> WorkerResult:
        self.proc.join(5)
        code = self.proc.exitcode
        self.stop()
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return WorkerResult("fail", stage="parse", error=f"parser crashed ({why})")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            self.proc.join(0.5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        try:
            self.conn.close()
        except OSError:
            pass
        self.proc = self.conn = None


class WorkerPool:
    """A fixed number of parse workers shared by the flow's threads; each thread borrows one per document."""

    def __init__(self, config: WorkerConfig, size: int) -> None:
        self.config = config
        self._idle: queue.Queue[ParseWorker] = queue.Queue()
        self._all = [ParseWorker(config) for _ in range(size)]
        for w in self._all:
            self._idle.put(w)

    def run(self, path: Path) -> WorkerResult:
        worker = self._idle.get()
        try:
            return worker.run(path)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        for w in self._all:
            w.stop()


_pools: dict[tuple, WorkerPool] = {}  # one pool per process and configuration
_pools_lock = threading.Lock()


def get_pool(config: WorkerConfig, size: int) -> WorkerPool:
    key = (config.parse.model_dump_json(), config.chunk.model_dump_json(), config.pdf_mode, config.tokenizer_location,
           config.max_tokens, size)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = WorkerPool(config, size)
        return _pools[key]


_runs = 0  # runs in this process that may use the pools


@contextlib.contextmanager
def pools_in_use() -> Iterator[None]:
    """Held by a run for its duration: the parse workers are shared by every run in the process (a service runs
    several at once), and closed when the last run using them ends, never under another run's feet."""
    global _runs
    with _pools_lock:
        _runs += 1
    try:
        yield
    finally:
        with _pools_lock:
            _runs -= 1
            if _runs == 0:
                _close_all()


def close_pools() -> None:
    """Close every pool now (no run may be using them)."""
    with _pools_lock:
        _close_all()


def _close_all() -> None:
    for pool in _pools.values():
        pool.close()
    _pools.clear()
    if _runs_once() and _ctx is not None and _ctx.get_start_method() == "forkserver":
        _stop_server()
