"""The worker actor: one per node (or one per GPU), running the existing engine for the stations placed on it.

:class:`StationWorker` is a thin shell around :class:`streamtag.pipeline.Engine` and
:class:`streamtag.live.LiveRunner`: it opens the sources the gateway places on it, lets the live runner feed and
step them exactly as a local ``serve`` does (one engine, one model batch across all its stations), and keeps what
the runner tells its sinks in an :class:`Outbox` that the gateway drains in bulk with :meth:`StationWorker.poll`.
Nothing here knows about websockets or clients; the gateway (``streamtag.cluster.gateway``) does.

This module does not import Ray: the gateway wraps the class with ``ray.remote`` when it creates workers, so the
class can be read (and tested) as plain Python. Every method returns plain data (tuples, dicts, the engine's
GenreUpdates); errors a user can cause come back as ``("error", kind, message)`` rather than as exceptions, so
they cross the process boundary as one line.

Streams are keyed by the gateway's *placement key* (``NAME#N``, new for every placement of a station), so events
of an earlier placement of the same station (removed, or moved away) can never be taken for the current one.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StreamtagError, close_quietly
from ..events import GenreUpdate

__all__ = ["EngineSpec", "Outbox", "StationWorker", "OUTBOX_EVENTS", "PENDING_TTL_S"]

log = logging.getLogger(__name__)

OUTBOX_EVENTS = 4096  # events a worker keeps for the gateway (one step's updates are one); beyond, the oldest go
PENDING_TTL_S = 120.0  # s an opened source waits for the gateway's start() before it is closed (gateway gave up)
CPU_EMA = 0.5  # weight of the newest CPU sample in the worker's measured load (one sample per poll)


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to build the same engine as a local ``serve``: the model (a shipped name, or a bundle
    directory that every node can read) and the engine's options."""

    model: str
    device: str = "auto"
    hop_seconds: float | None = None
    all_tags: bool = False
    smoothing: Any = None  # streamtag.smoothing.SmoothingConfig (None: its defaults)
    precision: str = "auto"

    def build(self) -> Any:
        from ..pipeline import Engine
        from ..registry import load_bundle

        return Engine(load_bundle(self.model), device=self.device, hop_seconds=self.hop_seconds,
                      all_tags=self.all_tags, smoothing=self.smoothing, precision=self.precision)


class Outbox:
    """A sink of the worker's live runner that keeps its events until the gateway drains them.

    Events: ``("updates", [GenreUpdate])``, ``("title", key, title)``, ``("status", key, kind, detail)``,
    ``("removed", key, message | None)``. Bounded (``OUTBOX_EVENTS``): a gateway that stops draining costs the
    worker a fixed amount of memory; the oldest events go first and are counted in ``dropped``.
    """

    def __init__(self, max_events: int = OUTBOX_EVENTS) -> None:
        self._events: deque[tuple[Any, ...]] = deque(maxlen=max_events)
        self._cv = threading.Condition()
        self.dropped = 0

    def _put(self, event: tuple[Any, ...]) -> None:
        with self._cv:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)
            self._cv.notify_all()

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        pass  # the gateway announces its stations itself

    def on_update(self, updates: list[GenreUpdate]) -> None:
        self._put(("updates", updates))

    def on_title(self, name: str, title: str | None) -> None:
        self._put(("title", name, title))

    def on_status(self, name: str, kind: str, detail: str) -> None:
        self._put(("status", name, kind, detail))

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        self._put(("removed", name, str(error) if error is not None else None))

    def drain(self, wait: float) -> list[tuple[Any, ...]]:
        """Every event so far, waiting up to ``wait`` s for the first one."""
        with self._cv:
            if not self._events and wait > 0:
                self._cv.wait(wait)
            events = list(self._events)
            self._events.clear()
        return events


class StationWorker:
    """The engine of one worker and the stations placed on it (see the module docstring).

    ``max_streams``: stations it takes at most (then :meth:`open` answers ``("full", why)``). The gateway calls
    :meth:`open` (the source is opened here, under the client's policy: DNS answers, redirects and paths are
    checked where the connection is made), then :meth:`start` with the station's placement key, or
    :meth:`discard` when it gave up meanwhile.
    """

    def __init__(self, spec: EngineSpec, *, max_streams: int, worker_id: str = "") -> None:
        from ..live import LiveRunner, freeze_startup_objects

        self.spec = spec
        self.worker_id = worker_id
        self.max_streams = max_streams
        self.engine = spec.build()
        self.outbox = Outbox()
        self.runner = LiveRunner(self.engine, [self.outbox]).start()
        self._pending: dict[str, tuple[Any, float]] = {}  # open token -> (source, opened at)
        self._lock = threading.Lock()
        self._mark = (time.monotonic(), time.process_time())
        self.cpu = 0.0  # measured: CPU seconds this process used per second, smoothed over polls
        freeze_startup_objects()

    # -- metadata and load ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the gateway shows clients (the same metadata a local engine has) and where this worker runs."""
        e = self.engine
        node = ""
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # not running under Ray (plain-Python use)
            pass
        return {"model": e.bundle.name, "labels": list(e.labels_shown), "sample_rate": int(e.sample_rate),
                "hop_seconds": float(e.hop_seconds), "device": str(getattr(e.runner, "device", "cpu")),
                "node": node, "pid": os.getpid(), "max_streams": self.max_streams, "worker": self.worker_id}

    def load(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), time.process_time()
        t0, c0 = self._mark
        if now - t0 >= 0.2:
            self.cpu = (1 - CPU_EMA) * self.cpu + CPU_EMA * (cpu - c0) / (now - t0)
            self._mark = (now, cpu)
        with self._lock:
            pending = len(self._pending)
        return {"streams": len(self.runner.streams()), "pending": pending, "cpu": round(self.cpu, 3),
                "step_ms": round(float(getattr(self.engine, "last_step_ms", 0.0)), 2),
                "dropped": self.outbox.dropped}

    def _full(self, extra: int = 0) -> str | None:
        with self._lock:
            held = len(self.runner.streams()) + len(self._pending) + extra
        if held > self.max_streams:
            return f"worker full: it holds {self.max_streams} stations (--worker-streams)"
        return None

    # -- stations -------------------------------------------------------------------------------------------
    def open(self, token: str, uri: str, policy: Any) -> tuple[Any, ...]:
        """Open ``uri`` under ``policy`` and keep it under ``token`` for :meth:`start`: ``("ok", title)``,
        ``("full", why)`` or ``("error", "policy" | "source", message)``."""
        from ..sources import open_source
        from ..sources.policy import PolicyError, display_name

        if (why := self._full(extra=1)) is not None:
            return ("full", why)
        with self._lock:
            self._pending[token] = (None, time.monotonic())  # counts against the limit while it opens
        try:
            source = open_source(uri, self.engine.sample_rate, policy=policy)
        except PolicyError as e:
            self._drop_pending(token)
            return ("error", "policy", str(e))
        except StreamtagError as e:
            self._drop_pending(token)
            return ("error", "source", str(e))
        except Exception as e:  # a source bug: one line for the client, the traceback in this worker's log
            self._drop_pending(token)
            log.exception("opening %s failed", display_name(uri))
            return ("error", "source", f"{display_name(uri)}: cannot open ({type(e).__name__})")
        with self._lock:
            if token in self._pending:
                self._pending[token] = (source, time.monotonic())
                return ("ok", getattr(source, "title", None))
        close_quietly(source)  # discarded while it opened
        return ("error", "source", "the gateway gave up on this source")

    def _drop_pending(self, token: str) -> Any:
        with self._lock:
            source, _ = self._pending.pop(token, (None, 0.0))
        return source

    def start(self, token: str, key: str, speed: float | None, display: str) -> tuple[Any, ...]:
        """Tag the source opened under ``token`` as stream ``key``: ``("ok",)`` or ``("error", "source", why)``."""
        source = self._drop_pending(token)
        if source is None:
            return ("error", "source", "the opened source expired before the gateway started it; add it again")
        try:
            self.runner.add_source(key, source, speed=speed, display=display)
        except StreamtagError as e:
            close_quietly(source)
            return ("error", "source", str(e))
        return ("ok",)

    def discard(self, token: str) -> None:
        close_quietly(self._drop_pending(token))

    def add_stream(self, key: str, display: str) -> tuple[Any, ...]:
        """A push-fed stream (a client's audio in); :meth:`push` feeds it."""
        if (why := self._full(extra=1)) is not None:
            return ("full", why)
        try:
            self.runner.add_stream(key, display=display)
        except StreamtagError as e:
            return ("error", "source", str(e))
        return ("ok",)

    def push(self, batch: list[tuple[str, np.ndarray]]) -> None:
        """Audio in: ``[(key, (N,) float32 samples), ...]`` in the order the clients sent it."""
        for key, samples in batch:
            self.runner.push(key, samples)

    def remove(self, key: str) -> None:
        self.runner.remove(key)

    def poll(self, wait: float) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
        """The events since the last poll (waiting up to ``wait`` s for one) and this worker's load."""
        self._expire_pending()
        return self.outbox.drain(wait), self.load()

    def _expire_pending(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [t for t, (s, at) in self._pending.items() if s is not None and now - at > PENDING_TTL_S]
            sources = [self._pending.pop(t)[0] for t in old]
        for s in sources:
            close_quietly(s)

    def stop(self) -> None:
        with self._lock:
            sources = [s for s, _ in self._pending.values()]
            self._pending.clear()
        for s in sources:
            close_quietly(s)
        self.runner.stop()
