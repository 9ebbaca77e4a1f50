"""The live runner: source feeder threads -> Engine -> sinks.

:class:`LiveRunner` gives every source its own feeder thread, which only pushes blocks into the engine's ring
buffers (paced at ``speed`` x real time, or waiting on back-pressure for unpaced sources such as files), and one
engine thread that calls ``engine.step()`` whenever audio arrived and hands the updates to every sink
(:class:`streamtag.publishers.base.Sink`). Sinks learn everything through those calls: streams added and
removed, updates, titles, and source events (reconnecting, connected, ...) via ``on_status``.

Per stream, sinks see ``on_stream_added``, then updates/titles/statuses, then exactly one ``on_stream_removed``:
when its source ends (after the engine has emitted the hops of its last audio; the stream then leaves the
engine), on :meth:`LiveRunner.remove`, or on :meth:`LiveRunner.stop`.

The terminal and server loops that drive a runner live in :mod:`streamtag.app`.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SourceError, StreamtagError, close_quietly
from .events import GenreUpdate

if TYPE_CHECKING:
    from .publishers.base import Sink

__all__ = ["LiveRunner", "IDLE_WAIT_S", "STEP_INTERVAL_S", "MAX_BACKLOG_SECONDS", "freeze_startup_objects"]

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # s the engine thread sleeps when no audio arrived (a push wakes it at once)
STEP_INTERVAL_S = 0.02  # s: the engine steps at most this often; the hops completed meanwhile share one step
FRONT_END_THREADS = min(2, os.cpu_count() or 1)  # threads a step's log-mel passes run on (the engine thread + helpers)
MAX_BACKLOG_SECONDS = 5.0  # s of unprocessed audio in a stream's ring before an unpaced feeder waits (back-pressure)
# s between a waiting feeder's looks at its backlog: with 5 s buffered, 0.1 s costs the engine nothing, and many
# feeders polling faster (1,000 at 100 Hz) would take the CPU and the GIL from the engine they wait for
BACKLOG_POLL_S = 0.1
JOIN_TIMEOUT_S = 5.0  # s to wait for a feeder or the engine thread to end
FLUSH_TIMEOUT_S = 60.0  # s flush() waits for the engine to process the audio already pushed (a slow CPU, a big backlog)


@dataclass
class _Stream:
    """The runner's record of one stream (a feeder thread for sources; none for push-fed streams)."""

    name: str
    source: Any = None  # an iterable of (N,) float32 blocks with optional .title, .close(), .on_event, .overruns
    speed: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    samples: int = 0
    error: StreamtagError | None = None
    done: bool = False  # the source ended (or failed); the engine thread finishes the stream
    removed: bool = False  # on_stream_removed was sent


class _CallbackSink:
    """The pre-sink form ``LiveRunner(engine, on_updates, on_end=..., on_title=...)`` as a sink (kept for callers
    written against it; new code passes sinks). ``on_end`` is only called for sources that ended by themselves."""

    def __init__(
        self,
        on_updates: Callable[[list[GenreUpdate]], None],
        on_end: Callable[[str, StreamtagError | None], None] | None,
        on_title: Callable[[str, str | None], None] | None,
    ) -> None:
        self._on_updates, self._on_end, self._on_title = on_updates, on_end, on_title
        self.explicit: set[str] = set()  # streams removed by remove()/stop(): no on_end, as before

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        self.explicit.discard(name)

    def on_update(self, updates: list[GenreUpdate]) -> None:
        self._on_updates(updates)

    def on_title(self, name: str, title: str | None) -> None:
        if self._on_title is not None:
            self._on_title(name, title)

    def on_status(self, name: str, kind: str, detail: str) -> None:
        pass

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        if name in self.explicit:
            self.explicit.discard(name)
        elif self._on_end is not None:
            self._on_end(name, error)


class LiveRunner:
    """Feeder threads push sources into ``engine``; one engine thread steps it and feeds ``sinks``.

    ``speed`` (per source) paces it at ``speed`` x real time; None feeds it as fast as it yields, which is right
    for live sources (radio and microphones pace themselves) and, with back-pressure, for files tagged flat out.
    Sinks are called from the runner's threads; a sink that raises is logged and skipped, never fatal.
    ``step_interval``: the engine steps at most this often (s), so that under load many streams' hops share one
    step; it bounds the latency that batching adds. ``front_end_threads``: a step's log-mel runs in that many
    passes at once, on the engine thread and helper threads (numpy's FFT and matmul release the GIL).
    """

    def __init__(
        self,
        engine: Any,
        sinks: Sequence[Sink] | Callable[[list[GenreUpdate]], None] = (),
        *,
        on_end: Callable[[str, StreamtagError | None], None] | None = None,
        on_title: Callable[[str, str | None], None] | None = None,
        step_interval: float = STEP_INTERVAL_S,
        front_end_threads: int = FRONT_END_THREADS,
    ) -> None:
        self._engine = engine
        self._step_interval = step_interval
        self._front_end_threads = max(1, front_end_threads)
        self._pool: ThreadPoolExecutor | None = None
        self._legacy: _CallbackSink | None = None
        if callable(sinks) and not hasattr(sinks, "on_update"):  # LiveRunner(engine, on_updates, on_end=...)
            self._legacy = _CallbackSink(sinks, on_end, on_title)
            sinks = [self._legacy]
        elif on_end is not None or on_title is not None:
            raise TypeError("on_end/on_title go with an on_updates callback; pass sinks instead")
        self._sinks: tuple[Sink, ...] = tuple(sinks)  # type: ignore[arg-type]
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()  # guards self._streams and self._sinks
        # Held by the engine thread while it steps and publishes, and by remove()/stop() while they take a stream
        # out of the engine: no update of a stream reaches a sink after its on_stream_removed. Reentrant, so a
        # sink may call remove() from inside a callback.
        self._publish = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._engine_thread: threading.Thread | None = None
        self._iterations = 0  # engine-loop iterations completed (flush waits on it)
        self._cv = threading.Condition()
        self.engine_error: BaseException | None = None

    @property
    def engine(self) -> Any:
        """The engine (read-only use: labels_shown, sample_rate, hop_seconds, bundle)."""
        return self._engine

    # -- sinks ---------------------------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def _notify(self, method: str, *args: Any) -> None:
        for sink in self._sinks:  # a tuple: adding/removing sinks meanwhile replaces it, never mutates it
            try:
                getattr(sink, method)(*args)
            except Exception:  # a broken sink must not stop the engine or starve the other sinks
                log.exception("sink %r failed in %s", sink, method)

    # -- streams -------------------------------------------------------------------------------------------
    def add_source(self, name: str, source: Any, *, speed: float | None = None, display: str | None = None) -> None:
        """Add stream ``name`` to the engine and start feeding it from ``source`` in a thread of its own.

        ``display`` is the input as sinks show it (default: the source's ``name``); never put credentials in it.
        """
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise StreamtagError(f"--speed must be a positive number, got {speed}")
        title = getattr(source, "title", None)
        self._engine.add_stream(name, title=title)  # raises ConfigError for a duplicate name
        st = _Stream(name, source, speed)
        st.thread = threading.Thread(target=self._feed, args=(st,), name=f"feed-{name}", daemon=True)
        if hasattr(source, "on_event"):
            source.on_event = _chain(getattr(source, "on_event", None), self._source_event(name))
        with self._lock:
            self._streams[name] = st
        self._notify("on_stream_added", name, display if display is not None else str(getattr(source, "name", name)),
                     title)
        st.thread.start()

    def add_stream(self, name: str, *, display: str = "", title: str | None = None) -> None:
        """A push-fed stream (websocket audio in): the caller calls :meth:`push` and, at the end, :meth:`remove`."""
        self._engine.add_stream(name, title=title)
        with self._lock:
            self._streams[name] = _Stream(name)
        self._notify("on_stream_added", name, display, title)

    def push(self, name: str, samples: np.ndarray) -> None:
        """Hand (N,) float32 samples of stream ``name`` to the engine thread (never blocks; unknown names are
        ignored: the stream may have just been removed)."""
        if name in self._engine.streams:
            self._engine.push(name, samples)
        if not self._wake.is_set():  # set already: the engine has not cleared it, so its next step reads this audio
            self._wake.set()

    def remove(self, name: str, timeout: float = 2.0) -> None:
        """Stop feeding ``name`` (closing its source), take it out of the engine; sinks get on_stream_removed."""
        with self._lock:
            st = self._streams.pop(name, None)
        if st is not None:
            st.stop.set()
            close_quietly(st.source)
            if st.thread is not None and st.thread is not threading.current_thread():
                st.thread.join(timeout)
        with self._publish:
            try:
                self._engine.remove_stream(name)
            except StreamtagError:  # already gone (its source ended)
                pass
            if st is not None and not st.removed:
                st.removed = True
                if self._legacy is not None:
                    self._legacy.explicit.add(name)
                self._notify("on_stream_removed", name, None)

    def streams(self) -> list[str]:
        """Names of the streams sinks currently know (not yet removed)."""
        with self._lock:
            return [n for n, st in self._streams.items() if not st.removed]

    def active(self) -> list[str]:
        """Names of the sources still feeding (push-fed streams count until removed)."""
        with self._lock:
            return [n for n, st in self._streams.items() if not st.done and not st.removed]

    def errors(self) -> dict[str, StreamtagError]:
        """The error each failed source ended with, by stream name."""
        with self._lock:
            return {n: st.error for n, st in self._streams.items() if st.error is not None}

    def _source_event(self, name: str) -> Callable[[str, str], None]:
        def on_event(kind: str, detail: str) -> None:
            if kind != "title":  # titles reach sinks through on_title (also for sources that emit no events)
                self._notify("on_status", name, kind, detail)

        return on_event

    def _backlog(self, name: str) -> float:
        """Seconds of audio of stream ``name`` waiting for the engine."""
        st = self._engine.streams.get(name)
        return len(st.ring) / self._engine.sample_rate if st is not None else 0.0

    def _feed(self, st: _Stream) -> None:
        sr = self._engine.sample_rate
        t0 = time.monotonic()
        title = getattr(st.source, "title", None)
        try:
            for block in st.source:
                if st.stop.is_set():
                    break
                block = np.asarray(block, dtype=np.float32).reshape(-1)  # (N,)
                while st.speed is None and self._backlog(st.name) > MAX_BACKLOG_SECONDS and not st.stop.is_set():
                    st.stop.wait(BACKLOG_POLL_S)  # a file decodes faster than the model runs: wait for the engine
                if st.speed is not None:
                    # A live source delivers a block once its last sample has been played.
                    delay = t0 + (st.samples + block.shape[0]) / sr / st.speed - time.monotonic()
                    if delay > 0 and st.stop.wait(delay):
                        break
                self.push(st.name, block)
                st.samples += block.shape[0]
                new_title = getattr(st.source, "title", None)
                if new_title != title:
                    title = new_title
                    if st.name in self._engine.streams:
                        self._engine.set_title(st.name, title)
                    self._notify("on_title", st.name, title)
        except StreamtagError as e:
            if not st.stop.is_set():
                st.error = e
        except Exception as e:  # a source bug must end its stream, not the process
            if not st.stop.is_set():
                log.exception("source %s failed", st.name)
                st.error = SourceError(f"{st.name}: source failed ({type(e).__name__}: {e})")
        finally:
            close_quietly(st.source)
            st.done = True
            self._wake.set()

    # -- engine --------------------------------------------------------------------------------------------
    def start(self) -> LiveRunner:
        if self._front_end_threads > 1 and hasattr(self._engine, "front_end_map"):
            pool = self._pool = ThreadPoolExecutor(self._front_end_threads - 1, thread_name_prefix="front-end")
            self._engine.front_end_passes = self._front_end_threads
            self._engine.front_end_map = partial(_map_on, pool)
        self._engine_thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._engine_thread.start()
        return self

    def _loop(self) -> None:
        last = -math.inf
        while not self._stop.is_set():
            self._wake.wait(IDLE_WAIT_S)
            # A step costs a fixed part (a model call, a smoother step) plus a part per hop: stepping once per
            # pushed block would spend the CPU on fixed parts. The first audio after a quiet spell is stepped at
            # once; under load, steps are step_interval apart and each takes every hop completed meanwhile.
            wait = last + self._step_interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                continue
            self._wake.clear()
            last = time.monotonic()
            with self._lock:  # sources that ended before this step: their last audio is in this step
                ending = [st for st in self._streams.values() if st.done and not st.removed]
            try:
                with self._publish:
                    updates = self._engine.step()
                    if updates:
                        self._add_input_overruns(updates)
                        self._notify("on_update", updates)
                    for st in ending:
                        self._finish(st, st.error)
            except Exception as e:  # surfaced by the app loop; the thread must not die silently
                log.exception("engine step failed")
                self.engine_error = e
                self._engine_failed(e)
                return
            finally:
                with self._cv:
                    self._iterations += 1
                    self._cv.notify_all()

    def _finish(self, st: _Stream, error: StreamtagError | None) -> None:
        """Take a stream whose source ended out of the engine and tell the sinks (engine thread, _publish held)."""
        if st.removed:
            return
        st.removed = True
        try:
            self._engine.remove_stream(st.name)
        except StreamtagError:
            pass
        self._notify("on_stream_removed", st.name, error)

    def _engine_failed(self, e: BaseException) -> None:
        error = e if isinstance(e, StreamtagError) else StreamtagError(f"engine failed: {type(e).__name__}: {e}")
        with self._lock:
            streams = list(self._streams.values())
        for st in streams:
            st.stop.set()
            close_quietly(st.source)
            with self._publish:
                self._finish(st, error)

    def _add_input_overruns(self, updates: list[GenreUpdate]) -> None:
        # Sources that can lose audio before the engine sees it (a microphone's PortAudio overflows) count
        # their own overruns; publish them beside the engine's ring-buffer overruns.
        with self._lock:
            sources = {n: st.source for n, st in self._streams.items()}
        for u in updates:
            n = getattr(sources.get(u.stream), "overruns", None)
            if isinstance(n, int):
                u.extra["input_overruns"] = n

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until the engine has processed all audio pushed before this call and sent its updates (and
        finished the streams whose sources had ended). Returns False if the engine thread is not running or
        did not get there within ``timeout`` s."""
        thread = self._engine_thread
        if thread is None:
            return False
        deadline = time.monotonic() + timeout
        # Two completed iterations: the second one started after this call, so it read everything pushed before.
        for _ in range(2):
            with self._cv:
                target = self._iterations + 1
                self._wake.set()
                while self._iterations < target:
                    left = deadline - time.monotonic()
                    if left <= 0 or not thread.is_alive():
                        log.warning("flush: the engine did not catch up within %.0f s", timeout)
                        return False
                    self._cv.wait(min(left, IDLE_WAIT_S))
        return True

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop feeders (closing sources) and the engine thread; every stream still known is removed from the
        engine and reported to the sinks as removed (``error`` None)."""
        with self._lock:
            streams = list(self._streams.values())
        for st in streams:
            st.stop.set()
            close_quietly(st.source)
        self._stop.set()
        self._wake.set()
        for st in streams:
            if st.thread is not None and st.thread is not threading.current_thread():
                st.thread.join(timeout)
        if self._engine_thread is not None and self._engine_thread is not threading.current_thread():
            self._engine_thread.join(timeout)
        with self._publish:
            for st in streams:
                if not st.removed and self._legacy is not None:
                    self._legacy.explicit.add(st.name)
                self._finish(st, None)
        if self._pool is not None:
            self._engine.front_end_map, self._engine.front_end_passes = map, 1
            self._pool.shutdown(wait=False)
            self._pool = None


def freeze_startup_objects() -> None:
    """Collect, then move every object alive now out of the cyclic collector's reach (``gc.freeze``); for a
    long-running live process, once its imports and model are loaded. With torch imported that is ~200,000 objects,
    which every full collection would otherwise walk while holding the GIL (80-150 ms at 1,000 streams, a stall of
    every thread); objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def _map_on(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(i) for i in items]``: the first on this thread, the others on ``pool`` meanwhile (in order)."""
    if len(items) < 2:
        return [fn(i) for i in items]
    try:
        futures = [pool.submit(fn, i) for i in items[1:]]
    except RuntimeError:  # the pool was shut down (stop() gave up waiting for a slow step): run them here
        return [fn(i) for i in items]
    return [fn(items[0]), *(f.result() for f in futures)]


def _chain(first: Callable[[str, str], None] | None, second: Callable[[str, str], None]) -> Callable[[str, str], None]:
    if first is None:
        return second

    def both(kind: str, detail: str) -> None:
        try:
            first(kind, detail)
        finally:
            second(kind, detail)

    return both


def close_all(sources: Iterable[object]) -> None:
    """Close every source (best effort)."""
    for s in sources:
        close_quietly(s)
