"""Radio at scale, end to end: the most stations `streamtag serve` tags in real time on this machine.

A real Icecast on loopback serves mounts in three codecs (MP3 128k, AAC, Ogg Vorbis; each fed by an ffmpeg
that sends a clip encoded beforehand at real time: no encoder runs during the measurement). `streamtag serve --model MODEL --sources LIST` runs as a whole process with N
stations (the mounts in turn, each opened N/3 times: every station is its own connection, demuxer, decoder and
resampler), and one subscriber to "*" in another process counts updates after a warm-up:

    python bench/bench_radio.py                                  # radio, st-gru-msd, search, median of 3
    python bench/bench_radio.py --mode files --runs 1            # N local files played at real time instead
    python bench/bench_radio.py --streams 50 100 --runs 1        # fixed station counts, no search
    python bench/bench_radio.py --pushed                         # also bench_latency's pushed-audio limit
    python bench/bench_radio.py --pushed --pushed-feed push websocket   # ... fed in-process and over websockets
    python bench/bench_radio.py --reader threads                 # the baseline: a reader thread per station
    python bench/bench_radio.py --cost                           # CPU per station by codec, mux vs threads

Real time (all must hold): at least 95% of the expected updates (N / hop per second), p99 latency at most 1 s
(the update's audio arriving in the engine -> the subscriber's receipt: the engine's ``latency_ms`` plus the
delivery time from the update's ``wall`` stamp), no ring overruns, and a second client that connects in the middle
of the run gets its ``hello`` within 2 s. The search doubles N from ``--start`` until a run fails, bisects, then
runs the limit until it has ``--runs`` runs: their median decides (a failing median sends the search back to
bisect between it and the next lower count that passed).

Each row prints updates/s, p50/p99 latency, the serve process's CPU (with its decoder processes) per station in %
of one core, its RSS (with the decoder processes), the start-up time, when the start-up backlog had drained
("settled": the last update later than 1 s, in s after the subscriber connected; every station's first second,
and Icecast's burst-on-connect, arrive at once), the audio serve skipped to catch up in the stations' start-up
(``skipped``: its stats' ``skipped_s``, whole run; a skip inside the counted window, seen as ``t`` jumping by
more than a hop, fails the run like an overrun) and how long SIGTERM took. With ``--pushed``
it also runs ``bench_latency.py --search`` (audio pushed over the engine's own path, no decoding) for the same model
in the same session, judged by the same p99 limit (``--p99-ms 1000``; bench_latency's own default is one hop, 0.5 s
for st-gru-msd) after the same warm-up (``--warmup``, passed on), and prints the ratio radio/pushed of the sustained
updates/s. ``--pushed-feed`` picks how the pushed side is fed (bench_latency's ``--feed``): ``push`` (default) hands
the blocks to the engine in-process, the engine alone; ``websocket`` sends them from another process over a
websocket connection per stream, through the server's audio-in path, as an app pushes audio (its transport's CPU
counted, as radio's decoding is); with both, each gets its search and its ratio. The header names the CPU and the
load average before and after: figures taken on a busy machine are noisy.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CLIP = REPO / "examples" / "audio" / "kevin-macleod-vibe-ace.ogg"
CODECS = ("mp3", "aac", "ogg")
HELLO_LIMIT_S = 2.0
P99_LIMIT_MS = 1000.0
FEED_LOOPS = 30  # extra plays of CLIP in each mount's encoded feed
HEALTH_EVERY_S = 10  # serve's health summaries: two behind in a row make it warn, so a run of 25 + 20 s can see one


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


# -- the subscriber (a process of its own) ------------------------------------------------------------------------
def subscriber(port: int, warmup: float, seconds: float, out_path: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def late_hello() -> float:
        t0 = time.monotonic()
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=30, max_size=None) as ws:
            await ws.recv()
        return time.monotonic() - t0

    async def main() -> dict:
        ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=30, max_size=None)
        t0 = time.monotonic()
        hello = json.loads(await ws.recv())
        first_hello = time.monotonic() - t0
        hop = float(hello.get("hop_seconds") or 0.5)
        last_t: dict[str, float] = {}  # stream -> t of its previous update
        gap_s = 0.0  # audio skipped in the counted window (t jumping by more than a hop: catch-up or overrun)
        await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
        start = time.monotonic() + warmup
        end = start + seconds
        latencies: list[float] = []
        overruns: dict[str, tuple[int, int]] = {}  # stream -> (overruns at its first counted update, latest)
        counted = 0
        late_task: asyncio.Task[float] | None = None
        closed = ""
        dropped = 0
        parts: list[tuple[float, float]] = []  # (engine latency_ms, delivery ms) of each counted update
        last_late = 0.0  # s after connecting: the last update later than P99_LIMIT_MS
        late_at = start + seconds / 2
        while (now := time.monotonic()) < end:
            if late_task is None and now >= late_at:
                late_task = asyncio.ensure_future(late_hello())
            # wake for the late client's start too, not only for messages (an idle server sends none)
            until = end if late_task is not None else min(end, late_at)
            try:
                text = await asyncio.wait_for(ws.recv(), timeout=max(0.01, until - now))
            except asyncio.TimeoutError:
                continue
            except ConnectionClosed as e:  # e.g. the server judged this client too slow: a failed run, not a crash
                closed = f"{e.rcvd.code if e.rcvd else '?'} {e.rcvd.reason if e.rcvd else ''}".strip()
                break
            msg = json.loads(text)
            if time.monotonic() >= start:
                dropped += int(msg.get("dropped") or 0)  # updates the server's queue for this client discarded
            if msg.get("type") != "update":
                continue
            recv_wall = datetime.now().astimezone()
            delivery = (recv_wall - datetime.fromisoformat(msg["wall"])).total_seconds() * 1000.0
            engine_ms = float(msg.get("latency_ms") or 0.0)
            latency = engine_ms + max(0.0, delivery)
            if latency > P99_LIMIT_MS:  # the start-up backlog (every station's first burst at once) not drained yet
                last_late = time.monotonic() - t0
            prev_t, last_t[msg["stream"]] = last_t.get(msg["stream"]), float(msg["t"])
            if time.monotonic() < start:
                continue
            if prev_t is not None and msg["t"] - prev_t > 1.5 * hop:
                gap_s += msg["t"] - prev_t - hop
            counted += 1
            latencies.append(latency)
            parts.append((engine_ms, delivery))
            n_over = int(msg.get("overruns") or 0)  # cumulative per stream: count what the window added
            first, _ = overruns.get(msg["stream"], (n_over, n_over))
            overruns[msg["stream"]] = (first, n_over)
        try:
            hello_late = await late_task if late_task is not None else float("nan")
        except (OSError, asyncio.TimeoutError, ConnectionClosed):
            hello_late = float("inf")
        skipped = [0.0]  # the start-up catch-up over the whole run (serve's per-station skipped_s)
        with contextlib.suppress(OSError, asyncio.TimeoutError, ConnectionClosed):
            await ws.send(json.dumps({"type": "stats"}))
            stop_at = time.monotonic() + 10.0
            while time.monotonic() < stop_at:
                reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(0.01, stop_at - time.monotonic())))
                if reply.get("type") == "stats":
                    skipped = [float(f.get("skipped_s") or 0.0) for f in reply["streams"].values()]
                    break
        await ws.close()
        lat = np.asarray(latencies) if latencies else np.asarray([float("inf")])
        return {"updates": counted, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "overruns": int(sum(last - first for first, last in overruns.values())), "first_hello_s": first_hello,
                "late_hello_s": hello_late, "closed": closed, "settled_s": last_late,
                "dropped": dropped, "gap_s": gap_s, "skipped_s": sum(skipped),
                "skipped_stations": sum(1 for x in skipped if x > 0),
                "engine_p99_ms": float(np.percentile([e for e, _ in parts], 99)) if parts else float("inf"),
                "delivery_p99_ms": float(np.percentile([d for _, d in parts], 99)) if parts else float("inf")}

    Path(out_path).write_text(json.dumps(asyncio.run(main())))


# -- one configuration --------------------------------------------------------------------------------------------
def run_config(args: argparse.Namespace, n: int, urls: list[str], hop: float, tmp: Path) -> dict:
    from radio_fixtures import free_port

    stations = tmp / f"stations-{n}.txt"
    stations.write_text("".join(f"s{i:04d}={urls[i % len(urls)]}\n" for i in range(n)))
    port = free_port()
    t_start = time.monotonic()
    err_path = tmp / f"serve-{n}.err"
    env = dict(os.environ, STREAMTAG_SOURCE_READER=args.reader)
    with open(err_path, "w") as err:
        serve = subprocess.Popen(
            [sys.executable, "-m", "streamtag", *(["-v"] if args.keep_logs else []), "serve", "--model", args.model, "--port", str(port), "--sources",
             str(stations), "--device", args.device, "--health-every", str(HEALTH_EVERY_S)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env=env,
        )
    result: dict = {"streams": n, "expected_updates_per_s": n / hop}
    try:
        while "serving ws://" not in err_path.read_text():
            if serve.poll() is not None or time.monotonic() - t_start > 600:
                raise RuntimeError(f"serve did not start: {err_path.read_text()[-2000:]}")
            time.sleep(0.1)
        result["startup_s"] = time.monotonic() - t_start
        out = tmp / f"sub-{n}.json"
        sub = subprocess.Popen([sys.executable, __file__, "--client", str(port), str(args.warmup), str(args.seconds),
                                str(out)], cwd=REPO)
        time.sleep(args.warmup)
        pids = [serve.pid, *_children(serve.pid)]
        c0, t0 = cpu_seconds(pids), time.monotonic()
        spy = None
        if args.spy:  # a py-spy profile of the serve process (and its decoder processes) over the counted seconds
            mode = {"idle": ["--subprocesses", "--idle"], "cpu": ["--subprocesses"], "gil": ["--gil"]}[args.spy_mode]
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(serve.pid), *mode, "--threads", "--format", "raw", "--duration", str(int(args.seconds)), "--output",
                                    f"{args.spy}-{n}.txt", "--nonblocking"], stdout=subprocess.DEVNULL)
        time.sleep(args.seconds)
        c1, t1 = cpu_seconds(pids), time.monotonic()
        result["rss_mb"] = rss_mb(pids)
        result["rss_serve_mb"] = rss_mb(pids[:1])  # the rest: its decoder processes
        if spy is not None:
            spy.wait(60)
        sub.wait(args.seconds + 120)
        result["cpu_per_station_pct"] = 100.0 * (c1 - c0) / (t1 - t0) / n
        result["cpu_cores"] = (c1 - c0) / (t1 - t0)
        if out.exists():
            result.update(json.loads(out.read_text()))
            result["updates_per_s"] = result["updates"] / args.seconds
        else:  # the subscriber failed (its traceback is above): a failed run, not the end of the search
            result["closed"] = "subscriber failed"
    finally:
        t_stop = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(5)
        result["stop_s"] = time.monotonic() - t_stop
        warnings = [line for line in err_path.read_text().splitlines() if line.startswith("streamtag: warning: behind")]
        if warnings:  # serve's own verdict (its health summary, every HEALTH_EVERY_S s): the last one
            result["warning"] = warnings[-1].removeprefix("streamtag: warning: ")
        if args.keep_logs:  # serve's stderr (run with -v: its start, health lines and how its stop went)
            Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
            (Path(args.keep_logs) / f"serve-{n}-{int(time.time())}.err").write_text(err_path.read_text())
    result["sustained"] = sustains(result)
    return result


def sustains(r: dict) -> bool:
    return (not r.get("closed") and r.get("updates_per_s", 0.0) >= 0.95 * r["expected_updates_per_s"] and r.get("p99_ms", 1e9) <= P99_LIMIT_MS
            and r.get("overruns", 1) == 0 and r.get("gap_s", 0.0) == 0.0 and r.get("late_hello_s", 1e9) <= HELLO_LIMIT_S)


def row(r: dict) -> str:
    return (f"  {r['streams']:4d} stations: updates/s {r.get('updates_per_s', 0):7.1f} (expected "
            f"{r['expected_updates_per_s']:.1f}, dropped {r.get('dropped', 0)})  p50 {r.get('p50_ms', float('nan')):7.0f} ms  p99 "
            f"{r.get('p99_ms', float('nan')):7.0f} ms (engine {r.get('engine_p99_ms', float('nan')):.0f}, delivery "
            f"{r.get('delivery_p99_ms', float('nan')):.0f})  overruns {r.get('overruns', '?')}  CPU/station "
            f"{r.get('cpu_per_station_pct', float('nan')):5.2f}% ({r.get('cpu_cores', float('nan')):.2f} cores)  "
            f"RSS {r.get('rss_mb', float('nan')):6.0f} MB (serve {r.get('rss_serve_mb', float('nan')):.0f} + decoders "
            f"{r.get('rss_mb', float('nan')) - r.get('rss_serve_mb', float('nan')):.0f})  hello {r.get('late_hello_s', float('nan')):.2f} s  "
            f"start {r.get('startup_s', float('nan')):.1f} s  settled {r.get('settled_s', float('nan')):.0f} s  "
            f"skipped {r.get('skipped_s', float('nan')):.1f} s ({r.get('skipped_stations', 0)} stations; counted window "
            f"{r.get('gap_s', float('nan')):.1f} s)  "
            f"SIGTERM {r.get('stop_s', float('nan')):.1f} s"
            + ("  ok" if r["sustained"] else "  NOT real time")
            + (f"  (subscriber closed: {r['closed']})" if r.get("closed") else "")
            + (f"\n        serve warned: {r['warning']}" if r.get("warning") else ""))


def median_row(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in ("updates_per_s", "p50_ms", "p99_ms", "cpu_per_station_pct", "cpu_cores", "rss_mb", "late_hello_s",
                "startup_s", "stop_s", "settled_s", "rss_serve_mb", "engine_p99_ms", "delivery_p99_ms", "skipped_s"):
        out[key] = float(np.median([r.get(key, float("nan")) for r in runs]))
    out["overruns"] = max(r.get("overruns", 0) for r in runs)
    out["gap_s"] = max(r.get("gap_s", 0.0) for r in runs)
    out["skipped_stations"] = int(np.median([r.get("skipped_stations", 0) for r in runs]))
    out.pop("warning", None)  # one run's words, not the median's
    out["sustained"] = sustains(out)
    return out


def search(args: argparse.Namespace, urls: list[str], hop: float, tmp: Path) -> tuple[dict | None, list[dict]]:
    rows: list[dict] = []

    def run(n: int, note: str = "") -> dict:
        r = run_config(args, n, urls, hop, tmp)
        rows.append(r)
        print(row(r) + note, flush=True)
        return r

    lo, hi, n = 0, None, args.start
    deadline = time.monotonic() + args.budget
    while time.monotonic() < deadline and n <= args.max:
        if run(n)["sustained"]:
            lo = n
        else:
            hi = n
        if hi is None:
            n *= 2
        elif hi - lo <= max(5, lo // 10):
            break
        else:
            n = (lo + hi) // 2
    best = None
    while lo > 0:
        runs = [r for r in rows if r["streams"] == lo]
        while len(runs) < args.runs:
            runs.append(run(lo, "  (confirming)"))
        med = median_row(runs)
        if med["sustained"]:
            best = med
            break
        # its median failed: the limit lies between the next lower count that passed and this one; bisect that
        # gap again (single runs), then confirm what it finds, rather than falling back to the lower count
        hi = lo
        lo = max((r["streams"] for r in rows if r["sustained"] and r["streams"] < hi), default=0)
        while lo > 0 and hi - lo > max(5, lo // 10):
            n = (lo + hi) // 2
            if run(n, "  (after a failed median)")["sustained"]:
                lo = n
            else:
                hi = n
    return best, rows


class _NullFeed:
    """A pooled source's feed that only counts (the cost model leaves the engine out)."""

    def __init__(self) -> None:
        self.samples = 0

    def push(self, samples: np.ndarray, arrived: float | tuple[float, float] | None = None) -> None:
        self.samples += samples.shape[0]

    def title(self, title: str | None) -> None:
        pass

    def event(self, kind: str, detail: str) -> None:
        pass

    def end(self, error: object) -> None:
        pass

    def backlog(self) -> float:
        return 0.0


def _parts(clip: Path, repeats: int = 3) -> tuple[float, float]:
    """% of one core per station for demux + decode (PyAV) and downmix + resample (soxr HQ) of ``clip``: the least
    of ``repeats`` passes each (a first pass also pays for page faults and cold caches)."""
    import av

    from streamtag.audio import Resampler
    from streamtag.sources.base import frame_to_mono

    decode = []
    for _ in range(repeats):
        with av.open(str(clip)) as container:
            t0 = time.process_time()
            for _frame in container.decode(audio=0):  # each frame let go at once, as the mux loop's fifo does
                pass
            decode.append(time.process_time() - t0)
    with av.open(str(clip)) as container:
        rate = container.streams.audio[0].rate
        mono = np.concatenate([frame_to_mono(f) for f in container.decode(audio=0)])  # the stations' own downmix
    seconds = mono.shape[0] / rate
    resample = []
    for _ in range(repeats):
        t0 = time.process_time()
        r = Resampler(sample_rate=rate, target_rate=16000)
        for i in range(0, mono.shape[0], 4410):
            r.push(mono[i:i + 4410])
        resample.append(time.process_time() - t0)
    return 100.0 * min(decode) / seconds, 100.0 * min(resample) / seconds


def _layer_cost(url: str, n: int, seconds: float, mux: bool) -> tuple[float, float, float, str]:
    """The whole source layer with ``n`` real connections to ``url``: % of one core per station in the decoder
    processes and in this process (the receiver), s of audio per s per station, and the worker's reader."""
    from streamtag.sources.pool import SourcePool

    with SourcePool(16000, mux=mux) as pool:
        feeds, readers = [], set()
        for _ in range(n):
            src = pool.open(url, 16000)
            readers.add(str(src.info.get("reader", "thread")))
            feed = _NullFeed()
            src.start(feed, None)
            feeds.append(feed)
        time.sleep(3.0)
        pids = pool.pids()
        c0, p0, t0 = cpu_seconds(pids), time.process_time(), time.monotonic()
        s0 = sum(f.samples for f in feeds)
        time.sleep(seconds)
        c1, p1, t1 = cpu_seconds(pids), time.process_time(), time.monotonic()
        s1 = sum(f.samples for f in feeds)
    wall = t1 - t0
    return (100.0 * (c1 - c0) / wall / n, 100.0 * (p1 - p0) / wall / n, (s1 - s0) / 16000 / n / wall,
            "+".join(sorted(readers)))


def cost_model(args: argparse.Namespace, urls: dict[str, str], clips: dict[str, Path]) -> None:
    """CPU per station by codec: the source layer alone (decoder processes + this process's receiver), and its
    parts measured in-process on the same audio: demux + decode (PyAV), downmix + resample (soxr HQ). Each reader
    in ``args.readers`` is measured in the same run: ``threads`` (a reader thread per station, the baseline) and
    ``mux`` (the worker's selector loop for live MP3/AAC; Ogg stays on threads)."""
    n = args.cost_stations
    print(f"\ncost model: {n} stations per codec, {args.seconds:g} s each (% of one core per station)")
    print("codec  reader   source layer  (decoder procs + receiver)   demux+decode   downmix+resample   "
          "network+ICY+IPC (rest)")
    for codec, url in urls.items():
        dec, res = _parts(clips[codec])
        for reader in args.readers:
            procs, receiver, audio_s, used = _layer_cost(url, n, args.seconds, reader == "mux")
            total = procs + receiver
            print(f"{codec:5s}  {reader:7s} {total:8.3f}%      ({procs:.3f}% + {receiver:.3f}%)          "
                  f"{dec:8.3f}%        {res:8.3f}%          {max(0.0, total - dec - res):8.3f}%   "
                  f"({audio_s:.2f} s of audio per s per station; read by: {used}; load {loadavg()})", flush=True)


def pushed_capacity(args: argparse.Namespace, tmp: Path, feed: str) -> dict | None:
    out = tmp / f"pushed-{feed}.json"
    cmd = [sys.executable, str(REPO / "bench" / "bench_latency.py"), "--search", "--models", args.model, "--device",
           args.device, "--clients", "1", "--seconds", str(args.seconds), "--runs", str(args.runs), "--json", str(out),
           "--p99-ms", str(P99_LIMIT_MS), "--feed", feed,  # radio's own real-time limit: both sides judged alike
           "--warmup", str(args.warmup),  # and the same time to settle after their start
           # bench_latency's default budget (400 s) is ~6 runs of this length: enough for the bisection to end
           "--budget", str(12 * (args.warmup + args.seconds + 10)),
           # its default start (1 stream, x4) spends 4 runs of the budget and of its 10 configurations below 64
           "--start", str(args.pushed_start), "--max-configs", "16"]
    print("pushed audio (bench_latency --search):", " ".join(cmd[2:]), flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        return None
    res = json.loads(out.read_text())[0]
    med = res.get("median") or {}
    return {"feed": feed, "max_streams": res["max_streams"], "updates_per_s": res["updates_per_s"],
            "cpu_ms_per_update": med.get("cpu_ms_per_update")}


def ceiling(engine_pct: float, floor_pct: float) -> float:
    """The most radio/pushed can be when the pushed engine costs ``engine_pct`` of a core per stream and a station
    costs that plus ``floor_pct`` (its decoding and resampling alone): both sides get the same cores, so their
    capacities stand in the inverse ratio of their costs per stream."""
    return engine_pct / (engine_pct + floor_pct)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        subscriber(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="st-gru-msd")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=("radio", "files"), default="radio")
    p.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    p.add_argument("--streams", type=int, nargs="+", default=None, help="fixed station counts instead of a search")
    p.add_argument("--start", type=int, default=25, help="search: first station count (x2 until a run fails)")
    p.add_argument("--max", type=int, default=1000, help="search: largest station count tried")
    p.add_argument("--budget", type=float, default=1200.0, help="search: seconds of runs before confirming")
    p.add_argument("--runs", type=int, default=3, help="runs whose median decides")
    # 25 s: issue 23's own protocol. Every station connects within a few seconds of the start and hands the engine
    # its first second at once; near capacity that backlog takes 10-20 s to drain (10 s warm-ups failed runs that
    # then sustained more than the expected updates/s, i.e. were still catching up).
    p.add_argument("--warmup", type=float, default=25.0, help="s after the subscriber connects before counting")
    p.add_argument("--seconds", type=float, default=20.0, help="s counted per run")
    p.add_argument("--pushed", action="store_true", help="also measure bench_latency's pushed-audio capacity")
    p.add_argument("--pushed-feed", nargs="+", choices=("push", "websocket"), default=["push"],
                   help="--pushed: how the pushed streams are fed (bench_latency --feed): push (in-process, the "
                        "engine alone) and/or websocket (another process, a connection per stream)")
    p.add_argument("--pushed-start", type=int, default=64,
                   help="--pushed: the pushed search's first stream count (bench_latency --start; x4 until it fails)")
    p.add_argument("--cost", action="store_true", help="only the cost model: CPU per station by codec")
    p.add_argument("--cost-stations", type=int, default=60, help="--cost: stations per codec")
    p.add_argument("--reader", choices=("mux", "threads"), default="mux",
                   help="serve's network reader: the decoder processes' mux loop, or a thread per station (baseline)")
    p.add_argument("--readers", nargs="+", default=["threads", "mux"], choices=("threads", "mux"),
                   help="--cost: the network readers compared in the same run (threads = the baseline)")
    p.add_argument("--json", default=None)
    p.add_argument("--keep-logs", default=None, help="keep serve's stderr (run with -v) in this folder")
    p.add_argument("--spy", default=None, help="py-spy raw profiles of serve to SPY-N.txt (needs py-spy on PATH)")
    p.add_argument("--spy-mode", choices=("idle", "cpu", "gil"), default="idle",
                   help="--spy: every thread's samples, idle included (with the decoder processes); on-CPU samples "
                        "only; or only the thread holding serve's GIL (what serialises the engine)")
    args = p.parse_args()
    # a SIGTERM (a timeout, a kill) unwinds like Ctrl-C, so that Icecast, its feeders and serve are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from radio_fixtures import encode, feed, icecast_server, stop_process

    from streamtag.pipeline import Engine
    from streamtag.registry import load_bundle

    hop = Engine(load_bundle(args.model), device="cpu").hop_seconds
    print(f"{cpu_model()} · {os.cpu_count()} cores · load average {loadavg()} · model {args.model} (hop {hop:g} s) · "
          f"mode {args.mode} · reader {args.reader} · {args.warmup:g} s warm-up + {args.seconds:g} s counted per run",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-radio-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        urls: list[str] = []
        if args.mode == "radio":
            ice = stack.enter_context(icecast_server(tmp, max_clients=max(args.max, args.cost_stations) + 16))
            # Each mount's audio is encoded once, here: the feeders only pace packets to Icecast, so the stations'
            # encoders (0.06 of a core for the three, CPU a monitoring host does not spend) are not counted against
            # serve. ffmpeg's -re paces the first pass of a looped input only: a long input (FEED_LOOPS plays of the
            # clip, ~31 min) keeps every feeder at real time.
            encoders = {codec: encode(CLIP, codec, tmp / f"feed-{codec}.{codec}", loops=FEED_LOOPS)
                        for codec in args.codecs}
            for enc in encoders.values():  # a bench stopped while they encode leaves none running
                stack.callback(stop_process, enc)
            for codec, enc in encoders.items():
                if enc.wait() != 0:
                    raise RuntimeError(f"ffmpeg could not encode the {codec} feed")
                stack.enter_context(feed(ice.port, f"/{codec}", tmp / f"feed-{codec}.{codec}", codec, encoded=True))
                urls.append(f"{ice.url}/{codec}")
            print(f"icecast on port {ice.port}: mounts {', '.join('/' + c for c in args.codecs)}", flush=True)
        in_process = args.pushed and args.mode == "radio" and "push" in args.pushed_feed  # the ceiling needs it
        if args.mode == "files" or args.cost or in_process:  # in_process: the decoding floor's clips
            files = []
            for codec in args.codecs:
                path = tmp / f"clip.{codec}"
                subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "9", "-i", str(CLIP), "-vn", "-ac", "2", "-ar",
                                "44100", *({"mp3": ["-b:a", "128k"], "aac": ["-b:a", "96k"], "ogg": []}[codec]),
                                str(path)], check=True)
                files.append(path)
            if args.mode == "files":
                urls = [str(f) for f in files]
        if args.cost:
            cost_model(args, dict(zip(args.codecs, urls)), dict(zip(args.codecs, files)))
            return 0
        rows: list[dict] = []
        best: dict | None = None
        if args.streams:
            for n in args.streams:
                runs = [run_config(args, n, urls, hop, tmp) for _ in range(args.runs)]
                for r in runs:
                    print(row(r), flush=True)
                rows += runs
                med = median_row(runs)
                print(row(med) + f"  median of {len(runs)}", flush=True)
                if med["sustained"] and (best is None or n > best["streams"]):
                    best = med
        else:
            best, rows = search(args, urls, hop, tmp)
        pushed = [res for feed in args.pushed_feed if (res := pushed_capacity(args, tmp, feed)) is not None] \
            if args.pushed else []
        # the decoding floor (below), measured while the clips are still here, on a machine the runs left quiet
        floor = float(np.mean([sum(_parts(f)) for f in files])) if in_process else 0.0
    print(f"\nload average after: {loadavg()}")
    if best is None:
        print(f"{args.mode}: no station count was real time")
    else:
        print(f"{args.mode}: {best['streams']} stations in real time (median of {args.runs}): "
              f"{best['updates_per_s']:.1f} updates/s, p50 {best['p50_ms']:.0f} ms, p99 {best['p99_ms']:.0f} ms, "
              f"CPU {best['cpu_per_station_pct']:.2f}% of a core per station, RSS {best['rss_mb']:.0f} MB")
    for res in pushed:
        if best and res["updates_per_s"]:
            ratio = f"{best['updates_per_s'] / res['updates_per_s']:.3f}"  # 0.797 is not 0.80
        else:  # a 0.00 would read as a measurement; run lower --streams
            ratio = f"not computed: no {args.mode} count of this run was real time"
        print(f"pushed audio (--feed {res['feed']}): {res['max_streams']} streams, {res['updates_per_s']:.1f} "
              f"updates/s · {args.mode}/pushed = {ratio}")
    engine = next((r for r in pushed if r["feed"] == "push" and r.get("cpu_ms_per_update")), None)
    if engine is not None and in_process:
        # What no source layer can beat on this CPU: a station costs at least the engine's share plus FFmpeg's
        # decoding and soxr's resampling of its audio (measured here, in-process, with no network or Python around
        # them; the mounts' mix). Icecast, its feeders and the subscriber, which share these cores, are left out.
        engine_pct = engine["cpu_ms_per_update"] / hop / 10.0  # ms per update x updates per s -> % of a core
        print(f"ceiling: the pushed engine costs {engine_pct:.3f}% of a core per stream "
              f"({engine['cpu_ms_per_update']:.2f} ms per update); decoding + resampling alone {floor:.3f}% per "
              f"station (the mounts' mix) -> radio/pushed (in-process) can reach at most "
              f"{ceiling(engine_pct, floor):.2f} on this CPU by cost (a side that collapses short of its CPU, as "
              f"pushed streams near their limit can, moves the measured ratio past it)"
              + (f"; this run's radio cost {best['cpu_per_station_pct']:.3f}% per station, "
                 f"{best['cpu_per_station_pct'] - engine_pct:.3f}% above the engine's" if best else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"best": best, "rows": rows, "pushed": pushed}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
