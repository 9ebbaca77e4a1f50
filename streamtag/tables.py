"""CSV forms of the results (``--format csv``): one table per run, a header row first.

- timeline: one row per hop: ``stream, t, family, genre, confidence, level_db``, then one column per shown label
  (its smoothed probability)
- segments: one row per segment: ``stream, start, end, family, genre, confidence, hops, title``
- summaries: one row per input: ``stream, duration, windows, model, partial``, then one column per shown label
  (its mean raw probability)

Numbers are plain decimals (probabilities to 4 places), so spreadsheets and pandas read them as they are.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import Any, TextIO

from .events import GenreUpdate, Summary
from .segments import FamilyOf, Segment, headline

__all__ = ["CsvTable", "TIMELINE_FIELDS", "SEGMENT_FIELDS", "SUMMARY_FIELDS"]

TIMELINE_FIELDS = ("stream", "t", "family", "genre", "confidence", "level_db")
SEGMENT_FIELDS = ("stream", "start", "end", "family", "genre", "confidence", "hops", "title")
SUMMARY_FIELDS = ("stream", "duration", "windows", "model", "partial")


def _p(x: float) -> str:
    return f"{float(x):.4f}"


class CsvTable:
    """Writes one kind of table ("timeline", "segments" or "summary") to ``out``; the header goes out with the
    first row (or at :meth:`close` when there were none)."""

    def __init__(self, out: TextIO, kind: str, labels: Sequence[str], *, family_of: FamilyOf = str) -> None:
        if kind not in ("timeline", "segments", "summary"):
            raise ValueError(kind)
        self.out, self.kind, self.labels, self.family_of = out, kind, list(labels), family_of
        self.writer = csv.writer(out, lineterminator="\n")
        self._header_done = False

    def _header(self) -> None:
        if self._header_done:
            return
        self._header_done = True
        if self.kind == "timeline":
            self.writer.writerow([*TIMELINE_FIELDS, *self.labels])
        elif self.kind == "segments":
            self.writer.writerow(SEGMENT_FIELDS)
        else:
            self.writer.writerow([*SUMMARY_FIELDS, *self.labels])

    def updates(self, updates: Sequence[GenreUpdate]) -> None:
        self._header()
        for u in updates:
            family, conf = headline(u, self.family_of)
            level = u.extra.get("level_db")
            self.writer.writerow([u.stream, f"{u.t:.3f}", family, u.top[0][0] if u.top else "", _p(conf),
                                  "" if level is None else f"{float(level):.1f}",
                                  *(_p(u.probs.get(label, 0.0)) for label in self.labels)])
        self.out.flush()

    def segments(self, segments: Sequence[Segment]) -> None:
        self._header()
        for s in segments:
            self.writer.writerow([s.stream, f"{s.start:.3f}", f"{s.end:.3f}", s.family, s.genre, _p(s.confidence),
                                  s.hops, s.title or ""])
        self.out.flush()

    def summary(self, s: Summary) -> None:
        self._header()
        row: list[Any] = [s.stream, f"{s.duration:.3f}", s.windows, s.model, "1" if s.partial else "0"]
        self.writer.writerow([*row, *(_p(s.mean.get(label, 0.0)) for label in self.labels)])
        self.out.flush()

    def close(self) -> None:
        self._header()
        self.out.flush()
