"""Live latency: an audio block's arrival -> the websocket message's receipt by a client, at 1/10/100 streams.

A real server (WebsocketServer, a sink of a LiveRunner + Engine) runs in this process; every stream is a real clip
paced at real time, and each block's arrival (time.monotonic) is stamped as it is handed to the engine. Two ways
to feed the streams (``--feed``):

- ``push`` (default): one pacing thread hands every stream its 0.1 s blocks through ``LiveRunner.push``, the way
  the server feeds websocket audio-in streams. This measures the engine and websocket path.
- ``threads``: every stream is a source with a feeder thread of its own (``LiveRunner.add_source``), the way radio
  and file sources are fed. On two cores CPython's GIL makes ~1,000 such threads a cost of their own: every thread
  waiting for the GIL wakes every switch interval, so the scheduling, not the engine, sets the limit there.
- ``websocket``: every stream is a websocket connection from another process (the pusher), which announces it
  with ``audio_start`` (pcm16 mono at the model's rate) and sends its 0.1 s blocks as binary frames at real time,
  as an app does (docs/protocol.md, "Audio in"); ``--wire RATE:FORMAT:CHANNELS`` sends another format, e.g.
  ``48000:float32:1`` as the web page's microphone does (float32 mono at the AudioContext's rate, usually
  48 kHz). The server reads, checks, paces and pushes them itself, so this measures what pushing audio costs a
  real server, transport included: each block's arrival is stamped by the pusher as it sends it, and the pusher's
  own CPU is printed beside the server's.

Streams start at phases spread over one hop, so their hops complete evenly over time as independent live streams'
do (started in the same instant, every stream would complete its hop in the same 0.1 s). Clients (10 by default)
run in a separate process, subscribed to every stream; the measured window starts 2 s after they subscribed (their
own start-up shares these cores), and they stamp each update's receipt with the same system-wide monotonic clock.
An update's latency is receipt time minus the arrival time of the block that completed its window (the block
holding sample t * sr, plus the model's lag_frames for the distilled students, whose t is 1.17 s behind their
newest audio), so it includes waiting for the engine thread, the model, the hub and the socket, but not the window
itself.

    python bench/bench_latency.py                        # musicnn-msd, 1/10/100 streams, 10 clients, 20 s each
    python bench/bench_latency.py --streams 1 10 --seconds 10 --device cpu --hop 1.0

    python bench/bench_latency.py --search --models all --seconds 8 --clients 2   # the real-time limit per model
    python bench/bench_latency.py --search --model DIR --clients 2 --seconds 8 --feed threads
    python bench/bench_latency.py --engine-only --model st-gru-msd --streams 352 --seconds 6 --step-ms 20

Prints one row per stream count with p50/p99 latency, updates/s (engine) and messages/s (all clients), each the
median of ``--runs`` runs (default 3), and the ratios to the 1-stream baseline measured in the same run.
``--search`` instead finds, per model, the largest stream count it sustains in real time (p99 latency under one
hop, >= 95% of the expected updates, no overruns): x4 from ``--start`` until a run fails, then bisecting, bounded by
``--budget`` and ``--max-configs``, one run per configuration; the limit found is then run until it has ``--runs``
runs and their median decides (a failing median moves to the next lower sustained count). It prints the bracket,
the sustained updates/s (median) and the engine's wall ms per stream-hop at that limit. A configuration
the machine cannot run in real time shows up as growing latency and ring-buffer overruns, not as a crash. The
header line says how the streams were fed and how many intra-op threads torch had (``--torch-threads``).
Every row also gives the server process's CPU per update (``--verbose``: by thread). ``--engine-only`` drives the
Engine alone with the same pushes, without the clock, and prints its CPU per update: the figure to compare on a
machine shared with other jobs, where wall-clock capacity moves with their load.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# streamtag (and torch) are imported where they are used, not here: the clients' process is started with
# "spawn", which re-imports this module, and importing torch there would take a core from the server for seconds
# just as the measurement starts
if TYPE_CHECKING:
    from streamtag.live import LiveRunner

CLIP = REPO / "examples" / "audio" / "kevin-macleod-vibe-ace.ogg"
BLOCK_SECONDS = 0.1  # s per block a feeder hands over (a typical audio callback / network read)


class PacedClip:
    """A looped clip as real-time blocks, starting ``phase`` s late; records (samples so far, arrival time) for every
    block. Streams get phases spread over one hop, so that their hops complete evenly over time, as independent
    live streams' do (started in the same instant, all streams would complete their hops in the same 0.1 s)."""

    def __init__(self, audio: np.ndarray, sr: int, offset: int, stop: threading.Event, phase: float = 0.0) -> None:
        self.name, self.title = "clip", cast("str | None", None)
        self.audio, self.sr, self.offset, self.stop, self.phase = audio, sr, offset, stop, phase
        self.block = int(BLOCK_SECONDS * sr)
        self.looped = np.concatenate([audio, audio[: self.block]])  # a block starting anywhere is one slice
        self.sent = 0
        self.arrivals: list[tuple[int, float]] = []

    def next_block(self) -> np.ndarray:
        """The next block (a view: the engine's ring buffer copies it), its arrival stamped now."""
        start = (self.offset + self.sent) % self.audio.shape[0]
        self.sent += self.block
        self.arrivals.append((self.sent, time.monotonic()))
        return self.looped[start : start + self.block]

    def __iter__(self):
        """--feed threads: the source of a feeder thread of its own, which blocks until each block is due."""
        t0 = time.monotonic() + self.phase
        while not self.stop.is_set():
            delay = t0 + (self.sent + self.block) / self.sr - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # cheaper than Event.wait (a lock per call) for 1,000 threads 10 times a second
                if self.stop.is_set():
                    return
            yield self.next_block()

    def close(self) -> None:
        self.stop.set()

    def arrival_of(self, sample: int) -> float | None:
        i = bisect.bisect_left(self.arrivals, (sample, -1.0))
        return self.arrivals[i][1] if i < len(self.arrivals) else None


PACER_TICK_S = 0.01  # s: --feed push hands over the blocks that are due every 10 ms


def pace_all(runner: LiveRunner, sources: dict[str, PacedClip], stop: threading.Event) -> None:
    """--feed push: one thread hands every stream its blocks at real time through ``runner.push`` (the way the server
    feeds websocket audio-in streams): each stream's block at the 10 ms tick its phase and the block length put it."""
    per_block = round(BLOCK_SECONDS / PACER_TICK_S)  # ticks per block
    by_residue: list[list[tuple[int, str]]] = [[] for _ in range(per_block)]  # tick % per_block -> (first tick, name)
    for name, src in sources.items():
        first = round(src.phase / PACER_TICK_S) + per_block  # the end of its first block
        by_residue[first % per_block].append((first, name))
    t0 = time.monotonic()
    tick = 0
    while not stop.is_set():
        delay = t0 + tick * PACER_TICK_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for first, name in by_residue[tick % per_block]:
            if tick >= first:
                runner.push(name, sources[name].next_block())
        tick += 1


class PushedArrivals:
    """--feed websocket: one stream's (samples sent so far, send time) pairs, as the pusher process recorded them."""

    def __init__(self, arrivals: list[tuple[int, float]]) -> None:
        self.arrivals = arrivals

    arrival_of = PacedClip.arrival_of


PUSH_CONNECT_AT_ONCE = 32  # --feed websocket: connections the pusher opens at a time


def wire_audio(audio: np.ndarray, sr: int, wire: tuple[int, str, int]) -> np.ndarray:
    """``audio`` (mono at ``sr``) as a sender would put it on the wire: resampled to the wire's rate (the project's
    own conversion, soxr HQ), its channels (the mono copied: a stereo device's two equal channels), pcm16 or float32
    little-endian, interleaved; shape (samples, channels)."""
    from streamtag.audio import to_mono

    rate, fmt, channels = wire
    x = to_mono(audio, sample_rate=sr, target_rate=rate)
    x = np.repeat(np.clip(x, -1.0, 1.0)[:, None], channels, axis=1)
    return (x * 32767.0).astype("<i2") if fmt == "pcm16" else x.astype("<f4")


def pusher_main(url: str, audio: np.ndarray, sr: int, n_streams: int, hop_seconds: float, conn,
                wire: tuple[int, str, int] | None = None) -> None:
    """Child process (--feed websocket): one websocket connection per stream, each ``audio_start`` (``wire``: rate,
    format and channels; default pcm16 mono at ``sr``) then 0.1 s binary frames at real time, phases spread over one
    hop as ``pace_all``'s; every connection also reads what the server sends it (its own stream's updates: a sender
    is subscribed to its stream). Sends "started" once every stream is announced, pushes until the parent sends
    "stop", then sends each stream's arrivals (samples so far at ``sr``, send time)."""
    from websockets.asyncio.client import connect

    rate, fmt, channels = wire or (sr, "pcm16", 1)
    wired = wire_audio(audio, sr, (rate, fmt, channels))
    n_wired = wired.shape[0]
    block = int(BLOCK_SECONDS * rate)
    pcm = np.concatenate([wired, wired[:block]])
    offsets = [(k * 7919 * 13) % n_wired for k in range(n_streams)]
    arrivals: list[list[tuple[int, float]]] = [[] for _ in range(n_streams)]
    sockets: list = [None] * n_streams

    async def one(k: int, gate: asyncio.Semaphore, done: asyncio.Event) -> None:
        async with gate:
            ws = await connect(url, max_size=None)
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "audio_start", "stream": f"s{k}", "sample_rate": rate,
                                      "format": fmt, "channels": channels}))
            while (reply := json.loads(await ws.recv()))["type"] != "audio_started":
                if reply["type"] == "error":
                    raise RuntimeError(f"audio_start s{k}: {reply}")
        sockets[k] = ws
        try:
            async for _ in ws:  # its updates: read, so that nothing piles up
                if done.is_set():
                    break
        except Exception:  # closed at the end
            pass

    async def main() -> None:
        gate, done = asyncio.Semaphore(PUSH_CONNECT_AT_ONCE), asyncio.Event()
        readers = [asyncio.create_task(one(k, gate, done)) for k in range(n_streams)]
        while not all(sockets):
            failed = [t for t in readers if t.done() and t.exception() is not None]
            if failed:
                raise cast(BaseException, failed[0].exception())
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        stopped = loop.run_in_executor(None, conn.recv)  # the parent's "stop"
        conn.send("started")
        per_block = round(BLOCK_SECONDS / PACER_TICK_S)
        first = [round(hop_seconds * k / n_streams / PACER_TICK_S) + per_block for k in range(n_streams)]
        sent = [0] * n_streams
        t0, tick = time.monotonic(), 0
        while not stopped.done():
            delay = t0 + tick * PACER_TICK_S - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
            for k in range(n_streams):
                if tick >= first[k] and (tick - first[k]) % per_block == 0:
                    start = (offsets[k] + sent[k]) % n_wired
                    sent[k] += block
                    arrivals[k].append((sent[k] * sr // rate, time.monotonic()))  # in the engine's samples
                    await sockets[k].send(pcm[start : start + block].tobytes())
            tick += 1
        done.set()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    asyncio.run(main())
    conn.send(arrivals)
    conn.close()


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by Python thread name (numbers dropped: the pool's threads
    add up under one name; threads Python did not start are "native"). Linux only ({} elsewhere)."""
    import os

    names = {t.native_id: t.name.rstrip("0123456789_").rstrip("-") for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "native")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


SETTLE_S = 2.0  # s from the clients' subscription to the measured window: their own start-up, on these same cores, is over


def clients_main(url: str, n_clients: int, seconds: float, conn) -> None:
    """Child process: n_clients websocket clients subscribed to '*', stamping every update's receipt in the measured
    window (which starts SETTLE_S after the last client subscribed)."""
    from websockets.asyncio.client import connect

    ready: list[int] = []
    subscribed = asyncio.Event()
    window: list[float] = []  # [start, end] of the measured window (time.monotonic)

    async def client(i: int):
        rows, dropped = [], 0
        async with connect(url, max_size=None) as ws:
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
            while json.loads(await ws.recv())["type"] != "subscribed":
                pass
            ready.append(i)
            if len(ready) == n_clients:
                start = time.monotonic() + SETTLE_S
                window[:] = [start, start + seconds]
                subscribed.set()
            await subscribed.wait()
            start, end = window

            async def receive() -> None:
                nonlocal dropped
                while True:
                    text = await ws.recv(decode=False)  # json.loads takes the UTF-8 bytes as they came
                    now = time.monotonic()
                    if now < start:
                        continue  # settling: read (so nothing piles up) but not measured
                    msg = json.loads(text)
                    dropped += msg.get("dropped", 0)
                    if msg["type"] == "update":
                        rows.append((msg["stream"], msg["t"], now, msg.get("latency_ms")))

            try:  # one deadline for the whole window, not a timer per message
                await asyncio.wait_for(receive(), end - time.monotonic())
            except asyncio.TimeoutError:
                pass
        return rows, dropped

    async def start_signal() -> None:
        await subscribed.wait()
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        conn.send("ready")  # the measured window starts: the server counts what it publishes from here

    async def main():
        signal = asyncio.create_task(start_signal())
        results = await asyncio.gather(*(client(i) for i in range(n_clients)))
        await signal
        return results

    results = asyncio.run(main())
    conn.send("done")
    conn.send(results)
    conn.close()


def run_config(bundle, audio: np.ndarray, args, n_streams: int) -> dict:
    from bench_radio import cpu_seconds  # this directory (the script's) is on sys.path

    from streamtag.live import LiveRunner, freeze_startup_objects
    from streamtag.pipeline import Engine
    from streamtag.publishers.websocket import ServerConfig, WebsocketServer

    engine = Engine(bundle, device=args.device, hop_seconds=args.hop)
    sr = engine.sample_rate
    # an update's t is the music it describes; a lagging model (the students) had audio lag_frames further on
    lag = engine.runner.lag_frames * bundle.frontend.hop_length
    result: dict = {}

    async def scenario():
        runner = LiveRunner(engine)
        runner.start()
        freeze_startup_objects()  # as streamtag serve does
        result["runner"] = runner
        limits = {}
        if args.feed == "websocket":  # one connection and one audio-in stream per pushed stream, beside the clients
            conns = n_streams + args.clients + 8
            limits = {"max_connections": conns, "max_connections_per_address": conns,
                      "max_streams": n_streams + 8, "max_audio_streams": n_streams}
        server = WebsocketServer(runner, ServerConfig(port=0, queue_streams=max(256, n_streams), web_dir=None,
                                                      **limits))
        async with server:
            stop = threading.Event()
            sources: dict = {}
            loop = asyncio.get_running_loop()
            pusher = None
            if args.feed == "websocket":
                pusher_conn, child_conn = mp.get_context("spawn").Pipe()
                pusher = mp.get_context("spawn").Process(
                    target=pusher_main, args=(server.url, audio, sr, n_streams, engine.hop_seconds, child_conn, args.wire),
                    daemon=True)
                pusher.start()
                assert await loop.run_in_executor(None, pusher_conn.recv) == "started"
            for k in range(0 if pusher is not None else n_streams):
                src = PacedClip(audio, sr, offset=(k * 7919 * 13) % audio.shape[0], stop=stop,
                                phase=engine.hop_seconds * k / n_streams)
                sources[f"s{k}"] = src
                if args.feed == "threads":
                    runner.add_source(f"s{k}", src, speed=None, display="bench")  # a feeder thread per stream
                else:
                    runner.add_stream(f"s{k}", display="bench")
            if args.feed == "push":
                threading.Thread(target=pace_all, args=(runner, sources, stop), name="pacer", daemon=True).start()
            warmup = args.warmup if args.warmup is not None else (
                bundle.window_seconds + engine.hop_seconds + 2.0)  # the last stream starts a hop late
            await asyncio.sleep(warmup)  # first windows fill, first-step imports done
            parent, child = mp.get_context("spawn").Pipe(duplex=False)
            proc = mp.get_context("spawn").Process(
                target=clients_main, args=(server.url, args.clients, args.seconds, child), daemon=True
            )
            proc.start()
            assert await loop.run_in_executor(None, parent.recv) == "ready"
            published0, t0, cpu0 = sum(server.hub.published.values()), time.monotonic(), time.process_time()
            pusher0 = cpu_seconds([pusher.pid]) if pusher is not None and pusher.pid else 0.0
            threads0 = thread_cpu()
            assert await loop.run_in_executor(None, parent.recv) == "done"
            published, window = sum(server.hub.published.values()) - published0, time.monotonic() - t0
            result["cpu_s"] = time.process_time() - cpu0  # this process: engine, server, pacer (not the clients)
            result["pusher_cpu_s"] = (cpu_seconds([pusher.pid]) - pusher0) if pusher is not None and pusher.pid else 0.0
            result["overruns"] = sum(st.overruns for st in engine.streams.values())  # before the pusher's go
            if pusher is not None:
                pusher_conn.send("stop")
                pushed = await loop.run_in_executor(None, pusher_conn.recv)
                await loop.run_in_executor(None, pusher.join, 10)
                sources = {f"s{k}": PushedArrivals(a) for k, a in enumerate(pushed)}
            threads1 = thread_cpu()
            result["thread_cpu_s"] = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
            got = await loop.run_in_executor(None, parent.recv)
            await loop.run_in_executor(None, proc.join, 10)
            stop.set()
            result["clients"] = got
            result["sources"] = sources
            result["published"], result["window"] = published, window

    asyncio.run(scenario())
    result["runner"].stop(timeout=120)  # a step still running on a saturated CPU must end before we go on
    lat, server_lat, total_msgs, total_dropped = [], [], 0, 0
    for rows, dropped in result["clients"]:
        total_msgs += len(rows)
        total_dropped += dropped
        for stream, t, recv, server_ms in rows:
            arrival = result["sources"][stream].arrival_of(int(round(t * sr)) + lag)
            if arrival is not None:
                lat.append((recv - arrival) * 1000.0)
            if server_ms is not None:  # the server's own figure: from the audio reaching its engine to publication
                server_lat.append(float(server_ms))
    if args.verbose:
        n_pub = max(1, result["published"])
        print("    CPU ms per update by thread: " + ", ".join(
            f"{k} {1000.0 * v / n_pub:.2f}" for k, v in sorted(result["thread_cpu_s"].items(), key=lambda kv: -kv[1])))
        rows0 = sorted(result["clients"][0][0], key=lambda r: r[2])
        for stream, t, recv, _ in rows0[:: max(1, len(rows0) // 15)]:
            arrival = result["sources"][stream].arrival_of(int(round(t * sr)) + lag)
            print(f"    {stream} t={t:.2f} recv={recv:.2f} arrival={arrival if arrival is None else round(arrival, 2)}")
    lat_a = np.array(lat) if lat else np.array([np.nan])
    return {
        "streams": n_streams,
        "clients": args.clients,
        "p50_ms": float(np.percentile(lat_a, 50)),
        "p99_ms": float(np.percentile(lat_a, 99)),
        # the part of p99 from the audio's hand-over to the engine (runner.push) to publication: for --feed websocket
        # the rest is the transport and the server's reading, for the in-process feeds only the delivery
        "engine_p99_ms": float(np.percentile(server_lat, 99)) if server_lat else float("nan"),
        "updates_per_s": result["published"] / result["window"],
        "expected_updates_per_s": n_streams / engine.hop_seconds,
        "client_msgs_per_s": total_msgs / args.seconds,
        "dropped": total_dropped,
        "overruns": result["overruns"],
        "n_latencies": len(lat),
        # CPU of the server process (engine, event loop, pacer) per published update: less swayed by other jobs on
        # the machine than the wall-clock figures (they take cores, not this process's instructions)
        "cpu_ms_per_update": 1000.0 * result["cpu_s"] / max(1, result["published"]),
        # --feed websocket: the pusher process's CPU per published update (0 for the in-process feeds)
        "pusher_cpu_ms_per_update": 1000.0 * result["pusher_cpu_s"] / max(1, result["published"]),
    }


P99_LIMIT_MS: float | None = None  # --p99-ms: the p99 latency real time allows (None: one hop)


def sustains(r: dict, hop_seconds: float) -> bool:
    """Real time: p99 latency under one hop (or --p99-ms), (nearly) every expected update published, no audio
    dropped."""
    limit = 1000.0 * hop_seconds if P99_LIMIT_MS is None else P99_LIMIT_MS
    return (r["p99_ms"] < limit and r["updates_per_s"] >= 0.95 * r["expected_updates_per_s"]
            and r["overruns"] == 0)


def _row(r: dict) -> str:
    return (f"  {r['streams']:4d} streams: p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms "
            f"(engine {r.get('engine_p99_ms', float('nan')):.0f})  "
            f"updates/s {r['updates_per_s']:7.1f} (expected {r['expected_updates_per_s']:.1f})  "
            f"client msgs/s {r['client_msgs_per_s']:8.1f}  dropped {r['dropped']}  overruns {r['overruns']}  "
            f"cpu ms/update {r['cpu_ms_per_update']:.2f}"
            + (f" (+ pusher {r['pusher_cpu_ms_per_update']:.2f})" if r.get("pusher_cpu_ms_per_update") else ""))


def search(bundle, audio: np.ndarray, args) -> dict:
    """The most real-time streams ``bundle`` sustains: double the stream count until a run fails
    :func:`sustains` (x4 each time), then bisect, within ``--budget`` seconds and ``--max-configs`` runs; then
    confirm the limit with ``--runs`` runs."""
    from streamtag.pipeline import Engine

    hop = Engine(bundle, device=args.device, hop_seconds=args.hop).hop_seconds
    rows: list[dict] = []
    lo, hi, n = 0, None, max(1, args.start)
    deadline = time.monotonic() + args.budget
    while len(rows) < args.max_configs and time.monotonic() < deadline:
        r = run_config(bundle, audio, args, n)
        r["sustained"] = sustains(r, hop)
        rows.append(r)
        print(_row(r) + ("  ok" if r["sustained"] else "  NOT real time"), flush=True)
        if r["sustained"]:
            lo = n
        else:
            hi = n
        if hi is None:
            n *= 4
        elif hi - lo <= max(1, lo // 8):
            break
        else:
            n = (lo + hi) // 2
    # the verdict: the found limit again until it has --runs runs; their median decides. A limit whose median
    # fails sends the search back to bisect between it and the next lower sustained count.
    best = None
    while lo > 0:
        runs = [r for r in rows if r["streams"] == lo]
        while len(runs) < args.runs:
            r = run_config(bundle, audio, args, lo)
            r["sustained"] = sustains(r, hop)
            rows.append(r)
            runs.append(r)
            print(_row(r) + ("  ok" if r["sustained"] else "  NOT real time") + "  (confirming)", flush=True)
        med = median_row(runs)
        if sustains(med, hop):
            best = med
            break
        # its median failed: bisect the gap down to the next lower count that passed again (single runs), then
        # confirm what that finds, rather than falling back to the lower count
        hi = lo
        lo = max((r["streams"] for r in rows if r["sustained"] and r["streams"] < hi), default=0)
        while lo > 0 and hi - lo > max(1, lo // 8):
            n = (lo + hi) // 2
            r = run_config(bundle, audio, args, n)
            r["sustained"] = sustains(r, hop)
            rows.append(r)
            print(_row(r) + ("  ok" if r["sustained"] else "  NOT real time") + "  (after a failed median)", flush=True)
            if r["sustained"]:
                lo = n
            else:
                hi = n
    if best is not None:
        print(_row(best) + f"  median of {len(best['runs'])} runs", flush=True)
    return {"model": bundle.name, "hop_s": hop, "max_streams": lo, "bracket": [lo, hi], "rows": rows,
            "median": best, "updates_per_s": best["updates_per_s"] if best else 0.0,
            "budget_exhausted": hi is None and lo > 0}


def median_row(runs: list[dict]) -> dict:
    """One configuration's runs as one row: the median of each latency and rate, the worst of drops and overruns."""
    row = dict(runs[0])
    for key in ("p50_ms", "p99_ms", "engine_p99_ms", "updates_per_s", "client_msgs_per_s", "cpu_ms_per_update",
                "pusher_cpu_ms_per_update"):
        row[key] = float(np.median([r[key] for r in runs]))
    for key in ("dropped", "overruns"):
        row[key] = max(r[key] for r in runs)
    row["runs"] = [{k: r[k] for k in ("p50_ms", "p99_ms", "updates_per_s", "overruns", "cpu_ms_per_update")} for r in runs]
    return row


def main_search(args) -> int:
    from streamtag.pipeline import Engine
    from streamtag.registry import available_models, load_bundle
    from streamtag.sources import read_audio

    names = available_models() if args.models == ["all"] else args.models
    results = []
    for name in names:
        bundle = load_bundle(name)
        audio = read_audio(args.clip, bundle.frontend.sample_rate)
        limit = "one hop" if P99_LIMIT_MS is None else f"{P99_LIMIT_MS:g} ms"
        print(f"model {bundle.name}: searching the most real-time streams (p99 < {limit}, hop "
              f"{Engine(bundle, device=args.device, hop_seconds=args.hop).hop_seconds:.2f} s)", flush=True)
        results.append(search(bundle, audio, args))
    print("\nmodel                 hop s  max streams  (bracket)    sustained updates/s  ms per stream-hop  "
          "updates/s vs 1 stream")
    for res in results:
        one = next((r for r in res["rows"] if r["streams"] == 1), None)
        scale = f"x{res['updates_per_s'] / one['updates_per_s']:.1f}" if one and one["updates_per_s"] else "-"
        per_hop = 1000.0 / res["updates_per_s"] if res["updates_per_s"] else float("nan")
        hi = res["bracket"][1]
        print(f"{res['model']:20s} {res['hop_s']:6.2f} {res['max_streams']:12d}  [{res['bracket'][0]}, "
              f"{hi if hi is not None else '>'}]  {res['updates_per_s']:18.1f} {per_hop:18.1f}  {scale:>11s}"
              + ("  (budget ran out before a failure)" if res["budget_exhausted"] else ""))
    print("ms per stream-hop: wall ms the engine spends per update at the largest sustained count (1000 / updates/s); "
          f"sustained figures: the median of {args.runs} runs at that count")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def engine_only(bundle, audio: np.ndarray, args, n_streams: int) -> dict:
    """--engine-only: the Engine alone, no server, clients or clock. The pushes of ``pace_all`` (0.1 s blocks at
    phases spread over one hop) are replayed as fast as the engine steps, one step per ``--step-ms`` of stream time
    (LiveRunner steps every 20 ms when it keeps up, less often when it falls behind: its batches grow); returns the
    CPU of this process (engine thread, front-end and worker threads) per update, over ``--seconds`` of stream time
    after the windows fill."""
    from concurrent.futures import ThreadPoolExecutor

    from streamtag.events import to_dicts
    from streamtag.live import FRONT_END_THREADS
    from streamtag.pipeline import Engine

    engine = Engine(bundle, device=args.device, hop_seconds=args.hop)
    pool = ThreadPoolExecutor(FRONT_END_THREADS - 1) if FRONT_END_THREADS > 1 else None
    engine.use_front_end_pool(pool, FRONT_END_THREADS)  # as LiveRunner does
    sr = engine.sample_rate
    block = int(BLOCK_SECONDS * sr)
    names = [f"s{k}" for k in range(n_streams)]
    for name in names:
        engine.add_stream(name)
    looped = np.concatenate([audio, audio[:block]])
    offsets = [(k * 7919 * 13) % audio.shape[0] for k in range(n_streams)]
    sent = [0] * n_streams
    per_block = round(BLOCK_SECONDS / PACER_TICK_S)
    first = [round(engine.hop_seconds * k / n_streams / PACER_TICK_S) + per_block for k in range(n_streams)]
    ticks_per_step = max(1, round(args.step_ms / 1000.0 / PACER_TICK_S))
    tick = 0

    steps = int(args.seconds / PACER_TICK_S) // ticks_per_step  # in the measured run

    def run(seconds: float) -> int:
        nonlocal tick
        updates = 0
        for _ in range(int(seconds / PACER_TICK_S) // ticks_per_step):
            for _ in range(ticks_per_step):
                for k in range(n_streams):
                    if tick >= first[k] and (tick - first[k]) % per_block == 0:
                        start = (offsets[k] + sent[k]) % audio.shape[0]
                        engine.push(names[k], looped[start : start + block])
                        sent[k] += block
                tick += 1
            out = engine.step()
            to_dicts(out)  # what the server does with them next (its JSON encoding not included)
            updates += len(out)
        return updates

    run(bundle.window_seconds + engine.hop_seconds + 2.0)  # windows fill, first-step set-up done
    cpu0, t0 = time.process_time(), time.perf_counter()
    updates = run(args.seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if pool is not None:
        pool.shutdown()
    return {"streams": n_streams, "updates": updates, "cpu_ms_per_update": 1000.0 * cpu / max(1, updates),
            "wall_ms_per_update": 1000.0 * wall / max(1, updates), "hops_per_step": updates / max(1, steps)}


def parse_wire(p: argparse.ArgumentParser, text: str | None) -> tuple[int, str, int] | None:
    """--wire RATE:FORMAT:CHANNELS -> (rate, format, channels), checked against what audio_start accepts."""
    if text is None:
        return None
    from streamtag.protocol import AUDIO_FORMATS, MAX_AUDIO_CHANNELS, MAX_AUDIO_RATE, MIN_AUDIO_RATE

    try:
        rate_s, fmt, channels_s = text.split(":")
        rate, channels = int(rate_s), int(channels_s)
    except ValueError:
        p.error(f"--wire {text!r}: expected RATE:FORMAT:CHANNELS, e.g. 48000:float32:2")
    if not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE or fmt not in AUDIO_FORMATS or not 1 <= channels <= MAX_AUDIO_CHANNELS:
        p.error(f"--wire {text!r}: rate {MIN_AUDIO_RATE}-{MAX_AUDIO_RATE} Hz, format one of {', '.join(AUDIO_FORMATS)}, "
                f"channels 1-{MAX_AUDIO_CHANNELS}")
    return rate, fmt, channels


def main() -> int:
    from streamtag.registry import DEFAULT_MODEL, load_bundle
    from streamtag.sources import read_audio

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--hop", type=float, default=None, help="s between updates (default: the bundle's)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    p.add_argument("--feed", choices=("push", "threads", "websocket"), default="push",
                   help="push: one pacing thread hands every stream its blocks through LiveRunner.push (as the server "
                        "feeds websocket audio-in); threads: a feeder thread per stream (as LiveRunner feeds sources); "
                        "websocket: another process pushes every stream over a websocket connection of its own "
                        "(audio_start + pcm16 frames), through the server's audio-in path")
    p.add_argument("--wire", default=None, metavar="RATE:FORMAT:CHANNELS",
                   help="--feed websocket: what the senders send (default: the model's rate, pcm16, mono); e.g. "
                        "48000:float32:1 as the web page's microphone sends (the server resamples it)")
    p.add_argument("--warmup", type=float, default=None, metavar="S",
                   help="s between the streams' start and the clients' (default: one window + one hop + 2 s; "
                        "bench_radio --pushed passes its own, so that both sides get the same time to settle)")
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads (default: torch's own, one per core)")
    p.add_argument("--clip", default=str(CLIP))
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--verbose", action="store_true", help="print the CPU per update of each thread and a sample of one client's receipts")
    p.add_argument("--search", action="store_true",
                   help="per model, search the largest stream count with p99 latency under one hop")
    p.add_argument("--p99-ms", type=float, default=None,
                   help="real time allows a p99 latency under this many ms instead of one hop (bench_radio --pushed "
                        "passes its own limit, 1000, so that both sides are judged alike)")
    p.add_argument("--models", nargs="+", default=None, help="models for --search ('all': every shipped one)")
    p.add_argument("--start", type=int, default=1, help="--search: first stream count (x4 until it fails)")
    p.add_argument("--max-configs", type=int, default=10, help="--search: most runs per model")
    p.add_argument("--budget", type=float, default=400.0, help="--search: seconds of runs per model")
    p.add_argument("--engine-only", action="store_true",
                   help="the Engine alone (no server, clients or clock): CPU per update at each --streams count")
    p.add_argument("--step-ms", type=float, default=20.0,
                   help="--engine-only: stream time per engine step (20: LiveRunner keeping up; more: falling behind)")
    p.add_argument("--runs", type=int, default=3,
                   help="runs per configuration, medians reported (--search: the found limit is run again until it "
                        "has this many, and their median decides)")
    args = p.parse_args()
    args.wire = parse_wire(p, args.wire)
    global P99_LIMIT_MS
    P99_LIMIT_MS = args.p99_ms
    import torch

    torch.set_num_threads(max(1, args.torch_threads or torch.get_num_threads()))
    feed = {"push": "one pacing thread (--feed push)", "threads": "a feeder thread per stream (--feed threads)",
            "websocket": "a websocket connection per stream from another process (--feed websocket)"}[args.feed]
    if args.feed == "websocket":
        rate, fmt, channels = args.wire or (0, "pcm16", 1)
        feed += f", sending {fmt} x{channels} at " + (f"{rate} Hz" if rate else "the model's rate")
    if args.search:
        args.models = args.models or [args.model]
        print(f"device {args.device} · {args.clients} clients · {args.seconds:g} s per run · "
              f"torch threads {torch.get_num_threads()} · streams fed by {feed}", flush=True)
        return main_search(args)

    bundle = load_bundle(args.model)
    audio = read_audio(args.clip, bundle.frontend.sample_rate)
    if args.engine_only:
        print(f"model {bundle.name} · engine only · {args.seconds:g} s of stream time per run · a step per "
              f"{args.step_ms:g} ms · torch threads {torch.get_num_threads()}", flush=True)
        for n in args.streams:
            runs = [engine_only(bundle, audio, args, n) for _ in range(max(1, args.runs))]
            cpu = [r["cpu_ms_per_update"] for r in runs]
            print(f"  {n:4d} streams: CPU ms per update {np.median(cpu):.3f} (runs {', '.join(f'{c:.3f}' for c in cpu)})  "
                  f"hops per step {runs[0]['hops_per_step']:.1f}  wall ms per update "
                  f"{np.median([r['wall_ms_per_update'] for r in runs]):.3f}", flush=True)
        return 0
    rows = []
    print(f"model {bundle.name} · device {args.device} · {args.clients} clients · {args.seconds:g} s per row · "
          f"torch threads {torch.get_num_threads()} · streams fed by {feed}", flush=True)
    for n in args.streams:
        runs = [run_config(bundle, audio, args, n) for _ in range(max(1, args.runs))]
        rows.append(median_row(runs))
        print(_row(rows[-1]) + (f"  median of {len(runs)} runs" if len(runs) > 1 else ""), flush=True)
    base = rows[0]
    print("\nstreams  p50 ms   p99 ms   p50 x   p99 x   updates/s  msgs/s (all clients)  dropped  overruns")
    for r in rows:
        print(f"{r['streams']:7d} {r['p50_ms']:7.1f} {r['p99_ms']:8.1f} {r['p50_ms'] / base['p50_ms']:7.2f} "
              f"{r['p99_ms'] / base['p99_ms']:7.2f} {r['updates_per_s']:10.1f} {r['client_msgs_per_s']:10.1f}"
              f"            {r['dropped']:7d} {r['overruns']:9d}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
