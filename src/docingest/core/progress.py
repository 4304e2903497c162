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
