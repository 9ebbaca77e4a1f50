"""The gateway: the runner that ``serve --cluster`` hands to the websocket server, with the stations on Ray workers.

:class:`GatewayRunner` has the live runner's protocol (``engine`` metadata, ``add_source``, ``remove``,
``streams``, ``add_sink``/``remove_sink``, ``add_stream``/``push`` for audio in), so the unchanged
:class:`~streamtag.publishers.websocket.WebsocketServer` keeps every check and limit of a local ``serve``
(origins, tokens, URL policy, per-client queues). What differs is where the work happens:

* ``open_source`` (the server's hook for what a client names) checks the policy here, picks the least-loaded
  worker and has *that worker* open the source (it checks the policy again where the connection is made: DNS
  answers, redirects, paths); ``add_source`` then starts it there under a fresh placement key.
* one worker actor per node (or one per GPU, ``num_gpus=1``) runs the existing Engine + LiveRunner
  (``streamtag.cluster.worker``); a poller thread per worker drains its events in bulk (:meth:`StationWorker.poll`)
  and hands them to the sinks, renamed from placement keys back to station names.
* a membership thread looks at the cluster every ``members_interval`` s: a node that joins gets a worker (and
  takes new stations), a node that is gone takes its worker with it.

Failure: a worker that dies (its actor, or its node) or stops answering for ``dead_after`` s is killed (so it can
never come back with stale stations) and its stations are placed again on the survivors; their subscribers get
``stream_status`` ``dropped`` -> ``reconnecting`` -> ``connected`` and keep their connection. A move restarts the
stream's state: a radio station resumes from the live edge, a file from its start, and the ring buffer, GRU state
and smoother start empty; ``t`` continues from the last update before the move. If the gateway loses the cluster
itself, it says so in one line and keeps retrying (docs/cluster.md).
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import ConfigError, SourceError, StreamtagError
from ..events import GenreUpdate
from .worker import EngineSpec, StationWorker

if TYPE_CHECKING:
    from ..publishers.base import Sink

__all__ = ["ClusterConfig", "GatewayRunner", "RemoteSource", "INSTALL_HINT", "require_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = 'serve --cluster needs Ray: pip install "streamtag[cluster]" (ray==2.60.0)'
POLL_WAIT_S = 0.1  # s a worker's poll waits for its first event (the latency a poll adds at most, when idle)
CALL_TIMEOUT_S = 10.0  # s the gateway waits for a worker's answer to remove/start/stop
OPEN_TIMEOUT_S = 60.0  # s a worker's open may take at most (the server gives up sooner: --open-timeout)
MOVE_ATTEMPTS = 3  # a station that cannot be reopened this many times after a move ends with its error
PUSH_QUEUE_MAX = 2000  # audio-in pieces queued for one worker before the oldest are dropped (a stalled worker)
CONNECT_TIMEOUT_S = 30.0  # s to join the cluster at start
PROBE_TIMEOUT_S = 5.0  # s for the TCP connection to the head that comes before joining (a quick, clear refusal)
RETRY_S = 5.0  # s between tries to reach a lost cluster


def require_ray() -> Any:
    """``import ray``, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    return ray


@dataclass(frozen=True)
class ClusterConfig:
    """How the gateway uses the cluster (``serve --cluster`` flags; docs/cluster.md)."""

    address: str  # a Ray address: HOST:PORT of the head's GCS, or "auto"
    worker_streams: int = 256  # --worker-streams: stations one worker takes at most (then it refuses)
    worker_cpu: float | None = 0.85  # --worker-cpu: measured share of its cores above which a worker takes no more
    worker_cpus: float = 1.0  # CPUs a worker reserves on its node (a node with fewer gets no worker)
    gpus: bool = True  # one worker per GPU (num_gpus=1) on nodes that have GPUs
    namespace: str = "streamtag"
    start_timeout: float = 180.0  # s a new worker may take to load its model
    dead_after: float = 5.0  # s without an answer before a worker is declared dead
    members_interval: float = 1.0  # s between looks at the cluster's nodes

    def __post_init__(self) -> None:
        if not self.address:
            raise ConfigError("--cluster needs a Ray address: HOST:PORT of the head (ray start --head), or auto")
        if not (isinstance(self.worker_streams, int) and self.worker_streams >= 1):
            raise ConfigError(f"--worker-streams must be a whole number >= 1, got {self.worker_streams}")
        if self.worker_cpu is not None and not (math.isfinite(self.worker_cpu) and 0 < self.worker_cpu <= 1):
            raise ConfigError(f"--worker-cpu must be a share of the cores in (0, 1], got {self.worker_cpu}")
        for flag, x in (("worker_cpus", self.worker_cpus), ("start_timeout", self.start_timeout),
                        ("dead_after", self.dead_after), ("members_interval", self.members_interval)):
            if not (math.isfinite(x) and x > 0):
                raise ConfigError(f"{flag} must be a positive number, got {x}")


@dataclass
class _Worker:
    id: str
    handle: Any
    node: str
    cores: float  # the node's cores this worker's load is measured against
    gpu: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    alive: bool = True
    keys: set[str] = field(default_factory=set)  # placement keys of its stations
    reserved: int = 0  # stations being opened on it
    pushes: list[tuple[str, np.ndarray]] = field(default_factory=list)
    push_wake: threading.Event = field(default_factory=threading.Event)
    pending_refs: list[tuple[Any, str]] = field(default_factory=list)  # (start/add_stream ref, placement key)

    @property
    def short(self) -> str:
        return f"{self.id} (node {self.node[:8]})"

    def held(self) -> int:
        return len(self.keys) + self.reserved

    def cpu_share(self) -> float:
        """Its measured CPU (cores, from its last poll) as a share of the cores it is measured against."""
        return float(self.load.get("cpu", 0.0)) / max(self.cores, 1e-9)


@dataclass
class _Station:
    name: str
    kind: str  # "source" (a URI the worker opens) or "push" (a client's audio in)
    uri: str = ""
    policy: Any = None
    speed: float | None = None
    display: str = ""
    title: str | None = None
    worker: _Worker | None = None
    key: str = ""
    moves: int = 0
    failures: int = 0
    waiting: bool = False  # told its subscribers it waits for a worker with room
    last_t: float = 0.0  # t of its newest update as the sinks saw it
    t_offset: float = 0.0  # added to the current placement's t (t continues across moves)


class RemoteSource:
    """What the gateway's ``open_source`` returns: a source a worker opened and holds until ``add_source`` starts
    it (``close()`` before that tells the worker to drop it)."""

    def __init__(self, worker: _Worker, token: str, uri: str, policy: Any, title: str | None, name: str) -> None:
        self.worker, self.token, self.uri, self.policy = worker, token, uri, policy
        self.title, self.name = title, name
        self.started = False

    def close(self) -> None:
        if not self.started:
            self.started = True
            try:
                self.worker.handle.discard.remote(self.token)
            except Exception:  # the worker is gone: nothing to drop
                log.debug("discard on %s failed", self.worker.id, exc_info=True)


def check_policy(uri: str, policy: Any) -> None:
    """The gateway's own check of what a client names, before any worker is asked (the worker checks again, where
    the connection is made). Raises PolicyError / SourceError with one line."""
    from ..sources.policy import SourcePolicy, check_file, display_name, is_public_address, refused

    policy = policy if policy is not None else SourcePolicy.permissive()
    shown = display_name(uri)
    if uri == "-":
        raise SourceError("stdin cannot be a cluster station (a worker has no stdin); give a URL or a file")
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        host = urlsplit(uri).hostname or ""  # a name is resolved, and its answers checked, on the worker
        if _is_ip(host) and not policy.allow_private_urls and not is_public_address(host):
            raise refused(shown)
        return
    if scheme and scheme != "file":
        raise SourceError(f"{shown}: unsupported URL scheme {scheme[:16]}://; use http(s):// or a file path")
    from urllib.parse import unquote

    check_file(unquote(urlsplit(uri).path) if scheme == "file" else uri, policy, shown)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class GatewayRunner:
    """The live runner's protocol with the stations on Ray worker actors (see the module docstring).

    ``spec`` is the engine every worker builds; ``say`` prints the operator's one-line notices (workers joining
    and lost, the cluster lost and back). ``start()`` connects and waits for the first worker.
    """

    def __init__(self, spec: EngineSpec, config: ClusterConfig, *,
                 say: Callable[[str], None] | None = None, bundle: Any = None) -> None:
        self.spec = spec
        self._bundle = bundle  # the model's bundle loaded here too (its taxonomy), or None: the workers' name
        self.config = config
        self._say = say or _stderr_line
        self._sinks: tuple[Sink, ...] = ()
        self._lock = threading.RLock()  # stations, keys, workers
        self._publish = threading.RLock()  # held while events go to sinks (no update after its stream's removal)
        self._stations: dict[str, _Station] = {}
        self._keys: dict[str, _Station] = {}
        self._workers: dict[str, _Worker] = {}
        self._homeless: list[_Station] = []  # stations waiting for a worker (after a move)
        self._seq = itertools.count(1)
        self._wseq = itertools.count(1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._node_failed: dict[str, float] = {}  # node -> when a worker failed to start there (retry later)
        self._engine: Any = None
        self._ray: Any = None
        self._actor_cls: Any = None
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="gateway-place")
        self._placing: set[str] = set()
        self._lost = False
        self._started = False  # start() has named the first workers; later ones are announced as they join
        self.engine_error: BaseException | None = None
        self.moves = 0  # stations placed again after their worker died
        self.updates = 0  # updates handed to the sinks

    # -- the runner protocol ---------------------------------------------------------------------------
    @property
    def engine(self) -> Any:
        """Read-only metadata of the workers' engine (bundle.name, labels_shown, sample_rate, hop_seconds)."""
        if self._engine is None:
            raise StreamtagError("the gateway has not started: call start() first")
        return self._engine

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def _notify(self, method: str, *args: Any) -> None:
        for sink in self._sinks:
            try:
                getattr(sink, method)(*args)
            except Exception:  # a broken sink must not stop the gateway or starve the other sinks
                log.exception("sink %r failed in %s", sink, method)

    def streams(self) -> list[str]:
        with self._lock:
            return list(self._stations)

    def active(self) -> list[str]:
        return self.streams()

    def errors(self) -> dict[str, StreamtagError]:
        return {}

    def workers(self) -> list[dict[str, Any]]:
        """Each live worker: id, node, stations, measured load (for tests, the bench and health lines)."""
        with self._lock:
            return [{"id": w.id, "node": w.node, "ready": w.ready, "stations": sorted(self._keys[k].name
                     for k in w.keys if k in self._keys), "load": dict(w.load), "gpu": w.gpu,
                     "pid": w.info.get("pid"), "cores": w.cores}
                    for w in self._workers.values() if w.alive]

    def metric_families(self) -> list[tuple[str, str, str, list[tuple[str, float | int]]]]:
        """The gateway's own ``/metrics`` families (after :meth:`streamtag.health.Health.metrics`' common ones):
        (name, type, help, [(labels, value)]). Worker and node ids are safe label values (letters and digits)."""
        with self._lock:  # one consistent view (the figures are read off the workers' last polls)
            workers = [w for w in self._workers.values() if w.alive]

            def each(value: Callable[[_Worker], float | int]) -> list[tuple[str, float | int]]:
                return [(f'{{worker="{w.id}",node="{w.node[:8]}"}}', value(w)) for w in workers]

            return [
                ("streamtag_cluster_workers", "gauge", "worker actors alive, by state (starting: loading the model)",
                 [('{state="ready"}', sum(w.ready for w in workers)),
                  ('{state="starting"}', sum(not w.ready for w in workers))]),
                ("streamtag_cluster_stations_waiting", "gauge", "stations waiting for a worker with room",
                 [("", sum(1 for st in self._stations.values() if st.worker is None))]),
                ("streamtag_cluster_moves_total", "counter", "stations placed again after their worker was lost",
                 [("", self.moves)]),
                ("streamtag_worker_stations", "gauge", "stations a worker holds (and opens)", each(_Worker.held)),
                ("streamtag_worker_cores", "gauge", "the node's cores a worker's CPU is measured against",
                 each(lambda w: float(w.cores))),
                ("streamtag_worker_cpu_ratio", "gauge", "a worker's CPU (cores, at its last poll) over its cores",
                 each(_Worker.cpu_share)),
                ("streamtag_worker_step_seconds", "gauge", "a worker's last engine step",
                 each(lambda w: float(w.load.get("step_ms", 0.0)) / 1000.0)),
                ("streamtag_worker_dropped_events_total", "counter",
                 "events (update batches, titles) a worker dropped from its bounded outbox: the gateway fell behind",
                 each(lambda w: int(w.load.get("dropped", 0)))),
                ("streamtag_station_worker", "gauge", "1 for the worker a station runs on (a station moves when its "
                 "worker is lost)", [(f'{{station="{st.name}",worker="{st.worker.id}"}}', 1)
                                     for st in self._stations.values() if st.worker is not None]),
            ]

    def station_moves(self) -> dict[str, int]:
        """Station name -> how many times it was placed again after its worker was lost."""
        with self._lock:
            return {n: st.moves for n, st in self._stations.items()}

    def placement(self) -> dict[str, str | None]:
        """Station name -> the id of the worker it runs on (None: waiting for one)."""
        with self._lock:
            return {n: (st.worker.id if st.worker is not None else None) for n, st in self._stations.items()}

    def open_source(self, uri: str, sample_rate: int, policy: Any) -> RemoteSource:
        """The server's ``open_source``: check ``policy`` here, then have the least-loaded worker with room open
        ``uri`` (a full worker refuses; the next one is asked). Blocks; the server runs it in a thread."""
        from ..sources.policy import PolicyError, display_name

        check_policy(uri, policy)
        shown = display_name(uri)
        tried: set[str] = set()
        while True:
            worker = self._pick(exclude=tried)
            if worker is None:
                raise SourceError(self._full_message())
            tried.add(worker.id)
            token = f"open-{next(self._seq)}"
            try:
                answer = self._ray.get(worker.handle.open.remote(token, uri, policy), timeout=OPEN_TIMEOUT_S)
            except Exception as e:  # the worker died or timed out: try another
                log.warning("worker %s did not open %s (%s)", worker.id, shown, type(e).__name__)
                continue
            finally:
                with self._lock:
                    worker.reserved -= 1
            if answer[0] == "ok":
                return RemoteSource(worker, token, uri, policy, answer[1], shown)
            if answer[0] == "full":
                continue
            raise (PolicyError if answer[1] == "policy" else SourceError)(answer[2])

    def add_source(self, name: str, source: Any, *, speed: float | None = None, display: str | None = None) -> None:
        """Start ``source`` (a :class:`RemoteSource` from :meth:`open_source`) as station ``name`` on its worker."""
        if not isinstance(source, RemoteSource):
            raise ConfigError("a cluster gateway runs only sources its open_source opened on a worker")
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise StreamtagError(f"--speed must be a positive number, got {speed}")
        shown = display if display is not None else source.name
        with self._lock:
            if name in self._stations:
                source.close()
                raise ConfigError(f"stream {name!r} already exists; pick another name")
            st = _Station(name, "source", uri=source.uri, policy=source.policy, speed=speed, display=shown,
                          title=source.title)
            self._stations[name] = st
            source.started = True
            lost = not source.worker.alive  # it died after it opened the source: place the station again
            if lost:
                self._homeless.append(st)
            else:
                self._place_on(st, source.worker)
                ref = source.worker.handle.start.remote(source.token, st.key, speed, shown)
                source.worker.pending_refs.append((ref, st.key))
        self._notify("on_stream_added", name, shown, source.title)
        if lost:
            self._notify("on_status", name, "dropped", "its worker was lost while it opened; placing it again")
            self._place_homeless()

    def add_stream(self, name: str, *, display: str = "", title: str | None = None) -> None:
        """A push-fed stream (a client's audio in) on the least-loaded worker; :meth:`push` feeds it."""
        with self._lock:
            if name in self._stations:
                raise ConfigError(f"stream {name!r} already exists; pick another name")
            worker = self._pick()
            if worker is None:
                raise SourceError(self._full_message())
            worker.reserved -= 1
            st = _Station(name, "push", display=display, title=title)
            self._stations[name] = st
            self._place_on(st, worker)
            ref = worker.handle.add_stream.remote(st.key, display)
            worker.pending_refs.append((ref, st.key))
        self._notify("on_stream_added", name, display, title)

    def push(self, name: str, samples: np.ndarray) -> None:
        """Queue (N,) float32 samples of stream ``name`` for its worker (never blocks; unknown names are ignored)."""
        with self._lock:
            st = self._stations.get(name)
            worker = st.worker if st is not None else None
            if worker is None or st is None:
                return
            worker.pushes.append((st.key, np.asarray(samples, dtype=np.float32)))
            if len(worker.pushes) > PUSH_QUEUE_MAX:
                del worker.pushes[: len(worker.pushes) - PUSH_QUEUE_MAX]
        worker.push_wake.set()

    def remove(self, name: str, timeout: float = CALL_TIMEOUT_S) -> None:
        """Take station ``name`` off its worker; sinks get on_stream_removed."""
        with self._lock:
            st = self._stations.pop(name, None)
            if st is None:
                return
            worker, key = st.worker, st.key
            self._unplace(st)
            if st in self._homeless:
                self._homeless.remove(st)
        if worker is not None and worker.alive:
            try:
                self._ray.get(worker.handle.remove.remote(key), timeout=timeout)
            except Exception as e:  # the worker died meanwhile: the station is gone with it
                log.info("remove %s on %s: %s", name, worker.id, type(e).__name__)
        with self._publish:
            self._notify("on_stream_removed", name, None)

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    # -- placement ------------------------------------------------------------------------------------------
    def _place_on(self, st: _Station, worker: _Worker) -> None:
        """Assign ``st`` to ``worker`` under a new placement key (lock held)."""
        st.key = f"{st.name}#{next(self._seq)}"
        st.worker = worker
        worker.keys.add(st.key)
        self._keys[st.key] = st

    def _unplace(self, st: _Station) -> None:
        if st.worker is not None:
            st.worker.keys.discard(st.key)
        self._keys.pop(st.key, None)
        st.worker = None

    def _pick(self, exclude: set[str] = frozenset()) -> _Worker | None:  # type: ignore[assignment]
        """The least-loaded ready worker with room, with one station reserved on it; None: all are full.

        Room: fewer than ``worker_streams`` stations and a measured CPU share under ``worker_cpu``. Least loaded:
        fewest stations per core (a 16-core node takes four times a 4-core node's), then the lower measured CPU.
        The station count leads because it is exact at once, while the CPU is measured a poll later: a burst of
        new stations ranked by CPU alone would all land on the worker that was idlest before the burst.
        """
        limit = self.config.worker_streams
        cpu_limit = self.config.worker_cpu
        with self._lock:
            room = [w for w in self._workers.values() if w.alive and w.ready and w.id not in exclude
                    and w.held() < limit and (cpu_limit is None or w.cpu_share() < cpu_limit)]
            if not room:
                return None
            best = min(room, key=lambda w: (w.held() / w.cores, w.cpu_share(), w.id))
            best.reserved += 1
            return best

    def _full_message(self) -> str:
        with self._lock:
            live = [w for w in self._workers.values() if w.alive and w.ready]
            held = sum(w.held() for w in live)
        if not live:
            return "no cluster worker is ready (the cluster has no node with a free CPU yet); try again shortly"
        return (f"cluster full: {len(live)} worker(s) hold {held} station(s) (--worker-streams "
                f"{self.config.worker_streams}, --worker-cpu {self.config.worker_cpu}); add a node "
                "(ray start --address HEAD) or remove a station")

    # -- start and stop ---------------------------------------------------------------------------------
    def start(self) -> GatewayRunner:
        """Connect to the cluster, start a worker on every node, and wait until one is ready."""
        self._ray = _connect(self.config)
        self._actor_cls = self._ray.remote(StationWorker)
        try:
            self._refresh_members()
            deadline = time.monotonic() + self.config.start_timeout
            while self._engine is None:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"no streamtag worker became ready on the cluster at {self.config.address} within "
                        f"{self.config.start_timeout:g} s; does a node have {self.config.worker_cpus:g} free CPU "
                        "and the model (docs/cluster.md)?")
                if self._stop.wait(0.1):
                    break
                if not self._workers or all(not w.alive for w in self._workers.values()):
                    self._refresh_members()
        except BaseException:
            self.stop()
            raise
        members = threading.Thread(target=self._members_loop, name="gateway-members", daemon=True)
        members.start()
        self._threads.append(members)
        with self._lock:
            shown = ", ".join(w.short for w in self._workers.values() if w.alive)
        self._say(f"streamtag: cluster {self.config.address}: workers {shown}")
        self._started = True
        return self

    def stop(self, timeout: float = CALL_TIMEOUT_S) -> None:
        """Stop every worker this gateway started; every station still known is reported removed."""
        self._stop.set()
        with self._lock:
            workers = [w for w in self._workers.values() if w.alive]
            names = list(self._stations)
            self._stations.clear()
            self._keys.clear()
            self._homeless.clear()
        for w in workers:
            w.push_wake.set()
        if self._ray is not None and workers:
            refs = []
            for w in workers:
                try:
                    refs.append(w.handle.stop.remote())
                except Exception:
                    log.debug("stop %s failed", w.id, exc_info=True)
            try:
                self._ray.wait(refs, num_returns=len(refs), timeout=timeout)
            except Exception:
                log.debug("waiting for the workers to stop failed", exc_info=True)
            for w in workers:
                w.alive = False
                try:
                    self._ray.kill(w.handle, no_restart=True)
                except Exception:
                    log.debug("kill %s failed", w.id, exc_info=True)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._publish:
            for name in names:
                self._notify("on_stream_removed", name, None)
        if self._ray is not None:
            try:
                self._ray.shutdown()
            except Exception:
                log.debug("ray.shutdown failed", exc_info=True)

    # -- membership -------------------------------------------------------------------------------------
    def _members_loop(self) -> None:
        while not self._stop.wait(self.config.members_interval):
            try:
                self._refresh_members()
                self._place_homeless()
            except Exception:
                log.exception("cluster membership check failed")

    def _alive_nodes(self) -> list[dict[str, Any]] | None:
        """The cluster's live nodes, or None when the cluster does not answer (said once, then retried; the workers
        that still answer keep their stations meanwhile: they talk to the gateway directly, not through the head).
        A head that comes back with GCS fault tolerance (Redis-backed, as KubeRay sets up) answers again here; one
        gone for good ends the gateway after Ray's own ~60 s (docs/cluster.md)."""
        nodes = _within(self.config.dead_after, self._ray.nodes)
        if nodes is None:
            if not self._lost:
                self._lost = True
                self._say(f"streamtag: lost the Ray cluster at {self.config.address} (no answer within "
                          f"{self.config.dead_after:g} s); stations on workers that still answer keep running; "
                          f"retrying every {RETRY_S:g} s")
            self._stop.wait(RETRY_S)
            return None
        if self._lost:
            self._lost = False
            self._say(f"streamtag: the Ray cluster at {self.config.address} answers again")
        return [n for n in nodes if n.get("Alive")]

    def _refresh_members(self) -> None:
        nodes = self._alive_nodes()
        if nodes is None:
            return
        alive_ids = {n["NodeID"] for n in nodes}
        with self._lock:
            gone = [w for w in self._workers.values() if w.alive and w.node not in alive_ids]
        for w in gone:
            self._worker_died(w, "its node left the cluster")
        now = time.monotonic()
        for n in nodes:
            node = n["NodeID"]
            res = n.get("Resources", {})
            cpus, gpus = float(res.get("CPU", 0.0)), int(res.get("GPU", 0.0)) if self.config.gpus else 0
            want = gpus if gpus >= 1 else (1 if cpus >= self.config.worker_cpus else 0)
            with self._lock:
                have = sum(1 for w in self._workers.values() if w.alive and w.node == node)
            if have >= want or now - self._node_failed.get(node, -math.inf) < 30.0:
                continue
            for _ in range(want - have):
                self._start_worker(node, cores=max(cpus / max(want, 1), 1.0), gpu=gpus >= 1)

    def _start_worker(self, node: str, *, cores: float, gpu: bool) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        wid = f"w{next(self._wseq)}"
        options: dict[str, Any] = {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False),
            "num_cpus": self.config.worker_cpus, "max_restarts": 0, "max_concurrency": 32,
        }
        if gpu:
            options["num_gpus"] = 1
        spec = self.spec if not gpu or self.spec.device != "auto" else EngineSpec(**{**self.spec.__dict__,
                                                                                    "device": "cuda"})
        handle = self._actor_cls.options(**options).remote(spec, max_streams=self.config.worker_streams,
                                                           worker_id=wid)
        worker = _Worker(wid, handle, node, cores=cores, gpu=gpu)
        with self._lock:
            self._workers[wid] = worker
        self._threads = [t for t in self._threads if t.is_alive()]
        for target, name in ((self._poll_loop, "poll"), (self._push_loop, "push")):
            t = threading.Thread(target=target, args=(worker,), name=f"gateway-{name}-{wid}", daemon=True)
            t.start()
            self._threads.append(t)

    # -- one worker's threads ---------------------------------------------------------------------------
    def _poll_loop(self, worker: _Worker) -> None:
        ray = self._ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        try:
            info = ray.get(worker.handle.info.remote(), timeout=self.config.start_timeout)
        except Exception as e:
            why = _why(e)
            self._node_failed[worker.node] = time.monotonic()
            log.warning("worker %s did not start: %s", worker.short, why)
            self._worker_died(worker, f"it did not start ({why})", quiet=self._engine is None)
            return
        worker.info = info
        if self._engine is None:
            bundle = self._bundle if self._bundle is not None else SimpleNamespace(name=info["model"])
            self._engine = SimpleNamespace(bundle=bundle, labels_shown=info["labels"],
                                           sample_rate=info["sample_rate"], hop_seconds=info["hop_seconds"])
        worker.ready = True
        if self._started:  # not the first workers (start() names those)
            self._say(f"streamtag: worker {worker.short} joined ({info['device']})")
        last_answer = time.monotonic()
        ref = None
        while not self._stop.is_set() and worker.alive:
            if ref is None:
                ref = worker.handle.poll.remote(POLL_WAIT_S)
            try:
                events, load = ray.get(ref, timeout=1.0)
            except GetTimeoutError:
                if time.monotonic() - last_answer > self.config.dead_after:
                    self._worker_died(worker, f"no answer for {self.config.dead_after:g} s")
                    return
                continue
            except ActorDiedError as e:
                self._worker_died(worker, _why(e))
                return
            except RayActorError as e:  # unavailable (its node may be going): it has dead_after s to come back
                ref = None
                if time.monotonic() - last_answer > self.config.dead_after:
                    self._worker_died(worker, _why(e))
                    return
                self._stop.wait(0.2)
                continue
            except Exception as e:  # the cluster itself is in trouble: the membership thread says so
                ref = None
                log.debug("poll %s: %s", worker.id, e)
                if time.monotonic() - last_answer > self.config.dead_after:
                    self._worker_died(worker, _why(e))
                    return
                self._stop.wait(0.5)
                continue
            ref = None
            last_answer = time.monotonic()
            worker.load = load
            self._dispatch(worker, events)
            self._check_pending(worker)

    def _push_loop(self, worker: _Worker) -> None:
        while not self._stop.is_set() and worker.alive:
            worker.push_wake.wait(0.5)
            worker.push_wake.clear()
            with self._lock:
                batch, worker.pushes = worker.pushes, []
            if not batch or not worker.ready:
                continue
            try:  # one call at a time: the worker sees each stream's audio in order
                self._ray.get(worker.handle.push.remote(batch), timeout=CALL_TIMEOUT_S)
            except Exception as e:  # the poller notices a dead worker; this audio is lost with it
                log.debug("push to %s: %s", worker.id, type(e).__name__)

    def _check_pending(self, worker: _Worker) -> None:
        """Stations whose start (or add_stream) on ``worker`` failed end with its error."""
        if not worker.pending_refs:
            return
        with self._lock:
            pending, worker.pending_refs = worker.pending_refs, []
        refs = [r for r, _ in pending]
        done, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        done_set = set(done)
        still = []
        for ref, key in pending:
            if ref not in done_set:
                still.append((ref, key))
                continue
            try:
                answer = self._ray.get(ref, timeout=0)
            except Exception as e:
                answer = ("error", "source", _why(e))
            if answer[0] != "ok":
                self._station_ended(key, worker, SourceError(str(answer[-1])))
        with self._lock:
            worker.pending_refs.extend(still)

    def _dispatch(self, worker: _Worker, events: list[tuple[Any, ...]]) -> None:
        """Hand a worker's events to the sinks, renamed from placement keys to station names (stale ones go)."""
        with self._publish:
            batch: list[GenreUpdate] = []
            for ev in events:
                if ev[0] == "updates":
                    with self._lock:
                        for u in ev[1]:
                            st = self._keys.get(u.stream)
                            if st is None or st.worker is not worker:
                                continue
                            u.stream = st.name
                            if st.t_offset:
                                u.t += st.t_offset
                            st.last_t = u.t
                            batch.append(u)
                    continue
                if batch:
                    self._send_updates(batch)
                    batch = []
                with self._lock:
                    st = self._keys.get(ev[1])
                    live = st is not None and st.worker is worker
                if not live or st is None:
                    continue
                if ev[0] == "title":
                    st.title = ev[2]
                    self._notify("on_title", st.name, ev[2])
                elif ev[0] == "status":
                    self._notify("on_status", st.name, ev[2], ev[3])
                elif ev[0] == "removed":
                    self._station_ended(ev[1], worker, SourceError(ev[2]) if ev[2] else None)
            if batch:
                self._send_updates(batch)

    def _send_updates(self, updates: list[GenreUpdate]) -> None:
        self.updates += len(updates)
        self._notify("on_update", updates)

    def _station_ended(self, key: str, worker: _Worker, error: StreamtagError | None) -> None:
        """The station under ``key`` ended on ``worker`` by itself (its source ended or failed)."""
        with self._lock:
            st = self._keys.get(key)
            if st is None or st.worker is not worker or self._stations.get(st.name) is not st:
                return
            self._unplace(st)
            del self._stations[st.name]
        with self._publish:
            self._notify("on_stream_removed", st.name, error)

    # -- failure ----------------------------------------------------------------------------------------
    def _worker_died(self, worker: _Worker, why: str, *, quiet: bool = False) -> None:
        """Fence ``worker`` (kill it: it never comes back with stale stations) and move its stations."""
        with self._lock:
            if not worker.alive:
                return
            worker.alive = False
            moving = [st for st in self._stations.values() if st.worker is worker]
            for st in moving:
                self._unplace(st)
                self._homeless.append(st)
            worker.pushes = []
        try:
            self._ray.kill(worker.handle, no_restart=True)
        except Exception:  # already dead
            log.debug("kill %s failed", worker.id, exc_info=True)
        worker.push_wake.set()
        if self._stop.is_set():
            return
        if not quiet:
            self._say(f"streamtag: worker {worker.short} lost ({why}); moving its {len(moving)} station(s)")
        for st in moving:
            self._notify("on_status", st.name, "dropped",
                         f"worker on node {worker.node[:8]} lost; moving the station (its state restarts)")
        self._place_homeless()

    def _place_homeless(self) -> None:
        with self._lock:
            waiting = [st for st in self._homeless if st.name not in self._placing]
            self._placing.update(st.name for st in waiting)
        for st in waiting:
            try:
                self._pool.submit(self._replace, st)
            except RuntimeError:  # shutting down
                return

    def _replace(self, st: _Station) -> None:
        """Place a moved station on a survivor (runs in the placement pool)."""
        try:
            self._replace_once(st)
        except Exception:
            log.exception("placing %s again failed", st.name)
        finally:
            with self._lock:
                self._placing.discard(st.name)

    def _replace_once(self, st: _Station) -> None:
        with self._lock:
            if self._stations.get(st.name) is not st or st not in self._homeless:
                return
        worker = self._pick()
        if worker is None:
            if not st.waiting:  # once, not every round
                st.waiting = True
                self._notify("on_status", st.name, "reconnecting", "waiting for a worker with room")
            return
        st.waiting = False
        self._notify("on_status", st.name, "reconnecting", f"restarting on worker {worker.id} "
                                                           f"(node {worker.node[:8]})")
        key_token = f"move-{next(self._seq)}"
        error: str | None = None
        try:
            if st.kind == "source":
                answer = self._ray.get(worker.handle.open.remote(key_token, st.uri, st.policy),
                                       timeout=OPEN_TIMEOUT_S)
                if answer[0] == "ok":
                    with self._lock:
                        if self._stations.get(st.name) is not st:
                            worker.handle.discard.remote(key_token)
                            return
                        self._homeless.remove(st)
                        self._place_on(st, worker)
                        st.t_offset = st.last_t
                        ref = worker.handle.start.remote(key_token, st.key, st.speed, st.display)
                        worker.pending_refs.append((ref, st.key))
                else:
                    error = str(answer[-1]) if answer[0] == "error" else None
            else:
                with self._lock:
                    if self._stations.get(st.name) is not st:
                        return
                    self._homeless.remove(st)
                    self._place_on(st, worker)
                    st.t_offset = st.last_t
                    ref = worker.handle.add_stream.remote(st.key, st.display)
                    worker.pending_refs.append((ref, st.key))
                answer = ("ok",)
        except Exception as e:  # that worker died too (not the station's fault): the next round tries another
            log.info("placing %s on %s: %s", st.name, worker.id, _why(e))
            answer = ("retry",)
        finally:
            with self._lock:
                worker.reserved -= 1
        if answer[0] == "ok":
            st.moves += 1
            self.moves += 1
            self._notify("on_status", st.name, "connected",
                         f"moved to worker {worker.id} on node {worker.node[:8]}; stream state restarted")
            return
        if error is not None:
            st.failures += 1
            if st.failures >= MOVE_ATTEMPTS:
                with self._lock:
                    if st in self._homeless:
                        self._homeless.remove(st)
                    gone = self._stations.pop(st.name, None) is st
                if gone:
                    with self._publish:
                        self._notify("on_stream_removed", st.name, SourceError(error))


def _within(timeout: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a daemon thread, or None when it did not return (or raised) within ``timeout`` s (a call
    into a cluster that is gone may block for a long time)."""
    result: list[Any] = []

    def call() -> None:
        try:
            result.append(fn())
        except Exception as e:
            log.debug("%s failed: %s", getattr(fn, "__name__", fn), e)

    t = threading.Thread(target=call, name="gateway-call", daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _stderr_line(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass


def _quiet(ray: Any) -> None:
    """Route what Ray's driver prints about the cluster (a dead node's 40-line raylet dump, on stderr) to this
    module's log: the gateway's operator gets its own one-line notices instead (``-v`` shows Ray's)."""
    from ray._private import worker as ray_worker

    if getattr(ray_worker, "print_to_stdstream", None) is None:
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        lines = data.get("lines") or []
        log.info("ray %s: %s", data.get("pid", ""), " | ".join(str(x) for x in lines)[:2000])

    ray_worker.print_to_stdstream = to_log


def _probe(address: str) -> None:
    """A TCP connection to the head's GCS port, so that a wrong address is one line at once, not a minute of
    Ray's retries."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--cluster {address!r}: give HOST:PORT of the Ray head (ray start --head --port PORT), "
                          "or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConfigError(f"no Ray cluster at {address} ({e.strerror or type(e).__name__}); start its head with "
                          f"ray start --head --port {port} or check --cluster") from None


def _connect(config: ClusterConfig) -> Any:
    """``ray.init`` to the cluster at ``config.address`` (one-line ConfigError when it cannot be reached)."""
    host = config.address.rsplit(":", 1)[0].strip("[]") if config.address != "auto" else ""
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if loopback:
        # A cluster on this machine's loopback: Ray would otherwise swap 127.0.0.1 for the machine's routable
        # address (where a loopback-bound cluster does not listen). The variable's name is Ray's.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray's C++ core logs every failed reconnection at WARNING on stderr; the gateway says it once, itself
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    if config.address != "auto":
        _probe(config.address)
    ray = require_ray()
    if loopback:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    if ray.is_initialized():
        return ray
    _quiet(ray)
    kwargs: dict[str, Any] = {"address": config.address, "namespace": config.namespace, "log_to_driver": False,
                              "logging_level": logging.ERROR}
    if loopback:
        kwargs["_node_ip_address"] = "127.0.0.1"
    result: list[BaseException | None] = []

    def init() -> None:
        try:
            ray.init(**kwargs)
            result.append(None)
        except BaseException as e:  # handed to the caller as one line
            result.append(e)

    t = threading.Thread(target=init, name="ray-init", daemon=True)
    t.start()
    t.join(CONNECT_TIMEOUT_S)
    if not result:
        raise ConfigError(f"no Ray cluster answered at {config.address} within {CONNECT_TIMEOUT_S:g} s; start one "
                          "(ray start --head --port PORT) or check --cluster")
    if result[0] is not None:
        raise ConfigError(f"cannot join the Ray cluster at {config.address} ({_why(result[0])}); start one "
                          "(ray start --head --port PORT) or check --cluster") from result[0]
    return ray
