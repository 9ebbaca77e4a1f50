"""serve --cluster on a real multi-node Ray cluster on this machine (a head and two 1-CPU worker nodes, shared by
the module): stations spread over both nodes, a full cluster refuses, a node that dies moves its stations to the
survivor while the subscriber stays connected, a node that joins takes new stations, and a station's updates
through the cluster equal a local engine's for the same audio.

The whole module shares one cluster and one gateway (a Ray start and a worker's model load cost seconds on two
cores); its tests run in file order and leave the gateway as they found it, except the node test, which runs last
among the gateway's tests.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cluster_fixtures import LocalCluster
from live_fixtures import live_bundle, write_tone_wav

from streamtag.errors import ConfigError, SourceError, StreamtagError

REPO = Path(__file__).resolve().parents[1]
BASE_PORT = 25100  # this module's Ray ports: 25100-25499
TIMEOUT = 60.0
HOP = 0.25


class Collector:
    """A sink that keeps everything the gateway reports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.updates: dict[str, list] = {}
        self.status: list[tuple[str, str, str]] = []
        self.status_at: list[tuple[str, str, int]] = []  # (stream, status, its updates received before it)
        self.removed: dict[str, StreamtagError | None] = {}
        self.titles: dict[str, list[str | None]] = {}

    def on_stream_added(self, name: str, source: str, title: str | None) -> None:
        pass

    def on_update(self, updates: list) -> None:
        with self.lock:
            for u in updates:
                self.updates.setdefault(u.stream, []).append(u)

    def on_title(self, name: str, title: str | None) -> None:
        with self.lock:
            self.titles.setdefault(name, []).append(title)

    def on_status(self, name: str, kind: str, detail: str) -> None:
        with self.lock:
            self.status.append((name, kind, detail))
            self.status_at.append((name, kind, len(self.updates.get(name, []))))

    def on_stream_removed(self, name: str, error: StreamtagError | None) -> None:
        with self.lock:
            self.removed[name] = error

    def count(self, name: str) -> int:
        with self.lock:
            return len(self.updates.get(name, []))


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason='Ray is not installed (pip install "streamtag[cluster]")',
                        exc_type=ImportError)
    cluster = LocalCluster(BASE_PORT, nodes=2)
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bundle")
    live_bundle(d)
    return d / "tiny-live"


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    return {"long": write_tone_wav(d / "long.wav", seconds=300.0), "short": write_tone_wav(d / "short.wav", 6.0),
            "mid": write_tone_wav(d / "mid.wav", seconds=30.0)}


def engine_spec(bundle_dir: Path):
    from streamtag.cluster.worker import EngineSpec
    from streamtag.smoothing import SmoothingConfig

    return EngineSpec(model=str(bundle_dir), device="cpu", hop_seconds=HOP,
                      smoothing=SmoothingConfig(tau_seconds=0.5, hold_seconds=0.0))


class Serving:
    """The gateway and a real websocket server in front of it, on a loop in a background thread."""

    def __init__(self, gateway, **config) -> None:
        from streamtag.publishers.websocket import ServerConfig, WebsocketServer

        self.gateway = gateway
        self.collector = Collector()
        gateway.add_sink(self.collector)
        self.server = WebsocketServer(gateway, ServerConfig(port=0, **config), open_source=gateway.open_source)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ws-loop", daemon=True)
        self.thread.start()
        self.call(self.server.start)

    def call(self, fn, *args, timeout: float = TIMEOUT, **kw):
        return asyncio.run_coroutine_threadsafe(fn(*args, **kw), self.loop).result(timeout)

    def add(self, name: str, uri: str, permissive: bool = True) -> None:
        from streamtag.sources.policy import SourcePolicy

        self.call(self.server.add_source, name, uri, policy=SourcePolicy.permissive() if permissive else None)

    def remove(self, name: str) -> None:
        self.call(self.server.remove_source, name)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/"

    def close(self) -> None:
        try:
            self.call(self.server.close, timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def serving(ray_cluster, bundle_dir):
    from streamtag.cluster.gateway import ClusterConfig, GatewayRunner

    said: list[str] = []
    config = ClusterConfig(address=ray_cluster.address, worker_streams=5, worker_cpu=None, dead_after=3.0,
                           members_interval=0.5)
    gateway = GatewayRunner(engine_spec(bundle_dir), config, say=said.append).start()
    wait_until(lambda: sum(w["ready"] for w in gateway.workers()) == 2, TIMEOUT, "a worker on each node")
    srv = Serving(gateway, file_speed=1.0)
    srv.said = said  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.close()
        gateway.stop()


def nodes_of(gateway) -> dict[str, str]:
    return {w["id"]: w["node"] for w in gateway.workers()}


# -- the command line (first: it needs the nodes' CPUs, which the module's gateway holds from the next test on) ----
def test_serve_cluster_command_tags_a_station_serves_metrics_reloads_its_list_and_ends_on_sigint(
        ray_cluster, bundle_dir, audio, tmp_path):
    import signal

    from websockets.asyncio.client import connect

    stations = tmp_path / "stations.txt"
    stations.write_text(f"a={audio['long']}\n")
    cmd = [sys.executable, "-m", "streamtag", "serve", "--cluster", ray_cluster.address, "--port", "0",
           "--model", str(bundle_dir), "--hop", str(HOP), "--device", "cpu", "--sources", str(stations),
           "--health-every", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        while not any("serving ws://" in ln for ln in lines):
            line = proc.stderr.readline()
            assert line, f"serve --cluster ended early: {''.join(lines)}"
            lines.append(line)
        url = next(ln for ln in lines if "serving ws://" in ln).split("serving ", 1)[1].split(" ", 1)[0]
        assert any("cluster " + ray_cluster.address in ln and "workers" in ln for ln in lines), lines

        async def first_update():
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "subscribe", "streams": ["a"]}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    if msg["type"] == "update":
                        break
                await ws.send(json.dumps({"type": "stats", "id": 3}))  # per-station figures, from the gateway
                while True:
                    stats = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    if stats["type"] == "stats":
                        return msg, stats

        update, stats = asyncio.run(first_update())
        assert update["stream"] == "a"
        a = stats["streams"]["a"]
        assert a["state"] == "live" and a["updates"] >= 1 and a["moves"] == 0 and a["worker"]
        # /metrics from the gateway: the common families from the updates it relays, and the cluster's own
        import urllib.request

        with urllib.request.urlopen(url.replace("ws://", "http://").rstrip("/") + "/metrics", timeout=10) as r:
            text = r.read().decode()
        metrics = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln and not ln.startswith("#")}
        assert metrics['streamtag_station_up{station="a"}'] == 1
        assert metrics['streamtag_station_updates_total{station="a"}'] >= 1 and metrics["streamtag_updates_total"] >= 1
        assert metrics['streamtag_stations{state="live"}'] == 1
        assert metrics["streamtag_update_latency_seconds_count"] >= 1  # measured on the worker, carried with updates
        assert metrics['streamtag_cluster_workers{state="ready"}'] >= 1
        assert metrics["streamtag_cluster_stations_waiting"] == 0 and metrics["streamtag_cluster_moves_total"] == 0
        on = [k for k, v in metrics.items() if k.startswith('streamtag_station_worker{station="a",') and v == 1]
        assert len(on) == 1  # on exactly one worker, which reports holding it
        worker = on[0].split('worker="')[1].split('"')[0]
        held = {k: v for k, v in metrics.items() if k.startswith(f'streamtag_worker_stations{{worker="{worker}",')}
        assert list(held.values()) == [1] and worker == a["worker"]
        assert "streamtag_station_bytes_total" not in text  # decoder figures live on the workers: no empty families

        async def reloaded():  # SIGHUP: the list's new station starts on a worker, the one gone ends
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
                stations.write_text(f"b={audio['long']}\n")
                proc.send_signal(signal.SIGHUP)
                seen: dict[str, str] = {}
                while len(seen) < 2:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    if msg["type"] == "stream_ended":
                        seen["ended"] = msg["stream"]
                    elif msg["type"] == "update" and msg["stream"] == "b":
                        seen["update"] = msg["stream"]
                return seen

        assert asyncio.run(reloaded()) == {"ended": "a", "update": "b"}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "reloaded stations.txt: 1 added, 1 removed, 0 changed, 0 restarted, 0 unchanged" in err
    # the gateway's health line (every second here): placement, workers, rates
    health = [ln for ln in err.splitlines() if ln.startswith("streamtag: health: 1 station: 1 on workers, 0 waiting")]
    assert health and "workers ready" in health[-1] and "updates/s" in health[-1], err


def test_serve_cluster_without_a_cluster_is_one_line(bundle_dir):
    cmd = [sys.executable, "-m", "streamtag", "serve", "--cluster", "127.0.0.1:25098", "--model", str(bundle_dir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    try:
        import ray  # noqa: F401
    except ImportError:  # without Ray: the one line says how to install it
        assert 'pip install "streamtag[cluster]"' in lines[0]
    else:
        assert "no Ray cluster at 127.0.0.1:25098" in lines[0] and "ray start --head" in lines[0]


# -- the gateway keeps the server's protocol -------------------------------------------------------------------
def test_hello_has_the_workers_model_and_the_page_is_served(serving, bundle_dir):
    from urllib.request import urlopen

    from websockets.asyncio.client import connect

    from streamtag.registry import load_bundle

    async def hello():
        async with connect(serving.url) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))

    msg = asyncio.run(hello())
    bundle = load_bundle(bundle_dir)
    assert msg["type"] == "hello" and msg["model"] == bundle.name
    assert msg["labels"] == list(serving.gateway.engine.labels_shown) and set(msg["labels"]) <= set(bundle.labels)
    assert msg["sample_rate"] == bundle.frontend.sample_rate
    with urlopen(f"http://127.0.0.1:{serving.server.port}/", timeout=10) as r:
        assert b"<html" in r.read().lower()


def test_updates_through_the_cluster_equal_a_local_engine(serving, audio, bundle_dir):
    serving.add("eq", str(audio["short"]))
    wait_until(lambda: "eq" in serving.collector.removed, TIMEOUT, "the short station to end")
    assert serving.collector.removed["eq"] is None
    remote, local = serving.collector.updates["eq"], local_updates(bundle_dir, audio["short"])
    assert len(remote) == len(local) >= 10 and {u.stream for u in remote} == {"eq"}
    assert_same_updates(remote, local)


def test_stations_spread_over_both_nodes_and_a_full_cluster_refuses(serving, audio):
    names = [f"st{i}" for i in range(4)]
    for n in names:
        serving.add(n, str(audio["long"]))
    placement = serving.gateway.placement()
    per_worker = {w: sum(1 for n in names if placement[n] == w) for w in nodes_of(serving.gateway)}
    assert sorted(per_worker.values()) == [2, 2], placement  # least-loaded placement: two on each node
    wait_until(lambda: all(serving.collector.count(n) >= 2 for n in names), TIMEOUT, "updates from every station")

    extra = [f"x{i}" for i in range(6)]  # 4 + 6 = both workers at --worker-streams 5
    try:
        for n in extra:
            serving.add(n, str(audio["long"]))
        with pytest.raises(SourceError, match="cluster full"):
            serving.add("one-too-many", str(audio["long"]))
        assert "one-too-many" not in serving.gateway.streams()
    finally:
        for n in extra:
            serving.remove(n)
    assert sorted(serving.gateway.streams()) == names


def test_audio_in_runs_on_a_worker_and_leaves_with_the_client(serving):
    from websockets.asyncio.client import connect

    sr = 44100
    x = (0.4 * np.sin(2 * np.pi * 330 * np.arange(sr * 4) / sr) * 32767).astype("<i2")

    async def scenario():
        async with connect(serving.url) as ws:
            await ws.send(json.dumps({"type": "audio_start", "stream": "mic", "sample_rate": sr, "format": "pcm16"}))
            while json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] != "audio_started":
                pass
            placed = serving.gateway.placement().get("mic")
            for i in range(0, x.shape[0], 4410):
                await ws.send(x[i : i + 4410].tobytes())
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                if msg["type"] == "update" and msg["stream"] == "mic":
                    return placed, msg

    placed, update = asyncio.run(scenario())
    assert placed in nodes_of(serving.gateway)  # on a worker, not on the gateway
    assert update["level_db"] > -20  # the tone reached the worker's engine, resampled
    wait_until(lambda: "mic" not in serving.gateway.streams(), 10, "the audio stream to leave with its client")


def test_an_icecast_station_plays_on_a_worker_with_its_titles(serving, tmp_path):
    """A real radio station (Icecast on loopback, MP3 with ICY titles) added through the server: it runs on a
    worker, its updates and its StreamTitle changes reach the gateway's sinks, and it leaves when removed."""
    from radio_fixtures import feed, icecast_server, music_clip, set_title

    clip = music_clip(tmp_path / "clip.wav", seconds=8.0)
    with icecast_server(tmp_path) as ice, feed(ice.port, "/radio.mp3", clip, "mp3"):
        set_title(ice.port, "/radio.mp3", "First Song")
        serving.add("radio", f"http://127.0.0.1:{ice.port}/radio.mp3")
        try:
            assert serving.gateway.placement()["radio"] in nodes_of(serving.gateway)
            wait_until(lambda: serving.collector.count("radio") >= 4, TIMEOUT, "updates from the radio station")
            set_title(ice.port, "/radio.mp3", "Second Song")
            wait_until(lambda: "Second Song" in serving.collector.titles.get("radio", []), TIMEOUT,
                       "the new ICY title")
            ts = [u.t for u in serving.collector.updates["radio"]]
            assert all(b > a for a, b in zip(ts, ts[1:]))  # one continuous stream, in order
        finally:
            serving.remove("radio")
    assert "radio" not in serving.gateway.streams()


def test_a_client_add_source_is_checked_by_the_gateway_policy(serving, audio):
    with pytest.raises(StreamtagError, match="refused by policy"):
        serving.add("nope", str(audio["long"]), permissive=False)  # the server's policy: no local files
    with pytest.raises(StreamtagError, match="refused by policy"):
        serving.add("nope", "http://127.0.0.1:9/x.mp3", permissive=False)  # loopback URL
    with pytest.raises(StreamtagError, match="stdin"):
        serving.add("nope", "-")
    assert "nope" not in serving.gateway.streams()


def local_updates(bundle_dir: Path, path: Path) -> list:
    """What a local engine (same bundle and options) says for the whole file, fed as fast as it decodes."""
    from live_fixtures import make_engine

    from streamtag.live import LiveRunner
    from streamtag.registry import load_bundle
    from streamtag.sources import open_source

    engine = make_engine(load_bundle(bundle_dir), hop=HOP)
    local = Collector()
    runner = LiveRunner(engine, [local]).start()
    try:
        runner.add_source("x", open_source(str(path), engine.sample_rate))
        wait_until(lambda: "x" in local.removed, TIMEOUT, "the local run to end")
    finally:
        runner.stop()
    return local.updates["x"]


def assert_same_updates(remote: list, local: list, t_offset: float = 0.0) -> None:
    assert 0 < len(remote) <= len(local)
    for a, b in zip(remote, local):
        assert a.t == pytest.approx(b.t + t_offset, abs=1e-9)
        assert [k for k, _ in a.top] == [k for k, _ in b.top]
        np.testing.assert_allclose([a.probs[k] for k in b.probs], list(b.probs.values()), atol=1e-5)
        np.testing.assert_allclose([a.raw[k] for k in b.raw], list(b.raw.values()), atol=1e-5)


def test_a_crashed_worker_moves_its_stations_and_its_node_gets_a_new_one(serving, audio, bundle_dir):
    import os
    import signal

    gateway = serving.gateway
    serving.add("eqm", str(audio["mid"]))  # a file station: after a move it plays again from its start
    wait_until(lambda: serving.collector.count("eqm") >= 4, TIMEOUT, "updates of the file station")
    names = sorted(gateway.streams())
    victim = next(w for w in gateway.workers() if "eqm" in w["stations"])
    moved = victim["stations"]
    before = {n: serving.collector.count(n) for n in names}
    os.kill(victim["pid"], signal.SIGKILL)  # the actor's process crashes; its node stays
    wait_until(lambda: all(gateway.placement()[n] not in (None, victim["id"]) for n in moved), 10.0,
               "the crashed worker's stations placed on the other worker")
    wait_until(lambda: all(serving.collector.count(n) > before[n] + 1 for n in moved), 10.0,
               "the moved stations updating again")
    wait_until(lambda: serving.collector.count("eqm") >= before["eqm"] + 6, TIMEOUT, "six updates after the move")
    serving.remove("eqm")
    assert any(victim["id"] in line and "lost" in line for line in serving.said)

    # up to the move, the station's updates equal a local engine's; after it, the same again from the file's start
    with serving.collector.lock:
        updates = list(serving.collector.updates["eqm"])
        cut = next(k for n, status, k in serving.collector.status_at if n == "eqm" and status == "dropped")
    pre, post = updates[:cut], updates[cut:]
    local = local_updates(bundle_dir, audio["mid"])
    assert_same_updates(pre, local)
    assert_same_updates(post, local, t_offset=pre[-1].t)  # t goes on from the last update before the move
    wait_until(lambda: any(w["ready"] and w["node"] == victim["node"] and w["id"] != victim["id"]
                           for w in gateway.workers()), TIMEOUT, "a new worker on the crashed worker's node")


def test_a_lost_node_moves_its_stations_and_the_subscriber_stays(serving, ray_cluster, audio):
    from websockets.asyncio.client import connect

    gateway = serving.gateway
    names = [f"st{i}" for i in range(4)]
    assert sorted(gateway.streams()) == names
    placement = gateway.placement()
    victim_worker = placement[names[0]]
    victim_node = nodes_of(gateway)[victim_worker]
    moved = [n for n in names if placement[n] == victim_worker]
    result: dict = {}

    async def subscriber(ready: threading.Event, done: threading.Event) -> None:
        async with connect(serving.url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
            seen: list[dict] = []
            ready.set()
            while not done.is_set():
                try:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                except asyncio.TimeoutError:
                    continue
            result["messages"] = seen
            result["open"] = ws.state.name == "OPEN"

    ready, done = threading.Event(), threading.Event()
    client = threading.Thread(target=lambda: asyncio.run(subscriber(ready, done)), daemon=True)
    client.start()
    assert ready.wait(TIMEOUT)
    before = {n: serving.collector.count(n) for n in names}
    t0 = time.monotonic()
    ray_cluster.remove_node(ray_cluster.node_of(victim_node))
    wait_until(lambda: all(gateway.placement()[n] not in (None, victim_worker) for n in moved), 20.0,
               "the lost node's stations placed on the survivor")
    wait_until(lambda: all(serving.collector.count(n) > before[n] + 2 for n in names), 20.0,
               "every station updating again")
    resumed = time.monotonic() - t0
    time.sleep(0.5)
    done.set()
    client.join(TIMEOUT)
    assert resumed < 10.0, f"stations resumed {resumed:.1f} s after the node was lost"
    assert result["open"], "the subscriber's connection was closed"
    statuses = [(m["stream"], m["status"]) for m in result["messages"] if m["type"] == "stream_status"]
    for n in moved:
        assert (n, "connected") in statuses, statuses
        kinds = [k for s, k, _ in serving.collector.status if s == n]
        assert kinds[0] == "dropped" and kinds[-1] == "connected", kinds
    assert not any(m["type"] == "stream_ended" for m in result["messages"])
    after = [m for m in result["messages"] if m["type"] == "update"]
    assert {m["stream"] for m in after} == set(names)
    for n in moved:  # t continues across the move (state restarts, time does not go back)
        ts = [m["t"] for m in after if m["stream"] == n]
        assert ts == sorted(ts)
    assert any("lost" in line for line in serving.said)

    # a node that joins takes new stations
    ray_cluster.add_node()
    wait_until(lambda: sum(w["ready"] for w in gateway.workers()) == 2, TIMEOUT, "a worker on the new node")
    new_worker = next(w["id"] for w in gateway.workers() if w["id"] not in (victim_worker, placement[names[-1]])
                      and not w["stations"])
    serving.add("late", str(audio["long"]))
    assert gateway.placement()["late"] == new_worker
    wait_until(lambda: serving.collector.count("late") >= 2, TIMEOUT, "updates from the new node")


LOST_SCRIPT = """
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[3])
from cluster_fixtures import LocalCluster
from streamtag.cluster.gateway import ClusterConfig, GatewayRunner
from streamtag.cluster.worker import EngineSpec
from streamtag.smoothing import SmoothingConfig
from streamtag.sources.policy import SourcePolicy
said, updates = [], []
def descendants():  # the cluster's processes: a killed raylet leaves its agents behind, which we end ourselves
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [os.getpid()]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
started = []
class Sink:
    def on_stream_added(self, *a): pass
    def on_update(self, u): updates.extend(time.monotonic() for _ in u)
    def on_title(self, *a): pass
    def on_status(self, *a): pass
    def on_stream_removed(self, *a): pass
cluster = LocalCluster(25900, nodes=1, gcs_port=25990)
gateway = None
try:
    gateway = GatewayRunner(EngineSpec(model=sys.argv[1], device="cpu", hop_seconds=0.25,
                                       smoothing=SmoothingConfig(tau_seconds=0.5, hold_seconds=0.0)),
                            ClusterConfig(address=cluster.address, worker_cpu=None, dead_after=2.0,
                                          members_interval=0.5), say=said.append).start()
    gateway.add_sink(Sink())
    gateway.add_source("a", gateway.open_source(sys.argv[2], 16000, SourcePolicy.permissive()), speed=1.0)
    while len(updates) < 2:
        time.sleep(0.1)
    started = descendants()
    killed = time.monotonic()
    cluster.cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    while not any("lost the Ray cluster" in line for line in said) and time.monotonic() - killed < 20:
        time.sleep(0.1)
    time.sleep(3.0)
    t0 = time.monotonic()
    gateway.stop()
    stopped = time.monotonic() - t0
    print(json.dumps({"said": said, "after": sum(t > killed + 2.0 for t in updates), "stop_s": stopped,
                      "streams": gateway.streams()}))
finally:
    cluster.cluster.head_node = None
    cluster.shutdown()
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


@pytest.mark.slow  # ~25 s: a cluster of its own (its head is killed); CI runs it (-m "")
def test_the_gateway_that_loses_the_cluster_says_so_once_and_its_stations_keep_running(bundle_dir, audio):
    pytest.importorskip("ray", reason='Ray is not installed (pip install "streamtag[cluster]")', exc_type=ImportError)
    proc = subprocess.run([sys.executable, "-c", LOST_SCRIPT, str(bundle_dir), str(audio["long"]),
                           str(REPO / "tests")], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    lost = [line for line in result["said"] if "lost the Ray cluster" in line]
    assert len(lost) == 1 and "retrying" in lost[0], result["said"]  # one line, however long it lasts
    assert result["after"] >= 4  # the worker still answers the gateway directly: its station kept updating
    assert result["stop_s"] < 20.0 and result["streams"] == []


# -- placement and the gateway's policy check, without a cluster ------------------------------------------------
def _gateway_with(workers: list[tuple[str, float, int, float]], **config):
    """A gateway (never started) with fake ready workers: (id, cores, stations, measured CPU cores)."""
    from streamtag.cluster.gateway import ClusterConfig, GatewayRunner, _Worker
    from streamtag.cluster.worker import EngineSpec

    g = GatewayRunner(EngineSpec(model="unused"), ClusterConfig(address="127.0.0.1:25001", **config))
    for wid, cores, stations, cpu in workers:
        w = _Worker(wid, handle=None, node=wid * 4, cores=cores, ready=True, load={"cpu": cpu})
        w.keys = {f"{wid}-{i}" for i in range(stations)}
        g._workers[wid] = w
    return g


def test_placement_takes_fewest_stations_per_core_and_skips_full_or_busy_workers():
    g = _gateway_with([("w1", 4.0, 4, 0.5), ("w2", 16.0, 8, 0.5)], worker_streams=10, worker_cpu=0.85)
    assert g._pick().id == "w2"  # 8 / 16 cores < 4 / 4 cores
    g = _gateway_with([("w1", 4.0, 1, 3.6), ("w2", 4.0, 6, 1.0)], worker_streams=10, worker_cpu=0.85)
    assert g._pick().id == "w2"  # w1 has fewer stations but its measured CPU (3.6 of 4 cores) is over 0.85
    g = _gateway_with([("w1", 1.0, 2, 0.1), ("w2", 1.0, 2, 0.2)], worker_streams=3, worker_cpu=None)
    picks = [g._pick().id, g._pick().id]  # each pick reserves a station on the worker it names
    assert sorted(picks) == ["w1", "w2"] and g._pick() is None
    assert "cluster full: 2 worker(s) hold 6 station(s)" in g._full_message()


def test_gateway_policy_check_refuses_what_the_server_policy_does(tmp_path):
    from streamtag.cluster.gateway import check_policy
    from streamtag.sources.policy import PolicyError, SourcePolicy

    strict = SourcePolicy(allow_files=(tmp_path,))
    check_policy(str(tmp_path / "a.wav"), strict)  # under --allow-files
    check_policy("https://radio.example/live.mp3", strict)  # a name: resolved and checked on the worker
    for uri in ("/etc/passwd", "http://127.0.0.1/x.mp3", "http://[::1]:8000/", "http://10.0.0.5/s", "file:///etc/x"):
        with pytest.raises(PolicyError, match="refused by policy"):
            check_policy(uri, strict)
    check_policy("http://127.0.0.1/x.mp3", SourcePolicy.permissive())
    with pytest.raises(SourceError, match="unsupported URL scheme"):
        check_policy("ftp://example.org/a.mp3", strict)
    with pytest.raises(SourceError, match="stdin"):
        check_policy("-", SourcePolicy.permissive())


# -- without Ray ----------------------------------------------------------------------------------------------
def test_without_ray_cluster_says_how_to_install_it(monkeypatch):
    from streamtag.cluster.gateway import INSTALL_HINT, require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ConfigError) as e:
        require_ray()
    assert str(e.value) == INSTALL_HINT and "pip install" in str(e.value) and "\n" not in str(e.value)


def test_serve_without_cluster_never_imports_ray():
    code = ("import sys, streamtag.cli, streamtag.app, streamtag.commands_live, streamtag.publishers.websocket, "
            "streamtag.cluster; p = streamtag.cli.build_parser(); a = p.parse_args(['serve']); "
            "assert a.cluster is None; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
