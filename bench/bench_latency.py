"""Live latency: an audio block's arrival -> the websocket message's receipt by a client, at 1/10/100 streams.

A real server (WebsocketServer, a sink of a LiveRunner + Engine) runs in this process; every stream is a real clip
paced at real time by its own feeder thread, which stamps each block's arrival (time.monotonic) as it hands it
to the engine. Clients (10 by default) run in a separate process, subscribed to every stream, and stamp each
update's receipt with the same system-wide monotonic clock. An update's latency is receipt time minus the
arrival time of the block that completed its window (the block holding sample t * sr, plus the model's
lag_frames for the distilled students, whose t is 1.17 s behind their newest audio), so it includes waiting
for the engine thread, the model, the hub and the socket, but not the window itself.

    python bench/bench_latency.py                        # musicnn-msd, 1/10/100 streams, 10 clients, 20 s each
    python bench/bench_latency.py --streams 1 10 --seconds 10 --device cpu --hop 1.0

    python bench/bench_latency.py --search --models all --seconds 8 --clients 2   # the real-time limit per model

Prints one row per stream count with p50/p99 latency, updates/s (engine) and messages/s (all clients), and the
ratios to the 1-stream baseline measured in the same run. ``--search`` instead finds, per model, the largest
stream count it sustains in real time (p99 latency under one hop, >= 95% of the expected updates, no overruns):
doubling from ``--start`` until a run fails, then bisecting, bounded by ``--budget`` and ``--max-configs``; it
prints the bracket, the sustained updates/s and the engine's wall ms per stream-hop at that limit. A configuration the machine cannot run in real time
shows up as growing latency and ring-buffer overruns, not as a crash.
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
from typing import cast

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamtag.live import LiveRunner  # noqa: E402
from streamtag.pipeline import Engine  # noqa: E402
from streamtag.publishers.websocket import ServerConfig, WebsocketServer  # noqa: E402
from streamtag.registry import DEFAULT_MODEL, load_bundle  # noqa: E402
from streamtag.sources import read_audio  # noqa: E402

CLIP = REPO / "examples" / "audio" / "kevin-macleod-vibe-ace.ogg"
BLOCK_SECONDS = 0.1  # s per block a feeder hands over (a typical audio callback / network read)


class PacedClip:
    """A looped clip as real-time blocks; records (samples so far, arrival time) for every block."""

    def __init__(self, audio: np.ndarray, sr: int, offset: int, stop: threading.Event) -> None:
        self.name, self.title = "clip", cast("str | None", None)
        self.audio, self.sr, self.offset, self.stop = audio, sr, offset, stop
        self.arrivals: list[tuple[int, float]] = []

    def __iter__(self):
        block = int(BLOCK_SECONDS * self.sr)
        n = self.audio.shape[0]
        sent = 0
        t0 = time.monotonic()
        while not self.stop.is_set():
            due = t0 + (sent + block) / self.sr
            delay = due - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            idx = (self.offset + sent + np.arange(block)) % n
            sent += block
            self.arrivals.append((sent, time.monotonic()))
            yield self.audio[idx]

    def close(self) -> None:
        self.stop.set()

    def arrival_of(self, sample: int) -> float | None:
        i = bisect.bisect_left(self.arrivals, (sample, -1.0))
        return self.arrivals[i][1] if i < len(self.arrivals) else None


def clients_main(url: str, n_clients: int, seconds: float, conn) -> None:
    """Child process: n_clients websocket clients subscribed to '*', stamping every update's receipt."""
    from websockets.asyncio.client import connect

    ready: list[int] = []

    async def client(i: int):
        rows, dropped = [], 0
        async with connect(url, max_size=None) as ws:
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
            while json.loads(await ws.recv())["type"] != "subscribed":
                pass
            ready.append(i)
            if len(ready) == n_clients:
                conn.send("ready")  # every client is subscribed: the measured window starts
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    text = await asyncio.wait_for(ws.recv(), left)
                except asyncio.TimeoutError:
                    break
                now = time.monotonic()
                msg = json.loads(text)
                dropped += msg.get("dropped", 0)
                if msg["type"] == "update":
                    rows.append((msg["stream"], msg["t"], now))
        return rows, dropped

    async def main():
        return await asyncio.gather(*(client(i) for i in range(n_clients)))

    results = asyncio.run(main())
    conn.send("done")
    conn.send(results)
    conn.close()


def run_config(bundle, audio: np.ndarray, args, n_streams: int) -> dict:
    engine = Engine(bundle, device=args.device, hop_seconds=args.hop)
    sr = engine.sample_rate
    # an update's t is the music it describes; a lagging model (the students) had audio lag_frames further on
    lag = engine.runner.lag_frames * bundle.frontend.hop_length
    result: dict = {}

    async def scenario():
        runner = LiveRunner(engine)
        runner.start()
        result["runner"] = runner
        server = WebsocketServer(runner, ServerConfig(port=0, queue_streams=max(256, n_streams), web_dir=None))
        async with server:
            stop = threading.Event()
            sources = {}
            for k in range(n_streams):
                src = PacedClip(audio, sr, offset=(k * 7919 * 13) % audio.shape[0], stop=stop)
                sources[f"s{k}"] = src
                runner.add_source(f"s{k}", src, speed=None, display="bench")
            warmup = bundle.window_seconds + 2.0
            await asyncio.sleep(warmup)  # first windows fill, first-step imports done
            parent, child = mp.get_context("spawn").Pipe(duplex=False)
            proc = mp.get_context("spawn").Process(
                target=clients_main, args=(server.url, args.clients, args.seconds, child), daemon=True
            )
            proc.start()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, parent.recv) == "ready"
            published0, t0 = sum(server.hub.published.values()), time.monotonic()
            assert await loop.run_in_executor(None, parent.recv) == "done"
            published, window = sum(server.hub.published.values()) - published0, time.monotonic() - t0
            got = await loop.run_in_executor(None, parent.recv)
            await loop.run_in_executor(None, proc.join, 10)
            stop.set()
            result["clients"] = got
            result["sources"] = sources
            result["published"], result["window"] = published, window
            result["overruns"] = sum(st.overruns for st in engine.streams.values())

    asyncio.run(scenario())
    result["runner"].stop(timeout=120)  # a step still running on a saturated CPU must end before we go on
    lat, total_msgs, total_dropped = [], 0, 0
    for rows, dropped in result["clients"]:
        total_msgs += len(rows)
        total_dropped += dropped
        for stream, t, recv in rows:
            arrival = result["sources"][stream].arrival_of(int(round(t * sr)) + lag)
            if arrival is not None:
                lat.append((recv - arrival) * 1000.0)
    if args.verbose:
        rows0 = sorted(result["clients"][0][0], key=lambda r: r[2])
        for stream, t, recv in rows0[:: max(1, len(rows0) // 15)]:
            arrival = result["sources"][stream].arrival_of(int(round(t * sr)) + lag)
            print(f"    {stream} t={t:.2f} recv={recv:.2f} arrival={arrival if arrival is None else round(arrival, 2)}")
    lat_a = np.array(lat) if lat else np.array([np.nan])
    return {
        "streams": n_streams,
        "clients": args.clients,
        "p50_ms": float(np.percentile(lat_a, 50)),
        "p99_ms": float(np.percentile(lat_a, 99)),
        "updates_per_s": result["published"] / result["window"],
        "expected_updates_per_s": n_streams / engine.hop_seconds,
        "client_msgs_per_s": total_msgs / args.seconds,
        "dropped": total_dropped,
        "overruns": result["overruns"],
        "n_latencies": len(lat),
    }


def sustains(r: dict, hop_seconds: float) -> bool:
    """Real time: p99 latency under one hop, (nearly) every expected update published, no audio dropped."""
    return (r["p99_ms"] < 1000.0 * hop_seconds and r["updates_per_s"] >= 0.95 * r["expected_updates_per_s"]
            and r["overruns"] == 0)


def _row(r: dict) -> str:
    return (f"  {r['streams']:4d} streams: p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
            f"updates/s {r['updates_per_s']:7.1f} (expected {r['expected_updates_per_s']:.1f})  "
            f"client msgs/s {r['client_msgs_per_s']:8.1f}  dropped {r['dropped']}  overruns {r['overruns']}")


def search(bundle, audio: np.ndarray, args) -> dict:
    """The most real-time streams ``bundle`` sustains: double the stream count until a run fails
    :func:`sustains`, then bisect, within ``--budget`` seconds and ``--max-configs`` runs."""
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
            n *= 2
        elif hi - lo <= max(1, lo // 8):
            break
        else:
            n = (lo + hi) // 2
    best = max((r for r in rows if r["sustained"]), key=lambda r: r["streams"], default=None)
    return {"model": bundle.name, "hop_s": hop, "max_streams": lo, "bracket": [lo, hi], "rows": rows,
            "updates_per_s": best["updates_per_s"] if best else 0.0,
            "budget_exhausted": hi is None and lo > 0}


def main_search(args) -> int:
    from streamtag.registry import available_models

    names = available_models() if args.models == ["all"] else args.models
    results = []
    for name in names:
        bundle = load_bundle(name)
        audio = read_audio(args.clip, bundle.frontend.sample_rate)
        print(f"model {bundle.name}: searching the most real-time streams (p99 < one hop, hop "
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
    print("ms per stream-hop: wall ms the engine spends per update at the largest sustained count (1000 / updates/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--hop", type=float, default=None, help="s between updates (default: the bundle's)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    p.add_argument("--clip", default=str(CLIP))
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--verbose", action="store_true", help="print a sample of one client's receipts")
    p.add_argument("--search", action="store_true",
                   help="per model, search the largest stream count with p99 latency under one hop")
    p.add_argument("--models", nargs="+", default=None, help="models for --search ('all': every shipped one)")
    p.add_argument("--start", type=int, default=1, help="--search: first stream count (doubled until it fails)")
    p.add_argument("--max-configs", type=int, default=8, help="--search: most runs per model")
    p.add_argument("--budget", type=float, default=240.0, help="--search: seconds of runs per model")
    args = p.parse_args()
    if args.search:
        import torch

        args.models = args.models or [args.model]
        print(f"device {args.device} · {args.clients} clients · {args.seconds:g} s per run · "
              f"torch threads {torch.get_num_threads()}", flush=True)
        return main_search(args)

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle = load_bundle(args.model)
    audio = read_audio(args.clip, bundle.frontend.sample_rate)
    rows = []
    print(f"model {bundle.name} · device {args.device} · {args.clients} clients · {args.seconds:g} s per row · "
          f"torch threads {torch.get_num_threads()}", flush=True)
    for n in args.streams:
        rows.append(run_config(bundle, audio, args, n))
        print(_row(rows[-1]), flush=True)
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
