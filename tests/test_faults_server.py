"""Fault suite for ``streamtag serve``: hostile websocket clients against a real server on loopback.

Every test runs the real WebsocketServer (real runner, real Engine with a small model, real sockets) and a
client that misbehaves: a foreign Origin, a DNS-rebinding Host, token guessing, audio floods, many senders,
wrong-shaped and deeply nested messages, a flood of title changes, a source that trickles its answer. Each asserts
what the server does about it (docs/security.md) and, where another client could suffer, that a well-behaved
client's updates keep coming: counted per hop of audio it sent, never against wall-clock thresholds.

Round two (issue 18): admin requests of one connection run side by side and never drop it; a sender flooding
audio keeps its connection while its pongs wait behind its own audio; binary frames without a stream are refused
and cost message budget by size; one-sample frames are slowed, not lost; a client that reads nothing is closed by
the keepalive; 1,000 reconnects leave nothing behind; refusals are logged once per address per minute; a bug
while answering is one log line. Deadlines are short here (keepalive 0.5 s + 1 s, --open-timeout 3 s).
"""
from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import ServerThread, live_bundle, make_engine, write_tone_wav

from streamtag.errors import ConfigError
from streamtag.protocol import ERROR_CODES, HandshakeThrottle, Hub, Outbox, RateLimiter

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

TOKEN = "fault-suite-token-0123456789"
TIMEOUT = 20.0  # s, upper bound for anything a test waits on
HOP = 0.25  # s between updates of the test engine
SR = 16000  # the test model's rate: audio sent at it needs no resampling
PRE_S = 3.0  # s of real-time audio the good client sends before the hostile one starts


def strict_json(text: str) -> dict:
    """json.loads that refuses NaN/Infinity, as a strict client (a browser's JSON.parse) does."""
    def refuse(name: str):
        raise ValueError(f"server sent {name}")

    msg = json.loads(text, parse_constant=refuse)
    assert isinstance(msg, dict) and isinstance(msg.get("type"), str)
    return msg


async def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    return strict_json(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, pred, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if pred(msg):
            return msg


def run(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tone(seconds: float, f0: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sign(np.sin(2 * np.pi * 0.5 * t)))).astype("<f4")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return live_bundle(tmp_path_factory.mktemp("bundle"))


def warm_engine(bundle):
    """An engine that has run its first hops (the first step imports librosa/numba: seconds on a busy machine)."""
    engine = make_engine(bundle, hop=HOP)
    engine.add_stream("warm-up")
    engine.push("warm-up", tone(2 * bundle.window_seconds))
    assert engine.step()
    engine.remove_stream("warm-up")
    return engine


@pytest.fixture
def server(bundle):
    started: list[ServerThread] = []

    def start(**config) -> ServerThread:
        srv = ServerThread(warm_engine(bundle), **config).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


async def status_of(url: str, **kw) -> int:
    """The HTTP status of a websocket handshake: 101 when it opened, else the refusal's status."""
    try:
        async with connect(url, **kw) as ws:
            await recv_json(ws)
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def raw_handshake(port: int, headers: list[str]) -> int:
    """A websocket handshake written by hand (headers exactly as given); returns the response status."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        lines = ["GET / HTTP/1.1", *headers, "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status = sock.recv(4096).split(b"\r\n", 1)[0]  # b"HTTP/1.1 403 Forbidden"
    return int(status.split()[1])


async def good_sender(url: str, name: str, seconds: float, log: dict) -> None:
    """A well-behaved client: sends its own audio at real time in hop-sized chunks and reads its updates.

    Records, after every chunk sent, how far the newest update it received lags the audio it has sent
    (``log["lag"]``, in seconds of audio) and every update's t (``log["t"]``)."""
    x = tone(seconds)
    chunk = int(HOP * SR)
    async with connect(url) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "audio_start", "stream": name, "sample_rate": SR, "format": "float32"}))
        await recv_until(ws, lambda m: m["type"] == "audio_started")
        newest = [-math.inf]

        async def reader():
            while True:
                msg = await recv_json(ws, 60)
                if msg["type"] == "update" and msg["stream"] == name:
                    newest[0] = msg["t"]
                    log["t"].append(msg["t"])

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        for k, i in enumerate(range(0, x.shape[0], chunk)):
            await ws.send(x[i : i + chunk].tobytes())
            sent = (i + chunk) / SR
            log["lag"].append((sent, sent - newest[0]))
            await asyncio.sleep(max(0.0, t0 + (k + 1) * HOP - time.monotonic()))  # real time
        await asyncio.sleep(4 * HOP)  # the last hops come back
        task.cancel()


def worst_lag(log: dict, start_s: float, end_s: float = math.inf) -> float:
    """Worst lag (s of audio sent - newest t received) over the sends between ``start_s`` and ``end_s`` s of
    audio sent."""
    return max(lag for sent, lag in log["lag"] if start_s <= sent < end_s)


def baseline_and_hostile(log: dict, window_s: float, hostile_from_s: float) -> tuple[float, float]:
    """The good stream's worst lag before the hostile client started (after its first window) and while it ran."""
    before = worst_lag(log, window_s + 2 * HOP, hostile_from_s)
    return before, worst_lag(log, hostile_from_s + HOP)


# -- origins, hosts, tokens, connections ----------------------------------------------------------------------
def test_foreign_origins_are_refused_and_own_page_allowed(server):
    srv = server()
    own = f"http://127.0.0.1:{srv.port}"

    async def scenario():
        return {
            "none": await status_of(srv.url),  # not a browser
            "own": await status_of(srv.url, origin=own),
            "localhost": await status_of(f"ws://localhost:{srv.port}/", origin=f"http://localhost:{srv.port}"),
            "evil": await status_of(srv.url, origin="http://evil.example"),
            "other port": await status_of(srv.url, origin="http://127.0.0.1:1"),
        }

    got = run(scenario())
    # A page on a name that rebinds to 127.0.0.1 sends its own name as Host and as Origin: same-origin, but
    # not this loopback server's name.
    got["rebinding"] = raw_handshake(srv.port, [f"Host: evil.example:{srv.port}",
                                                f"Origin: http://evil.example:{srv.port}"])
    got["two origins"] = raw_handshake(srv.port, [f"Host: 127.0.0.1:{srv.port}", f"Origin: {own}",
                                                  "Origin: http://evil.example"])
    assert got == {"none": 101, "own": 101, "localhost": 101, "evil": 403, "other port": 403, "rebinding": 403,
                   "two origins": 400}
    assert srv.server.refused == {403: 3, 400: 1} and not srv.server.hub.clients


def test_allowed_origin_flag_and_star(server):
    named = server(allowed_origins=("https://app.example",))
    anyone = server(allowed_origins=("*",))

    async def scenario():
        return (await status_of(named.url, origin="https://app.example"),
                await status_of(named.url, origin="https://other.example"),
                await status_of(anyone.url, origin="https://other.example"))

    assert run(scenario()) == (101, 403, 101)
    with pytest.raises(ConfigError, match="--allowed-origin"):
        named.server.config.__class__(allowed_origins=("app.example/path",))


def test_token_guessing_is_throttled_per_address(server):
    srv = server(token=TOKEN, auth_failures=3)
    url = f"ws://127.0.0.1:{srv.port}/"

    def from_address(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", srv.port))
        return sock

    async def scenario():
        guesses = [await status_of(url + f"?token=guess{k}", sock=from_address("127.0.0.1")) for k in range(5)]
        right_after = await status_of(url + "?token=" + TOKEN, sock=from_address("127.0.0.1"))
        elsewhere = await status_of(url + "?token=" + TOKEN, sock=from_address("127.0.0.2"))
        return guesses, right_after, elsewhere

    guesses, right_after, elsewhere = run(scenario())
    assert guesses == [401, 401, 401, 429, 429]  # 3 failures allowed, then the address waits
    assert right_after == 429  # even the right token: guessing must not go on
    assert elsewhere == 101  # another address is not punished
    with pytest.raises(ConfigError, match="at least 16"):
        srv.server.config.__class__(token="short-token")


@pytest.mark.parametrize("limits", [{"max_connections": 3}, {"max_connections": 10, "max_connections_per_address": 3}],
                         ids=["server", "per-address"])
def test_connections_beyond_the_limit_get_503(server, limits):
    """Past --max-connections (or, with room left on the server, past --max-connections-per-address: one host
    cannot take every slot) a handshake gets 503; a closed connection frees its slot."""
    srv = server(**limits)

    async def scenario():
        held = [await connect(srv.url).__aenter__() for _ in range(3)]
        for ws in held:
            await recv_json(ws)
        over = await status_of(srv.url)
        await held[0].close()
        for _ in range(100):  # the server notices the close
            if len(srv.server.hub.clients) < 3:
                break
            await asyncio.sleep(0.05)
        again = await status_of(srv.url)
        for ws in held[1:]:
            await ws.close()
        return over, again

    assert run(scenario()) == (503, 101)
    assert srv.server.refused.get(503) == 1


def test_a_handshake_that_trickles_is_dropped_at_its_deadline(server):
    """Slowloris: one header byte every 0.1 s; the server hangs up at handshake_timeout (1 s here), long before
    the 100-byte request is complete, and serves other clients meanwhile."""
    srv = server(handshake_timeout=1.0)
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\nX-Pad: "
               + "a" * 100).encode()
    sent = 0
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.1)
                if sent == 5:
                    assert run(status_of(srv.url)) == 101  # others get in while it trickles
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            pytest.fail("the server waited for the whole trickled request")
    assert sent < len(request) // 2  # dropped near 1 s (10 bytes), far from the 10 s the trickle needs


# -- malformed messages -----------------------------------------------------------------------------------------
HOSTILE_MESSAGES = [
    ('{"type":"audio_stop","stream":["x"]}', "bad_message"),
    ('{"type":"audio_stop"}', "bad_message"),
    ("[" * 100000 + "]" * 100000, "bad_message"),
    ('{"type":"subscribe","streams":' + "[" * 20 + "]" * 20 + "}", "bad_message"),
    ('{"type":"subscribe","streams":"*","id":NaN}', "bad_json"),
    ('{"type":"subscribe","streams":"*","id":1e999}', "bad_json"),
    ('{"type":"subscribe","streams":"*","id":' + "9" * 5000 + "}", "bad_json"),
    ('{"type":"subscribe","streams":"*","id":{"a":[1,2]}}', "bad_message"),
    ('{"type":"subscribe","streams":[["a"]]}', "bad_message"),
    ('{"type":["subscribe"]}', "unknown_type"),
    ('{"type":"remove_source","name":["x"]}', "unauthorized"),
    ('{"type":"audio_start","stream":{"x":1},"sample_rate":16000}', "bad_message"),
    ('{"type":"audio_start","stream":"x","sample_rate":[16000]}', "bad_audio"),
    ('{"type":"audio_start","stream":"x","sample_rate":16000,"channels":1e300}', "bad_audio"),
    ("\"just a string\"", "bad_message"),
    (json.dumps({"type": "subscribe", "streams": [f"no-such-{i:04d}" for i in range(1000)]}), "unknown_stream"),
    (json.dumps({"type": "subscribe", "streams": ["x"] * 5000}), "bad_message"),
    ("{\"type\": \"subscribe\", \"streams\": \"*\"", "bad_json"),
]


def test_every_wrong_shape_gets_an_error_and_the_connection_stays(server):
    srv = server()

    async def scenario():
        async with connect(srv.url) as ws:
            await recv_json(ws)
            replies = []
            for text, _ in HOSTILE_MESSAGES:
                await ws.send(text)
                replies.append(await recv_until(ws, lambda m: m["type"] == "error"))
            await ws.send(json.dumps({"type": "subscribe", "streams": "*", "id": 7}))
            ok = await recv_until(ws, lambda m: m["type"] == "subscribed")
            return replies, ok

    replies, ok = run(scenario())
    assert [r["code"] for r in replies] == [code for _, code in HOSTILE_MESSAGES]
    assert all(r["code"] in ERROR_CODES and 0 < len(r["message"]) <= 1000 for r in replies)  # short, whatever came
    assert all("id" not in r for r in replies)  # a refused id is never echoed
    assert ok == {"type": "subscribed", "streams": "*", "id": 7}


# -- audio senders ----------------------------------------------------------------------------------------------
def test_audio_flood_is_throttled_and_other_streams_keep_their_hops(server):
    """A client sending 1 MiB frames as fast as it can is held to --max-audio-rate; a real-time sender's updates
    keep up with its audio while the flood runs (lag within the window plus one hop)."""
    srv = server(audio_rate=2.0)
    flood_s, good_s = 12.0, 16.0
    window_s = srv.runner.engine.bundle.window_seconds
    log: dict = {"lag": [], "t": []}
    sent = {"bytes": 0, "rate_limited": 0}

    async def flood():
        frame = tone(16.0)[: (1 << 20) // 4 - 64].tobytes()  # just under 1 MiB: 16 s of audio per frame
        async with connect(srv.url, max_size=None) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "audio_start", "stream": "flood", "sample_rate": SR}))
            await recv_until(ws, lambda m: m["type"] == "audio_started")

            async def reader():
                while True:
                    msg = await recv_json(ws, 60)
                    if msg["type"] == "error" and msg["code"] == "rate_limited":
                        sent["rate_limited"] += 1

            task = asyncio.create_task(reader())
            t0 = time.monotonic()
            while time.monotonic() - t0 < flood_s:
                try:
                    await asyncio.wait_for(ws.send(frame), 1.0)  # blocks once the server stops reading
                    sent["bytes"] += len(frame)
                except asyncio.TimeoutError:
                    pass
            elapsed = time.monotonic() - t0
            accepted = srv.runner.engine.streams["flood"].t if "flood" in srv.runner.engine.streams else None
            task.cancel()
            return elapsed, accepted

    async def scenario():
        good = asyncio.create_task(good_sender(srv.url, "good", good_s, log))
        await asyncio.sleep(PRE_S)  # the good stream is going before the flood starts
        result = await flood()
        await good
        return result

    elapsed, accepted = run(scenario())
    offered = sent["bytes"] / 4 / SR
    before, during = baseline_and_hostile(log, window_s, PRE_S)
    print(f"flood offered {offered:.0f} s of audio in {elapsed:.1f} s, engine took {accepted} s; good stream's "
          f"worst lag {before:.2f} s before, {during:.2f} s during the flood (hop {HOP} s)")
    assert sent["rate_limited"] >= 1
    assert accepted is not None and accepted <= 2.0 * elapsed + 1.0 + 1.0  # rate x time + burst + one slice
    assert offered > accepted  # it really tried to go faster
    hops_sent = int(good_s / HOP)
    assert len(log["t"]) >= hops_sent - int(window_s / HOP) - 2  # every hop of the good audio came back
    assert during <= max(before, 2 * HOP) + HOP  # the flood delays it by one hop at most


def test_many_senders_are_bounded_and_the_rest_told_why(server):
    srv = server(max_audio_streams=3)

    async def sender(i: int):
        ws = await connect(srv.url).__aenter__()
        await recv_json(ws)
        await ws.send(json.dumps({"type": "audio_start", "stream": f"m{i}", "sample_rate": SR}))
        reply = await recv_until(ws, lambda m: m["type"] in ("audio_started", "error"))
        return ws, reply

    async def scenario():
        pairs = [await sender(i) for i in range(8)]
        codes = [r["type"] if r["type"] == "audio_started" else r["code"] for _, r in pairs]
        ws, _ = pairs[-1]  # refused, but still connected and useful
        await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
        sub = await recv_until(ws, lambda m: m["type"] == "subscribed")
        second = pairs[0][0]  # one connection, one stream
        await second.send(json.dumps({"type": "audio_start", "stream": "again", "sample_rate": SR}))
        again = await recv_until(second, lambda m: m["type"] == "error")
        for w, _ in pairs:
            await w.close()
        return codes, sub, again

    codes, sub, again = run(scenario())
    assert codes == ["audio_started"] * 3 + ["limit_exceeded"] * 5
    assert sub["streams"] == "*" and again["code"] == "limit_exceeded"


def test_many_audio_streams_leave_a_real_time_stream_within_one_hop(server):
    """Six clients send audio at the limit (2x real time) beside a real-time sender; its updates keep up."""
    srv = server(audio_rate=2.0)
    window_s = srv.runner.engine.bundle.window_seconds
    log: dict = {"lag": [], "t": []}

    async def fast(i: int, seconds: float):
        x = tone(seconds, f0=200.0 + 50 * i)
        async with connect(srv.url) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "audio_start", "stream": f"fast{i}", "sample_rate": SR}))
            await recv_until(ws, lambda m: m["type"] == "audio_started")
            for k in range(0, x.shape[0], SR // 2):
                await ws.send(x[k : k + SR // 2].tobytes())
                await asyncio.sleep(0.25)  # 0.5 s of audio every 0.25 s: 2x real time

    async def scenario():
        good = asyncio.create_task(good_sender(srv.url, "good", 12.0, log))
        await asyncio.sleep(PRE_S)
        await asyncio.gather(*(fast(i, 8.0) for i in range(6)))
        await good

    run(scenario())
    before, during = baseline_and_hostile(log, window_s, PRE_S)
    print(f"good stream's worst lag {before:.2f} s before, {during:.2f} s beside 6 senders at 2x (hop {HOP} s)")
    assert len(log["t"]) >= int(12.0 / HOP) - int(window_s / HOP) - 2
    assert during <= max(before, 2 * HOP) + HOP


# -- titles, sources --------------------------------------------------------------------------------------------
def test_title_flood_is_coalesced_to_one_streams_message_per_second(server, tmp_path):
    srv = server(file_speed=1.0)
    srv.add_source("radio", str(write_tone_wav(tmp_path / "radio.wav", seconds=30.0)))
    changes, seconds = 0, 3.0

    def flood():  # what a runner thread does for an ICY title that changes every 20 ms
        nonlocal changes
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            changes += 1
            srv.server.on_title("radio", f"title {changes}")
            time.sleep(0.02)

    async def scenario():
        async with connect(srv.url) as ws:
            await recv_json(ws)
            thread = threading.Thread(target=flood)
            t0 = time.monotonic()
            thread.start()
            msgs = []
            while time.monotonic() - t0 < seconds + 2.5:
                try:
                    msgs.append(await recv_json(ws, 0.5))
                except asyncio.TimeoutError:
                    pass
            thread.join()
            return [m for m in msgs if m["type"] == "streams"]

    streams = run(scenario())
    titles = [s["streams"][0]["title"] for s in streams]
    assert changes > 50
    assert 2 <= len(streams) <= math.ceil(seconds / 1.0) + 2  # at most one per second, plus the last one
    assert titles[-1] == f"title {changes}"  # the newest title always goes out


def test_add_source_answers_in_bounded_time_when_the_url_trickles(server):
    """Sources that trickle their HTTP headers hold a thread each, never the server: add_source gives up at
    --open-timeout, the pending opens are bounded, and other clients' audio streams come and go meanwhile."""
    srv = server(open_timeout=2.0, max_pending_opens=2)
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    conns: list[socket.socket] = []

    def trickle():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = listener.accept()
                conns.append(c)
            except OSError:
                pass
            for c in conns:
                try:
                    c.send(b"H")  # one byte of a never-ending header
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/stream"
    from streamtag.sources.policy import SourcePolicy

    async def add(name: str):
        t0 = time.monotonic()
        try:
            await srv.server.add_source(name, url, policy=SourcePolicy.permissive())
            return "added", time.monotonic() - t0
        except Exception as e:  # the reply the client would get
            return str(e), time.monotonic() - t0

    async def on_server_loop():
        return await asyncio.gather(add("t1"), add("t2"), add("t3"))

    async def audio_client():
        async with connect(srv.url) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "audio_start", "stream": "mine", "sample_rate": SR}))
            started = await recv_until(ws, lambda m: m["type"] in ("audio_started", "error"))
            for k in range(0, 2 * SR, SR // 4):
                await ws.send(tone(2.0)[k : k + SR // 4].tobytes())
            update = await recv_until(ws, lambda m: m["type"] == "update")
        return started, update

    try:
        fut = asyncio.run_coroutine_threadsafe(on_server_loop(), srv.loop)
        started, update = run(audio_client())
        results = fut.result(30)
        for _ in range(100):
            if "mine" not in srv.server.hub.streams:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for c in conns:
            c.close()
        listener.close()
    messages = [m for m, _ in results]
    assert started["type"] == "audio_started" and update["stream"] == "mine"
    assert "mine" not in srv.server.hub.streams  # its clean-up did not wait for the opens
    assert sum("no answer within 2 s" in m for m in messages) == 2  # both timed out at --open-timeout
    assert sum("still opening" in m for m in messages) == 1  # the third found the limit at once
    assert all(elapsed < 10 for _, elapsed in results)  # (generous) bounded, nothing like the trickle's forever
    assert not set(srv.server.hub.streams) & {"t1", "t2", "t3"}


def test_sources_named_at_start_are_in_the_first_hello(server, tmp_path):
    from streamtag.sources.policy import SourcePolicy

    srv = ServerThread(warm_engine(live_bundle(tmp_path)), port=0)
    wav = write_tone_wav(tmp_path / "early.wav", seconds=10.0)

    async def before_listening():  # what `streamtag serve --source` does: add, then listen
        await srv.server.add_source("early", str(wav), policy=SourcePolicy.permissive())

    srv.loop.run_until_complete(before_listening())
    srv.start()
    try:
        async def scenario():
            async with connect(srv.url) as ws:
                return await recv_json(ws)

        hello = run(scenario())
        assert [s["name"] for s in hello["streams"]] == ["early"]
        assert hello["streams"][0]["source"] == "early.wav"
    finally:
        srv.stop()


def test_add_source_is_refused_by_policy_without_revealing_what_exists(server, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    inside = write_tone_wav(allowed / "ok.wav", seconds=5.0)
    outside = write_tone_wav(tmp_path / "secret.wav", seconds=5.0)
    (allowed / "link.wav").symlink_to(outside)
    srv = server(token=TOKEN, allow_files=(allowed,))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    refused_uris = [str(outside), str(tmp_path / "missing.wav"), f"{allowed}/../secret.wav", str(allowed / "link.wav"),
                    "-", f"file://{outside}", f"http://127.0.0.1:{listener.getsockname()[1]}/",
                    "http://localhost:1/", "ftp://example.org/x.mp3"]

    async def scenario():
        async with connect(srv.url + "?token=" + TOKEN) as ws:
            await recv_json(ws)
            replies = []
            for k, uri in enumerate([*refused_uris, str(inside)]):
                await ws.send(json.dumps({"type": "add_source", "name": f"s{k}", "uri": uri}))
                replies.append(await recv_until(ws, lambda m: m["type"] in ("source_added", "error")))
            return replies

    try:
        replies = run(scenario())
    finally:
        listener.close()
    *refused, ok = replies
    for uri, r in zip(refused_uris, refused):
        assert r["type"] == "error" and r["code"] == "source_error", (uri, r)
    assert ok["type"] == "source_added"
    from streamtag.publishers.websocket import public_source

    file_messages = {r["message"].replace(public_source(uri), "NAME") for uri, r in zip(refused_uris[:4], refused[:4])}
    assert all("refused by policy" in m for m in file_messages)
    assert len(file_messages) == 1, file_messages  # an existing and a missing file read the same
    assert all("refused by policy" in r["message"] for r in refused[4:8])


def test_hello_and_streams_show_no_credentials():
    from streamtag.publishers.websocket import public_source

    assert public_source("http://user:pa55@radio.example:8000/live.mp3?key=abc#x") == "http://radio.example:8000/live.mp3?…"
    assert public_source("https://radio.example/a.m3u8") == "https://radio.example/a.m3u8"
    assert public_source("/home/me/private/music/song.ogg") == "song.ogg"
    assert public_source("file:///home/me/song.ogg") == "song.ogg"
    assert public_source("-") == "stdin"


# -- the sans-I/O budgets ---------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_rate_limiter_holds_a_sender_to_its_rate():
    clock = FakeClock()
    bucket = RateLimiter(rate=2.0, burst=1.0, clock=clock)
    assert bucket.take(1.0) == 0.0  # the burst
    assert bucket.take(1.0) == pytest.approx(0.5)  # 1 s of audio at 2 s/s
    clock.t += 0.5
    assert bucket.take(0.5) == pytest.approx(0.25)
    clock.t += 10.0
    assert bucket.take(1.0) == 0.0 and bucket.take(0.1) > 0  # banked no more than the burst


def test_handshake_throttle_forgives_after_the_window():
    clock = FakeClock()
    th = HandshakeThrottle(max_failures=2, window=60.0, max_addresses=3, clock=clock)
    th.failed("a")
    assert th.blocked_for("a") == 0.0
    clock.t = 10.0
    th.failed("a")
    assert th.blocked_for("a") == pytest.approx(50.0) and th.blocked_for("b") == 0.0
    clock.t = 60.5
    assert th.blocked_for("a") == 0.0  # the first failure left the window
    th.failed("a")
    assert th.blocked_for("a") == pytest.approx(9.5)  # until the one at t=10 leaves it too
    clock.t = 70.5
    assert th.blocked_for("a") == 0.0
    for addr in "wxyz":
        th.failed(addr)
    assert len(th._failures) <= 3  # bounded memory


def test_hub_coalesces_titles_per_stream():
    clock = FakeClock()
    hub = Hub(model="m", labels=["rock"], sample_rate=SR, hop_seconds=HOP, max_message_bytes=1 << 20, clock=clock)
    hub.stream_added("a", "x")
    client = hub.connect(authorized=False)
    while client.outbox.pop() is not None:
        pass
    assert hub.set_title("a", "one") is None  # the first goes out at once
    delays = [hub.set_title("a", f"t{k}") for k in range(10)]
    assert delays[0] == pytest.approx(1.0) and delays[1:] == [None] * 9  # one timer, not ten
    clock.t = 0.5
    assert hub.flush_titles() == pytest.approx(0.5)
    clock.t = 1.0
    assert hub.flush_titles() is None
    msgs = []
    while (text := client.outbox.pop()) is not None:
        msgs.append(json.loads(text))
    assert [m["streams"][0]["title"] for m in msgs] == ["t9"]  # "one" was replaced unsent: one slot per list


def test_audio_start_and_stop_cycles_are_rate_limited_per_connection():
    """Every start/stop is news to every "*" subscriber; one connection may not cycle them as fast as it can."""
    clock = FakeClock()
    hub = Hub(model="m", labels=["rock"], sample_rate=SR, hop_seconds=HOP, max_message_bytes=1 << 20, clock=clock)
    client = hub.connect(authorized=False)

    def cycle(k: int) -> str:
        actions = hub.receive(client, json.dumps({"type": "audio_start", "stream": f"c{k}", "sample_rate": SR}))
        if not actions:
            return json.loads([t for t in iter(client.outbox.pop, None)][-1])["code"]
        hub.stream_added(f"c{k}", "websocket", owner=client.id)
        hub.stream_removed(f"c{k}", "stopped")
        return "started"

    got = [cycle(k) for k in range(5)]
    assert got == ["started"] * 3 + ["rate_limited"] * 2
    clock.t = 2.0  # one more start per 2 s
    assert [cycle(k) for k in range(5, 7)] == ["started", "rate_limited"]


def test_outbox_keeps_one_pending_stream_list():
    box = Outbox()
    for k in range(1000):
        box.put_control({"type": "streams", "streams": [{"name": f"s{k}", "source": "x", "title": None}]},
                        key="streams")
    assert len(box) == 1 and not box.overflowed
    assert json.loads(box.pop())["streams"][0]["name"] == "s999"
    box.put_control({"type": "streams", "streams": []}, key="streams")
    assert len(box) == 1  # a new slot once the old one went out
    with pytest.raises(ValueError):
        box.put_control({"type": "error", "code": "bad_json", "message": "x", "id": float("nan")})


def test_short_path_messages_keep_their_shape_in_the_schema():
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "protocol.schema.json").read_text())
    assert schema["$defs"]["error"]["properties"]["code"]["enum"] == list(ERROR_CODES)


# -- the command line -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGHUP"])
def test_serve_command_has_its_sources_before_the_first_connection(tmp_path, stop_signal):
    """`streamtag serve --source`: the very first handshake that succeeds already lists the stream. SIGTERM, and
    SIGHUP without a station list to reload (a closed terminal), stop it cleanly."""
    import signal
    import subprocess
    import sys

    from live_fixtures import free_port, hangup_default, tiny_bundle

    tiny_bundle(tmp_path / "model")
    wav = write_tone_wav(tmp_path / "early.wav", seconds=30.0)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "serve", "--model", str(tmp_path / "model"), "--port", str(port),
         "--source", f"early={wav}", "--compute", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=hangup_default,
    )

    async def first_hello():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                async with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
                    return await recv_json(ws)
            except OSError:  # not listening yet
                await asyncio.sleep(0.05)
        raise AssertionError("serve never listened")

    try:
        hello = run(first_hello(), timeout=120)
    finally:
        proc.send_signal(getattr(signal, stop_signal))
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert [s["name"] for s in hello["streams"]] == ["early"] and hello["streams"][0]["source"] == "early.wav"
    assert proc.returncode == 0  # a clean stop (the default action of SIGHUP would be -1)
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


@pytest.mark.parametrize("argv, words", [
    (["--token", "short"], "at least 16"),
    (["--allowed-origin", "evil.example/x"], "--allowed-origin"),
    (["--max-audio-rate", "0"], "--max-audio-rate"),
    (["--max-connections", "0"], "--max-connections"),
    (["--allow-files", "/no/such/dir"], "--allow-files"),
    (["--health-every", "-1"], "--health-every"),
    (["--health-every", "nan"], "--health-every"),
])
def test_serve_flags_refuse_unsafe_values_in_one_line(argv, words, capsys):
    from streamtag.cli import main

    assert main(["serve", "--port", "0", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_security_flags_replace_earlier_definitions_of_the_same_flags():
    import argparse

    from streamtag.publishers.websocket import add_serve_security_args, config_from_args

    p = argparse.ArgumentParser()
    p.add_argument("--token", default=None, help="an older definition")
    p.add_argument("--allowed-origin", action="append", default=[])
    add_serve_security_args(p)
    args = p.parse_args(["--token", TOKEN, "--allowed-origin", "https://a.example", "--max-streams", "3"])
    config = config_from_args(args, port=0)
    assert (config.token, config.allowed_origins, config.max_streams) == (TOKEN, ("https://a.example",), 3)
    assert "an older definition" not in p.format_help()  # one --token: this block's


# -- round two (issue 18): admin requests in parallel, throttled senders kept, refused frames ------------------
class TricklingListener:
    """An HTTP 'server' on loopback that accepts every connection and sends one byte of a never-ending header
    every 0.2 s: a source opening against it hangs until its deadline."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str = "/stream") -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}{path}"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.listener.accept()
                self.conns.append(c)
            except OSError:
                pass
            for c in self.conns:
                try:
                    c.send(b"H")
                except OSError:
                    pass

    def __enter__(self) -> TricklingListener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.listener.close()


KEEPALIVE = {"ping_interval": 0.5, "ping_timeout": 1.0}  # short, so that a wrongly dropped client shows in seconds


def test_admin_requests_on_one_connection_run_concurrently(server, tmp_path):
    """Two adds of trickling URLs, then a good file and a subscribe on the same connection: the good ones are
    answered while the slow ones still open (each gives up at its own --open-timeout)."""
    music = tmp_path / "music"
    music.mkdir()
    write_tone_wav(music / "good.wav", seconds=10.0)
    srv = server(token=TOKEN, open_timeout=3.0, allow_private_urls=True, allow_files=(music,), **KEEPALIVE)

    async def scenario(url: str):
        async with connect(srv.url + "?token=" + TOKEN) as ws:
            await recv_json(ws)
            for k, uri in enumerate([url, url]):
                await ws.send(json.dumps({"type": "add_source", "name": f"slow{k}", "uri": uri, "id": f"slow{k}"}))
            await ws.send(json.dumps({"type": "add_source", "name": "good", "uri": str(music / "good.wav"),
                                      "id": "good"}))
            await ws.send(json.dumps({"type": "subscribe", "streams": "*", "id": "sub"}))
            replies = []
            while len(replies) < 4:
                msg = await recv_json(ws)
                if "id" in msg:
                    replies.append(msg)
            return replies, ws.close_code

    with TricklingListener() as slow:
        replies, close_code = run(scenario(slow.url()))
    order = [r["id"] for r in replies]
    assert set(order[:2]) == {"good", "sub"}, order  # answered before either slow open gave up
    assert {r["id"]: r["type"] for r in replies} == {"good": "source_added", "sub": "subscribed",
                                                     "slow0": "error", "slow1": "error"}
    assert all("no answer within 3 s" in r["message"] for r in replies if r["type"] == "error")
    assert close_code is None  # the connection outlived its slow requests (keepalive 0.5 s + 1 s)


def test_queued_admin_requests_never_drop_their_connection(server):
    """Six adds of trickling URLs on one connection: four open at once (the documented limit), the other two
    are refused at once, and the connection (keepalive 0.5 s + 1 s) stays up while the four wait out their
    deadline: its pongs are read meanwhile."""
    srv = server(token=TOKEN, open_timeout=3.0, allow_private_urls=True, **KEEPALIVE)

    async def scenario(url: str):
        async with connect(srv.url + "?token=" + TOKEN) as ws:
            await recv_json(ws)
            for k in range(6):
                await ws.send(json.dumps({"type": "add_source", "name": f"t{k}", "uri": url, "id": k}))
            replies = []
            while len(replies) < 6:
                msg = await recv_json(ws)
                if msg["type"] == "error":
                    replies.append(msg)
            await ws.send(json.dumps({"type": "subscribe", "streams": "*", "id": "after"}))
            after = await recv_until(ws, lambda m: m.get("id") == "after")
            return replies, after

    with TricklingListener() as slow:
        replies, after = run(scenario(slow.url()))
    refused = [r for r in replies if "still opening" in r["message"]]
    timed_out = [r for r in replies if "no answer within 3 s" in r["message"]]
    assert len(refused) == 2 and len(timed_out) == 4
    assert replies[:2] == refused  # refused at once, before any open gave up
    assert all(r["code"] == "limit_exceeded" for r in refused)
    assert after["type"] == "subscribed"
    assert not srv.server._requests  # no request task left
    deadline = time.monotonic() + TIMEOUT  # the open threads end once the trickling server hangs up
    while srv.server._opening and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.server._opening == 0


def stereo48(seconds: float) -> bytes:
    """Float32 stereo at 48 kHz: many bytes per second of audio, so a test's flood drains in seconds."""
    t = np.arange(int(seconds * 48000)) / 48000
    x = (0.3 * np.sin(2 * np.pi * 330 * t)).astype("<f4")
    return np.stack([x, x], axis=1).tobytes()


async def start_audio(ws, name: str, rate: int = 48000, channels: int = 2) -> None:
    await recv_json(ws)
    await ws.send(json.dumps({"type": "audio_start", "stream": name, "sample_rate": rate, "channels": channels}))
    await recv_until(ws, lambda m: m["type"] == "audio_started")


def test_a_request_is_answered_while_its_connections_audio_is_paced(server):
    """4.5 s of audio in three frames at --max-audio-rate 2, then a request: its reply comes while the engine has
    taken only what the budget allows (1 s banked + 2 s/s), not after all the audio (the request is not behind
    it)."""
    srv = server(audio_rate=2.0)
    engine = srv.runner.engine

    async def scenario():
        async with connect(srv.url, max_size=None) as ws:
            await start_audio(ws, "paced")
            frame = stereo48(1.5)
            for _ in range(3):
                await ws.send(frame)
            await ws.send(json.dumps({"type": "subscribe", "streams": "*", "id": "now"}))
            await recv_until(ws, lambda m: m.get("id") == "now")
            taken_at_reply = engine.streams["paced"].ring.written / SR if "paced" in engine.streams else None
            return taken_at_reply

    taken = run(scenario())
    assert taken is not None and taken < 3.5  # the budget had let through far less than the 4.5 s sent


def test_a_throttled_sender_keeps_its_connection_and_is_told_why(server):
    """A sender that floods 2 s frames at --max-audio-rate 1 for longer than the keepalive allows (0.5 s + 1 s
    here): the server stops reading it for 2 s at a time, its pongs wait behind its own audio, and it is NOT
    closed (1011 before issue 18): it hears `rate_limited` and stays connected."""
    srv = server(audio_rate=1.0, audio_backlog_bytes=1 << 18, **KEEPALIVE)
    flood_s = 4.0
    got: dict = {"rate_limited": []}

    async def scenario():
        ws = await connect(srv.url, max_size=None)
        try:
            await start_audio(ws, "flood")
            client_id = max(srv.server.hub.clients)

            async def reader():
                while True:
                    msg = await recv_json(ws, 60)
                    if msg["type"] == "error" and msg["code"] == "rate_limited":
                        got["rate_limited"].append(msg["message"])

            task = asyncio.create_task(reader())
            frame = stereo48(2.0)  # 768 KB
            t0 = time.monotonic()
            sent = 0
            while time.monotonic() - t0 < flood_s:
                await ws.send(frame)  # waits while TCP holds it (a cancelled send would still queue its frame)
                sent += 1
            await asyncio.sleep(2 * (KEEPALIVE["ping_interval"] + KEEPALIVE["ping_timeout"]))  # still held
            alive = client_id in srv.server.hub.clients and ws.close_code is None
            task.cancel()
            return sent, alive
        finally:
            ws.transport.abort()  # a polite close would wait behind the audio still queued

    sent, alive = run(scenario(), timeout=120)
    assert sent * 2.0 > 1.0 * flood_s + 1.0  # it did offer more than its budget
    assert got["rate_limited"] and "audio faster than 1x real time" in got["rate_limited"][0]
    assert alive


def test_binary_frames_without_a_stream_are_refused_and_are_no_audio(server):
    """Binary frames before audio_start: each gets a `bad_audio` error, none reaches a stream, they cost
    message budget by their size (so the server reads them at a bounded rate, where one message each let a
    client push 58 MB/s), and a later audio_start on the same connection has its whole audio budget."""
    srv = server(message_rate=10.0)
    frame = b"\x00" * (1 << 16)  # 64 KiB: 5 messages' worth
    n_frames = 12

    async def scenario():
        async with connect(srv.url) as ws:
            await recv_json(ws)
            t0 = time.monotonic()
            for _ in range(n_frames):
                await ws.send(frame)
            refused_at, errors = [], []
            while len(refused_at) < n_frames:
                msg = await recv_json(ws)
                if msg["type"] == "error":
                    errors.append(msg)
                    if msg["code"] == "bad_audio":
                        refused_at.append(time.monotonic() - t0)
            await ws.send(json.dumps({"type": "audio_start", "stream": "later", "sample_rate": SR}))
            await recv_until(ws, lambda m: m["type"] == "audio_started")
            await ws.send(tone(1.0).tobytes())  # one second: within the audio burst
            after = await recv_until(ws, lambda m: m["type"] == "update" or
                                     (m["type"] == "error" and "audio faster" in m["message"]))
            return refused_at, errors, after

    refused_at, errors, after = run(scenario())
    assert all("before audio_start" in e["message"] for e in errors if e["code"] == "bad_audio")
    assert any(e["code"] == "rate_limited" and "messages/s" in e["message"] for e in errors)
    # 5 message tokens per frame at 10/s with 20 banked: by time t at most (20 + 10 t) / 5 frames were read (+1:
    # the one being read)
    assert all(k <= (20 + 10 * t) / 5 + 1 for k, t in enumerate(refused_at, 1)), refused_at
    assert not [s for s in srv.server.hub.streams if s != "later"]  # no stream came of them
    assert after["type"] == "update"  # the refused frames took nothing of the audio budget


# -- the slow reader and the 1,000 reconnects, under the current source layer --------------------------------------
def test_a_client_that_reads_nothing_is_closed_by_the_keepalive_and_the_others_go_on(server, tmp_path):
    """A client that subscribes to a source's stream and then neither reads nor sends: its socket fills, the
    keepalive gets no answer and closes it; a reading client's updates keep coming meanwhile."""
    srv = server(file_speed=4.0, **KEEPALIVE)
    srv.add_source("radio", str(write_tone_wav(tmp_path / "radio.wav", seconds=60.0)))

    async def scenario():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        silent = await connect(srv.url, sock=sock, max_queue=1, ping_interval=None).__aenter__()
        await recv_json(silent)
        await silent.send(json.dumps({"type": "subscribe", "streams": "*"}))
        silent_id = max(srv.server.hub.clients)
        # from here on the silent client reads nothing: websockets' own reader stops with max_queue=1
        async with connect(srv.url) as good:
            await recv_json(good)
            await good.send(json.dumps({"type": "subscribe", "streams": ["radio"]}))
            updates = 0
            deadline = time.monotonic() + TIMEOUT
            while silent_id in srv.server.hub.clients and time.monotonic() < deadline:
                msg = await recv_json(good)
                updates += msg["type"] == "update"
            still_there = silent_id in srv.server.hub.clients
            before = updates
            for _ in range(8):
                msg = await recv_until(good, lambda m: m["type"] == "update")
                updates += 1
        silent.transport.abort()
        return still_there, before, updates

    still_there, before, updates = run(scenario())
    assert not still_there  # closed by the keepalive
    assert updates == before + 8  # the reading client went on


def test_a_thousand_reconnects_leave_nothing_behind(server, tmp_path):
    """1,000 connections, each subscribing to a source's stream and hanging up (half of them abruptly), while
    the source plays: afterwards the server holds no client, no task and no thread more than before."""
    srv = server(file_speed=4.0)
    srv.add_source("radio", str(write_tone_wav(tmp_path / "radio.wav", seconds=120.0)))

    def tasks_on_loop() -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1  # not this one

        return srv.call(count)

    async def churn():
        for k in range(1000):
            ws = await connect(srv.url, open_timeout=TIMEOUT)
            await recv_json(ws)
            await ws.send(json.dumps({"type": "subscribe", "streams": ["radio"]}))
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            if k % 2:
                ws.transport.abort()
            else:
                await ws.close()

    threads_before, tasks_before = threading.active_count(), tasks_on_loop()
    run(churn(), timeout=300)
    deadline = time.monotonic() + TIMEOUT
    # the hub forgets a client first; its connection's tasks (reader, pump, writer) end right after: wait for both
    while (srv.server.hub.clients or tasks_on_loop() > tasks_before
           or threading.active_count() > threads_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv.server.hub.clients
    assert tasks_on_loop() <= tasks_before
    assert threading.active_count() <= threads_before
    assert srv.server.hub.clients == {} and "radio" in srv.server.hub.streams  # the source played on


def test_refusals_and_throttling_are_logged_once_per_address_per_minute(server, caplog):
    """Ten handshakes from a foreign Origin, then token guesses into 429s: one log line per kind and address, not
    one per handshake (a flood of refusals must not flood the log); the next line says how many it held back."""
    import logging

    srv = server(token=TOKEN, auth_failures=2)
    caplog.set_level(logging.INFO, logger="streamtag.publishers.websocket")

    async def scenario():
        origins = [await status_of(srv.url + "?token=" + TOKEN, origin="http://evil.example") for _ in range(10)]
        guesses = [await status_of(srv.url + "?token=wrong-guess-000000") for _ in range(6)]
        return origins, guesses

    origins, guesses = run(scenario())
    assert origins == [403] * 10 and guesses == [401, 401, 429, 429, 429, 429]
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(refused) == 1 and "Origin 'http://evil.example' not allowed" in refused[0]  # same address: one line

    clock = FakeClock()
    from streamtag.protocol import LogLimiter

    limiter = LogLimiter(interval=60.0, max_keys=2, clock=clock)
    assert limiter.allow("a") == 0 and limiter.allow("a") is None and limiter.allow("a") is None
    assert limiter.allow("b") == 0  # another address has its own minute
    clock.t = 60.0
    assert limiter.allow("a") == 2  # the next line says how many were held back
    limiter.allow("c")
    assert len(limiter._last) == 2  # bounded memory


def test_audio_in_one_sample_frames_is_slowed_by_its_frame_count_and_nothing_is_lost(server):
    """3,000 frames of one sample each: every sample reaches the engine, but the frames cost messages (a tenth
    each), so the server is not made to handle audio a sample at a time at any speed: `rate_limited` says so."""
    srv = server(message_rate=100.0)
    n = 3000

    async def scenario():
        async with connect(srv.url) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "audio_start", "stream": "tiny", "sample_rate": SR}))
            await recv_until(ws, lambda m: m["type"] == "audio_started")
            x = tone(n / SR)
            for i in range(n):
                await ws.send(x[i : i + 1].tobytes())
            notice = await recv_until(ws, lambda m: m["type"] == "error")
            deadline = time.monotonic() + TIMEOUT
            while srv.runner.engine.streams["tiny"].ring.written < n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return notice, srv.runner.engine.streams["tiny"].ring.written

    notice, written = run(scenario())
    assert notice["code"] == "rate_limited" and "messages/s" in notice["message"]
    assert written == n


def test_audio_in_reaches_the_engine_whole_and_in_order_whether_pushed_at_once_or_paced(server):
    """Frames within the sender's rate go to the engine as they are read; a burst past it is queued and paced, and
    frames sent behind the burst wait their turn. Either way the engine gets every sample, in order, exactly as
    sent (pcm16 -> float32)."""
    srv = server()
    got: list[np.ndarray] = []
    push = srv.runner.push

    def recording(name: str, samples: np.ndarray) -> None:
        if name == "mixed":
            got.append(np.array(samples, copy=True))
        push(name, samples)

    srv.runner.push = recording  # type: ignore[method-assign]
    x = (tone(3.6) * 32767).astype("<i2")
    small, big = int(0.05 * SR), int(0.6 * SR)
    cuts = list(range(0, 10 * small, small))  # 0.5 s in small frames: within the rate
    cuts += list(range(10 * small, 10 * small + 4 * big, big))  # 2.4 s at once: past the 1 s burst, paced
    cuts += list(range(10 * small + 4 * big, x.shape[0], small))  # 0.7 s more, sent behind the burst
    frames = [x[a:b] for a, b in zip(cuts, cuts[1:] + [x.shape[0]])]

    async def scenario():
        async with connect(srv.url) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "audio_start", "stream": "mixed", "sample_rate": SR,
                                      "format": "pcm16"}))
            await recv_until(ws, lambda m: m["type"] == "audio_started")
            for f in frames:
                await ws.send(f.tobytes())
            notice = await recv_until(ws, lambda m: m["type"] == "error")
            deadline = time.monotonic() + TIMEOUT
            while sum(g.shape[0] for g in got) < x.shape[0] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return notice

    notice = run(scenario())
    assert notice["code"] == "rate_limited"  # the burst did go through the paced path
    assert len(got) > len(frames)  # big frames are handed over a hop at most at a time
    np.testing.assert_array_equal(np.concatenate(got), x.astype(np.float32) / np.float32(32768))


def test_a_bug_while_answering_a_request_is_one_log_line_and_a_500(server, caplog):
    """Whatever goes wrong while a request is answered, the log gets one line and no traceback (websockets
    would log one at ERROR), the client a 500, and the server goes on."""
    import logging
    import urllib.error
    import urllib.request

    srv = server()
    caplog.set_level(logging.INFO)

    def broken(*args):
        raise ZeroDivisionError("a bug")

    srv.server._http = broken  # the page handler fails: the bug this guards against
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/", timeout=TIMEOUT)
    assert info.value.code == 500
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in lines] == ["handshake from 127.0.0.1 failed (ZeroDivisionError: a bug)"]
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.INFO)
    assert run(status_of(srv.url)) == 101  # the server goes on
