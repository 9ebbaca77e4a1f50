"""JSON-lines publisher: one ``GenreUpdate.to_json()`` line per update (schema: docs/events.md)."""
from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any, TextIO

from ..errors import StreamtagError, output_failed
from ..events import GenreUpdate, to_dicts

__all__ = ["JsonlSink"]

log = logging.getLogger(__name__)


class JsonlSink:
    """A sink writing every update as one JSON line to ``out``, flushed per batch (thread-safe).

    ``top`` keeps only the K most probable genres in each line's ``top``. Only updates go to ``out``: stream
    and source events are for the terminal (``streamtag.app`` prints them on stderr), so ``out`` stays a pure
    stream of update lines. A reader that goes away (closed pipe) ends the writing quietly; an output that takes
    no more (a full disk) ends it too, and when ``out`` is stdout the command ends with one line saying so.
    """

    def __init__(self, out: TextIO, *, top: int | None = None) -> None:
        if top is not None and top < 1:
            raise StreamtagError(f"--top must be at least 1, got {top}")
        self.out = out
        self.top = top
        self.lines = 0  # lines written
        self.broken = False  # the reader went away
        self._lock = threading.Lock()

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        pass

    def on_update(self, updates: list[GenreUpdate]) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                for d in to_dicts(updates):
                    if self.top is not None:
                        d["top"] = d["top"][: self.top]
                    self.out.write(json.dumps(d, ensure_ascii=False) + "\n")
                    self.lines += 1
                self.out.flush()
            except (BrokenPipeError, ValueError):  # reader closed the pipe / file closed
                self.broken = True
                log.info("JSON-lines output closed; no more updates are written")
                if self.out is sys.stdout:
                    output_failed(BrokenPipeError(32, "Broken pipe"))
            except OSError as e:  # a full disk, an I/O error: one line, not a traceback per update
                self.broken = True
                if self.out is sys.stdout:
                    output_failed(e)
                else:
                    log.warning("cannot write the JSON lines (%s); no more updates are written", e.strerror or e)

    def write_event(self, event: Any) -> None:
        """One more event line (anything with ``to_dict()``, e.g. a closed :class:`~streamtag.segments.Segment`)."""
        with self._lock:
            if self.broken:
                return
            try:
                self.out.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                self.out.flush()
                self.lines += 1
            except (BrokenPipeError, ValueError):
                self.broken = True

    def on_title(self, name: str, title: str | None) -> None:
        pass

    def on_status(self, name: str, kind: str, detail: str) -> None:
        pass

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        pass

