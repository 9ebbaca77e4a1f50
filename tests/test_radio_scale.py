"""Many sources at once (issue 23): real `streamtag` processes with a hundred sources, stopped by SIGTERM/SIGINT;
station lists (`--sources FILE`); the per-station `stats` request; a dead station that keeps retrying while the
others play. Everything is real: the CLI in a subprocess, decoder processes, websocket clients, files decoded by
FFmpeg."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_fixtures import free_port, hangup_default, tiny_bundle, write_tone_wav

from streamtag.errors import ConfigError
from streamtag.sources.stations import parse_station_list, read_station_list

REPO = Path(__file__).resolve().parents[1]
STOP_BOUND_S = 10.0  # generous for a loaded CI machine; bench/bench_radio.py measures the real figure (< 3 s)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "model"
    tiny_bundle(path)
    return path


@pytest.fixture(scope="module")
def station_list(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stations")
    write_tone_wav(folder / "tone.wav", seconds=120.0, sr=22050)
    lines = ["# a hundred stations, all the same file, each decoded on its own"]
    lines += [f"s{i:03d}=tone.wav" for i in range(100)]
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


async def _subscribe_until_updates(port: int, proc: subprocess.Popen[str], n_updates: int,
                                   timeout: float = 120.0) -> tuple[dict, object]:
    from websockets.asyncio.client import connect

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=10, max_size=None)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError("serve never listened") from None
            await asyncio.sleep(0.1)
    hello = json.loads(await ws.recv())
    await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
    seen = 0
    while seen < n_updates:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(1.0, deadline - time.monotonic())))
        seen += msg.get("type") == "update"
    return hello, ws


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_with_a_hundred_sources_and_a_subscriber_stops_promptly(model, station_list, sig):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "serve", "--model", str(model), "--port", str(port),
         "--sources", str(station_list), "--device", "cpu", "--health-every", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )

    async def scenario() -> tuple[dict, int | None, float, list[int]]:
        hello, ws = await _subscribe_until_updates(port, proc, n_updates=200)
        await asyncio.sleep(1.0)  # a health summary or two (every 0.5 s) under load
        workers = _children(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(sig)
        try:
            while True:  # updates until the close frame
                await asyncio.wait_for(ws.recv(), timeout=STOP_BOUND_S)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - ConnectionClosed expected
            pass
        close_code = ws.close_code  # type: ignore[attr-defined]
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, STOP_BOUND_S)
        return hello, close_code, time.monotonic() - t0, workers

    try:
        hello, close_code, took, workers = asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    err = proc.stderr.read() if proc.stderr else ""
    assert len(hello["streams"]) == 100
    assert proc.returncode == 0, err
    assert close_code == 1001  # "going away"
    assert took < STOP_BOUND_S
    assert workers and not [w for w in workers if _alive(w)]  # the decoder processes are gone too
    assert "Traceback" not in err and "100 sources" in err
    assert "streamtag: health: 100 stations: " in err  # --health-every reaches the process's summaries


def test_serve_keeps_retrying_a_dead_station_while_the_others_play_and_reports_stats(model, tmp_path):
    from websockets.asyncio.client import connect

    wav = write_tone_wav(tmp_path / "ok.wav", seconds=60.0)
    dead = f"http://127.0.0.1:{free_port()}/gone.mp3"  # nothing listens there
    (tmp_path / "list.m3u").write_text(f"#EXTM3U\n#EXTINF:-1,Good Station\n{wav}\n#EXTINF:-1,Dead one\n{dead}\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "serve", "--model", str(model), "--port", str(port),
         "--sources", str(tmp_path / "list.m3u"), "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )

    async def scenario() -> tuple[dict, dict]:
        hello, ws = await _subscribe_until_updates(port, proc, n_updates=4)
        stats: dict = {}
        for _ in range(40):  # the decoder process sends its figures once a second
            await ws.send(json.dumps({"type": "stats", "id": 7}))  # type: ignore[attr-defined]
            while True:
                msg = json.loads(await ws.recv())  # type: ignore[attr-defined]
                if msg.get("type") == "stats":
                    break
            stats = msg
            if stats["streams"].get("Good-Station", {}).get("bytes_in", 0) > 0:
                break
            await asyncio.sleep(0.25)
        await ws.close()  # type: ignore[attr-defined]
        async with connect(f"ws://127.0.0.1:{port}/") as ws2:  # a bad request: one error, same connection
            await ws2.recv()
            await ws2.send(json.dumps({"type": "stats", "streams": ["nope"]}))
            error = json.loads(await ws2.recv())
        return stats, error

    def scrape() -> tuple[str, dict[str, float]]:  # what Prometheus would read
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            kind, text = r.headers["Content-Type"], r.read().decode()
        return kind, {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                      for line in text.splitlines() if line and not line.startswith("#")}

    try:
        stats, error = asyncio.run(scenario())
        kind, metrics = scrape()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_BOUND_S)
    assert proc.returncode == 0
    good, gone = stats["streams"]["Good-Station"], stats["streams"]["Dead-one"]
    assert stats["id"] == 7
    assert good["state"] == "live" and good["bytes_in"] > 0 and good["updates"] > 0 and good["lag_s"] >= 0
    assert gone["state"] == "reconnecting" and gone["updates"] == 0
    assert error["type"] == "error" and error["code"] == "unknown_stream"
    # /metrics tells the same story in Prometheus' format
    assert kind.startswith("text/plain; version=0.0.4")
    assert metrics['streamtag_stations{state="live"}'] == 1 and metrics['streamtag_stations{state="reconnecting"}'] == 1
    assert metrics['streamtag_station_up{station="Good-Station"}'] == 1
    assert metrics['streamtag_station_up{station="Dead-one"}'] == 0
    assert metrics['streamtag_station_bytes_total{station="Good-Station"}'] >= good["bytes_in"]
    assert metrics['streamtag_station_updates_total{station="Good-Station"}'] >= good["updates"] > 0
    assert metrics['streamtag_station_updates_total{station="Dead-one"}'] == 0
    assert metrics["streamtag_updates_total"] >= good["updates"] and metrics["streamtag_cpu_seconds_total"] > 0
    buckets = [v for k, v in metrics.items() if k.startswith("streamtag_update_latency_seconds_bucket")]
    assert len(buckets) == 10 and buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == metrics["streamtag_update_latency_seconds_count"] > 0
    assert metrics["streamtag_update_latency_seconds_sum"] > 0


@pytest.mark.parametrize("chunked", [False, True], ids=["mux-loop", "reader-thread"])
def test_serve_lists_every_station_at_once_and_trims_the_burst_of_the_ones_that_connect_later(model, tmp_path,
                                                                                             chunked):
    """A station list of 3 stations on a server that holds every request until the test lets it answer: serve
    listens and its first hello lists all 3 without waiting for them to connect. Once the server answers, each
    sends 20 s of audio at once (Icecast's burst-on-connect, made long) and then plays at real time: the stations
    play, and the burst reaches the engine as its newest quarter second only (their updates' ``t``, seconds of
    audio heard, stays near the seconds since they connected instead of jumping past 20). A chunked body is read
    by a thread of its own instead of the mux loop: the same holds."""
    import threading

    from radio_fixtures import ScriptedServer, music_clip

    clip = music_clip(tmp_path / "radio.mp3", seconds=60.0, codec_args=["-c:a", "libmp3lame", "-b:a", "128k"])
    data = clip.read_bytes()
    per_s = len(data) / 60.0
    release = threading.Event()

    def body(part: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(part), part) if chunked else part

    def handler(conn, index, stop) -> None:
        if not release.wait(30) or stop.is_set():
            return
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked
                else b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n")
        conn.sendall(head + body(data[: int(20 * per_s)]))
        pos, chunk = int(20 * per_s), int(per_s / 4)
        while pos < len(data) and not stop.wait(0.25):  # then real time
            conn.sendall(body(data[pos : pos + chunk]))
            pos += chunk

    names = ["one", "two", "three"]
    with ScriptedServer(handler) as radio:
        (tmp_path / "list.txt").write_text("".join(f"{n}={radio.url(f'/{n}.mp3')}\n" for n in names))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamtag", "serve", "--model", str(model), "--port", str(port),
             "--sources", str(tmp_path / "list.txt"), "--device", "cpu"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )

        async def scenario() -> tuple[dict, dict[str, list[float]], float]:
            from websockets.asyncio.client import connect

            deadline = time.monotonic() + 60
            while True:
                try:
                    ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=10, max_size=None)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, "serve never listened"
                    await asyncio.sleep(0.05)
            hello = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
            release.set()
            answered = time.monotonic()
            heard: dict[str, list[float]] = {n: [] for n in names}
            while time.monotonic() < answered + 8.0:
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=1.0))
                except TimeoutError:
                    continue
                if msg.get("type") == "update":
                    heard[msg["stream"]].append(msg["t"])
            await ws.close()
            return hello, heard, time.monotonic() - answered

        try:
            hello, heard, waited = asyncio.run(scenario())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(STOP_BOUND_S)
    assert sorted(s["name"] for s in hello["streams"]) == sorted(names)  # before any of them had connected
    assert radio.connections >= 3
    for name in names:
        assert heard[name], f"{name} never played: {heard}"
        assert max(heard[name]) < waited + 2.0, f"{name}: the burst went through: {heard[name]}"
    assert proc.returncode == 0


@pytest.mark.parametrize("sig, code, listed", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, True),
                                                (signal.SIGHUP, 129, False)], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_stream_with_a_hundred_stations_ends_on_ctrl_c_sigterm_or_a_hangup_with_summaries(model, station_list, sig,
                                                                                         code, listed):
    """With a station list, SIGHUP reloads it (the next test); given as URLs, a hangup ends the run as Ctrl-C."""
    tone = str(station_list.parent / "tone.wav")
    urls = ["--sources", str(station_list)] if listed else [tone] * 100
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "stream", "--model", str(model), *urls,
         "--format", "jsonl", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=hangup_default,
    )
    assert proc.stdout is not None
    for _ in range(300):  # updates are flowing from many stations
        if not proc.stdout.readline():
            break
    workers = _children(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(sig)  # SIGHUP: the terminal closed; the same clean end as Ctrl-C
    try:
        _, err = proc.communicate(timeout=STOP_BOUND_S * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - t0 < STOP_BOUND_S * 3
    assert proc.returncode == code, err
    assert "Traceback" not in err
    prefix = "streamtag: s0" if listed else f"streamtag: {tone}"
    assert sum(line.startswith(prefix) and "stopped" in line for line in err.splitlines()) == 100, err[-3000:]
    assert not [w for w in workers if _alive(w)]


def test_stream_reloads_its_station_list_on_sighup_and_keeps_the_rest_playing(model, tmp_path):
    """`stream --sources` as `serve --sources`: SIGHUP applies the list's changes; the untouched station plays on
    (its audio clock never restarts), a removed one's summary says why, a bad list changes nothing, and this
    holds under nohup too (SIGHUP ignored by the parent: an operator's `kill -HUP` still reloads)."""
    import threading

    from radio_fixtures import ScriptedServer, music_clip

    data = music_clip(tmp_path / "radio.mp3", seconds=90.0, codec_args=["-c:a", "libmp3lame", "-b:a", "128k"]).read_bytes()
    write_tone_wav(tmp_path / "short.wav", seconds=3.0)  # a file: `stream` reads it flat out, so it soon ends

    def handler(conn, index, stop) -> None:  # a radio station: 90 s of MP3 at real time
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n")
        pos, chunk = 0, len(data) // 360
        while pos < len(data) and not stop.wait(0.25):
            conn.sendall(data[pos : pos + chunk])
            pos += chunk

    radio = ScriptedServer(handler)
    radio.__enter__()
    stations = tmp_path / "stations.txt"
    stations.write_text(f"keep={radio.url('/keep')}\ngoes={radio.url('/goes')}\nmoves={radio.url('/moves')}\n"
                        "short=short.wav\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "stream", "--model", str(model), "--sources", str(stations),
         "--format", "jsonl", "--device", "cpu", "--health-every", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # as under nohup
    )
    assert proc.stdout is not None and proc.stderr is not None
    updates: list[tuple[float, dict]] = []
    err_lines: list[str] = []
    readers = [threading.Thread(target=lambda: updates.extend((time.monotonic(), json.loads(x)) for x in proc.stdout)),
               threading.Thread(target=lambda: err_lines.extend(proc.stderr))]
    for r in readers:
        r.daemon = True
        r.start()

    def wait_for(what, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert proc.poll() is None, "".join(err_lines)
            assert time.monotonic() < deadline, f"timed out; stderr: {''.join(err_lines)[-2000:]}"
            time.sleep(0.05)

    def streams_since(t: float) -> set[str]:
        return {u["stream"] for at, u in list(updates) if at > t and u.get("type") == "update"}

    try:
        wait_for(lambda: streams_since(0) >= {"keep", "goes", "moves", "short"})
        time.sleep(4.0)  # the 3 s station has ended
        stations.write_text(f"keep={radio.url('/keep')}\nmoves={radio.url('/moved')}\nnew={radio.url('/new')}\n"
                            "short=short.wav\n")
        t_reload = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reloaded stations.txt" in x for x in err_lines))
        t_applied = time.monotonic()
        wait_for(lambda: streams_since(t_applied + 0.5) >= {"keep", "moves", "new"})
        stations.write_text(f"keep={radio.url('/keep')}\nbad name={radio.url('/bad')}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload:" in x and "line 2" in x for x in err_lines))
        t_bad = time.monotonic()
        wait_for(lambda: streams_since(t_bad + 0.5) >= {"keep", "moves", "new"})  # the bad list changed nothing
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for r in readers:
            r.join(10)
        radio.__exit__(None, None, None)
    err = "".join(err_lines)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "reloaded stations.txt: 1 added, 1 removed, 1 changed, 1 restarted, 1 unchanged" in err, err
    assert "stations keep running" in err
    assert not streams_since(t_applied + 1.0) & {"goes"}  # removed: no update after the reload
    keep_t = [u["t"] for _, u in updates if u.get("type") == "update" and u["stream"] == "keep"]
    assert keep_t == sorted(keep_t) and keep_t[-1] > 6.0  # one run, never restarted
    assert any(b"GET /moved " in r for r in radio.requests) and any(b"GET /new " in r for r in radio.requests)
    moves_t = [u["t"] for at, u in updates if u.get("type") == "update" and u["stream"] == "moves" and at > t_reload]
    assert moves_t and min(moves_t) < max(keep_t) - 3.0  # reopened: its clock started again
    summaries = {x.split(":")[1].strip(): x for x in err_lines if x.startswith("streamtag: ") and " tagged, " in x}
    assert "removed from the station list" in summaries["goes"], summaries
    assert summaries["keep"].rstrip().endswith("stopped")
    # serve's health line, every 0.5 s here: the three radio stations live, then the reload's three
    health = [x for x in err_lines if x.startswith("streamtag: health: ")]
    assert any(x.startswith("streamtag: health: 3 stations: 3 live, 0 reconnecting") and " updates/s" in x
               for x in health), health[-5:]


def _catches_sighup(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGHUP (Linux /proc: bit 0 of SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & 1)
    return False


@pytest.mark.parametrize("command", ["serve", "stream"])
def test_a_sighup_during_the_start_is_one_reload_once_the_stations_play(model, tmp_path, command):
    """`systemctl reload` right after `start`: the SIGHUP arrives while the model loads, before the reload
    handler exists. It must not kill the process (SIGHUP's default action); it is applied once the run goes."""
    write_tone_wav(tmp_path / "tone.wav", seconds=60.0)
    stations = tmp_path / "stations.txt"
    stations.write_text("one=tone.wav\n")
    args = (["serve", "--port", str(free_port()), "--health-every", "0"] if command == "serve"
            else ["stream", "--format", "jsonl"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", *args, "--model", str(model), "--sources", str(stations), "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=hangup_default,
    )
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 30
        # the command line counts SIGHUPs from its first steps, before it loads torch (whose load is surely
        # before any reload handler): a process that loads torch and catches no SIGHUP yet would die of it
        while not _catches_sighup(proc.pid) and "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGHUP)  # two during the start: one reload
        lines: list[str] = []
        while not any("reloaded stations.txt" in x for x in lines):
            line = proc.stderr.readline()
            assert line, f"{command} ended: {''.join(lines)}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=STOP_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = "".join(lines) + rest
    assert proc.returncode == (0 if command == "serve" else 143), err
    assert err.count("reloaded stations.txt") == 1, err
    assert "reloaded stations.txt: 0 added, 0 removed, 0 changed, 0 restarted, 1 unchanged" in err, err
    assert "Traceback" not in err


# -- station lists ------------------------------------------------------------------------------------------------
def test_station_lists_in_three_forms(tmp_path):
    plain = parse_station_list("# c\njazz=http://r.example/jazz.mp3\n\nnews=https://r.example:8000/n.aac\n",
                               label="L", folder=tmp_path)
    assert plain == [("jazz", "http://r.example/jazz.mp3"), ("news", "https://r.example:8000/n.aac")]
    m3u = parse_station_list("#EXTM3U\n#EXTINF:-1,Jazz FM (Paris)\nhttp://a.example/j\nhttp://b.example/live.mp3\n"
                             "#EXTINF:-1,Jazz FM (Paris)\nhttp://c.example/j2\nlocal.ogg\n",
                             label="L", folder=tmp_path)
    assert m3u == [("Jazz-FM-Paris", "http://a.example/j"), ("b.example-live.mp3", "http://b.example/live.mp3"),
                   ("Jazz-FM-Paris-2", "http://c.example/j2"), ("local", str(tmp_path / "local.ogg"))]
    pls = parse_station_list("[playlist]\nFile1=http://a.example/x\nTitle1=One\nFile2=http://b.example/y\n"
                             "NumberOfEntries=2\n", label="L", folder=tmp_path)
    assert pls == [("One", "http://a.example/x"), ("b.example-y", "http://b.example/y")]


@pytest.mark.parametrize("text, line, words", [
    ("ok=http://a.example/x\nbad name=http://b.example/y\n", 2, "stream name"),
    ("ok=http://a.example/x\nok=http://b.example/y\n", 2, "given twice"),
    ("a=http://a.example/x\n\njust some words\n", 3, "neither NAME=URL nor a URL"),
    ("a=\n", 1, "no URL"),
])
def test_a_bad_station_line_is_one_error_that_names_the_line(tmp_path, text, line, words):
    path = tmp_path / "stations.txt"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_station_list(path)
    message = str(e.value)
    assert f"stations.txt line {line}:" in message and words in message and "\n" not in message


def test_serve_refuses_a_bad_station_list_in_one_line(tmp_path, capsys):
    from streamtag.cli import main

    (tmp_path / "l.txt").write_text("fine=http://a.example/x\n???=http://b.example/y\n")
    assert main(["serve", "--port", "0", "--sources", str(tmp_path / "l.txt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "l.txt line 2" in err[0]
    assert main(["stream", "--sources", str(tmp_path / "missing.txt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.txt: no such file" in err[0]


def _demo_parallel(model: Path, wav: Path, copies: int) -> subprocess.Popen:
    """`streamtag demo --parallel` on ``copies`` copies of one file, JSON lines on a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamtag", "demo", *[str(wav)] * copies, "--parallel", "--model", str(model),
         "--format", "jsonl", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


def test_demo_with_many_files_in_parallel_ends_on_sigterm_with_exit_143(model, station_list):
    proc = _demo_parallel(model, station_list.parent / "tone.wav", 60)
    assert proc.stdout is not None
    for _ in range(120):  # paced at real time: updates from many streams
        if not proc.stdout.readline():
            break
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=STOP_BOUND_S * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and sum("stopped" in line for line in err.splitlines()) == 60
    assert workers and not [w for w in workers if _alive(w)]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_stream_opens_a_station_list_at_once_and_stops_while_opening(model, tmp_path, sig, code):
    # 40 stations on a server that accepts and never answers: their opens wait on the network, so they must run
    # together (not one after the other, 40 deadlines long), and a signal during them ends the command at once.
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    stations = tmp_path / "silent.txt"
    stations.write_text("".join(f"s{i:02d}=http://127.0.0.1:{port}/live{i}.mp3\n" for i in range(40)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "stream", "--model", str(model), "--sources", str(stations),
         "--format", "jsonl", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while len(held) < 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(held) >= 20, f"only {len(held)} stations were being opened at once"
        workers = _children(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=STOP_BOUND_S)
        assert time.monotonic() - t0 < STOP_BOUND_S
        assert proc.returncode == code, err
        assert "Traceback" not in err
        assert not [w for w in workers if _alive(w)]
    finally:
        if proc.poll() is None:
            proc.kill()
        done.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


def test_demo_stopped_while_it_opens_many_files_exits_143_with_no_worker_left(model, station_list):
    # SIGTERM as soon as the decoder processes exist: demo --parallel is still opening its 300 files
    proc = _demo_parallel(model, station_list.parent / "tone.wav", 300)
    try:
        deadline = time.monotonic() + 60
        while not (workers := _children(proc.pid)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert workers, "no decoder process started"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=STOP_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err  # handled (the default action would be -15), not killed
    assert "Traceback" not in err
    assert not [w for w in workers if _alive(w)]


def test_serve_reloads_its_station_list_on_sighup_and_keeps_the_rest_playing(model, tmp_path):
    """An operator edits the list and sends SIGHUP (systemd's ExecReload): removed and changed stations end,
    new ones start, the untouched one plays on without an end, one that had ended starts again; a --source
    name is never taken over; a list
    that does not parse changes nothing and says why in one line."""
    from websockets.asyncio.client import connect

    write_tone_wav(tmp_path / "tone.wav", seconds=90.0)
    write_tone_wav(tmp_path / "other.wav", seconds=90.0, sr=16000)
    write_tone_wav(tmp_path / "short.wav", seconds=3.0)
    stations = tmp_path / "stations.txt"
    stations.write_text("keep=tone.wav\ngoes=tone.wav\nmoves=tone.wav\nshort=short.wav\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "serve", "--model", str(model), "--port", str(port),
         "--sources", str(stations), "--source", f"own={tmp_path / 'tone.wav'}", "--device", "cpu",
         "--health-every", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )

    async def until(ws: object, done, timeout: float = 60.0) -> list[dict]:
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; last messages: {[m.get('type') for m in seen[-5:]]}"
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=left)))  # type: ignore[attr-defined]
        return seen

    def updated(names: set[str]):
        return lambda seen: names <= {m["stream"] for m in seen if m.get("type") == "update"}

    async def scenario() -> tuple[list[dict], list[dict], list[dict]]:
        hello, ws = await _subscribe_until_updates(port, proc, n_updates=1)
        assert {s["name"] for s in hello["streams"]} == {"keep", "goes", "moves", "short", "own"}
        await until(ws, lambda seen: any(m.get("type") == "stream_ended" for m in seen))  # the short file ended
        stations.write_text("keep=tone.wav\nmoves=other.wav\nnew=tone.wav\nown=tone.wav\nshort=short.wav\n")
        proc.send_signal(signal.SIGHUP)
        first = await until(ws, lambda seen: updated({"new", "moves", "keep", "own", "short"})(
            [m for m in seen if m.get("type") == "update" and (m["stream"] != "moves" or _after_end(seen, m))]))
        stations.write_text("keep=tone.wav\nbad name=tone.wav\n")
        proc.send_signal(signal.SIGHUP)
        async with connect(f"ws://127.0.0.1:{port}/") as probe:  # the bad list changed nothing
            await asyncio.sleep(1.5)
            probe_hello = json.loads(await probe.recv())
        second = await until(ws, updated({"new", "moves", "keep", "own"}))  # "short" may have ended again
        proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, STOP_BOUND_S)
        return first, second, probe_hello["streams"]

    def _after_end(seen: list[dict], m: dict) -> bool:
        ends = [i for i, x in enumerate(seen) if x.get("type") == "stream_ended" and x["stream"] == "moves"]
        return bool(ends) and seen.index(m) > ends[0]

    try:
        first, second, streams_after_bad = asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    err = proc.stderr.read() if proc.stderr else ""
    ended = {m["stream"]: m["reason"] for m in first if m.get("type") == "stream_ended" and m["stream"] != "short"}
    assert ended == {"goes": "removed from the station list", "moves": "removed from the station list"}
    assert not [m for m in second if m.get("type") == "stream_ended" and m["stream"] != "short"]
    names = {s["name"]: s["source"] for s in streams_after_bad}
    names.pop("short", None)  # 3 s long: it may have ended again by now
    assert names == {"keep": "tone.wav", "moves": "other.wav", "new": "tone.wav", "own": "tone.wav"}
    lines = err.splitlines()
    assert any("reloaded stations.txt: 1 added, 1 removed, 1 changed, 1 restarted, 1 unchanged, 1 failed" in x
               for x in lines), err
    assert any("reload: station 'own' not added: a stream of that name is already served" in x for x in lines)
    assert any("reload: --sources stations.txt line 2:" in x and "stations keep running" in x for x in lines), err
    assert "Traceback" not in err and proc.returncode == 0
