"""In-process progress events, so a CLI or notebook can draw a bar while the flow runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` documents have an outcome; ``path``/``status`` name the latest one, ``source`` its
    source's URI and ``outcome`` its full outcome (a ``DocumentOutcome``), recorded: a success is searchable."""

    done: int
    total: int
    path: str = ""
    status: str = ""
    source: str = ""
    outcome: Any = None


@dataclass(frozen=True)
class PageEvent:
    """Page ``done`` of ``total`` pages of the document at ``path`` was read with OCR (a long scan shows progress)."""

    path: str
    done: int
    total: int


E = TypeVar("E")


class _Listeners(Generic[E]):
    def __init__(self) -> None:
        self._listeners: list[Callable[[E], None]] = []

    def add(self, listener: Callable[[E], None]) -> None:
        self._listeners.append(listener)

    def remove(self, listener: Callable[[E], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, event: E) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken progress bar must never break a run
                pass


_documents: _Listeners[ProgressEvent] = _Listeners()
_pages: _Listeners[PageEvent] = _Listeners()
Listener = Callable[[ProgressEvent], None]
PageListener = Callable[[PageEvent], None]
add_listener, remove_listener, emit = _documents.add, _documents.remove, _documents.emit
add_page_listener, remove_page_listener, emit_page = _pages.add, _pages.remove, _pages.emit
