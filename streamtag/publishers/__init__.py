"""Publishers: sinks the live runner feeds (``base.Sink``): ``jsonl`` (JSON lines), ``dashboard`` (rich terminal),
``websocket`` (server). Import the one you need; this package imports none of them, so a JSON-lines run never
loads rich and a dashboard never loads websockets.

Publishers build on events/errors/protocol (and sources, for the server's client-requested inputs): never the
runner (``streamtag.live``), the engine, or the app loops (``streamtag.app``); tests/test_layers.py checks it.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["status_message", "SILENCE_DB", "is_silent"]

SILENCE_DB = -60.0  # dBFS RMS over a hop's audio below which views show "silence" and hold the genre state


def is_silent(update: Any) -> bool:
    """Whether a GenreUpdate is silence: the engine's own decision (``extra["silence"]``, made once per hop in
    streamtag.pipeline); an update without it (built elsewhere) is judged by ``level_db`` against SILENCE_DB."""
    flag = update.extra.get("silence")
    if isinstance(flag, bool):
        return flag
    level = update.extra.get("level_db")
    return isinstance(level, int | float) and not level >= SILENCE_DB

_ATTEMPT = re.compile(r"attempt\s+(\d+)")
_DELAY = re.compile(r"(?:in\s+)?(\d+(?:\.\d+)?)\s*s\b")


def status_message(kind: str, detail: str) -> str:
    """One line for a source event, the same in every view: ``reconnecting in 2.0 s (attempt 3)``.

    Sources send ``("reconnecting", "attempt 3 in 2.0 s")``-like details (the order of the two facts varies);
    anything unrecognised is shown as ``"<kind>: <detail>"``.
    """
    if kind == "reconnecting":
        attempt, delay = _ATTEMPT.search(detail), _DELAY.search(detail)
        if attempt and delay:
            rest = _ATTEMPT.sub("", _DELAY.sub("", detail, count=1), count=1).strip(" ,;()")
            return f"reconnecting in {float(delay.group(1)):.1f} s (attempt {attempt.group(1)})" + (
                f": {rest}" if rest else "")
    if kind == "connected":
        return "connected" + (f" to {detail}" if detail else "")
    return f"{kind}: {detail}" if detail else kind
