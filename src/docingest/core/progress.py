"""In-process progress events, so a CLI or notebook can draw a bar while the flow runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` documents have an outcome; ``path``/``status`` name the latest one."""

    done: int
    total: int
    path: str = ""
    status: str = ""


Listener = Callable[[ProgressEvent], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def emit(event: ProgressEvent) -> None:
    for listener in list(_listeners):
        try:
            listener(event)
        except Exception:  # noqa: BLE001 - a broken progress bar must never break a run
            pass


@dataclass(frozen=True)
class PageEvent:
    """Page ``done`` of ``total`` pages of the document at ``path`` was read with OCR (a long scan shows progress)."""

    path: str
    done: int
    total: int


PageListener = Callable[[PageEvent], None]
_page_listeners: list[PageListener] = []


def add_page_listener(listener: PageListener) -> None:
    _page_listeners.append(listener)


def remove_page_listener(listener: PageListener) -> None:
    if listener in _page_listeners:
        _page_listeners.remove(listener)


def emit_page(event: PageEvent) -> None:
    for listener in list(_page_listeners):
        try:
            listener(event)
        except Exception:  # noqa: BLE001
            pass
