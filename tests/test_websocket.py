"""Websocket protocol and server: the sans-I/O core, then a real server on loopback with real clients."""
from __future__ import annotations

import asyncio
import json
import queue
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import (
    REPO,
    ServerThread,
    default_bundle,
    example_clip,
    free_port,
    live_bundle,
    make_engine,
    tiny_bundle,
    write_tone_wav,
)

from streamtag.errors import ConfigError
from streamtag.protocol import Hub, Outbox

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

SCHEMA_PATH = REPO / "docs" / "protocol.schema.json"
TIMEOUT = 20.0  # s, upper bound for anything a test waits on


# -- schema ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def validate():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)

    def check(msg: dict, side: str = "server") -> dict:
        sub = {**schema, "oneOf": [{"$ref": f"#/$defs/{side}_message"}]}
        jsonschema.Draft202012Validator(sub).validate(msg)
        return msg

    return check


# -- sans-I/O core --------------------------------------------------------------------------------------------
def _update(stream: str, k: int) -> dict:
    return {"type": "update", "stream": stream, "t": float(k), "wall": "x", "model": "m",
            "top": [["rock", 0.5]], "probs": {"rock": 0.5}, "raw": {"rock": 0.5}}


def test_outbox_keeps_newest_per_stream_and_counts_dropped():
    box = Outbox(max_streams=8, depth=1)
    for k in range(5):
        box.put_update("a", json.dumps(_update("a", k)))
    box.put_update("b", json.dumps(_update("b", 0)))
    first = json.loads(box.pop())
    assert (first["stream"], first["t"], first["dropped"]) == ("a", 4.0, 4)  # only the newest of "a" survived
    second = json.loads(box.pop())
    assert second["stream"] == "b" and "dropped" not in second  # reported once, then reset
    assert box.pop() is None and box.dropped_total == 4


def test_outbox_depth_absorbs_bursts_and_serves_streams_round_robin():
    box = Outbox(max_streams=8, depth=3)
    for k in range(3):
        box.put_update("a", json.dumps(_update("a", k)))
    box.put_update("b", json.dumps(_update("b", 0)))
    assert box.dropped_total == 0 and len(box) == 4
    order = [(m["stream"], m["t"]) for m in (json.loads(box.pop()) for _ in range(4))]
    assert order == [("a", 0.0), ("b", 0.0), ("a", 1.0), ("a", 2.0)]
    for k in range(10):
        box.put_update("a", json.dumps(_update("a", k)))
    got = [json.loads(box.pop()) for _ in range(3)]
    assert [m["t"] for m in got] == [7.0, 8.0, 9.0] and got[0]["dropped"] == 7
    box.put_update("a", json.dumps(_update("a", 10)))
    box.flush_stream("a")
    box.put_control({"type": "stream_ended", "stream": "a", "reason": "ended"})
    assert [json.loads(box.pop())["type"] for _ in range(2)] == ["update", "stream_ended"]


def test_outbox_bound_evicts_oldest_stream():
    box = Outbox(max_streams=3, depth=1)
    for s in "abcde":
        box.put_update(s, json.dumps(_update(s, 0)))
    got = [json.loads(box.pop()) for _ in range(3)]
    assert [m["stream"] for m in got] == ["c", "d", "e"] and got[0]["dropped"] == 2
    assert box.pop() is None


def test_outbox_control_overflow_flags_client():
    box = Outbox()
    for k in range(300):
        box.put_control({"type": "error", "code": "bad_json", "message": str(k)})
    assert box.overflowed and len(box) == 256


def _hub() -> Hub:
    return Hub(model="m", labels=["rock", "jazz"], sample_rate=16000, hop_seconds=0.5, max_message_bytes=1 << 20)


def _drain(client) -> list[dict]:
    out = []
    while (text := client.outbox.pop()) is not None:
        out.append(json.loads(text))
    return out


@pytest.mark.parametrize(
    "text, code",
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "subscribe", "streams": ["nope"]}', "unknown_stream"),
        ('{"type": "subscribe", "streams": []}', "bad_message"),
        ('{"type": "add_source", "name": "x", "uri": "a.ogg"}', "unauthorized"),
        ('{"type": "audio_start", "stream": "m", "sample_rate": 44100, "format": "mp3"}', "bad_audio"),
        ('{"type": "audio_start", "stream": "m", "sample_rate": 12, "format": "pcm16"}', "bad_audio"),
        ('{"type": "audio_start", "stream": "bad name!", "sample_rate": 44100}', "bad_message"),
        ('{"type": "audio_stop"}', "bad_message"),
    ],
)
def test_hub_rejects_bad_messages_with_an_error_reply(text, code, validate):
    hub = _hub()
    client = hub.connect(authorized=False)
    validate(_drain(client)[0])  # hello
    assert hub.receive(client, text) == []
    [err] = _drain(client)
    validate(err)
    assert err["type"] == "error" and err["code"] == code and err["message"]


def test_hub_routes_updates_to_subscribers_only(validate):
    hub = _hub()
    hub.stream_added("a", "a.ogg")
    hub.stream_added("b", "b.ogg")
    ca, cstar, cnone = (hub.connect(authorized=False) for _ in range(3))
    hub.receive(ca, json.dumps({"type": "subscribe", "streams": ["a"], "id": 7}))
    hub.receive(cstar, json.dumps({"type": "subscribe", "streams": "*"}))
    for c in (ca, cstar, cnone):
        [validate(m) for m in _drain(c)]
    hub.publish(_update("a", 1))
    hub.publish(_update("b", 1))
    assert [m["stream"] for m in _drain(ca)] == ["a"]
    assert [m["stream"] for m in _drain(cstar)] == ["a", "b"]
    assert _drain(cnone) == []
    assert hub.published == {"a": 1, "b": 1}
    hub.receive(cstar, json.dumps({"type": "unsubscribe", "streams": ["a"]}))
    assert validate(_drain(cstar)[0])["streams"] == ["b"]  # "*" minus a
    hub.publish(_update("a", 2))
    assert _drain(cstar) == []


def test_hub_audience_follows_every_subscription_change():
    """publish/stream_status reach exactly the clients whose ``wants`` says so, after any sequence of
    (un)subscribes, audio starts, stream removals, connects and disconnects (the hub keeps an index)."""
    rng = random.Random(23)
    hub = _hub()
    hub.max_streams = hub.max_audio_streams = 1000
    names = [f"s{k}" for k in range(6)]
    for name in names:
        hub.stream_added(name, f"{name}.ogg")
    clients = [hub.connect(authorized=False) for _ in range(4)]
    for step in range(400):
        op = rng.randrange(7)
        live = [n for n in names if n in hub.streams]
        c = rng.choice(clients) if clients else None
        if op == 0 and c is not None and live:
            pick = rng.sample(live, rng.randint(1, len(live)))
            hub.receive(c, json.dumps({"type": "subscribe", "streams": "*" if rng.random() < 0.3 else pick}))
        elif op == 1 and c is not None and live:
            pick = rng.sample(live, rng.randint(1, len(live)))
            hub.receive(c, json.dumps({"type": "unsubscribe", "streams": "*" if rng.random() < 0.3 else pick}))
        elif op == 2 and c is not None and not c.audio:
            hub.receive(c, json.dumps({"type": "audio_start", "stream": f"mic{step}", "sample_rate": 16000,
                                       "format": "pcm16"}))
            if c.audio:  # accepted: the server adds it as AudioStart would
                hub.stream_added(f"mic{step}", "websocket")
                names.append(f"mic{step}")
        elif op == 3 and live:
            hub.stream_removed(rng.choice(live), "ended")
        elif op == 4:
            clients.append(hub.connect(authorized=False))
        elif op == 5 and c is not None:
            hub.disconnect(c)
            clients.remove(c)
        elif op == 6:
            name = f"n{step}"
            hub.stream_added(name, f"{name}.ogg")
            names.append(name)
        for x in clients:
            _drain(x)
        for name in [n for n in names if n in hub.streams]:
            expected = {x.id for x in clients if x.wants(name)}
            assert hub.publish(_update(name, step)) == len(expected)
            got = {x.id for x in clients if any(m.get("stream") == name and m["type"] == "update" for m in _drain(x))}
            assert got == expected, (step, name)
            assert hub.stream_status(name, "dropped", "test") == len(expected)
    assert any(x.all_streams for x in clients) or any(x.subscriptions for x in clients)  # the walk subscribed some


def test_audio_decoder_pcm16_and_float32_agree_after_resampling():
    from streamtag.protocol import AudioDecoder

    sr_in, sr_out = 44100, 16000
    t = np.arange(sr_in) / sr_in
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo_f32 = np.stack([x, x], axis=1).astype("<f4").tobytes()
    pcm16 = (x * 32767).astype("<i2").tobytes()
    def chunked(decoder, data: bytes, step: int) -> np.ndarray:
        return np.concatenate([decoder.decode(data[i : i + step]) for i in range(0, len(data), step)])

    y32 = chunked(AudioDecoder(sample_rate=sr_in, fmt="float32", channels=2, target_rate=sr_out), stereo_f32, 8820 * 8)
    y16 = chunked(AudioDecoder(sample_rate=sr_in, fmt="pcm16", channels=1, target_rate=sr_out), pcm16, 4410 * 2)
    d16 = AudioDecoder(sample_rate=sr_in, fmt="pcm16", channels=1, target_rate=sr_out)
    whole = d16.decode(pcm16)
    n = min(y32.shape[0], y16.shape[0], whole.shape[0])
    assert n > 0.95 * sr_out  # the resampler holds back only its filter delay
    np.testing.assert_allclose(y16[:n], whole[:n], atol=1e-6)  # chunking leaves no seams
    np.testing.assert_allclose(y32[:n], y16[:n], atol=2e-4)  # stereo float32 == mono pcm16, to 16-bit precision
    with pytest.raises(Exception, match="whole number"):
        d16.decode(b"\x00\x01\x02")


# -- a real server ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return live_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def engine(bundle):
    return make_engine(bundle, hop=0.25)  # the module server's; other servers get their own (one stepper each)


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    return write_tone_wav(tmp_path_factory.mktemp("audio") / "tone.wav", seconds=120.0)


@pytest.fixture(scope="module")
def server(engine):
    srv = ServerThread(engine, file_speed=4.0, max_connections_per_address=64).start()  # 50 clients at once
    try:
        yield srv
    finally:
        srv.stop()


_names = iter(range(10_000))


def add_stream(srv: ServerThread, path: Path) -> str:
    name = f"s{next(_names)}"
    srv.add_source(name, str(path))
    return name


async def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, pred, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if pred(msg):
            return msg


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_hello_lists_model_labels_and_streams(server, engine, tone, validate):
    name = add_stream(server, tone)

    async def scenario():
        async with connect(server.url) as ws:
            return await recv_json(ws)

    hello = validate(run(scenario()))
    assert hello["labels"] == list(engine.labels_shown) and hello["model"] == engine.bundle.name
    assert hello["sample_rate"] == engine.sample_rate and hello["authorized"] is False
    assert name in [s["name"] for s in hello["streams"]]


@pytest.mark.slow
def test_fifty_concurrent_clients_all_receive_updates(server, tone, validate):
    name = add_stream(server, tone)

    async def client(i: int) -> list[dict]:
        async with connect(server.url) as ws:
            await recv_json(ws)  # hello
            await ws.send(json.dumps({"type": "subscribe", "streams": [name] if i % 2 else "*"}))
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            got: list[dict] = []
            while len(got) < 3:
                msg = await recv_json(ws)
                if msg["type"] == "update" and msg["stream"] == name:
                    got.append(msg)
            return got

    async def scenario():
        return await asyncio.gather(*(client(i) for i in range(50)))

    results = run(scenario())
    assert len(results) == 50 and all(len(r) == 3 for r in results)
    for r in results:
        ts = [m["t"] for m in r]
        assert ts == sorted(ts) and len(set(ts)) == 3  # in order, no repeats
    validate(results[0][0])
    stepped = {m["t"] for r in results for m in r}
    assert len(stepped) >= 3  # clients saw successive hops, not one replayed message


@pytest.fixture
def wide_server(tmp_path):
    """A server whose model has 2000 labels: ~100 KB updates, so a client that stops reading fills its socket
    (loopback TCP buffers autotune to ~4 MB)."""
    engine = make_engine(tiny_bundle(tmp_path / "wide", n_labels=2000), hop=0.25)
    srv = ServerThread(engine).start()
    try:
        yield srv, engine
    finally:
        srv.stop()


@pytest.mark.slow
def test_slow_client_loses_stale_updates_and_never_stalls_the_others(wide_server, validate):
    """A client that stops reading gets ``dropped`` counts; received + dropped == published, for everyone."""
    server, engine = wide_server
    sr = 22050
    seconds = 20.0
    t = np.arange(int(seconds * sr)) / sr
    audio = (0.3 * np.sin(2 * np.pi * (220 + 40 * (t // 2)) * t)).astype("<f4")
    hub = server.server.hub

    async def scenario():
        feeder = await connect(server.url).__aenter__()
        await recv_json(feeder)
        await feeder.send(json.dumps({"type": "audio_start", "stream": "burst", "sample_rate": sr,
                                      "format": "float32", "channels": 1}))
        await recv_until(feeder, lambda m: m["type"] == "audio_started")

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few messages
        sock.connect(("127.0.0.1", server.port))
        slow = await connect(server.url, sock=sock, max_queue=1).__aenter__()
        await recv_json(slow)
        await slow.send(json.dumps({"type": "subscribe", "streams": ["burst"]}))
        await recv_until(slow, lambda m: m["type"] == "subscribed")

        fast = []
        for _ in range(3):
            ws = await connect(server.url).__aenter__()
            await recv_json(ws)
            await ws.send(json.dumps({"type": "subscribe", "streams": ["burst"]}))
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            fast.append(ws)

        async def read_all(ws) -> tuple[int, int]:
            n = dropped = 0
            while True:
                msg = await recv_json(ws, 40)
                dropped += msg.get("dropped", 0)
                if msg["type"] == "update" and msg["stream"] == "burst":
                    n += 1
                if msg["type"] == "stream_ended" and msg["stream"] == "burst":
                    return n, dropped

        readers = [asyncio.create_task(read_all(ws)) for ws in fast]
        async def drain_feeder():  # the feeder hears its own stream; it must keep reading too
            return await read_all(feeder)
        feeder_reader = asyncio.create_task(drain_feeder())
        chunk = sr // 2
        for i in range(0, audio.shape[0], chunk):
            await feeder.send(audio[i : i + chunk].tobytes())
            await asyncio.sleep(0.01)  # ~50x real time: the engine, not the sender, sets the pace
        # Let the engine finish every hop of the burst before stopping it.
        deadline, last, stable = time.monotonic() + 30, -1, 0
        while time.monotonic() < deadline and stable < 3:
            st = engine.streams["burst"]
            drained = st.t > seconds - 0.1 and len(st.ring) == 0  # every sample reached the engine and was read
            stable = stable + 1 if drained and hub.published["burst"] == last else 0
            last = hub.published["burst"]
            await asyncio.sleep(0.2)
        await feeder.send(json.dumps({"type": "audio_stop", "stream": "burst"}))
        fast_counts = await asyncio.gather(*readers)  # the others finished while the slow one never read
        published = hub.published["burst"]
        slow_count = await read_all(slow)
        await feeder_reader
        for ws in (feeder, slow, *fast):
            await ws.close()
        return fast_counts, slow_count, published

    fast_counts, (slow_n, slow_dropped), published = run(scenario())
    print(f"published {published}, fast (received, dropped) {fast_counts}, slow {slow_n} received {slow_dropped} dropped")
    assert published >= 60  # 20 s of audio at hop 0.25 s
    for n, dropped in fast_counts:
        assert n + dropped == published
    assert slow_dropped > 0, "the slow client's socket never filled: it should have lost stale updates"
    assert slow_n + slow_dropped == published
    assert max(dropped for _, dropped in fast_counts) < slow_dropped  # the readers kept (nearly) everything


def test_malformed_json_gets_an_error_and_the_connection_stays_up(server, tone, validate):
    name = add_stream(server, tone)

    async def scenario():
        async with connect(server.url) as ws:
            await recv_json(ws)
            await ws.send("{this is not json")
            err = await recv_until(ws, lambda m: m["type"] == "error")
            await ws.send(json.dumps({"type": "subscribe", "streams": ["no-such-stream"], "id": 3}))
            unknown = await recv_until(ws, lambda m: m["type"] == "error")
            await ws.send(json.dumps({"type": "subscribe", "streams": [name]}))
            update = await recv_until(ws, lambda m: m["type"] == "update")
            return err, unknown, update

    err, unknown, update = run(scenario())
    validate(err), validate(unknown), validate(update)
    assert err["code"] == "bad_json"
    assert unknown["code"] == "unknown_stream" and unknown["id"] == 3 and name in unknown["message"]
    assert update["stream"] == name


def test_audio_in_is_tagged_and_removed_on_disconnect(server, engine, validate):
    sr = 44100
    x = (0.4 * np.sin(2 * np.pi * 330 * np.arange(sr * 5) / sr) * 32767).astype("<i2")

    async def scenario():
        async with connect(server.url) as ws:
            await recv_json(ws)
            await ws.send(b"\x00\x00")  # audio before audio_start
            early = await recv_until(ws, lambda m: m["type"] == "error")
            await ws.send(json.dumps({"type": "audio_start", "stream": "mine", "sample_rate": sr, "format": "pcm16"}))
            started = await recv_until(ws, lambda m: m["type"] == "audio_started")
            await ws.send(b"\x00\x01\x02")  # torn sample
            torn = await recv_until(ws, lambda m: m["type"] == "error")
            for i in range(0, x.shape[0], 4410):
                await ws.send(x[i : i + 4410].tobytes())
            update = await recv_until(ws, lambda m: m["type"] == "update" and m["stream"] == "mine")
            present = "mine" in engine.streams and "mine" in server.server.hub.streams
        deadline = time.monotonic() + 10
        while ("mine" in engine.streams or "mine" in server.server.hub.streams) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        gone = "mine" not in engine.streams and "mine" not in server.server.hub.streams
        return early, started, torn, update, present, gone

    early, started, torn, update, present, gone = run(scenario())
    for m in (early, started, torn, update):
        validate(m)
    assert early["code"] == "bad_audio" and torn["code"] == "bad_audio"
    assert started["engine_sample_rate"] == engine.sample_rate
    assert update["level_db"] is not None and update["level_db"] > -20  # the tone arrived, resampled
    assert present and gone


def test_message_over_the_size_limit_closes_with_1009(bundle):
    srv = ServerThread(make_engine(bundle), max_message_bytes=4096).start()
    try:
        async def scenario():
            async with connect(srv.url) as ws:
                await recv_json(ws)
                await ws.send("x" * 10_000)
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(ws)
                return info.value.rcvd.code if info.value.rcvd else None

        assert run(scenario()) == 1009
    finally:
        srv.stop()


TOKEN = "s3cret-0123456789abcdef"


def test_token_is_required_and_authorizes_sources(bundle, tone, validate):
    engine = make_engine(bundle)
    srv = ServerThread(engine, token=TOKEN, file_speed=4.0, allow_files=(tone.parent,)).start()
    try:
        srv.add_source("served", str(tone))

        async def scenario():
            refused = []
            for url in (srv.url, srv.url + "?token=wrong"):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url):
                        pass
                refused.append(info.value.response.status_code)
            async with connect(srv.url + "?token=" + TOKEN) as ws:
                hello = await recv_json(ws)
                await ws.send(json.dumps({"type": "add_source", "name": "added", "uri": str(tone), "id": "a"}))
                added = await recv_until(ws, lambda m: m["type"] in ("source_added", "error"))
                await ws.send(json.dumps({"type": "add_source", "name": "bad", "uri": "/no/such/file.ogg"}))
                missing = await recv_until(ws, lambda m: m["type"] == "error")
                await ws.send(json.dumps({"type": "subscribe", "streams": ["served"]}))
                update = await recv_until(ws, lambda m: m["type"] == "update")
                await ws.send(json.dumps({"type": "remove_source", "name": "served"}))
                ended = await recv_until(ws, lambda m: m["type"] == "stream_ended")
                removed = await recv_until(ws, lambda m: m["type"] == "source_removed")
            return refused, hello, added, missing, update, ended, removed

        refused, hello, added, missing, update, ended, removed = run(scenario())
        assert refused == [401, 401]
        for m in (hello, added, missing, update, ended, removed):
            validate(m)
        assert hello["authorized"] is True
        assert [s["source"] for s in hello["streams"]] == [tone.name]  # a local path shows only its file name
        assert added == {"type": "source_added", "name": "added", "uri": str(tone), "id": "a"}  # --allow-files
        assert missing["code"] == "source_error" and "refused by policy" in missing["message"]
        assert "/no/such" not in missing["message"]  # outside --allow-files: nothing said about the path
        assert update["stream"] == "served" and ended["stream"] == "served" and removed["name"] == "served"
        assert "served" not in engine.streams
    finally:
        srv.stop()


def test_non_loopback_bind_without_token_is_refused(capsys):
    from streamtag.cli import main
    from streamtag.publishers.websocket import ServerConfig, check_bind

    with pytest.raises(ConfigError, match="--token"):
        ServerConfig(host="0.0.0.0")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ConfigError, match="at least 16"):
        ServerConfig(token="s3cret")  # guessable: refused at start, on loopback too
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing" in err[0] and "--token" in err[0]


def test_page_is_served_over_http_on_the_same_port(server):
    base = f"http://127.0.0.1:{server.port}"
    with urllib.request.urlopen(base + "/", timeout=5) as r:
        html = r.read().decode()
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert 'id="bars"' in html and "app.js" in html
    with urllib.request.urlopen(base + "/app.js", timeout=5) as r:
        assert "WebSocket" in r.read().decode()
    for bad in ("/nope.js", "/../pyproject.toml", "/%2e%2e/pyproject.toml"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + bad, timeout=5)
        assert info.value.code == 404


def _lines(pipe, q: queue.Queue) -> None:
    for line in iter(pipe.readline, ""):
        q.put(line)


def _wait_line(q: queue.Queue, pred, timeout: float = TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if pred(line):
            return line
    raise AssertionError("timed out waiting for a line")


@pytest.mark.slow
def test_example_subscriber_survives_a_server_restart(bundle, tone):
    """examples/subscriber.py keeps printing updates across a server restart on the same port."""
    engine = make_engine(bundle)
    port = free_port()
    srv = ServerThread(engine, port=port, file_speed=4.0).start()
    srv.add_source("before", str(tone))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "subscriber.py"), f"ws://127.0.0.1:{port}/", "*"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out: queue.Queue = queue.Queue()
    err: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, err), daemon=True).start()
    srv2 = None
    try:
        first = _wait_line(out, lambda l: l.startswith("before\t"))
        label = first.split("\t")[2]
        assert label in engine.labels_shown
        srv.stop()
        _wait_line(err, lambda l: "disconnected" in l or "retrying" in l)
        srv2 = ServerThread(engine, port=port, file_speed=4.0).start()
        srv2.add_source("after", str(tone))
        _wait_line(err, lambda l: l.startswith("# connected"))
        after = _wait_line(out, lambda l: l.startswith("after\t"))
        assert float(after.split("\t")[1]) > 0
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(5)
        srv.stop()
        if srv2 is not None:
            srv2.stop()


@pytest.mark.slow
def test_default_model_updates_equal_offline_tagging(validate):
    """What a websocket client receives is the shipped model's output: raw == offline tag_audio, window by window."""
    from streamtag.pipeline import Engine, tag_audio
    from streamtag.sources import read_audio

    bundle = default_bundle()
    clip = example_clip()
    if clip is None:
        pytest.skip("no example clip (examples/audio or ../shared/audio)")
    engine = Engine(bundle, device="cpu")
    offline = tag_audio(read_audio(str(clip), engine.sample_rate)[: engine.sample_rate * 12], engine.runner,
                        name="clip", hop_seconds=engine.hop_seconds)
    srv = ServerThread(engine, file_speed=6.0).start()
    try:
        srv.add_source("clip", str(clip))

        async def scenario():
            async with connect(srv.url) as ws:
                hello = await recv_json(ws)
                await ws.send(json.dumps({"type": "subscribe", "streams": ["clip"]}))
                got = []
                while len(got) < 3:
                    msg = await recv_json(ws, 30)
                    if msg["type"] == "update":
                        got.append(msg)
                return hello, got

        hello, got = run(scenario())
    finally:
        srv.stop()
    validate(hello)
    assert hello["model"] == bundle.name and hello["labels"] == list(bundle.genre_labels)
    by_t = {round(u.t, 3): u for u in offline.updates}
    for msg in got:
        validate(msg)
        ref = by_t[msg["t"]]
        assert set(msg["probs"]) == set(bundle.genre_labels)
        np.testing.assert_allclose([msg["raw"][k] for k in ref.raw], list(ref.raw.values()), atol=2e-3)


def test_hub_sends_source_status_to_subscribers_newest_first(validate):
    hub = _hub()
    hub.stream_added("radio", "http://example.org/r.mp3")
    hub.stream_added("other", "b.ogg")
    sub, star, elsewhere = (hub.connect(authorized=False) for _ in range(3))
    hub.receive(sub, json.dumps({"type": "subscribe", "streams": ["radio"]}))
    hub.receive(star, json.dumps({"type": "subscribe", "streams": "*"}))
    hub.receive(elsewhere, json.dumps({"type": "subscribe", "streams": ["other"]}))
    for c in (sub, star, elsewhere):
        _drain(c)
    assert hub.stream_status("radio", "dropped", "the server ended the stream") == 2
    [msg] = _drain(sub)
    assert validate(msg) == {"type": "stream_status", "stream": "radio", "status": "dropped",
                             "detail": "the server ended the stream"}
    assert [m["status"] for m in _drain(star)] == ["dropped"] and _drain(elsewhere) == []
    # a client that has not read yet gets only the newest notice of a stream: a flapping source cannot pile up
    for k in range(50):
        hub.stream_status("radio", "reconnecting", f"in 1.0 s (attempt {k + 1})")
    hub.stream_status("radio", "connected", "http://example.org/r.mp3")
    assert [(m["status"], m["detail"]) for m in _drain(sub)] == [("connected", "http://example.org/r.mp3")]
    # unknown streams and kinds go nowhere; a long detail is cut
    assert hub.stream_status("gone", "dropped", "x") == 0 and hub.stream_status("radio", "title", "x") == 0
    hub.stream_status("radio", "dropped", "y" * 5000)
    assert len(validate(_drain(sub)[0])["detail"]) <= 300


def test_radio_drop_reaches_websocket_subscribers(server, tmp_path, validate):
    """A real URL source on a loopback server that hangs up: subscribers hear dropped, reconnecting, connected."""
    from radio_fixtures import ScriptedServer, tone_clip

    mp3 = tone_clip(tmp_path / "t.mp3", 3.0, sr=44100, codec_args=["-c:a", "libmp3lame"]).read_bytes()
    release = threading.Event()

    def handler(conn, index, stop):
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n" + mp3)
        if index == 0:  # the first connection hangs up when the test says so
            release.wait(30)
            conn.shutdown(socket.SHUT_RDWR)
        else:
            stop.wait(30)

    with ScriptedServer(handler) as radio:
        name = f"radio{next(_names)}"
        server.add_source(name, radio.url())

        async def scenario():
            async with connect(server.url) as ws:
                await recv_json(ws)
                await ws.send(json.dumps({"type": "subscribe", "streams": [name]}))
                await recv_until(ws, lambda m: m["type"] == "subscribed")
                release.set()
                seen = []
                while not seen or seen[-1]["status"] != "connected":
                    seen.append(await recv_until(ws, lambda m: m["type"] == "stream_status", timeout=30))
                return seen

        seen = run(scenario())
    for m in seen:
        validate(m)
        assert m["stream"] == name and "\n" not in m["detail"]
    kinds = [m["status"] for m in seen]
    # "dropped" and "reconnecting" are sent back to back: an unread notice is replaced by the newer one, so a
    # client may see either first; "reconnecting" waits out the backoff (>= 0.5 s) before "connected"
    assert kinds[0] in ("dropped", "reconnecting") and "reconnecting" in kinds and kinds[-1] == "connected"
    assert any("attempt 1" in m["detail"] for m in seen if m["status"] == "reconnecting")


def test_outbox_keyed_notices_of_many_streams_do_not_count_as_a_slow_client():
    # 500 stations reporting "connected" at once: one pending notice per stream (keyed), never "too slow"
    box = Outbox()
    for k in range(500):
        box.put_control({"type": "stream_status", "stream": f"s{k}", "status": "connected"}, key=f"status:s{k}")
    box.put_control({"type": "stream_status", "stream": "s7", "status": "dropped"}, key="status:s7")
    assert not box.overflowed and len(box) == 500
    got = [json.loads(t) for t in iter(box.pop, None)]
    assert [m["stream"] for m in got] == [f"s{k}" for k in range(500)]
    assert got[7]["status"] == "dropped"  # the newer notice replaced the unsent one in place
    for k in range(300):  # replies still count: past the bound the client is too slow
        box.put_control({"type": "error", "code": "bad_json", "message": str(k)})
    assert box.overflowed and len(box) == 256


@pytest.mark.parametrize("connect_first", [True, False], ids=["connected-before", "connected-after"])
def test_a_star_subscriber_of_more_streams_than_the_queue_bound_loses_no_whole_stream(connect_first):
    # 500 stations' updates published in one step (an engine catching up) must all reach a "*" subscriber:
    # the per-client queue grows with the streams there are (its default bound is 256 streams)
    hub = _hub()
    early = hub.connect(authorized=False) if connect_first else None
    names = [f"s{k:03d}" for k in range(500)]
    for n in names:
        hub.stream_added(n, "http://radio.example/x.mp3")
    client = early if early is not None else hub.connect(authorized=False)
    hub.receive(client, json.dumps({"type": "subscribe", "streams": "*"}))
    _drain(client)
    for n in names:
        hub.publish(_update(n, 0))
    got = [m for m in _drain(client) if m["type"] == "update"]
    assert sorted(m["stream"] for m in got) == names
    assert not any(m.get("dropped") for m in got)


def test_every_stream_ending_at_once_is_not_a_slow_star_subscriber():
    # 500 stations end in the same instant (files of one length, or a server that stops): a "*" subscriber gets
    # each stream's last update, then its end notice, and is not closed as too slow for the 500 notices
    hub = _hub()
    client = hub.connect(authorized=False)
    names = [f"s{k:03d}" for k in range(500)]
    for n in names:
        hub.stream_added(n, "/music/x.mp3")
    hub.receive(client, json.dumps({"type": "subscribe", "streams": "*"}))
    _drain(client)
    for n in names:
        hub.publish(_update(n, 3))
    for n in names:
        hub.stream_removed(n, "ended")
    assert not client.outbox.overflowed
    got = _drain(client)
    ends = [m["stream"] for m in got if m["type"] == "stream_ended"]
    assert ends == names
    position = {(m["type"], m["stream"]): i for i, m in enumerate(got) if "stream" in m}
    assert all(position[("update", n)] < position[("stream_ended", n)] for n in names)
    for k in range(300):  # replies still count: past the bound the client is too slow
        client.send({"type": "error", "code": "bad_json", "message": str(k)})
    assert client.outbox.overflowed
