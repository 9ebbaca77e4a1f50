"""Many sources on a few decoder processes: 16 kHz PCM comes back to the engine in batches.

A live process that tags hundreds of stations cannot give each one a Python thread beside the engine: the
threads' per-block work (HTTP reads, ICY demuxing, PyAV frames, resampling) shares one GIL with the engine thread
and the event loop that serves clients and handles signals, and at a few dozen stations both starve. The pool
moves that work out of the engine's process:

    engine process                                   worker process (x workers, started on first use)
    --------------                                   ----------------------------------------------------
    SourcePool.open(uri) --("open", sid, spec)-->     open_source(uri, policy=...) (the first connection:
                         <--("opened"|"failed")--       a typo fails at once, as in-process)
    PooledSource.start(feed, speed) --("start")-->   files: one scheduler thread paces them all;
                                                      live MP3/AAC/Vorbis Icecast/Shoutcast: one mux loop;
                                                      other network sources: their blocking reader thread
    receiver thread    <--("batch", audio, msgs)--   every FLUSH_S: all stations' new blocks in one message
      feed.push(samples) -> engine ring                (+ titles, status events, ends, stats)
      back-pressure: ("pause"/"resume", sid) for unpaced sources whose engine backlog grows

Each source is opened in the worker by :func:`streamtag.sources.open_source` itself (an http(s) URL by
:func:`streamtag.sources.mux.open_network`, which makes the same first request and hands what the mux loop does
not decode to the same source classes), so every guarantee of the source classes holds unchanged: deadlines,
reconnects with backoff, the URL policy (checked in the worker, after DNS and on every redirect), credentials never shown, sample repair downstream in the engine. Workers ignore
SIGINT (the parent decides when to stop), end when the parent's pipe closes, and are terminated, then killed,
if they do not stop within :data:`STOP_TIMEOUT_S`.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, SourceError, StreamtagError, close_quietly
from .mux import MuxLoop, NetStation, muxable, open_network
from .policy import PolicyError, SourcePolicy, display_name

__all__ = ["SourcePool", "PooledSource", "SourceFeed", "StationStats", "default_workers", "FLUSH_S"]

log = logging.getLogger(__name__)

FLUSH_S = 0.05  # s between a worker's batches (a mux pass is 100 ms, a file tick 50 ms: fewer, fuller messages)
STATS_S = 1.0  # s between a worker's per-station figures
SCHEDULER_TICK_S = 0.05  # s: a worker reads its local files at most this often (all blocks due by then)
# s of audio per block of a local file in a decoder process (at least the pool's block_seconds): a file is read
# ahead of its time, so a longer block adds no wait, and each block costs a fixed part (a decode call, a resampler
# call, a delivery, a ring write in the parent). 300 files at real time: 0.43-0.44% of a core per station against
# 0.47-0.50% with 0.1 s blocks (docs/architecture.md, "Stop 26")
FILE_BLOCK_S = 0.3
UNPACED_BLOCKS = 10  # blocks an unpaced file gets per tick (20 x real time; back-pressure pauses it sooner)
# s of a live stream's newest audio kept between its open and its start: serve opens every station, then starts
# them all, so the engine gets N x this at once on top of real time; near capacity a 1 s keep left too little
# margin to drain it (340 stations: 1 of 3 runs real time with 1 s, 3 of 6 with 0.25 s)
PRESTART_KEEP_S = 0.25
OPEN_TIMEOUT_S = 60.0  # s SourcePool.open waits for a worker's answer (the source's own deadlines come first)
STOP_TIMEOUT_S = 1.0  # s a worker gets to stop before it is terminated (then killed)
MAX_BACKLOG_SECONDS = 5.0  # s of unprocessed audio in the engine before an unpaced source is paused
RESUME_BACKLOG_SECONDS = 2.5  # s: a paused source resumes below this
# station lists: a network station is announced at once and connects in the background, this many at a time per
# decoder process (serve listens and lists every station in its first hello without waiting for hundreds of opens)
CONNECT_AT_ONCE = 32
# s after a station that connected after its start during which its audio is kept like audio before a start (the
# newest PRESTART_KEEP_S): the audio decoded while connecting and the loop's first pass, which holds Icecast's
# burst-on-connect (seconds of audio at once, per station; HLS: its first segments)
FRESH_S = 1.0
OPEN_RETRY_INITIAL_S = 1.0  # station lists: first delay before a station that failed to open is tried again
OPEN_RETRY_MAX_S = 60.0


def default_workers() -> int:
    """Decoder processes for this machine: one per core beyond the engine's, at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class SourceFeed(Protocol):
    """Where a pooled source's output goes (the live runner gives one per stream)."""

    def push(self, samples: np.ndarray, arrived: float | tuple[float, float] | None = None) -> None: ...
    def title(self, title: str | None) -> None: ...
    def event(self, kind: str, detail: str) -> None: ...
    def end(self, error: StreamtagError | None) -> None: ...
    def backlog(self) -> float: ...


@dataclass
class StationStats:
    """Per-station figures (cumulative; rates are computed by the reader)."""

    bytes_in: int = 0  # network/file bytes read
    samples: int = 0  # 16 kHz samples delivered
    decode_errors: int = 0  # packets the decoder skipped
    reconnects: int = 0
    state: str = "opening"  # opening | live | reconnecting | ended | failed
    t: float = field(default_factory=time.monotonic)  # when these figures were taken (parent clock)


# -- parent side -------------------------------------------------------------------------------------------------


class PooledSource:
    """A source opened in a pool worker. The live runner starts it with a :class:`SourceFeed`; ``close()`` stops
    it (from any thread). ``name``, ``title``, ``info`` as for in-process sources."""

    def __init__(self, pool: SourcePool, worker: _WorkerHandle, sid: int, label: str) -> None:
        self._pool = pool
        self._worker = worker
        self.sid = sid
        self.label = label
        self.name = label
        self.title: str | None = None
        self.info: dict[str, Any] = {}
        self.cooperative = False
        self.feed: SourceFeed | None = None
        self.speed: float | None = None
        self.paused = False
        self.closed = False
        self.stats = StationStats()
        self.early: list[tuple[Any, ...]] = []  # events that arrived before start() (the receiver replays them)
        self._close_lock = threading.Lock()

    def start(self, feed: SourceFeed, speed: float | None) -> None:
        """Begin delivering blocks to ``feed`` (paced at ``speed`` x real time; None: as they come)."""
        self.feed, self.speed = feed, speed
        self._worker.send(("start", self.sid, speed))

    def close(self) -> None:
        with self._close_lock:  # any thread, any number of times: one "close" to the worker
            if self.closed:
                return
            self.closed = True
        self._pool._forget(self)
        self._worker.send(("close", self.sid))

    def __enter__(self) -> PooledSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PooledSource({self.label!r}, worker={self._worker.index})"


class _WorkerHandle:
    def __init__(self, index: int, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.lock = threading.Lock()
        self.stations = 0
        self.alive = True

    def send(self, msg: tuple[Any, ...]) -> None:
        if not self.alive:
            return
        try:
            with self.lock:
                self.conn.send(msg)
        except (OSError, ValueError):  # the worker is gone; its streams end through the receiver
            self.alive = False


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    reply: tuple[Any, ...] = ()


class SourcePool:
    """``workers`` decoder processes (default :func:`default_workers`) that open and read sources for a live
    runner. ``mux``: live MP3/AAC/Ogg Vorbis stations are read by each worker's :class:`~streamtag.sources.mux.MuxLoop`
    (default; False, or the environment's ``STREAMTAG_SOURCE_READER=threads``: a reader thread per station, the
    benchmarks' baseline). Thread-safe; ``close()`` stops every worker within about :data:`STOP_TIMEOUT_S`
    (+ 1 s to kill)."""

    def __init__(self, sample_rate: int, *, workers: int | None = None, block_seconds: float = 0.1,
                 mux: bool | None = None) -> None:
        n = default_workers() if workers is None else int(workers)
        if n < 1:
            raise ConfigError(f"a source pool needs at least one worker, got {workers!r}")
        self.sample_rate = int(sample_rate)
        self.block_seconds = float(block_seconds)
        self.n_workers = n
        if mux is None:  # the benchmarks' baseline: STREAMTAG_SOURCE_READER=threads
            mux = os.environ.get("STREAMTAG_SOURCE_READER", "mux").strip().lower() != "threads"
        self.mux = bool(mux)  # live MP3/AAC/Vorbis streams on each worker's mux loop (False: a reader thread each)
        self._workers: list[_WorkerHandle] = []
        self._lock = threading.Lock()
        self._sources: dict[int, PooledSource] = {}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._receiver: threading.Thread | None = None
        self._closed = False

    # -- lifetime --------------------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        with self._lock:
            if self._closed:
                raise SourceError("the source pool is closed")
            if self._workers:
                return
            level = logging.getLogger().getEffectiveLevel()
            env = dict(os.environ)
            root = str(Path(__file__).resolve().parents[2])  # the folder holding the streamtag package
            env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
            for i in range(self.n_workers):
                ours, theirs = socket.socketpair()
                # a process of its own, not multiprocessing's spawn: that re-imports the caller's __main__;
                # a session of its own: the terminal's Ctrl-C is the parent's to handle
                p = subprocess.Popen(
                    [sys.executable, "-c", "from streamtag.sources.pool import worker_main; worker_main()",
                     str(theirs.fileno()), str(i), str(level)],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                )
                theirs.close()
                self._workers.append(_WorkerHandle(i, p, Connection(ours.detach())))
            self._receiver = threading.Thread(target=self._receive, name="source-pool", daemon=True)
            self._receiver.start()

    def close(self) -> None:
        """Stop every worker (terminate, then kill, those that do not stop in time)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
            pending = list(self._pending.values())
        for p in pending:  # opens still waiting for an answer: there will be none
            p.reply = ("failed", 0, "source", "streamtag is stopping")
            p.done.set()
        for w in workers:
            w.send(("stop",))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in workers:
            _wait(w.process, deadline - time.monotonic())
        for w in workers:
            if w.process.poll() is None:
                w.process.terminate()
        deadline = time.monotonic() + 1.0
        for w in workers:
            if not _wait(w.process, deadline - time.monotonic()):
                w.process.kill()
                _wait(w.process, 0.5)
            w.alive = False
            try:
                w.conn.close()
            except OSError:
                pass
        if self._receiver is not None:
            self._receiver.join(1.0)

    def __enter__(self) -> SourcePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------------------------------------
    def open(self, uri: str, sample_rate: int | None = None, policy: SourcePolicy | None = None, *,
             retry_open: bool = False, timeout: float = OPEN_TIMEOUT_S, **options: Any) -> PooledSource:
        """Open ``uri`` in a worker (as :func:`streamtag.sources.open_source` would, with ``options``) and return
        its handle once the first connection succeeded; SourceError/PolicyError as in-process.

        ``retry_open``: a station list's entry; a failed first connection is retried with backoff in the worker
        (events "reconnecting") instead of failing, so one dead station never stops the others. An http(s) entry
        returns at once (stats state "opening", ``info`` its URL until it connects: CONNECT_AT_ONCE at a time per
        worker); a refusal by the policy then ends it as a failure after its start would.
        """
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ConfigError(f"this pool decodes to {self.sample_rate} Hz, not {sample_rate}")
        self._ensure_started()
        explicit = policy is not None
        label = display_name(uri) if explicit else uri
        spec = {"uri": uri, "sample_rate": self.sample_rate, "policy": policy, "explicit_policy": explicit,
                "block_seconds": self.block_seconds, "options": options, "retry_open": retry_open, "mux": self.mux}
        sid = next(self._ids)
        with self._lock:
            worker = min((w for w in self._workers if w.alive), key=lambda w: w.stations, default=None)
            if worker is None:
                raise SourceError(f"{label}: the decoder processes are gone; restart streamtag")
            worker.stations += 1
            pending = self._pending[sid] = _Pending()
            src = PooledSource(self, worker, sid, label)
            self._sources[sid] = src
        worker.send(("open", sid, spec))
        if not pending.done.wait(timeout):
            src.close()
            raise SourceError(f"{label}: no answer within {timeout:g} s; check the URL")
        with self._lock:
            self._pending.pop(sid, None)
        reply = pending.reply
        if reply[0] == "failed":
            with self._lock:
                self._sources.pop(sid, None)
                worker.stations -= 1
            _, _, kind, message = reply
            raise (PolicyError if kind == "policy" else ConfigError if kind == "config" else SourceError)(message)
        _, _, name, title, info, cooperative = reply
        src.name, src.title, src.info, src.cooperative = name, title, info, cooperative
        return src

    def _forget(self, src: PooledSource) -> None:
        with self._lock:
            if self._sources.pop(src.sid, None) is not None:
                src._worker.stations -= 1

    def pids(self) -> list[int]:
        """The decoder processes' pids (their CPU is part of the sources' cost)."""
        return [w.process.pid for w in self._workers]

    def stats(self) -> dict[int, StationStats]:
        with self._lock:
            return {sid: s.stats for sid, s in self._sources.items()}

    # -- the receiver thread ---------------------------------------------------------------------------------
    def _receive(self) -> None:
        conns: dict[Any, _WorkerHandle] = {w.conn: w for w in self._workers}
        while conns and not self._closed:
            try:
                ready = wait(list(conns), timeout=0.1)
            except OSError:
                ready = []
            for conn in ready:
                w = conns[conn]
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    del conns[conn]
                    self._worker_died(w)
                    continue
                try:
                    self._handle(msg)
                except Exception:  # a feed that raises must not stop the other stations
                    log.exception("source pool: handling a worker message failed")
            with self._lock:
                started = [s for s in self._sources.values() if s.early and s.feed is not None]
            for src in started:
                self._replay(src)
            self._backpressure()

    def _handle(self, msg: tuple[Any, ...]) -> None:
        _, audio, events = msg
        sources = self._sources
        for sid, data, first, last in audio:
            src = sources.get(sid)
            if src is not None and src.feed is not None and not src.closed:
                self._replay(src)
                src.feed.push(np.frombuffer(data, dtype=np.float32), (first, last))
        for ev in events:
            kind, sid = ev[0], ev[1]
            if kind in ("opened", "failed"):
                pending = self._pending.get(sid)
                if pending is not None:
                    pending.reply = ev
                    pending.done.set()
                continue
            src = sources.get(sid)
            if src is None:
                continue
            if kind == "stats":
                _, _, bytes_in, samples, errors, reconnects, state = ev
                src.stats = StationStats(bytes_in, samples, errors, reconnects, state)
                continue
            if kind == "info":  # a station list's entry that connected after it was announced
                src.info = ev[2]
                continue
            if src.feed is None:
                src.early.append(ev)  # e.g. a live stream that dropped and reconnected before its start
                continue
            self._replay(src)
            self._event(src, ev)

    def _replay(self, src: PooledSource) -> None:
        """Events of ``src`` that arrived before its start, in order (receiver thread)."""
        if src.early and src.feed is not None:
            early, src.early = src.early, []
            for ev in early:
                self._event(src, ev)

    def _event(self, src: PooledSource, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        feed = src.feed
        if feed is None or src.closed:
            return
        if kind == "title":
            src.title = ev[2]
            feed.title(ev[2])
        elif kind == "event":
            feed.event(ev[2], ev[3])
        elif kind == "end":
            _, _, err_kind, message = ev
            self._forget(src)
            src.closed = True
            error = None if err_kind is None else SourceError(message)
            src.stats.state = "ended" if error is None else "failed"
            feed.end(error)

    def _backpressure(self) -> None:
        with self._lock:
            unpaced = [s for s in self._sources.values() if s.feed is not None and s.speed is None and s.cooperative]
        for s in unpaced:
            assert s.feed is not None
            backlog = s.feed.backlog()
            if not s.paused and backlog > MAX_BACKLOG_SECONDS:
                s.paused = True
                s._worker.send(("pause", s.sid))
            elif s.paused and backlog < RESUME_BACKLOG_SECONDS:
                s.paused = False
                s._worker.send(("resume", s.sid))

    def _worker_died(self, w: _WorkerHandle) -> None:
        w.alive = False
        if self._closed:
            return
        log.error("source pool: decoder process %d ended unexpectedly", w.index)
        with self._lock:
            lost = [s for s in self._sources.values() if s._worker is w]
            pending = [p for sid, p in self._pending.items() if self._sources.get(sid) in lost]
        for p in pending:
            p.reply = ("failed", 0, "source", "the decoder process ended unexpectedly; try again")
            p.done.set()
        for s in lost:
            self._forget(s)
            if s.feed is not None and not s.closed:
                s.closed = True
                s.feed.end(SourceError(f"{s.label}: the decoder process ended unexpectedly"))


# -- worker side -------------------------------------------------------------------------------------------------


@dataclass
class _Station:
    sid: int
    source: Any
    cooperative: bool  # read by the shared scheduler thread (local files), else by a thread of its own
    speed: float | None = None
    started: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)  # cleared while paused
    stop: threading.Event = field(default_factory=threading.Event)
    samples: int = 0
    t0: float = 0.0
    title: str | None = None
    state: str = "opening"
    reconnects: int = 0
    # a muxed live stream's newest audio before its start, with when it arrived: at most keep_limit samples
    keep: deque[tuple[np.ndarray, tuple[float, float]]] = field(default_factory=deque)
    keep_n: int = 0
    keep_limit: int = 0
    fresh_until: float = 0.0  # a muxed stream that connected after its start keeps its audio until then


class _Worker:
    """One decoder process: opens sources, reads them, and batches their blocks back to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        # (station, float32 samples, when their bytes began and finished arriving)
        self.audio: list[tuple[int, bytes, float, float]] = []
        self.events: list[tuple[Any, ...]] = []
        self.stations: dict[int, _Station] = {}
        self.stopping = threading.Event()
        self.wake = threading.Event()  # the scheduler: a station was added, resumed or stopped
        self.heap: list[tuple[float, int, int]] = []  # (due, seq, sid) of cooperative stations
        self.seq = itertools.count()
        self.closed_early: set[int] = set()  # closed by the parent before their open finished
        self.mux = MuxLoop(self._mux_deliver, self._mux_ended, self.stopping)  # live MP3/AAC/Ogg Vorbis stations
        self.keep_lock = threading.Lock()  # a muxed station's start vs the loop's delivery of its blocks
        self.connecting = threading.BoundedSemaphore(CONNECT_AT_ONCE)  # station lists' first connections

    def out(self, event: tuple[Any, ...]) -> None:
        with self.lock:
            self.events.append(event)

    def run(self) -> None:
        threading.Thread(target=self._sender, name="sender", daemon=True).start()
        threading.Thread(target=self._scheduler, name="files", daemon=True).start()
        while not self.stopping.is_set():
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "stop":
                break
            if kind == "open":
                threading.Thread(target=self._open, args=(msg[1], msg[2]), name=f"open-{msg[1]}",
                                 daemon=True).start()
                continue
            st = self.stations.get(msg[1])
            if st is None:
                if kind == "close":  # still opening (the parent gave up waiting): close it once it opens
                    self.closed_early.add(msg[1])
                continue
            if kind == "start":
                st.speed = msg[2]
                st.t0 = time.monotonic()
                st.running.set()
                if isinstance(st.source, NetStation):
                    self._start_muxed(st)
                st.started.set()
                if st.cooperative:
                    self._schedule(st, st.t0)
            elif kind == "close":
                self._close(st)
            elif kind == "pause":
                st.running.clear()
            elif kind == "resume":
                st.running.set()
                if st.cooperative:
                    self._schedule(st, time.monotonic())
        self.stopping.set()
        for st in list(self.stations.values()):
            st.stop.set()
            close_quietly(st.source)
        self.wake.set()

    # opening -------------------------------------------------------------------------------------------------
    def _open(self, sid: int, spec: dict[str, Any]) -> None:
        from . import open_source
        from .file import FileSource

        label = display_name(spec["uri"]) if spec["explicit_policy"] else spec["uri"]
        st = _Station(sid, None, False)

        def on_event(kind: str, detail: str) -> None:
            if kind == "title":
                return  # titles travel as the source's `title` attribute (checked after every block)
            if kind == "reconnecting":
                st.state = "reconnecting"
            elif kind == "connected":
                st.state = "live"
                st.reconnects += 1
            self.out(("event", sid, kind, detail))

        def opened() -> Any:
            if spec.get("mux", True) and muxable(spec["uri"], spec["options"]):
                # the audio decoded while connecting is kept like audio before a start (the newest
                # PRESTART_KEEP_S: _mux_deliver), so the connect decodes no more of Icecast's burst than that
                return open_network(spec["uri"], spec["sample_rate"], policy=spec["policy"],
                                    block_seconds=spec["block_seconds"], on_event=on_event,
                                    keep_connect_s=PRESTART_KEEP_S, **spec["options"])
            return open_source(spec["uri"], spec["sample_rate"], policy=spec["policy"],
                               block_seconds=spec["block_seconds"], on_event=on_event, **spec["options"])

        # a station list's network station: announced now (state "opening"), connected in the background; a
        # refusal by policy or a bad option ends it like a failure after its start
        background = spec["retry_open"] and spec["uri"].lower().startswith(("http://", "https://"))
        if background:
            self.stations[sid] = st
            self.out(("opened", sid, label, None, {"uri": label}, False))
        try:
            with self.connecting if background else contextlib.nullcontext():
                if st.stop.is_set():
                    return
                source = opened()
        except Exception as e:  # the parent raises it as the same kind of error
            if background and isinstance(e, PolicyError | ConfigError):
                self._ended(st, e)
                return
            if not spec["retry_open"] or isinstance(e, PolicyError | ConfigError):
                self.out(("failed", sid, _error_kind(e), _error_text(e, label)))
                return
            source = None
            first_error = _error_text(e, label)
        if source is None:  # a station list's entry that is down: announce it now, keep trying meanwhile
            if sid not in self.stations:
                self.stations[sid] = st
                self.out(("opened", sid, label, None, {"uri": label}, False))
            st.state = "reconnecting"
            source = self._retry_open(st, opened, first_error)
            if source is None:
                return
        if sid in self.closed_early or st.stop.is_set():  # closed while it connected: never (re)announce it
            self.closed_early.discard(sid)
            _release(source)
            return
        st.source = source
        st.cooperative = isinstance(source, FileSource)
        if st.cooperative:  # not read yet: its blocks are cut at its first read
            source.block_size = max(source.block_size, round(FILE_BLOCK_S * source.sample_rate))
        st.title = getattr(source, "title", None)
        if st.started.is_set() and not st.stop.is_set():  # a listed station that came up after its start
            sr = source.sample_rate
            st.t0 = time.monotonic() - (st.samples / sr / st.speed if st.speed else 0.0)
            if st.cooperative:
                self._schedule(st, time.monotonic())
        if sid not in self.stations:
            self.stations[sid] = st
            self.out(("opened", sid, str(getattr(source, "name", label)), st.title, _public_info(source),
                      st.cooperative))
        else:  # announced before it connected: what the parent showed until now was its URL only
            self.out(("info", sid, _public_info(source)))
            if st.title is not None:
                self.out(("title", sid, st.title))
        if st.stop.is_set():
            _release(source)
            return
        st.state = "live"
        with self.keep_lock:
            if st.started.is_set() and (isinstance(source, NetStation) or getattr(source, "live", False)):
                st.fresh_until = time.monotonic() + FRESH_S  # connected after its start: trim its first burst
        if isinstance(source, NetStation):
            sr = source.sample_rate
            st.keep_limit = max(1, round(PRESTART_KEEP_S * sr))
            source.key = st
            source.keeping = partial(_keeps, st)  # its reads decode only what _mux_deliver would keep of them
            self.mux.add(source)
        elif not st.cooperative:
            self._read(st)

    def _retry_open(self, st: _Station, opened: Callable[[], Any], error: str) -> Any:
        attempt = 0
        log.warning("%s", error)
        while not st.stop.is_set() and not self.stopping.is_set():
            attempt += 1
            delay = min(OPEN_RETRY_MAX_S, OPEN_RETRY_INITIAL_S * 2.0 ** min(attempt - 1, 16))
            self.out(("event", st.sid, "reconnecting", f"in {delay:.1f} s (attempt {attempt})"))
            if st.stop.wait(delay):
                return None
            try:
                source = opened()
            except Exception as e:
                log.warning("%s", _error_text(e, ""))
                continue
            self.out(("event", st.sid, "connected", str(getattr(source, "name", ""))))
            return source
        return None

    def _close(self, st: _Station) -> None:
        st.stop.set()
        st.running.set()
        st.started.set()
        close_quietly(st.source)
        self.stations.pop(st.sid, None)
        self.wake.set()

    # reading -------------------------------------------------------------------------------------------------
    def _deliver(self, st: _Station, block: np.ndarray, arrived: tuple[float, float] | None = None) -> None:
        """Queue ``block`` for the parent; ``arrived``: when its bytes began and finished reaching this process
        (default: now)."""
        block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1)  # (N,)
        st.samples += block.shape[0]
        title = getattr(st.source, "title", None)
        first, last = (time.monotonic(),) * 2 if arrived is None else arrived
        with self.lock:
            self.audio.append((st.sid, block.tobytes(), first, last))
            if title != st.title:
                st.title = title
                self.events.append(("title", st.sid, title))

    def _mux_deliver(self, station: NetStation, blocks: list[np.ndarray], arrived: tuple[float, float]) -> None:
        """Audio the mux loop decoded for a station in one pass, its bytes arrived during ``arrived`` (the loop's
        thread). Before the runner starts it, a live stream keeps only its newest PRESTART_KEEP_S (as
        :meth:`_read` does)."""
        st = station.key
        if not isinstance(st, _Station) or st.stop.is_set():
            return
        audio = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        with self.keep_lock:
            if _keeps(st):
                self._keep(st, audio, arrived)
                return
            st.fresh_until = 0.0
            if st.keep:
                self._send_kept(st)
            self._deliver(st, audio, arrived)

    @staticmethod
    def _keep(st: _Station, audio: np.ndarray, arrived: tuple[float, float]) -> None:
        """Keep ``audio`` before the start, dropping the oldest samples beyond ``keep_limit`` (keep_lock held)."""
        st.keep.append((audio, arrived))
        st.keep_n += audio.shape[0]
        while st.keep_n > st.keep_limit:
            oldest, at = st.keep[0]
            cut = st.keep_n - st.keep_limit
            if cut >= oldest.shape[0]:
                st.keep.popleft()
                st.keep_n -= oldest.shape[0]
            else:  # its first samples go: the rest came in later
                first, last = at
                st.keep[0] = (oldest[cut:], (first + (last - first) * cut / oldest.shape[0], last))
                st.keep_n -= cut

    def _send_kept(self, st: _Station) -> None:
        """What a muxed station kept before its start, each part with its own arrival (keep_lock held)."""
        while st.keep:
            audio, at = st.keep.popleft()
            self._deliver(st, audio, at)
        st.keep_n = 0

    def _start_muxed(self, st: _Station) -> None:
        """The runner started a muxed station: what it kept before goes out now (not with its next bytes)."""
        with self.keep_lock:
            st.started.set()
            if not st.stop.is_set():
                self._send_kept(st)

    def _mux_ended(self, station: NetStation, error: BaseException | None) -> None:
        st = station.key
        if isinstance(st, _Station):
            self._ended(st, error)

    def _ended(self, st: _Station, error: BaseException | None) -> None:
        close_quietly(st.source)
        if st.stop.is_set():
            return
        st.stop.set()
        st.state = "ended" if error is None else "failed"
        self.stations.pop(st.sid, None)
        if error is None:
            self.out(("end", st.sid, None, None))
        else:
            label = str(getattr(st.source, "label", getattr(st.source, "name", "")))
            if not isinstance(error, StreamtagError):
                log.error("source %s failed: %s: %s", label, type(error).__name__, error)
            self.out(("end", st.sid, _error_kind(error), _error_text(error, label)))

    def _read(self, st: _Station) -> None:
        """A network (or other blocking) source on a thread of its own, paced like the live runner's feeders.

        A live stream is read from the moment it is open; until the runner starts it only its newest
        PRESTART_KEEP_S are kept: audio that piled up while other stations were opening would otherwise reach
        the engine as one burst of stale audio (seconds per station at a few hundred stations). So is its first
        FRESH_S when it connected after its start (a station list's entry: the server's burst-on-connect). Other
        sources wait for the start."""
        if not getattr(st.source, "live", False):
            st.started.wait()
        sr = st.source.sample_rate
        keep: deque[tuple[np.ndarray, tuple[float, float] | None]] = deque(
            maxlen=max(1, round(PRESTART_KEEP_S * sr / max(1, st.source.block_size))))
        error: BaseException | None = None
        try:
            for block in st.source:
                if st.stop.is_set():
                    return
                # an unpaced (live) network source says when its bytes came in: latency counts from there, not
                # from this thread's delivery (which lags when the process is busy); a paced one's is its due time
                keep.append((block, getattr(st.source, "arrived", None) if st.speed is None else None))
                if not st.started.is_set() or (st.fresh_until and time.monotonic() < st.fresh_until):
                    continue
                while keep:
                    kept, arrived = keep.popleft()
                    if not self._pace(st, kept, arrived, sr):
                        return
        except Exception as e:
            error = e
        st.started.wait()
        while keep and not st.stop.is_set():
            self._deliver(st, *keep.popleft())
        self._ended(st, error)

    def _pace(self, st: _Station, block: np.ndarray, arrived: tuple[float, float] | None, sr: int) -> bool:
        """Deliver ``block`` when it is due (paused: when resumed); False once the station is stopped."""
        while not st.running.is_set() and not st.stop.is_set():
            st.running.wait(0.1)
        if st.speed is not None:
            delay = st.t0 + (st.samples + len(block)) / sr / st.speed - time.monotonic()
            if delay > 0 and st.stop.wait(delay):
                return False
        if st.stop.is_set():
            return False
        self._deliver(st, block, arrived)
        return True

    def _schedule(self, st: _Station, due: float, *, wake: bool = True) -> None:
        with self.lock:
            heapq.heappush(self.heap, (due, next(self.seq), st.sid))
        if wake:
            self.wake.set()

    def _scheduler(self) -> None:
        """Every local file on one thread. It wakes at most every SCHEDULER_TICK_S and reads every block due by
        the end of that tick (early by less than a tick: the engine buffers it anyway); a paced file thus costs a
        few reads a second, not a wake-up per block. An unpaced file gets UNPACED_BLOCKS blocks per tick."""
        while not self.stopping.is_set():
            start = time.monotonic()
            horizon = start + SCHEDULER_TICK_S
            with self.lock:
                due = []
                while self.heap and self.heap[0][0] <= horizon:
                    due.append(heapq.heappop(self.heap)[2])
            for sid in due:
                st = self.stations.get(sid)
                if st is None or st.stop.is_set() or not st.running.is_set():
                    continue  # closed, or paused (resume schedules it again)
                self._read_due(st, horizon)
            with self.lock:
                next_due = self.heap[0][0] if self.heap else start + 0.5
            now = time.monotonic()
            wait_s = max(start + SCHEDULER_TICK_S - now, next_due - SCHEDULER_TICK_S - now)
            if self.wake.wait(max(0.0, min(wait_s, 0.5))):
                self.wake.clear()

    def _read_due(self, st: _Station, horizon: float) -> None:
        sr = st.source.sample_rate
        for _ in range(UNPACED_BLOCKS if st.speed is None else 1_000_000):
            if st.speed is not None and st.t0 + st.samples / sr / st.speed > horizon:
                break
            try:
                block = next(st.source, None)
            except Exception as e:
                self._ended(st, e)
                return
            if block is None:
                self._ended(st, None)
                return
            self._deliver(st, block)
        nxt = time.monotonic() if st.speed is None else st.t0 + st.samples / sr / st.speed
        self._schedule(st, nxt, wake=False)

    def _sender(self) -> None:
        last_stats = 0.0
        while True:
            stopping = self.stopping.wait(FLUSH_S)
            now = time.monotonic()
            if now - last_stats >= STATS_S:
                last_stats = now
                for st in list(self.stations.values()):
                    self.out(("stats", st.sid, _bytes_in(st.source), st.samples,
                              int(getattr(st.source, "decode_errors", 0) or 0), st.reconnects, st.state))
            with self.lock:
                audio, events = self.audio, self.events
                self.audio, self.events = [], []
            if audio or events:
                try:
                    self.conn.send(("batch", audio, events))
                except (OSError, ValueError):
                    self.stopping.set()
                    return
            if stopping:
                return


def _keeps(st: _Station) -> bool:
    """Whether a station's new audio is kept (its newest PRESTART_KEEP_S), not delivered: before its start, and in
    the FRESH_S after it connected after its start."""
    return not st.started.is_set() or bool(st.fresh_until and time.monotonic() < st.fresh_until)


def _release(source: Any) -> None:
    """Close a source that no reader (thread or mux loop) has taken yet."""
    if isinstance(source, NetStation):
        source.release()
    else:
        close_quietly(source)


def _bytes_in(source: Any) -> int:
    return int(getattr(source, "bytes_in", 0) or 0)


def _public_info(source: Any) -> dict[str, Any]:
    info = getattr(source, "info", None)
    out = {k: v for k, v in info.items() if v is None or isinstance(v, str | int | float | bool)} \
        if isinstance(info, dict) else {}
    if "live" not in out:  # the runner lets a live stream skip audio it could not reach in its start-up
        out["live"] = bool(getattr(source, "live", False))
    return out


def _error_kind(e: BaseException) -> str:
    if isinstance(e, PolicyError):
        return "policy"
    if isinstance(e, ConfigError):
        return "config"
    return "source"


def _error_text(e: BaseException, label: str) -> str:
    if isinstance(e, StreamtagError):
        return str(e)
    return f"{label}: source failed ({type(e).__name__}: {e})"


def _wait(process: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        process.wait(max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


def worker_main() -> None:
    """A decoder process (``argv``: socket fd, index, log level): the parent's socket closing ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, index, level = (int(a) for a in sys.argv[1:4])
    logging.basicConfig(level=level, format=f"streamtag: sources[{index}]: %(message)s")
    conn = Connection(fd)
    try:
        _Worker(conn).run()
    finally:
        conn.close()
        os._exit(0)  # daemon threads may sit in a blocking read: do not wait for them
