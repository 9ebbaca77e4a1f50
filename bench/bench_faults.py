"""The fault figures of docs/security.md, measured against a real `streamtag serve` server on loopback.

    python bench/bench_faults.py [--model musicnn-msd] [--runs 3] [--flood-seconds 45]

Prints, each as a ratio against a baseline measured in the same run (medians of ``--runs`` where it says so):

- **admin reply**: seconds until a good ``add_source`` (a local file) is answered when two ``add_source`` of
  URLs that trickle their headers were sent before it on the same connection, vs the same request alone on an
  idle connection (median of runs). Before issue 18 the good reply waited for both opens (30 s at the default
  --open-timeout).
- **refused binary**: bytes per second the server reads from a client sending 1 MiB binary frames without
  ``audio_start`` (each answered ``bad_audio``), vs the bytes per second the audio budget lets one float32
  16 kHz stream send (--max-audio-rate 2). Before issue 18: 58 MB/s (one message each).
- **throttled flood**: a client sending 1 MiB frames of audio as fast as TCP lets it for ``--flood-seconds``
  (longer than the default keepalive's 20 s + 20 s), with the default keepalive: whether it is still connected
  and answered afterwards, its ``rate_limited`` notices, and the audio the engine took vs rate x time + burst.
- **reconnects**: 1,000 connect / subscribe / close cycles beside a playing source: cycles per second, and the
  server's tasks and threads after vs before.

The CPU is printed; figures taken while other work runs are noisy (the load average is printed too).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

SR_IN = 16000


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Server:
    """A WebsocketServer with its own runner and engine on an event loop in a thread."""

    def __init__(self, bundle: Any, **config: Any) -> None:
        from streamtag.live import LiveRunner
        from streamtag.pipeline import Engine
        from streamtag.publishers.websocket import ServerConfig, WebsocketServer

        self.runner = LiveRunner(Engine(bundle, device="cpu")).start()
        self.server = WebsocketServer(self.runner, ServerConfig(port=0, **config))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(30)
        self.url = f"ws://127.0.0.1:{self.server.port}/"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.runner.stop()


class Trickler:
    """Accepts connections and sends one byte of a never-ending header every 0.2 s."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/live"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                pass
            for c in self.conns:
                try:
                    c.send(b"H")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


def tone_wav(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * SR_IN)) / SR_IN
    pcm = (0.4 * np.sin(2 * np.pi * 330 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR_IN)
        w.writeframes(pcm.tobytes())
    return path


async def recv_until(ws: Any, pred: Any, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if pred(msg):
            return msg


async def admin_reply(url: str, token: str, wav: Path, slow_url: str | None, name: str) -> float:
    from websockets.asyncio.client import connect

    async with connect(f"{url}?token={token}") as ws:
        await ws.recv()
        if slow_url is not None:
            for k in range(2):
                await ws.send(json.dumps({"type": "add_source", "name": f"{name}-slow{k}", "uri": slow_url}))
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "add_source", "name": name, "uri": str(wav), "id": name}))
        await recv_until(ws, lambda m: m.get("id") == name)
        elapsed = time.monotonic() - t0
        await ws.send(json.dumps({"type": "remove_source", "name": name, "id": "rm"}))
        await recv_until(ws, lambda m: m.get("id") == "rm")
        return elapsed


async def refused_binary(url: str, seconds: float) -> float:
    from websockets.asyncio.client import connect

    frame = b"\0" * (1 << 20)
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        refused = 0

        async def reader() -> None:
            nonlocal refused
            while True:
                msg = json.loads(await ws.recv())
                refused += msg.get("code") == "bad_audio"

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await ws.send(frame)
        elapsed = time.monotonic() - t0
        task.cancel()
        return refused * len(frame) / elapsed


async def flood(srv: Server, seconds: float) -> dict:
    from websockets.asyncio.client import connect

    frame = (0.3 * np.sin(np.arange((1 << 18) - 16) / 9)).astype("<f4").tobytes()  # just under 1 MiB, 16 s
    out: dict = {"rate_limited": 0}
    # no keepalive of its own: its pings wait behind its own audio in the server, as its audio does
    async with connect(srv.url, max_size=None, ping_interval=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "audio_start", "stream": "flood", "sample_rate": SR_IN}))
        await recv_until(ws, lambda m: m["type"] == "audio_started")

        async def reader() -> dict:
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("code") == "rate_limited":
                    out["rate_limited"] += 1
                if msg.get("id") == "after":
                    return msg

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await ws.send(frame)  # waits while TCP holds the sender (a cancelled send would still queue its frame)
        elapsed = time.monotonic() - t0
        taken = srv.runner.engine.streams["flood"].ring.written / srv.runner.engine.sample_rate
        t1 = time.monotonic()
        await ws.send(json.dumps({"type": "subscribe", "streams": "*", "id": "after"}))
        try:
            await asyncio.wait_for(task, 300)
            out["answered_after_s"] = time.monotonic() - t1
        except Exception as e:  # closed: the figure says so
            out["answered_after_s"] = None
            out["error"] = f"{type(e).__name__}: {e}"
        out.update(elapsed=elapsed, taken=taken, close_code=ws.close_code)
    return out


async def reconnects(url: str, n: int) -> float:
    from websockets.asyncio.client import connect

    t0 = time.monotonic()
    for k in range(n):
        ws = await connect(url)
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
        await recv_until(ws, lambda m: m["type"] == "subscribed")
        if k % 2:
            ws.transport.abort()
        else:
            await ws.close()
    return n / (time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="musicnn-msd", help="bundle the server runs (default: musicnn-msd)")
    ap.add_argument("--runs", type=int, default=3, help="runs of the admin-reply measurement (default: 3)")
    ap.add_argument("--flood-seconds", type=float, default=45.0, help="length of the flood (default: 45)")
    ap.add_argument("--reconnects", type=int, default=1000, help="connect/close cycles (default: 1000)")
    args = ap.parse_args()
    from streamtag.registry import load_bundle

    print(f"CPU: {cpu_name()}; load average before: {os.getloadavg()[0]:.2f}")
    bundle = load_bundle(args.model)
    token = "bench-faults-token-0123456789"
    tmp = Path(tempfile.mkdtemp())
    wav = tone_wav(tmp / "good.wav", 30.0)
    srv = Server(bundle, token=token, allow_files=(tmp,), allow_private_urls=True)
    trickler = Trickler()
    try:
        alone, behind = [], []
        for r in range(args.runs):
            alone.append(asyncio.run(admin_reply(srv.url, token, wav, None, f"alone{r}")))
            behind.append(asyncio.run(admin_reply(srv.url, token, wav, trickler.url, f"behind{r}")))
        a, b = statistics.median(alone), statistics.median(behind)
        print(f"admin reply: {b * 1000:.0f} ms behind 2 trickling opens vs {a * 1000:.0f} ms alone "
              f"(ratio {b / a:.2f}; median of {args.runs}; --open-timeout {srv.server.config.open_timeout:g} s)")
    finally:
        trickler.close()
        srv.stop()

    srv = Server(bundle)
    try:
        rate = asyncio.run(refused_binary(srv.url, 5.0))
        budget = srv.server.config.audio_rate * SR_IN * 4
        print(f"refused binary: the server read {rate / 1e6:.2f} MB/s of frames without audio_start vs "
              f"{budget / 1e6:.3f} MB/s an audio stream may send (ratio {rate / budget:.2f})")
        threads, tasks = threading.active_count(), srv.call(_tasks())
        per_s = asyncio.run(reconnects(srv.url, args.reconnects))
        deadline = time.monotonic() + 10
        while srv.server.hub.clients and time.monotonic() < deadline:  # the last hang-ups being noticed
            time.sleep(0.05)
        print(f"reconnects: {args.reconnects} cycles at {per_s:.0f}/s; clients left {len(srv.server.hub.clients)}, "
              f"tasks {srv.call(_tasks())} vs {tasks} before, threads {threading.active_count()} vs {threads}")
        f = asyncio.run(flood(srv, args.flood_seconds))
        allowed = srv.server.config.audio_rate * f["elapsed"] + srv.server.config.audio_burst
        print(f"throttled flood: {f['elapsed']:.0f} s of 1 MiB frames (keepalive 20 s + 20 s): close code "
              f"{f['close_code']}, {f['rate_limited']} rate_limited notices, engine took {f['taken']:.1f} s of audio "
              f"vs {allowed:.1f} s allowed (ratio {f['taken'] / allowed:.2f}); next request answered after "
              f"{f['answered_after_s'] if f['answered_after_s'] is None else round(f['answered_after_s'], 1)} s"
              + (f" ({f['error']})" if "error" in f else ""))
    finally:
        srv.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


async def _tasks() -> int:
    return len(asyncio.all_tasks()) - 1


if __name__ == "__main__":
    sys.exit(main())
