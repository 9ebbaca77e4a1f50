"""serve --cluster against a local serve: the same stations, the same subscriber, in the same run; then failover.

A real Ray cluster on this machine (``tests/cluster_fixtures.LocalCluster``: a head with no CPU and ``--nodes``
worker nodes of 1 CPU each, loopback, ports 25500-25899, no dashboard) and a real websocket server in this process.
Each run tags ``--stations`` file stations (a real clip, paced at real time) twice: through a local serve
(``LiveRunner`` + ``Engine`` + the server in a child process, with its own subscriber) and through the gateway (``GatewayRunner``: the stations on the
worker actors, one per node). One websocket client, subscribed to every station, stamps each update's receipt; an
update's latency is the engine's ``latency_ms`` (audio arrival in the engine's ring -> the update) plus its way
to the client (receipt - its ``wall`` time, stamped where the update was made: same machine, same clock). The
measured window starts ``--warmup`` s after the stations were added.

Then ``--failovers`` times: the node of the worker with the most stations is killed (``remove_node``, processes
SIGKILLed) and the failover time is measured from the kill to every moved station's first update received after
its ``connected`` notice (the subscriber stays connected throughout); a node is added back for the next trial.

    python bench/bench_cluster.py                          # musicnn-msd, 16 stations, 2 nodes, 3 runs of 10 s
    python bench/bench_cluster.py --stations 32 --seconds 20 --runs 3 --failovers 3

Prints, per side, updates/s, p50/p99 latency and CPU (cores: this process, plus the workers' measured CPU), each
the median of ``--runs`` runs; the overhead ratios cluster / local (p99 latency, CPU per update); and each failover
time with their median. Name the CPU and the load average with any figure you quote (both are printed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cluster_fixtures import LocalCluster  # noqa: E402  (sets Ray's loopback switch before ray is imported)

BASE_PORT = 25500
CLIPS = ("karissa-hobbs-lets-go-fishin.ogg", "kevin-macleod-vibe-ace.ogg")  # the two longest (133 s, 61 s)


class Subscriber:
    """A websocket client subscribed to every stream, in a thread with its own loop; stamps what it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.updates: list[tuple[float, str, float]] = []  # (receipt time.time(), stream, latency s)
        self.status: list[tuple[float, str, str]] = []  # (receipt, stream, status)
        self.closed = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the subscriber did not connect")

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url, max_queue=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
            self._ready.set()
            while not self._stop.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), 0.2)
                except asyncio.TimeoutError:
                    continue
                now = time.time()
                m = json.loads(text)
                with self.lock:
                    if m["type"] == "update":
                        made = datetime.fromisoformat(m["wall"]).timestamp()
                        lat = (m.get("latency_ms") or 0.0) / 1000.0 + max(0.0, now - made)
                        self.updates.append((now, m["stream"], lat))
                    elif m["type"] == "stream_status":
                        self.status.append((now, m["stream"], m["status"]))
            self.closed = ws.state.name != "OPEN"

    def window(self, t0: float, t1: float, streams: set[str]) -> tuple[float, float, float]:
        """(updates/s, p50 s, p99 s) of ``streams`` received in [t0, t1)."""
        with self.lock:
            lats = sorted(lat for t, s, lat in self.updates if t0 <= t < t1 and s in streams)
        if not lats:
            return 0.0, float("nan"), float("nan")
        return len(lats) / (t1 - t0), lats[len(lats) // 2], lats[min(len(lats) - 1, int(0.99 * len(lats)))]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


class Served:
    """A WebsocketServer in front of ``runner`` on a loop in a background thread."""

    def __init__(self, runner: Any, open_source: Any = None) -> None:
        from streamtag.publishers.websocket import ServerConfig, WebsocketServer

        kw = {"open_source": open_source} if open_source is not None else {}
        self.server = WebsocketServer(runner, ServerConfig(port=0, file_speed=1.0, max_streams=4096), **kw)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())

    def call(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, name: str, uri: str) -> None:
        from streamtag.sources.policy import SourcePolicy

        self.call(self.server.add_source(name, uri, policy=SourcePolicy.permissive()))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/"

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def clip_paths() -> list[Path]:
    shared = Path(os.environ.get("STREAMTAG_SHARED", REPO.parent / "shared")) / "audio"
    found = [d / c for c in CLIPS for d in (shared, REPO / "examples" / "audio") if (d / c).is_file()]
    if not found:
        raise SystemExit("no clips found (examples/audio)")
    return found


def measure(served: Served, names: list[str], clips: list[Path], args: argparse.Namespace,
            cpu_of_workers: Any, remove: bool = True) -> dict[str, float]:
    """Add the stations, wait the warm-up, measure one window; returns the side's figures (``remove``: take the
    stations off again)."""
    sub = Subscriber(served.url)
    try:
        for i, n in enumerate(names):
            served.add(n, str(clips[i % len(clips)]))
        time.sleep(args.warmup)
        w0 = cpu_of_workers()
        c0, t0 = time.process_time(), time.time()
        time.sleep(args.seconds)
        c1, t1 = time.process_time(), time.time()
        w1 = cpu_of_workers()
        ups, p50, p99 = sub.window(t0, t1, set(names))
    finally:
        sub.stop()
        for n in names if remove else ():
            served.call(served.server.remove_source(n))
    cpu = (c1 - c0) / (t1 - t0) + (w1 + w0) / 2  # this process's cores + the workers' measured cores
    return {"ups": ups, "p50": p50, "p99": p99, "cpu": cpu}


def local_run(args: argparse.Namespace) -> None:
    """The local side of one run, in a child process (``--local-only RUN``): a LiveRunner + Engine and the server in
    this process; prints the figures as one JSON line and ends without taking the stations down (the process'
    end releases them, and the cluster side starts on cores this run no longer uses)."""
    from streamtag.cluster.worker import EngineSpec
    from streamtag.live import LiveRunner
    from streamtag.registry import DEFAULT_MODEL

    spec = EngineSpec(model=str(args.model or DEFAULT_MODEL), device=args.device, hop_seconds=args.hop)
    runner = LiveRunner(spec.build()).start()
    served = Served(runner)
    names = [f"r{args.local_only}s{i}" for i in range(args.stations)]
    figures = measure(served, names, clip_paths(), args, lambda: 0.0, remove=False)
    print(json.dumps(figures), flush=True)
    os._exit(0)


def local_in_child(args: argparse.Namespace, run: int) -> dict[str, float]:
    import subprocess

    cmd = [sys.executable, __file__, "--local-only", str(run), "--stations", str(args.stations), "--seconds",
           str(args.seconds), "--warmup", str(args.warmup), "--device", args.device]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--hop", str(args.hop)] if args.hop is not None else []
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"the local run failed: {out.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model name or bundle directory (default: the shipped default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hop", type=float, default=None)
    p.add_argument("--stations", type=int, default=16)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per side and run")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--failovers", type=int, default=3)
    p.add_argument("--local-only", default=None, help=argparse.SUPPRESS)  # one local run in a child process
    args = p.parse_args()
    if args.local_only is not None:
        local_run(args)

    import subprocess

    from streamtag.cluster.gateway import ClusterConfig, GatewayRunner
    from streamtag.cluster.worker import EngineSpec
    from streamtag.registry import DEFAULT_MODEL

    cpu_name = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True,
                     text=True).stdout.splitlines() if ln.startswith("Model name")), "?")
    spec = EngineSpec(model=str(args.model or DEFAULT_MODEL), device=args.device, hop_seconds=args.hop)
    clips = clip_paths()
    print(f"# bench_cluster: {spec.model}, {args.stations} file stations at 1x, {args.nodes} worker nodes x 1 CPU, "
          f"{args.runs} runs x {args.seconds:g} s per side; CPU {cpu_name} ({os.cpu_count()} cores); "
          f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)

    cluster = LocalCluster(BASE_PORT, nodes=args.nodes)
    gateway = None
    try:
        gateway = GatewayRunner(spec, ClusterConfig(address=cluster.address, worker_streams=4096, worker_cpu=None,
                                                    dead_after=3.0, members_interval=0.5),
                                 say=lambda line: print(f"# {line}", flush=True))
        gateway.start()
        deadline = time.monotonic() + 300
        while sum(w["ready"] for w in gateway.workers()) < args.nodes and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster_served = Served(gateway, gateway.open_source)

        def workers_cpu() -> float:
            return sum(float(w["load"].get("cpu", 0.0)) for w in gateway.workers())

        rows: dict[str, list[dict[str, float]]] = {"local": [], "cluster": []}
        for run in range(args.runs):
            names = [f"r{run}s{i}" for i in range(args.stations)]
            rows["local"].append(local_in_child(args, run))
            rows["cluster"].append(measure(cluster_served, [f"c{n}" for n in names], clips, args, workers_cpu))
            print(f"run {run + 1}: " + "; ".join(f"{k} {v[-1]['ups']:.1f} upd/s p99 {v[-1]['p99'] * 1000:.0f} ms "
                                                 f"cpu {v[-1]['cpu']:.2f}" for k, v in rows.items()), flush=True)

        def med(side: str, key: str) -> float:
            return statistics.median(r[key] for r in rows[side])

        print("\n| side | updates/s | p50 ms | p99 ms | CPU cores | CPU ms per update |")
        print("|---|---|---|---|---|---|")
        for side in ("local", "cluster"):
            ups = med(side, "ups")
            print(f"| {side} | {ups:.1f} | {med(side, 'p50') * 1000:.0f} | {med(side, 'p99') * 1000:.0f} | "
                  f"{med(side, 'cpu'):.2f} | {1000 * med(side, 'cpu') / max(ups, 1e-9):.1f} |")
        p99_ratio = med("cluster", "p99") / med("local", "p99")
        cpu_ratio = (med("cluster", "cpu") / max(med("cluster", "ups"), 1e-9)) / \
                    (med("local", "cpu") / max(med("local", "ups"), 1e-9))
        print(f"\noverhead cluster / local: p99 latency x{p99_ratio:.2f}, CPU per update x{cpu_ratio:.2f}, "
              f"updates/s x{med('cluster', 'ups') / max(med('local', 'ups'), 1e-9):.2f}", flush=True)

        # -- failover -----------------------------------------------------------------------------------------
        names = [f"f{i}" for i in range(args.stations)]
        for i, n in enumerate(names):
            cluster_served.add(n, str(clips[i % len(clips)]))
        sub = Subscriber(cluster_served.url)
        times: list[float] = []
        try:
            for trial in range(args.failovers):
                time.sleep(args.warmup)
                print(f"# stations per worker: {[(w['id'], len(w['stations'])) for w in gateway.workers()]}",
                      flush=True)
                busiest = max(gateway.workers(), key=lambda w: len(w["stations"]))
                moved = set(busiest["stations"])
                t0 = time.time()
                cluster.remove_node(cluster.node_of(busiest["node"]))
                deadline = time.monotonic() + 60
                back: dict[str, float] = {}
                while len(back) < len(moved) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    with sub.lock:
                        connected = {s: t for t, s, k in sub.status if k == "connected" and t >= t0}
                        for t, s, _ in sub.updates:
                            if s in moved and s in connected and t >= connected[s] and s not in back:
                                back[s] = t
                took = max(back.values()) - t0 if len(back) == len(moved) else float("inf")
                times.append(took)
                print(f"failover {trial + 1}: {len(moved)} stations moved, every one updating again after "
                      f"{took:.2f} s; subscriber connected: {not sub.closed}", flush=True)
                if trial + 1 < args.failovers:
                    cluster.add_node()
                    deadline = time.monotonic() + 300
                    while sum(w["ready"] for w in gateway.workers()) < args.nodes and time.monotonic() < deadline:
                        time.sleep(0.2)
        finally:
            sub.stop()
        if times:
            print(f"failover time (kill -> every moved station updating again): median {statistics.median(times):.2f}"
                  f" s of {len(times)}; load {open('/proc/loadavg').read().split()[:3]}")
        cluster_served.close()
    finally:
        if gateway is not None:
            gateway.stop()
        cluster.shutdown()


if __name__ == "__main__":
    main()
