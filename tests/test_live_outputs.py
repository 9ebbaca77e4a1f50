"""Segment events and the station log on the live commands: `stream --segments --record` in process, and a real
`serve --record --top` process with a real websocket client and plain HTTP requests to /api/check and
/api/history."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from live_fixtures import REPO, free_port, tiny_bundle, write_tone_wav

from streamtag.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("live-outputs")
    return tiny_bundle(d / "tiny"), write_tone_wav(d / "tone.wav", seconds=20.0, sr=16000), d


def test_stream_emits_segments_and_records_them(setup, capsys):
    bundle, wav, d = setup
    db = str(d / "stream.db")
    code = main(["stream", str(wav), "--model", str(bundle.path), "--format", "jsonl", "--segments", "--record", db,
                 "--device", "cpu", "--hop", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    updates = [e for e in events if e["type"] == "update"]
    segs = [e for e in events if e["type"] == "segment"]
    assert updates and segs and events[-1]["type"] == "segment"  # the last one closes when the stream ends
    assert sum(s["hops"] for s in segs) == len(updates)
    assert segs[-1]["end"] == updates[-1]["t"]
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT family, genre, closed FROM segments ORDER BY start_ts").fetchall()
    finally:
        conn.close()
    assert [(r[0], r[1]) for r in rows] == [(s["family"], s["genre"]) for s in segs] and all(r[2] for r in rows)


def test_stream_refuses_a_bad_keep(setup, capsys):
    bundle, wav, d = setup
    code = main(["stream", str(wav), "--model", str(bundle.path), "--record", str(d / "x.db"), "--keep", "soon"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--keep" in err
    code = main(["stream", str(wav), "--model", str(bundle.path), "--record", str(d / "no" / "such" / "x.db")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err


def test_demo_records_the_same_segments_it_prints(setup, capsys):
    """`demo --segments --record` (issue 20's live outputs on the file-as-live command): the log holds exactly the
    segments the JSON lines closed, and a bad --record fails in one line before anything plays."""
    bundle, wav, d = setup
    db = str(d / "demo.db")
    code = main(["demo", str(wav), "--speed", "20", "--model", str(bundle.path), "--format", "jsonl", "--segments",
                 "--record", db, "--device", "cpu", "--hop", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    segs = [e for e in events if e["type"] == "segment"]
    assert segs and sum(s["hops"] for s in segs) == sum(e["type"] == "update" for e in events)
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT family, genre FROM segments ORDER BY start_ts").fetchall()
    finally:
        conn.close()
    assert [tuple(r) for r in rows] == [(s["family"], s["genre"]) for s in segs]
    for command in (["demo", str(wav)], ["listen"]):
        code = main([*command, "--model", str(bundle.path), "--record", str(d / "no" / "such" / "x.db")])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "does not exist" in err, command


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_serve_sends_segments_honours_top_and_serves_history(setup):
    from websockets.sync.client import connect

    bundle, wav, d = setup
    db = str(d / "serve.db")
    port = free_port()
    token = "t0ken-for-the-test-0123456789"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "serve", "--port", str(port), "--source", f"radio={wav}", "--speed", "4",
         "--record", db, "--top", "3", "--token", token, "--model", str(bundle.path), "--device", "cpu",
         "--hop", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        ws = None
        while ws is None:
            try:
                ws = connect(f"ws://127.0.0.1:{port}/?token={token}", open_timeout=5)
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.stderr.read().decode() if proc.poll() is not None else "no server") from None
                time.sleep(0.3)
        with ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["type"] == "hello"
            ws.send(json.dumps({"type": "subscribe", "streams": ["radio"]}))
            updates, segs = [], []
            while True:
                msg = json.loads(ws.recv(timeout=30))
                if msg["type"] == "update":
                    updates.append(msg)
                elif msg["type"] == "segment":
                    segs.append(msg)
                elif msg["type"] == "stream_ended":
                    break
        assert updates and all(len(u["top"]) == 3 for u in updates)
        assert segs and segs[-1]["end"] == pytest.approx(updates[-1]["t"])
        assert all(s["stream"] == "radio" and s["hops"] >= 1 for s in segs)
        jsonschema = pytest.importorskip("jsonschema")
        schema = json.loads((REPO / "docs" / "protocol.schema.json").read_text())
        for s in segs:  # the segment event as docs/protocol.schema.json describes it
            jsonschema.Draft202012Validator({**schema, "oneOf": [{"$ref": "#/$defs/server_message"}]}).validate(s)

        code, body = _get(f"http://127.0.0.1:{port}/api/check")
        assert code == 401 and "token" in body["error"]
        code, body = _get(f"http://127.0.0.1:{port}/api/check?token={token}")
        assert code == 200 and body["recording"] is True
        assert sorted(g for genres in body["families"].values() for g in genres) == sorted(hello["labels"])
        code, body = _get(f"http://127.0.0.1:{port}/api/history?stream=radio&minutes=10&token={token}")
        assert code == 200 and body["segments"], body
        assert [(s["family"], s["genre"]) for s in body["segments"]][-len(segs):] == \
            [(s["family"], s["genre"]) for s in segs]
        # /metrics: the token as a bearer (a Prometheus scrape config's authorization), refused without it
        code, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            text = r.read().decode()
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line and not line.startswith("#")}
        assert values["streamtag_updates_total"] >= len(updates)  # counted after the stream ended too
        assert values['streamtag_stations{state="live"}'] == 0  # it ended: no station left
        assert not [k for k in values if k.startswith("streamtag_station_")]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, proc.stderr.read().decode()


@pytest.mark.slow
def test_a_real_radio_station_logged_with_its_titles_through_the_api_and_the_cli(setup, tmp_path, capsys):
    """A loopback Icecast station with ICY titles: the API's live iterator sees them, and `stream --record` puts
    them on the segments of the station log."""
    from radio_fixtures import feed, icecast_server, music_clip, require_icecast, set_title

    import streamtag

    require_icecast()
    bundle, _, _ = setup
    clip = music_clip(tmp_path / "music.wav", seconds=6.0)
    with icecast_server(tmp_path) as ice, feed(ice.port, "/live.mp3", clip, "mp3"):
        set_title(ice.port, "/live.mp3", "Artist - First Song")
        url = f"{ice.url}/live.mp3"
        model = streamtag.load_model(bundle.path, device="cpu")
        titles = set()
        with streamtag.stream(url, model=model, hop=0.5) as live:
            deadline = time.monotonic() + 30
            for event in live.events(timeout=10):
                titles.add(getattr(event, "title", None))
                if "Artist - First Song" in titles or time.monotonic() > deadline:
                    break
        assert "Artist - First Song" in titles

        db = str(tmp_path / "radio.db")
        code = main(["stream", url, "--model", str(bundle.path), "--format", "jsonl", "--record", db,
                     "--duration", "6", "--device", "cpu", "--hop", "0.5"])
        assert code == 0, capsys.readouterr().err
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT station, title, end_ts - start_ts FROM segments").fetchall()
        logged = conn.execute("SELECT SUM(seconds) FROM hourly").fetchone()[0]
    finally:
        conn.close()
    assert rows and {r[0] for r in rows} == {url} and rows[-1][1] == "Artist - First Song"
    assert logged == pytest.approx(sum(r[2] for r in rows), abs=1e-3) and logged > 2.0
