"""The station log's writer: a sink that records every stream's segments in SQLite (``--record PATH``).

    runner threads: updates -> SegmentSink -> closed segments, and every CHECKPOINT_S the open ones
                    -> bounded queue (put_nowait: the live path never waits) -> one writer thread -> SQLite (WAL)

The writer commits at least every ``COMMIT_S``; an open segment's row is moved forward every ``CHECKPOINT_S``, so
after a crash or ``kill -9`` only the last few seconds are missing. The hourly aggregates grow with the same
transactions (each stretch of a segment is added to the hours it covers), so they always match the segments.
When the queue is full (the disk stalls) records are dropped and counted, never waited for. A write that fails
(disk full, the file locked by another process) is reported as one line on stderr, at most once a minute per
kind, and tried again every ``RETRY_S`` with what arrived meanwhile (at most ``QUEUE_ITEMS`` records wait in the
writer and as many in the queue; beyond that new ones are dropped and counted), so a lock that is released or
space that is freed loses nothing. Retention (``--keep``) deletes what is older, at start and
every ``PURGE_INTERVAL_S``.
"""
from __future__ import annotations

import logging
import math
import queue
import re
import sqlite3
import sys
import threading
import time
from datetime import datetime
from typing import Any, TextIO

from ..errors import ConfigError, StreamtagError
from ..events import GenreUpdate
from ..segments import FamilyOf, Segment, SegmentSink
from .schema import connect, describe, ensure_schema

__all__ = ["StationLog", "parse_duration", "check_record_args", "CHECKPOINT_S", "COMMIT_S", "QUEUE_ITEMS", "DEFAULT_KEEP"]

log = logging.getLogger(__name__)

CHECKPOINT_S = 2.0  # s between two records of each open segment's progress (bounds what a crash loses)
COMMIT_S = 1.0  # s the writer gathers records before it commits them
QUEUE_ITEMS = 4096  # records waiting for the writer; beyond it new ones are dropped (counted)
PURGE_INTERVAL_S = 600.0  # s between two retention passes
REPORT_INTERVAL_S = 60.0  # s between two stderr lines about the same kind of write failure
DEFAULT_KEEP = "30d"
CLOSE_TIMEOUT_S = 10.0  # s close() waits for the writer to drain its queue
RETRY_S = 1.0  # s between two tries of records whose write failed (a locked file, a full disk)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, flag: str = "--keep") -> float:
    """``"30d"``, ``"24h"``, ``"90m"``, ``"45s"``, ``"2w"`` (or plain seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{flag} {text!r}: give a positive duration such as 30d, 24h, 90m or 45s")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def check_record_args(path: str, keep: str) -> float:
    """``--record PATH --keep D`` checked before anything loads: the folder exists, the duration parses."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"--record {path}: the folder {folder} does not exist; create it or give another path")
    if os.path.isdir(path):
        raise ConfigError(f"--record {path} is a folder; give a file name such as {os.path.join(path, 'radio.db')}")
    return parse_duration(keep)


def _ts(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return time.time()


class StationLog:
    """A sink recording segments to the SQLite file ``path`` (see module docstring). Call :meth:`close` at the
    end: it closes the open segments' rows and waits for the writer."""

    def __init__(
        self,
        path: str,
        *,
        keep: float | None = None,
        family_of: FamilyOf = str,
        err: TextIO | None = None,
        checkpoint_s: float = CHECKPOINT_S,
        queue_items: int = QUEUE_ITEMS,
        max_pages: int | None = None,
    ) -> None:
        self.path = str(path)
        self.keep = keep
        self.err = err or sys.stderr
        self.checkpoint_s = checkpoint_s
        self.max_pending = queue_items  # records one transaction holds, and failed ones kept for the next try
        self.conn = connect(self.path)
        ensure_schema(self.conn, self.path)
        try:
            if max_pages is not None:  # a size limit (tests: a real "database or disk is full")
                self.conn.execute(f"PRAGMA max_page_count={int(max_pages)}")
            # rows left open by a process that died: their last checkpoint is where they end
            self.conn.execute("UPDATE segments SET closed = 1 WHERE closed = 0")
        except sqlite3.Error as e:
            self.conn.close()
            raise ConfigError(f"station log {self.path}: {describe(e)}") from e
        self.dropped = 0  # records dropped because the writer fell behind
        self.failed = 0  # records lost to failed writes
        self.written = 0  # records committed
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_items)
        self._segments = SegmentSink(self._on_closed, family_of=family_of)
        self._next_checkpoint = time.monotonic() + checkpoint_s
        # the writer's open rows: station -> (row id, start_ts, end recorded, (segment start, family))
        self._open: dict[str, tuple[int, float, float, tuple[float, str]]] = {}
        self._ends: dict[str, tuple[float, float]] = {}  # writer: station -> (stream time, end_ts) of its last row
        self._reported: dict[str, float] = {}
        self._closed = False
        self._purge()
        self._thread = threading.Thread(target=self._run, name="station-log", daemon=True)
        self._thread.start()

    # -- the sink (runner threads: never blocks) ----------------------------------------------------------------
    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        self._segments.on_stream_added(name, source, title)

    def on_update(self, updates: list[GenreUpdate]) -> None:
        self._segments.on_update(updates)
        now = time.monotonic()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + self.checkpoint_s
            for seg in self._segments.open_segments():
                self._put(seg, closed=False)

    def on_title(self, name: str, title: str | None) -> None:
        self._segments.on_title(name, title)

    def on_status(self, name: str, kind: str, detail: str) -> None:
        pass

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        self._segments.on_stream_removed(name, error)

    def _on_closed(self, seg: Segment) -> None:
        self._put(seg, closed=True)

    def _put(self, seg: Segment, *, closed: bool) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait((seg, closed, _ts(seg.wall_end)))
        except queue.Full:
            self.dropped += 1
            self._report("behind", "the writer fell behind; records are being dropped (is the disk stalled?)")

    # -- the writer thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        last_purge = time.monotonic()
        pending: list[Any] = []  # records not written yet: a failed batch is tried again, never dropped at once
        while not stop:
            try:
                item = self._queue.get(timeout=RETRY_S if pending else 0.5)
            except queue.Empty:
                item = None
            deadline = time.monotonic() + COMMIT_S
            while item is not None:
                if item is _STOP:
                    stop = True
                    break
                pending.append(item)
                if len(pending) >= self.max_pending:  # a full transaction (or records waiting on a failing disk:
                    break  # then the queue fills and the sink drops the newest, counted, never waits)
                try:  # gather what arrives within COMMIT_S: one transaction for all of it
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    item = None
            if pending and self._write(pending):
                pending = []
            if time.monotonic() - last_purge >= PURGE_INTERVAL_S:
                last_purge = time.monotonic()
                self._purge()
        self.failed += len(pending)  # the last try at the end failed too
        self.conn.close()

    def _write(self, batch: list[tuple[Segment, bool, float]]) -> bool:
        """One transaction for ``batch``; False (and nothing written) when it failed."""
        opened, ends = dict(self._open), dict(self._ends)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for seg, closed, end_ts in batch:
                self._apply(seg, closed, end_ts)
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._open, self._ends = opened, ends  # the rows written in this transaction are gone with it
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._report(type(e).__name__ + describe(e),
                         f"{describe(e)}; {len(batch)} records wait and are tried again every {RETRY_S:g} s")
            return False
        self.written += len(batch)
        return True

    def _apply(self, seg: Segment, closed: bool, end_ts: float) -> None:
        key = (seg.start, seg.family)  # a stream's segments are told apart by where they start
        row = self._open.get(seg.stream)
        if row is not None and row[3] != key:  # a new segment (the old one's close was dropped or failed)
            row = None
        if row is None:
            prev = self._ends.get(seg.stream)  # the segment before it ended where this one starts: tile the rows
            start_ts = prev[1] if prev is not None and prev[0] == seg.start else end_ts - max(0.0, seg.duration)
            end_ts = max(end_ts, start_ts)
            cur = self.conn.execute(
                "INSERT INTO segments (station, start_ts, end_ts, family, genre, confidence, title, model, closed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seg.stream, start_ts, end_ts, seg.family, seg.genre, seg.confidence, seg.title, seg.model,
                 int(closed)))
            row_id, recorded = int(cur.lastrowid or 0), start_ts
        else:
            row_id, start_ts, recorded, _ = row
            end_ts = max(end_ts, recorded)
            self.conn.execute(
                "UPDATE segments SET end_ts = ?, genre = ?, confidence = ?, title = ?, closed = ? WHERE id = ?",
                (end_ts, seg.genre, seg.confidence, seg.title, int(closed), row_id))
        self._add_hours(seg.stream, seg.family, recorded, end_ts, seg.confidence)
        if closed:
            self._open.pop(seg.stream, None)
            self._ends[seg.stream] = (seg.end, end_ts)
        else:
            self._open[seg.stream] = (row_id, start_ts, end_ts, key)

    def _add_hours(self, station: str, family: str, a: float, b: float, confidence: float) -> None:
        """Add [a, b) (Unix seconds) to the hourly rows of the hours it covers."""
        while b > a:
            hour = math.floor(a / 3600) * 3600
            stop = min(b, hour + 3600)
            self.conn.execute(
                "INSERT INTO hourly (station, hour, family, seconds, conf_seconds) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (station, hour, family) DO UPDATE SET seconds = seconds + excluded.seconds, "
                "conf_seconds = conf_seconds + excluded.conf_seconds",
                (station, hour, family, stop - a, (stop - a) * confidence))
            a = stop

    def _purge(self) -> None:
        if self.keep is None:
            return
        cutoff = time.time() - self.keep
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM segments WHERE end_ts < ? AND closed = 1", (cutoff,))
            self.conn.execute("DELETE FROM hourly WHERE hour + 3600 <= ?", (cutoff,))
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._report("purge", f"{describe(e)} (while deleting records older than --keep)")

    def _report(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self._reported.get(kind, -math.inf) < REPORT_INTERVAL_S:
            return
        self._reported[kind] = now
        try:
            print(f"streamtag: error: station log {self.path}: {text}", file=self.err, flush=True)
        except (ValueError, OSError):
            pass

    # -- end -------------------------------------------------------------------------------------------------
    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close every open segment's row and wait (at most ``timeout`` s) for the writer to commit."""
        if self._closed:
            return
        for seg in self._segments.open_segments():
            self._put(seg, closed=True)
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            self._report("close", "the writer did not catch up; the last records are not written")
            return
        self._thread.join(timeout)


_STOP = object()
