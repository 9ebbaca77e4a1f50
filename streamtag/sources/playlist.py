"""Several sources one after another as one stream (the ``demo`` command's clips)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import close_quietly

__all__ = ["Playlist"]

class Playlist:
    """Plays ``items`` in turn as one source; ``title`` names the one playing.

    ``items`` are (title, opener) pairs; each opener is called when its turn comes and returns an iterable of
    (N,) float32 blocks (a :class:`~streamtag.sources.Source`). ``close()`` may be called from any thread.
    """

    def __init__(self, items: Iterable[tuple[str, Callable[[], Any]]], *, name: str = "playlist") -> None:
        self.items = list(items)
        self.name = name
        self.title: str | None = self.items[0][0] if self.items else None
        self._current: Any = None
        self._closed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        for title, opener in self.items:
            if self._closed:
                return
            self.title = title
            self._current = opener()
            try:
                yield from self._current
            finally:
                close_quietly(self._current)

    def close(self) -> None:
        self._closed = True
        if self._current is not None:
            close_quietly(self._current)
