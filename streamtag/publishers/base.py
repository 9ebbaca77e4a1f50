"""The one shape every publisher has: a sink that the live runner feeds.

A sink never reaches into the engine or the runner: everything it shows arrives through these calls, made from
the runner's threads (a sink that does slow work must hand it off, never block the caller).
"""
from __future__ import annotations

from typing import Protocol

from ..errors import StreamtagError
from ..events import GenreUpdate

__all__ = ["Sink"]


class Sink(Protocol):
    """Receives what happens on the live streams, in order per stream."""

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        """Stream ``name`` exists now; ``source`` is a display form of its input (no credentials)."""

    def on_update(self, updates: list[GenreUpdate]) -> None:
        """A batch of updates (one engine step; several streams, time order within each)."""

    def on_title(self, name: str, title: str | None) -> None:
        """The stream's ICY/playlist title changed."""

    def on_status(self, name: str, kind: str, detail: str) -> None:
        """A source event such as ``("reconnecting", "in 2.0 s (attempt 3)")`` or ``("connected", url)``."""

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        """Stream ``name`` ended (``error`` None: it ended or was removed cleanly)."""
