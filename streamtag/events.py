"""The events every publisher sees, and their JSON form (schema: docs/events.md)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["GenreUpdate", "Summary", "now_iso"]


def now_iso() -> str:
    """Wall-clock time as ISO 8601 with milliseconds and a UTC offset."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _r(p: float) -> float:
    return round(float(p), 4) if math.isfinite(p) else 0.0


@dataclass
class GenreUpdate:
    """One hop's result for one stream.

    ``t`` is seconds of audio since the stream began, at the end of the window that produced it (the end of
    the music the answer describes: for a model with ``lag_frames``, that many frames before the newest audio).
    ``probs`` are smoothed, ``raw`` are the model's outputs for this window; ``top`` is the smoother's ranking:
    ``top[0]`` is the smoothed (held) top genre with its smoothed probability, the rest by smoothed probability.

    ``extra`` (flattened into the JSON form): ``level_db`` (dBFS RMS of the hop the answer describes),
    ``silence`` (True when that level is below ``pipeline.SILENCE_DB``: the smoothed state was not moved by
    this hop); live updates also carry ``latency_ms``, ``overruns`` and ``repaired`` (samples of the stream
    repaired so far: non-finite zeroed, beyond ``pipeline.CLIP_LEVEL`` clipped).
    """

    stream: str
    t: float
    top: list[tuple[str, float]]
    probs: dict[str, float]
    raw: dict[str, float]
    model: str
    wall: str = field(default_factory=now_iso)
    title: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # level_db, silence, latency_ms, overruns, repaired
    type: str = "update"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "stream": self.stream,
            "t": round(self.t, 3),
            "wall": self.wall,
            "model": self.model,
            "top": [[label, _r(p)] for label, p in self.top],
            "probs": {k: _r(v) for k, v in self.probs.items()},
            "raw": {k: _r(v) for k, v in self.raw.items()},
        }
        if self.title is not None:
            d["title"] = self.title
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass
class Summary:
    """A whole input's result: mean raw probability of every label over its windows (silent windows left out
    unless every window is silent). ``extra``: ``repaired_samples``, ``silent_windows``."""

    stream: str
    duration: float
    mean: dict[str, float]
    top: list[tuple[str, float]]
    model: str
    windows: int
    wall: str = field(default_factory=now_iso)
    partial: bool = False  # True: the input was interrupted; this describes what was tagged before that
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. repaired_samples
    type: str = "summary"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "stream": self.stream,
            "duration": round(self.duration, 3),
            "wall": self.wall,
            "model": self.model,
            "windows": self.windows,
            "top": [[label, _r(p)] for label, p in self.top],
            "mean": {k: _r(v) for k, v in self.mean.items()},
            **({"partial": True} if self.partial else {}),
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)
