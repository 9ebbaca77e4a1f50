"""Segments: consecutive hops with the same headline family, merged ("folk 0:00-0:42, country 0:42-0:47").

    GenreUpdate (one per hop) -> Segmenter.push -> Segment (when the headline family changes) -> finish

The headline family is ``GenreUpdate.family`` (the smoother's decision, docs/smoothing.md); updates made without
one (a bundle without a taxonomy, or an older smoother) fall back to the family of the top genre in the bundle's
taxonomy, or to the top genre itself. Short blips never become segments because the smoother holds the headline
through them: this module does not second-guess it, it only groups. Silent hops keep the held headline, so a
pause inside a song does not split it.

A segment runs from the end of the previous one (0 for a stream's first) to the ``t`` of its last hop, so a
stream's segments tile its time. ``genre`` is the leading genre inside the family: the one that led the most hops
(ties: the higher mean smoothed probability). ``confidence`` is the mean over the segment's hops of the headline's
probability (the family's smoothed probability when the update carries ``families``, else the top genre's).
``title`` is the ICY title heard during the segment (the last one seen, None when the stream has none).

:class:`SegmentSink` is the live form: a :class:`~streamtag.publishers.base.Sink` that hands every closed segment
to a callback (the ``segment`` event of ``stream``/``serve``, the station log), closing a stream's open segment
when the stream ends.
"""
from __future__ import annotations

import importlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import StreamtagError
from .events import GenreUpdate

__all__ = ["Segment", "Segmenter", "SegmentSink", "segments_of", "family_resolver", "headline"]

log = logging.getLogger(__name__)

FamilyOf = Callable[[str], str]


def family_resolver(bundle: Any = None) -> FamilyOf:
    """genre label -> family name, from the bundle's taxonomy (streamtag.taxonomy) when there is one; otherwise
    every genre is its own family."""
    if bundle is not None:
        try:
            taxonomy = importlib.import_module(f"{__package__}.taxonomy")
            tax = taxonomy.bundle_taxonomy(bundle)
        except (ImportError, AttributeError, StreamtagError, KeyError, TypeError, ValueError):
            tax = None
        if tax is not None:
            def of(genre: str) -> str:
                return tax.family_of(genre) or genre

            return of
    return str


def headline(u: GenreUpdate, family_of: FamilyOf = str) -> tuple[str, float]:
    """The update's headline family and its confidence (``u.family`` when the smoother set it, else the family
    of the top genre)."""
    family = getattr(u, "family", None)
    top_label, top_p = u.top[0] if u.top else ("", 0.0)
    if family is None:
        family = family_of(top_label) if top_label else ""
        return family, float(top_p)
    families = getattr(u, "families", None) or {}
    return family, float(families.get(family, top_p))


@dataclass
class Segment:
    """One stretch of a stream with one headline family. Times are seconds of the stream's audio."""

    stream: str
    start: float
    end: float
    family: str
    genre: str  # the leading genre inside the family
    confidence: float  # mean headline probability over the segment's hops
    hops: int
    title: str | None = None
    model: str = ""
    wall_start: str = ""  # ISO 8601 wall-clock times of the first and last hop
    wall_end: str = ""
    type: str = "segment"

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type, "stream": self.stream, "start": round(self.start, 3), "end": round(self.end, 3),
            "family": self.family, "genre": self.genre, "confidence": round(self.confidence, 4), "hops": self.hops,
            "model": self.model, "wall_start": self.wall_start, "wall_end": self.wall_end,
        }
        if self.title is not None:
            d["title"] = self.title
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass
class _Open:
    start: float
    family: str
    first_wall: str
    model: str
    hops: int = 0
    end: float = 0.0
    last_wall: str = ""
    conf_sum: float = 0.0
    leads: Counter = field(default_factory=Counter)  # genre -> hops it led
    p_sum: dict[str, float] = field(default_factory=dict)  # genre -> sum of its smoothed probability
    title: str | None = None


class Segmenter:
    """Groups one stream's updates (in time order) into segments; ``push`` returns the segment a change closed."""

    def __init__(self, stream: str = "", *, family_of: FamilyOf = str) -> None:
        self.stream = stream
        self.family_of = family_of
        self._open: _Open | None = None
        self._last_end = 0.0  # where the next segment starts

    @property
    def current(self) -> Segment | None:
        """The open segment as it stands (not closed yet)."""
        return self._close_as_segment(self._open) if self._open is not None else None

    def push(self, u: GenreUpdate) -> Segment | None:
        family, conf = headline(u, self.family_of)
        closed = None
        o = self._open
        if o is not None and family != o.family:
            closed = self._close()
            o = None
        if o is None:
            o = self._open = _Open(start=self._last_end, family=family, first_wall=u.wall, model=u.model)
        o.hops += 1
        o.end = u.t
        o.last_wall = u.wall
        o.conf_sum += conf
        genre = self._leading_genre(u, family)
        o.leads[genre] += 1
        o.p_sum[genre] = o.p_sum.get(genre, 0.0) + float(u.probs.get(genre, 0.0))
        if u.title is not None:
            o.title = u.title
        return closed

    def set_title(self, title: str | None) -> None:
        if self._open is not None and title is not None:
            self._open.title = title

    def finish(self) -> Segment | None:
        """The stream ended: close the open segment (None when there is none)."""
        return self._close() if self._open is not None else None

    def _leading_genre(self, u: GenreUpdate, family: str) -> str:
        for label, _ in u.top:  # the highest-ranked genre of the headline family
            if self.family_of(label) == family or label == family:
                return label
        best = max(((p, label) for label, p in u.probs.items() if self.family_of(label) == family), default=None)
        return best[1] if best is not None else (u.top[0][0] if u.top else family)

    def _close(self) -> Segment:
        assert self._open is not None
        seg = self._close_as_segment(self._open)
        self._last_end = seg.end
        self._open = None
        return seg

    def _close_as_segment(self, o: _Open) -> Segment:
        genre = max(o.leads, key=lambda g: (o.leads[g], o.p_sum.get(g, 0.0)))
        return Segment(stream=self.stream, start=o.start, end=max(o.end, o.start), family=o.family, genre=genre,
                       confidence=o.conf_sum / max(1, o.hops), hops=o.hops, title=o.title, model=o.model,
                       wall_start=o.first_wall, wall_end=o.last_wall)


def segments_of(updates: Iterable[GenreUpdate], *, family_of: FamilyOf = str) -> list[Segment]:
    """All segments of one stream's updates (in time order)."""
    seg: Segmenter | None = None
    out: list[Segment] = []
    for u in updates:
        if seg is None:
            seg = Segmenter(u.stream, family_of=family_of)
        closed = seg.push(u)
        if closed is not None:
            out.append(closed)
    if seg is not None:
        last = seg.finish()
        if last is not None:
            out.append(last)
    return out


class SegmentSink:
    """A sink that segments every live stream and calls ``on_segment(segment)`` for each closed one (from the
    runner's threads: the callback must be quick or hand off). A stream's open segment closes when it ends."""

    def __init__(self, on_segment: Callable[[Segment], None], *, family_of: FamilyOf = str) -> None:
        self.on_segment = on_segment
        self.family_of = family_of
        self._streams: dict[str, Segmenter] = {}
        self._lock = threading.Lock()

    def _emit(self, seg: Segment | None) -> None:
        if seg is None:
            return
        try:
            self.on_segment(seg)
        except Exception:  # a broken consumer must not stop the segmenting of the others
            log.exception("segment consumer failed")

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        with self._lock:
            self._streams[name] = Segmenter(name, family_of=self.family_of)

    def on_update(self, updates: list[GenreUpdate]) -> None:
        closed = []
        with self._lock:
            for u in updates:
                seg = self._streams.get(u.stream)
                if seg is None:
                    seg = self._streams[u.stream] = Segmenter(u.stream, family_of=self.family_of)
                closed.append(seg.push(u))
        for s in closed:
            self._emit(s)

    def on_title(self, name: str, title: str | None) -> None:
        with self._lock:
            seg = self._streams.get(name)
            if seg is not None:
                seg.set_title(title)

    def on_status(self, name: str, kind: str, detail: str) -> None:
        pass

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        with self._lock:
            seg = self._streams.pop(name, None)
        if seg is not None:
            self._emit(seg.finish())

    def open_segments(self) -> list[Segment]:
        """The open segment of every stream, as it stands."""
        with self._lock:
            return [s for s in (g.current for g in self._streams.values()) if s is not None]
