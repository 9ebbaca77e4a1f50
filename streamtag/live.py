"""Live orchestration: source threads -> Engine -> publishers.

:class:`LiveRunner` gives every source its own feeder thread (which only pushes blocks into the engine's ring
buffers, optionally paced at real time) and one engine thread that calls ``engine.step()`` whenever audio
arrived and hands the updates to a publisher callback. :func:`run` drives a set of sources to the terminal:
the rich dashboard when stdout is a terminal, JSON lines otherwise. It is what ``streamtag stream``,
``listen`` and ``demo`` call.
"""
from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import numpy as np

from .errors import SourceError, StreamtagError
from .events import GenreUpdate

__all__ = ["Source", "LiveRunner", "Playlist", "run", "run_dashboard", "jsonl_writer"]

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # s the engine thread sleeps when no audio arrived (a push wakes it at once)
MAX_BACKLOG_SECONDS = 5.0  # s of unprocessed audio in a stream's ring before an unpaced feeder waits (back-pressure)
REFRESH_HZ = 4.0  # dashboard refreshes per second


class Source(Protocol):
    """What sources yield: mono float32 blocks at the engine's sample rate (streamtag.sources)."""

    name: str
    title: str | None

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class _Feeder:
    name: str
    source: Source
    speed: float | None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    samples: int = 0
    error: StreamtagError | None = None
    done: bool = False


class LiveRunner:
    """Feeder threads push sources into ``engine``; one engine thread steps it and publishes the updates.

    ``on_updates(updates)`` and ``on_end(name, error)`` are called from runner threads; ``on_title(name,
    title)`` whenever a source's ICY title changes. ``speed`` paces a source at ``speed`` x real time (None:
    as fast as it yields, which is right for live sources: radio and microphones pace themselves).
    """

    def __init__(
        self,
        engine,
        on_updates: Callable[[list[GenreUpdate]], None],
        *,
        on_end: Callable[[str, StreamtagError | None], None] | None = None,
        on_title: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_updates = on_updates
        self.on_end = on_end or (lambda name, error: None)
        self.on_title = on_title or (lambda name, title: None)
        self.feeders: dict[str, _Feeder] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._engine_thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards self.feeders
        # Producers copy blocks straight into the engine's per-stream ring buffers (engine.push is thread-safe);
        # when the engine falls behind live audio, the rings drop the oldest audio and count overruns, so
        # latency and memory stay bounded. Unpaced sources (files) wait instead: nothing of a file is lost.
        self.engine_error: BaseException | None = None

    # -- sources -----------------------------------------------------------------------------------------
    def add_source(self, name: str, source: Source, *, speed: float | None = None) -> None:
        """Add stream ``name`` to the engine and start feeding it from ``source``."""
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise StreamtagError(f"--speed must be a positive number, got {speed}")
        self.engine.add_stream(name, title=getattr(source, "title", None))
        feeder = _Feeder(name, source, speed)
        feeder.thread = threading.Thread(target=self._feed, args=(feeder,), name=f"feed-{name}", daemon=True)
        with self._lock:
            self.feeders[name] = feeder
        feeder.thread.start()

    def add_stream(self, name: str, title: str | None = None) -> None:
        """A push-fed stream (websocket audio-in): the caller calls :meth:`push`."""
        self.engine.add_stream(name, title=title)

    def push(self, name: str, samples: np.ndarray) -> None:
        """Hand (N,) float32 samples of stream ``name`` to the engine thread (never blocks)."""
        if name in self.engine.streams:
            self.engine.push(name, samples)
        self._wake.set()

    def remove(self, name: str, timeout: float = 2.0) -> None:
        """Stop feeding ``name`` (closing its source) and remove it from the engine."""
        with self._lock:
            feeder = self.feeders.pop(name, None)
        if feeder is not None:
            feeder.stop.set()
            _close(feeder.source)
            if feeder.thread is not None and feeder.thread is not threading.current_thread():
                feeder.thread.join(timeout)
        try:
            self.engine.remove_stream(name)
        except StreamtagError:  # already gone
            pass

    def active(self) -> list[str]:
        """Names of sources still feeding."""
        with self._lock:
            return [n for n, f in self.feeders.items() if not f.done]

    def errors(self) -> dict[str, StreamtagError]:
        with self._lock:
            return {n: f.error for n, f in self.feeders.items() if f.error is not None}

    def _backlog(self, name: str) -> float:
        """Seconds of audio of stream ``name`` waiting for the engine."""
        st = self.engine.streams.get(name)
        return len(st.ring) / self.engine.sample_rate if st is not None else 0.0

    def _feed(self, f: _Feeder) -> None:
        sr = self.engine.sample_rate
        t0 = time.monotonic()
        title = getattr(f.source, "title", None)
        try:
            for block in f.source:
                if f.stop.is_set():
                    break
                block = np.asarray(block, dtype=np.float32).reshape(-1)  # (N,)
                while f.speed is None and self._backlog(f.name) > MAX_BACKLOG_SECONDS and not f.stop.is_set():
                    f.stop.wait(0.01)  # a file decodes faster than the model runs: wait for the engine
                if f.speed is not None:
                    # A live source delivers a block once its last sample has been played.
                    delay = t0 + (f.samples + block.shape[0]) / sr / f.speed - time.monotonic()
                    if delay > 0 and f.stop.wait(delay):
                        break
                self.push(f.name, block)
                f.samples += block.shape[0]
                new_title = getattr(f.source, "title", None)
                if new_title != title:
                    title = new_title
                    if f.name in self.engine.streams:
                        self.engine.set_title(f.name, title)
                    self.on_title(f.name, title)
        except StreamtagError as e:
            if not f.stop.is_set():
                f.error = e
        except Exception as e:  # a source bug must end its stream, not the process
            if not f.stop.is_set():
                log.exception("source %s failed", f.name)
                f.error = SourceError(f"{f.name}: source failed ({type(e).__name__}: {e})")
        finally:
            _close(f.source)
            f.done = True
            self._wake.set()
        if not f.stop.is_set():
            self.on_end(f.name, f.error)

    # -- engine ------------------------------------------------------------------------------------------
    def start(self) -> LiveRunner:
        self._engine_thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._engine_thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_WAIT_S)
            self._wake.clear()
            try:
                updates = self.engine.step()
            except Exception as e:  # logged and surfaced by run(); the thread must not die silently
                log.exception("engine step failed")
                self.engine_error = e
                return
            if updates:
                self._add_input_overruns(updates)
                self.on_updates(updates)

    def _add_input_overruns(self, updates: list[GenreUpdate]) -> None:
        # Sources that can lose audio before the engine sees it (a microphone's PortAudio overflows) count
        # their own overruns; publish them beside the engine's ring-buffer overruns.
        with self._lock:
            sources = {n: f.source for n, f in self.feeders.items()}
        for u in updates:
            n = getattr(sources.get(u.stream), "overruns", None)
            if isinstance(n, int):
                u.extra["input_overruns"] = n

    def flush(self) -> None:
        """Run the hops still pending (call after sources ended, before stop)."""
        self._wake.set()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self._engine_thread is not None and self._engine_thread.is_alive():
            if all(len(st.ring) == 0 for st in list(self.engine.streams.values())):
                break
            time.sleep(0.01)
        time.sleep(IDLE_WAIT_S * 2)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop feeders (closing sources) and the engine thread."""
        with self._lock:
            feeders = list(self.feeders.values())
        for f in feeders:
            f.stop.set()
            _close(f.source)
        self._stop.set()
        self._wake.set()
        for f in feeders:
            if f.thread is not None:
                f.thread.join(timeout)
        if self._engine_thread is not None:
            self._engine_thread.join(timeout)


def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # closing is best effort; a failing close must not mask the real outcome
        log.debug("closing %r failed", source, exc_info=True)


class Playlist:
    """Several sources one after another as one stream; ``title`` names the one playing.

    ``items`` are (title, opener) pairs; each opener is called when its turn comes.
    """

    def __init__(self, items: list[tuple[str, Callable[[], Source]]]) -> None:
        self.items = list(items)
        self.name = "playlist"
        self.title: str | None = self.items[0][0] if self.items else None
        self._current: Source | None = None
        self._closed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        for title, opener in self.items:
            if self._closed:
                return
            self.title = title
            self._current = opener()
            try:
                yield from self._current
            finally:
                _close(self._current)

    def close(self) -> None:
        self._closed = True
        if self._current is not None:
            _close(self._current)


def jsonl_writer(out: TextIO, top: int | None = None) -> Callable[[list[GenreUpdate]], None]:
    """A publisher writing one JSON line per update to ``out`` (thread-safe, flushed per batch)."""
    lock = threading.Lock()

    def write(updates: list[GenreUpdate]) -> None:
        with lock:
            for u in updates:
                if top is not None:
                    u.top = u.top[:top]
                out.write(u.to_json() + "\n")
            try:
                out.flush()
            except (BrokenPipeError, ValueError):
                pass

    return write


def run(
    engine,
    sources: Mapping[str, Source],
    *,
    output: str = "auto",
    speed: float | None = None,
    describe: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    console=None,
    duration: float | None = None,
    refresh_hz: float = REFRESH_HZ,
    top: int | None = None,
) -> int:
    """Tag ``sources`` live until they all end (or Ctrl-C, or ``duration`` s); returns an exit code.

    ``output``: "dashboard" (rich, needs a terminal), "jsonl" (GenreUpdate.to_json() lines on stdout) or
    "auto" (dashboard when stdout is a terminal). ``speed`` paces every source (see :class:`LiveRunner`).
    ``describe`` maps stream names to a short description of the source for the dashboard. ``top`` limits
    the genres per JSON update and the bars per stream.
    Raises the first source's :class:`StreamtagError` after cleanup when a source failed.
    """
    out = stdout or sys.stdout
    if output == "auto":
        output = "dashboard" if out.isatty() else "jsonl"
    if output not in ("dashboard", "jsonl"):
        raise StreamtagError(f"unknown output {output!r}; use dashboard, jsonl or auto")
    publish = jsonl_writer(out, top) if output == "jsonl" else (lambda updates: None)
    status: dict[str, str] = {}
    runner = LiveRunner(
        engine, publish, on_end=lambda name, err: status.__setitem__(name, str(err) if err else "ended")
    )
    runner.start()
    t0 = time.monotonic()
    code = 0
    try:
        for name, src in sources.items():
            runner.add_source(name, src, speed=speed)

        def finished() -> bool:
            if runner.engine_error is not None or not runner.active():
                return True
            return duration is not None and time.monotonic() - t0 >= duration

        if output == "dashboard":
            from rich.console import Console

            from .publishers.dashboard import Dashboard, snapshot

            dash = Dashboard(console or Console(file=out))
            with dash:
                while True:
                    done = finished()
                    if done:
                        runner.flush()
                    dash.show(
                        snapshot(
                            engine,
                            sources=describe,
                            extra_overruns={n: int(getattr(s, "overruns", 0)) for n, s in sources.items()},
                            status=status,
                            max_bars=min(top or 99, dash.max_bars_for(len(sources))),
                            elapsed=time.monotonic() - t0,
                            footer="done" if done else "Ctrl-C to stop",
                        )
                    )
                    if done:
                        break
                    time.sleep(1.0 / refresh_hz)
        else:
            while not finished():
                time.sleep(0.05)
            runner.flush()
    except KeyboardInterrupt:
        code = 130
    finally:
        runner.stop()
    if runner.engine_error is not None:
        err = runner.engine_error
        raise err if isinstance(err, StreamtagError) else StreamtagError(f"engine failed: {err}")
    errors = runner.errors()
    if errors and code == 0:
        raise next(iter(errors.values()))
    return code


def run_dashboard(engine, sources: Mapping[str, Source], *, duration: float | None = None, top: int | None = None,
                  describe: Mapping[str, str] | None = None) -> int:
    """The rich dashboard for live sources (radio, microphones): :func:`run` with ``output="dashboard"``."""
    return run(engine, sources, output="dashboard", duration=duration, top=top,
               describe=describe or {n: n for n in sources})
