"""The events every publisher sees, and their JSON form (schema: docs/events.md)."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

__all__ = ["GenreUpdate", "Summary", "now_iso", "to_dicts"]


def now_iso() -> str:
    """Wall-clock time as ISO 8601 with milliseconds and a UTC offset."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _r(p: float) -> float:
    return round(float(p), 4) if math.isfinite(p) else 0.0


_HALF_WAY = 1e-6  # |x * 1e4 - (k + 1/2)| below this: x * 1e4 was itself rounded near a tie, ask round()
_NUMPY_RANGE = 1e5  # beyond it x * 1e4 has too few fraction bits for that test: round() too


def _rounded(values: Iterable[float], count: int) -> list[float]:
    """``[_r(v) for v in values]`` (4 decimals, non-finite -> 0.0) for ``count`` values, bit for bit, in one numpy
    pass: ``rint(x * 1e4) / 1e4`` is Python's correctly rounded ``round(x, 4)`` whenever the product's own
    rounding cannot have crossed a tie (both then give the double nearest to k / 10^4); the few values within
    ``_HALF_WAY`` of one, and large ones, go through ``round`` itself."""
    x = np.fromiter(values, dtype=np.float64, count=count)
    x = np.where(np.isfinite(x), x, 0.0)
    scaled = x * 1e4
    out = (np.rint(scaled) / 1e4).tolist()
    risky = (np.abs(scaled - np.floor(scaled) - 0.5) < _HALF_WAY) | (np.abs(x) >= _NUMPY_RANGE)
    for i in np.flatnonzero(risky).tolist():
        out[i] = round(float(x[i]), 4)
    return out


@dataclass
class GenreUpdate:
    """One hop's result for one stream.

    ``t`` is seconds of audio since the stream began, at the end of the window that produced it (the end of
    the music the answer describes: for a model with ``lag_frames``, that many frames before the newest audio).
    ``probs`` are smoothed (the bars), ``raw`` are the model's outputs for this window; ``top`` is the smoother's
    genre ranking: ``top[0]`` is the headline genre (the highest bar inside the headline family) with its bar,
    the rest by bar. ``family`` is the headline family (None before the smoother has heard any music: fall back
    to ``top[0][0]``), ``families`` every family's share of the bars (``smoothing.family_shares``; taxonomy order, sums to 1).

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
    family: str | None = None  # the headline family (streamtag.taxonomy); None: not known yet
    families: dict[str, float] = field(default_factory=dict)  # smoothed family probabilities (shares of the bars)

    def to_dict(self) -> dict[str, Any]:
        return to_dicts([self])[0]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def to_dicts(updates: Sequence[GenreUpdate]) -> list[dict[str, Any]]:
    """``[u.to_dict() for u in updates]``, with every update's probabilities rounded in one numpy pass (a live step's
    updates: the sinks' serialization would otherwise round 90 floats per update one by one in Python)."""
    values: list[float] = []
    for u in updates:
        values.extend(p for _, p in u.top)
        values.extend(u.probs.values())
        values.extend(u.raw.values())
        values.extend(u.families.values())
    rounded = _rounded(values, len(values))
    out = []
    i = 0
    for u in updates:
        n_top, n_probs, n_raw, n_fam = len(u.top), len(u.probs), len(u.raw), len(u.families)
        top = rounded[i : i + n_top]
        probs = rounded[i + n_top : i + n_top + n_probs]
        raw = rounded[i + n_top + n_probs : i + n_top + n_probs + n_raw]
        fams = rounded[i + n_top + n_probs + n_raw : i + n_top + n_probs + n_raw + n_fam]
        i += n_top + n_probs + n_raw + n_fam
        d: dict[str, Any] = {
            "type": u.type,
            "stream": u.stream,
            "t": round(u.t, 3),
            "wall": u.wall,
            "model": u.model,
            "family": u.family,
            "families": dict(zip(u.families, fams)),
            "top": [[label, p] for (label, _), p in zip(u.top, top)],
            "probs": dict(zip(u.probs, probs)),
            "raw": dict(zip(u.raw, raw)),
        }
        if u.title is not None:
            d["title"] = u.title
        d.update(u.extra)
        out.append(d)
    return out


@dataclass
class Summary:
    """A whole input's result: mean raw probability of every label over its windows (silent windows left out
    unless every window is silent); ``families``: the families' shares of the mean genre probabilities
    (``smoothing.family_shares``; taxonomy order, sums to 1). ``extra``: ``repaired_samples``, ``silent_windows``."""

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
    families: dict[str, float] = field(default_factory=dict)  # family shares over the input

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
            "families": {k: _r(v) for k, v in self.families.items()},
            **({"partial": True} if self.partial else {}),
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)
