"""The live runner: sources -> Engine -> sinks.

:class:`LiveRunner` feeds sources into an :class:`Engine` and runs one engine thread that calls ``engine.step()``
whenever audio arrived and hands the updates to every sink (:class:`streamtag.publishers.base.Sink`). Sources
come two ways:

- a :class:`~streamtag.sources.pool.PooledSource` (opened by a :class:`~streamtag.sources.pool.SourcePool`: files,
  radio, HLS, playlists) is read in a decoder process; its blocks arrive in batches through the pool's receiver
  thread. Hundreds of these cost the engine's process one thread in all.
- any other iterable of blocks (the microphone, stdin, a playlist object) gets a feeder thread of its own here.

Push-fed streams (websocket audio in) are added with :meth:`LiveRunner.add_stream` and fed by :meth:`push`.
Sinks learn everything through their calls: streams added and removed, updates, titles, and source events
(reconnecting, connected, ...) via ``on_status``. Per stream, sinks see ``on_stream_added``, then
updates/titles/statuses, then exactly one ``on_stream_removed``: when its source ends (after the engine has
emitted the hops of its last audio; the stream then leaves the engine), on :meth:`LiveRunner.remove`, or on
:meth:`LiveRunner.stop`.

The terminal and server loops that drive a runner live in :mod:`streamtag.app`.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .errors import SourceError, StreamtagError, close_quietly
from .events import GenreUpdate

if TYPE_CHECKING:
    from .publishers.base import Sink
    from .registry import Bundle
    from .sources.pool import PooledSource

__all__ = [
    "LiveRunner", "Engine", "Source", "Runner", "IDLE_WAIT_S", "STEP_INTERVAL_S", "MAX_BACKLOG_SECONDS",
    "freeze_startup_objects",
]

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # s the engine thread sleeps when no audio arrived (a push wakes it at once)
STEP_INTERVAL_S = 0.02  # s: the engine steps at most this often; the hops completed meanwhile share one step
FRONT_END_THREADS = min(2, os.cpu_count() or 1)  # threads a step's log-mel passes run on (the engine thread + helpers)
MAX_BACKLOG_SECONDS = 5.0  # s of unprocessed audio in a stream's ring before an unpaced feeder waits (back-pressure)
# s between a waiting feeder's looks at its backlog: with 5 s buffered, 0.1 s costs the engine nothing, and many
# feeders polling faster would take the CPU and the GIL from the engine they wait for
BACKLOG_POLL_S = 0.1
JOIN_TIMEOUT_S = 1.5  # s stop() waits for the feeder threads and the engine thread, all together
STEP_GRACE_S = 0.5  # s stop() then waits for a step still running before it finishes the streams without it
FLUSH_TIMEOUT_S = 60.0  # s flush() waits for the engine to process the audio already pushed (a slow CPU, a big backlog)


class Engine(Protocol):
    """What the runner needs of :class:`streamtag.pipeline.Engine` (and what sinks may read of it)."""

    bundle: Bundle
    sample_rate: int
    hop_seconds: float
    labels_shown: list[str]

    @property
    def first_answer_seconds(self) -> float: ...
    def add_stream(self, name: str, title: str | None = None) -> object: ...
    def remove_stream(self, name: str) -> None: ...
    def set_title(self, name: str, title: str | None) -> None: ...
    def push(self, name: str, samples: np.ndarray, arrived: float | tuple[float, float] | None = None) -> None: ...
    def step(self, stop: threading.Event | None = None) -> list[GenreUpdate]: ...
    def backlog(self, name: str) -> float: ...
    def use_front_end_pool(self, pool: Executor | None, passes: int = 1) -> None: ...
    def warm_up(self) -> None: ...


@runtime_checkable
class Source(Protocol):
    """An in-process source: an iterator of (N,) float32 blocks at the engine's rate with a ``name`` and
    ``close()`` (from any thread). Optional: ``title``, ``on_event`` (``callback(kind, detail)``), ``overruns``
    (audio lost before the engine, e.g. PortAudio input overflows)."""

    name: str

    def __iter__(self) -> Iterator[np.ndarray]: ...
    def close(self) -> None: ...


class Runner(Protocol):
    """The runner protocol servers (publishers/websocket.py) and gateways (the cluster) drive."""

    @property
    def engine(self) -> Engine: ...
    def add_source(self, name: str, source: Source | PooledSource, *, speed: float | None = None,
                   display: str | None = None) -> None: ...
    def add_stream(self, name: str, *, display: str = "", title: str | None = None) -> None: ...
    def push(self, name: str, samples: np.ndarray) -> None: ...
    def remove(self, name: str, timeout: float = 2.0) -> None: ...
    def streams(self) -> list[str]: ...
    def add_sink(self, sink: Sink) -> None: ...
    def remove_sink(self, sink: Sink) -> None: ...
    def stop(self) -> None: ...


@dataclass
class _Stream:
    """The runner's record of one stream: a source read here (``thread``), in a pool worker (``pooled``), or
    pushed by the caller (neither)."""

    name: str
    source: Source | PooledSource | None = None
    speed: float | None = None
    pooled: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    samples: int = 0
    error: StreamtagError | None = None
    done: bool = False  # the source ended (or failed); the engine thread finishes the stream
    removed: bool = False  # on_stream_removed was sent


class _Feed:
    """A pooled source's way into the runner (:class:`streamtag.sources.pool.SourceFeed`)."""

    def __init__(self, runner: LiveRunner, st: _Stream) -> None:
        self._runner, self._st = runner, st
        self._live_known = st.speed is not None  # paced: never caught up

    def push(self, samples: np.ndarray, arrived: float | tuple[float, float] | None = None) -> None:
        st = self._st
        if not self._live_known:  # a pooled source's info says whether it is live once it has connected (a
            live = _live_in_info(st.source)  # station list's entry connects after it is announced)
            if live is not None:
                self._live_known = True
                if live:
                    self._runner._catch_up(st.name)
        st.samples += samples.shape[0]
        self._runner.push(st.name, samples, arrived)

    def title(self, title: str | None) -> None:
        self._runner._set_title(self._st.name, title)

    def event(self, kind: str, detail: str) -> None:
        self._runner._notify_status(self._st.name, kind, detail)

    def end(self, error: StreamtagError | None) -> None:
        self._runner._source_done(self._st, error)

    def backlog(self) -> float:
        return self._runner.engine.backlog(self._st.name)


def _is_live(source: object) -> bool:
    """A source of the moment (radio, a live HLS playlist, a microphone), whose oldest audio goes stale: not a file,
    not pushed audio. A pooled source says so in its ``info`` once it has connected."""
    live = _live_in_info(source)
    return bool(getattr(source, "live", False)) if live is None else live


def _live_in_info(source: object) -> bool | None:
    """What the source's ``info`` says of its liveness (a pooled source's, once it has connected), None if nothing."""
    info = getattr(source, "info", None)
    return bool(info["live"]) if isinstance(info, dict) and "live" in info else None


class LiveRunner:
    """Sources feed ``engine``; one engine thread steps it and feeds ``sinks``.

    ``speed`` (per source) paces it at ``speed`` x real time; None feeds it as fast as it yields, which is right
    for live sources (radio and microphones pace themselves) and, with back-pressure, for files tagged flat out.
    Sinks are called from the runner's threads; a sink that raises is logged and skipped, never fatal.
    ``step_interval``: the engine steps at most this often (s), so that under load many streams' hops share one
    step; it bounds the latency that batching adds. ``front_end_threads``: a step's log-mel runs in that many
    passes at once, on the engine thread and helper threads (numpy's FFT and matmul release the GIL).
    ``compute_nice``: the engine thread, the front-end helpers and the model's worker threads run that many nice
    levels below the rest of the process (Linux; 0 leaves them be; default ``threads.COMPUTE_NICE``, 5), so that
    sources, the pool's receiver and the publishers get a core first when the cores are short
    (:func:`streamtag.architectures.threads.lower_compute_priority`). ``warm_up``: the engine thread first runs
    the model on silence (:meth:`Engine.warm_up`), so the one-time cost of a process's first model call (~1 s) is
    paid while the sources open, not by the first step of every stream.
    """

    def __init__(
        self,
        engine: Engine,
        sinks: Sequence[Sink] = (),
        *,
        step_interval: float = STEP_INTERVAL_S,
        front_end_threads: int = FRONT_END_THREADS,
        compute_nice: int | None = None,
        warm_up: bool = True,
    ) -> None:
        self._engine = engine
        self._warm_up = warm_up
        self._compute_nice = compute_nice  # None: threads.COMPUTE_NICE (read at start: it imports torch)
        self._step_interval = step_interval
        self._front_end_threads = max(1, front_end_threads)
        self._pool: ThreadPoolExecutor | None = None
        self._sinks: tuple[Sink, ...] = tuple(sinks)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()  # guards self._streams and self._sinks
        # Held by the engine thread while it steps and publishes, and by remove()/stop() while they take a stream
        # out of the engine: no update of a stream reaches a sink after its on_stream_removed. Reentrant, so a
        # sink may call remove() from inside a callback.
        self._publish = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopped = False  # stop() ran (a second call returns at once)
        self._engine_thread: threading.Thread | None = None
        self._iterations = 0  # engine-loop iterations completed (flush waits on it)
        self._cv = threading.Condition()
        self.engine_error: BaseException | None = None
        self.updates_emitted = 0  # updates handed to the sinks (health figures)

    @property
    def engine(self) -> Engine:
        """The engine (read-only use: labels_shown, sample_rate, hop_seconds, bundle)."""
        return self._engine

    # -- sinks ---------------------------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def _notify_added(self, name: str, display: str, title: str | None) -> None:
        for sink in self._sinks:  # a tuple: adding/removing sinks meanwhile replaces it, never mutates it
            try:
                sink.on_stream_added(name, display, title)
            except Exception:  # a broken sink must not stop the engine or starve the other sinks
                log.exception("sink %r failed in on_stream_added", sink)

    def _notify_updates(self, updates: list[GenreUpdate]) -> None:
        for sink in self._sinks:
            try:
                sink.on_update(updates)
            except Exception:
                log.exception("sink %r failed in on_update", sink)

    def _notify_title(self, name: str, title: str | None) -> None:
        for sink in self._sinks:
            try:
                sink.on_title(name, title)
            except Exception:
                log.exception("sink %r failed in on_title", sink)

    def _notify_status(self, name: str, kind: str, detail: str) -> None:
        if kind == "title":  # titles reach sinks through on_title only
            return
        for sink in self._sinks:
            try:
                sink.on_status(name, kind, detail)
            except Exception:
                log.exception("sink %r failed in on_status", sink)

    def _notify_removed(self, name: str, error: StreamtagError | None) -> None:
        for sink in self._sinks:
            try:
                sink.on_stream_removed(name, error)
            except Exception:
                log.exception("sink %r failed in on_stream_removed", sink)

    # -- streams -------------------------------------------------------------------------------------------
    def add_source(self, name: str, source: Source | PooledSource, *, speed: float | None = None,
                   display: str | None = None) -> None:
        """Add stream ``name`` to the engine and start feeding it from ``source``: a pooled source through its
        decoder process, any other in a thread of its own.

        ``display`` is the input as sinks show it (default: the source's ``name``); never put credentials in it.
        """
        from .sources.pool import PooledSource

        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise StreamtagError(f"--speed must be a positive number, got {speed}")
        title = getattr(source, "title", None)
        self._engine.add_stream(name, title=title)  # raises ConfigError for a duplicate name
        pooled = isinstance(source, PooledSource)
        st = _Stream(name, source, speed, pooled=pooled)
        if not pooled:
            st.thread = threading.Thread(target=self._feed, args=(st,), name=f"feed-{name}", daemon=True)
            if hasattr(source, "on_event"):
                source.on_event = _chain(getattr(source, "on_event", None), self._source_event(name))
        with self._lock:
            self._streams[name] = st
        if speed is None and not pooled and _is_live(source):
            self._catch_up(name)
        self._notify_added(name, display if display is not None else str(getattr(source, "name", name)), title)
        if isinstance(source, PooledSource):
            source.start(_Feed(self, st), speed)
        elif st.thread is not None:
            st.thread.start()

    def _catch_up(self, name: str) -> None:
        """A live source's stream skips audio the engine could not reach in its start-up (Engine.catch_up)."""
        catch_up = getattr(self._engine, "catch_up", None)
        if catch_up is not None:
            catch_up(name)

    def add_stream(self, name: str, *, display: str = "", title: str | None = None) -> None:
        """A push-fed stream (websocket audio in): the caller calls :meth:`push` and, at the end, :meth:`remove`."""
        self._engine.add_stream(name, title=title)
        with self._lock:
            self._streams[name] = _Stream(name)
        self._notify_added(name, display, title)

    def push(self, name: str, samples: np.ndarray, arrived: float | tuple[float, float] | None = None) -> None:
        """Hand (N,) float32 samples of stream ``name`` to the engine thread (never blocks; unknown names are
        ignored: the stream may have just been removed). ``arrived``: when the audio reached the machine, if
        earlier than now (a decoder process's stamp; see :meth:`Engine.push`); latency counts from it."""
        try:
            self._engine.push(name, samples, arrived)
        except StreamtagError:  # not (or no longer) in the engine
            return
        if not self._wake.is_set():  # set already: the engine has not cleared it, so its next step reads this audio
            self._wake.set()

    def remove(self, name: str, timeout: float = 2.0) -> None:
        """Stop feeding ``name`` (closing its source), take it out of the engine; sinks get on_stream_removed."""
        self.remove_many([name], timeout)

    def remove_many(self, names: Iterable[str], timeout: float = 2.0) -> None:
        """:meth:`remove` for many streams at once: one wait for the engine between two steps for all of them (a
        station list's reload removes 50 stations in one step's time, not in 50)."""
        with self._lock:
            gone = [(name, self._streams.pop(name, None)) for name in names]
        for _, st in gone:
            if st is not None:
                st.stop.set()
                close_quietly(st.source)
        deadline = time.monotonic() + timeout
        for _, st in gone:
            if st is not None and st.thread is not None and st.thread is not threading.current_thread():
                st.thread.join(max(0.0, deadline - time.monotonic()))
        if self._stop.is_set():  # stop() already took every stream out (and a step it gave up on may hold the lock)
            gone = [(name, st) for name, st in gone if st is not None and not st.removed]
            if not gone:
                return
        with self._publish:
            for name, st in gone:
                try:
                    self._engine.remove_stream(name)
                except StreamtagError:  # already gone (its source ended)
                    pass
                if st is not None and not st.removed:
                    st.removed = True
                    self._notify_removed(name, None)

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

    def pooled(self) -> dict[str, PooledSource]:
        """The pooled sources by stream name (their ``stats`` are the per-station health figures)."""
        from .sources.pool import PooledSource

        with self._lock:
            return {n: st.source for n, st in self._streams.items() if isinstance(st.source, PooledSource)}

    def _source_event(self, name: str) -> Callable[[str, str], None]:
        def on_event(kind: str, detail: str) -> None:
            self._notify_status(name, kind, detail)

        return on_event

    def _set_title(self, name: str, title: str | None) -> None:
        try:
            self._engine.set_title(name, title)
        except (KeyError, StreamtagError):  # the stream just left the engine
            return
        self._notify_title(name, title)

    def _source_done(self, st: _Stream, error: StreamtagError | None) -> None:
        if not st.stop.is_set():
            st.error = error
        st.done = True
        self._wake.set()

    def _feed(self, st: _Stream) -> None:
        """The feeder thread of an in-process source; titles come from its ``title`` after every block."""
        assert st.source is not None
        source = st.source
        sr = self._engine.sample_rate
        t0 = time.monotonic()
        title = getattr(source, "title", None)
        error: StreamtagError | None = None
        try:
            for block in source:  # type: ignore[union-attr]
                if st.stop.is_set():
                    break
                block = np.asarray(block, dtype=np.float32).reshape(-1)  # (N,)
                while st.speed is None and self._engine.backlog(st.name) > MAX_BACKLOG_SECONDS \
                        and not st.stop.is_set():
                    st.stop.wait(BACKLOG_POLL_S)  # a file decodes faster than the model runs: wait for the engine
                if st.speed is not None:
                    # A live source delivers a block once its last sample has been played.
                    delay = t0 + (st.samples + block.shape[0]) / sr / st.speed - time.monotonic()
                    if delay > 0 and st.stop.wait(delay):
                        break
                # an unpaced network source says when its bytes came in (latency counts from there)
                self.push(st.name, block, getattr(source, "arrived", None) if st.speed is None else None)
                st.samples += block.shape[0]
                new_title = getattr(source, "title", None)
                if new_title != title:
                    title = new_title
                    self._set_title(st.name, title)
        except StreamtagError as e:
            error = e
        except Exception as e:  # a source bug must end its stream, not the process
            if not st.stop.is_set():
                log.exception("source %s failed", st.name)
            error = SourceError(f"{st.name}: source failed ({type(e).__name__}: {e})")
        finally:
            close_quietly(source)
            self._source_done(st, error)

    # -- engine --------------------------------------------------------------------------------------------
    def start(self) -> LiveRunner:
        from .architectures.threads import COMPUTE_NICE, lower_compute_priority, lower_this_thread

        nice = self._compute_nice = max(0, COMPUTE_NICE if self._compute_nice is None else int(self._compute_nice))
        if nice:
            lower_compute_priority(nice)
        if self._front_end_threads > 1:
            self._pool = ThreadPoolExecutor(self._front_end_threads - 1, thread_name_prefix="front-end",
                                            initializer=lower_this_thread, initargs=(nice,))
            self._engine.use_front_end_pool(self._pool, self._front_end_threads)
        self._engine_thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._engine_thread.start()
        return self

    def _loop(self) -> None:
        from .architectures.threads import lower_this_thread

        lower_this_thread(self._compute_nice)
        if self._warm_up and not self._stop.is_set():
            try:
                self._engine.warm_up()
            except Exception:  # a model that cannot run fails its first step too, which reports it
                log.debug("engine warm-up failed", exc_info=True)
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
                    updates = self._engine.step(self._stop)  # a stop ends a long step between model calls
                    if self._stop.is_set():  # stop() may have given up waiting for this step: publish nothing
                        break
                    if updates:
                        self._add_input_overruns(updates)
                        self.updates_emitted += len(updates)
                        self._notify_updates(updates)
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
        self._notify_removed(st.name, error)

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
            counts = {n: getattr(st.source, "overruns", None) for n, st in self._streams.items() if not st.pooled}
        for u in updates:
            n = counts.get(u.stream)
            if isinstance(n, int):
                u.extra["input_overruns"] = n

    @property
    def iterations(self) -> int:
        """Engine-loop iterations so far: it advances every IDLE_WAIT_S even with no audio, so a value that
        stays put means the engine thread is stuck or gone (serve's systemd watchdog reads it)."""
        return self._iterations

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
        """Stop the sources (closing them) and the engine thread, waiting at most ``timeout`` s for all of them
        together; every stream still known is removed from the engine and reported to the sinks as removed
        (``error`` None)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._stopped:  # a second stop (a caller's finally after its own stop) has nothing left to wait for
                return
            self._stopped = True
            streams = list(self._streams.values())
        self._stop.set()  # first: a step in progress ends at its next model call (Engine.step's ``stop``)
        self._wake.set()
        for st in streams:
            st.stop.set()
            close_quietly(st.source)
        me = threading.current_thread()
        for st in streams:
            if st.thread is not None and st.thread is not me:
                st.thread.join(max(0.0, deadline - time.monotonic()))
        if self._engine_thread is not None and self._engine_thread is not me:
            self._engine_thread.join(max(0.0, deadline - time.monotonic()))
        # A step over a large backlog can outlast the deadline; its updates are dropped (the engine thread sees
        # the stop), so the streams are finished without waiting for it.
        locked = self._publish.acquire(timeout=STEP_GRACE_S)
        if not locked:
            log.warning("stop: the engine is still in a step; finishing the streams without it")
        try:
            for st in streams:
                self._finish(st, None)
        finally:
            if locked:
                self._publish.release()
        if self._pool is not None:
            self._engine.use_front_end_pool(None)
            self._pool.shutdown(wait=False)
            self._pool = None


def freeze_startup_objects() -> None:
    """Collect, then move every object alive now out of the cyclic collector's reach (``gc.freeze``); for a
    long-running live process, once its imports and model are loaded. With torch imported that is ~200,000 objects,
    which every full collection would otherwise walk while holding the GIL (80-150 ms at 1,000 streams, a stall of
    every thread); objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


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
