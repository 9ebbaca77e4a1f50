"""The web page in real headless Chromium, driven over the Chrome DevTools Protocol (plain websockets).

The page is loaded from the real server, subscribes, and its bars must change as updates arrive; the browser's
(fake) microphone goes to the server as a stream; the page reconnects after a server restart. The overview shows
every stream, the timeline draws the last minutes (from a real station log when one is recorded), a wrong or
missing token and a stream's end are said on the page. Screenshots are saved to artifacts/browser*.png
(git-ignored). Skips when Chromium is missing.
"""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from live_fixtures import REPO, ServerThread, free_port, live_bundle, make_engine, write_tone_wav

ARTIFACTS = REPO / "artifacts"
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt install chromium)")


class Chromium:
    """Headless Chromium with a fresh profile, one page, driven over CDP."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1000,900",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--autoplay-policy=no-user-gesture-required", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.skip("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 << 20, open_timeout=10).__enter__()
        self._ids = itertools.count(1)
        target = self.cmd("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.cmd("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def cmd(self, method: str, session: str | None = None, **params) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + 20
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def eval(self, expression: str):
        r = self.cmd("Runtime.evaluate", self.session, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is still loading
                value = None
            if value:
                return value
            time.sleep(0.1)
        log = self.eval("document.getElementById('log').textContent")
        raise AssertionError(f"timed out waiting for {expression}; page log: {log!r}")

    def navigate(self, url: str) -> None:
        self.cmd("Page.navigate", self.session, url=url)

    def screenshot(self, path: Path) -> Path:
        data = self.cmd("Page.captureScreenshot", self.session, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def browser(tmp_path):
    chrome = Chromium(tmp_path / "profile")
    try:
        yield chrome
    finally:
        chrome.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return live_bundle(tmp_path_factory.mktemp("bundle"))


BARS = ("JSON.stringify([...document.querySelectorAll('#bars .bar')]"
        ".map(b => [b.dataset.label, b.dataset.p, b.querySelector('.fill').style.width]))")
COUNT = "Number(document.getElementById('updates').dataset.count)"
CARDS = "[...document.querySelectorAll('#overview .card')]"


TOP = 3  # serve --top: the bars the page shows


@pytest.mark.slow
def test_page_shows_live_bars_sends_the_microphone_and_reconnects(browser, bundle, tmp_path):
    engine = make_engine(bundle, hop=0.25)
    tone = write_tone_wav(tmp_path / "tone.wav", seconds=60.0)
    port = free_port()
    srv = ServerThread(engine, port=port, file_speed=2.0, top=TOP).start()
    srv2 = None
    try:
        srv.add_source("radio", str(tone))
        srv.add_source("second", str(tone))
        browser.navigate(f"http://127.0.0.1:{port}/?stream=radio")
        browser.wait_for("document.getElementById('status').dataset.state === 'connected'")
        assert browser.eval("document.getElementById('stream').value") == "radio"

        browser.wait_for(f"{COUNT} >= 2")
        first = json.loads(browser.eval(BARS))
        assert len(first) == TOP  # --top K: K graded bars, not every label
        assert {label for label, _, _ in first} <= set(engine.labels_shown)
        for _, p, width in first:  # each bar's width is its probability
            assert float(width.rstrip("%")) == pytest.approx(100 * float(p), abs=0.06)
        n0 = browser.eval(COUNT)
        browser.wait_for(f"{COUNT} >= {n0 + 3}")
        later = json.loads(browser.eval(BARS))
        assert later != first, "bars did not move as updates arrived"
        top = browser.eval("document.getElementById('top').dataset.label")
        assert top in engine.labels_shown
        assert browser.eval("document.getElementById('confidence').textContent").endswith("% confidence")
        # every bar in its genre's family colour (the taxonomy from /api/check)
        browser.wait_for("[...document.querySelectorAll('#bars .bar')].every(b => b.dataset.family)")
        # the overview: a card per stream with its family headline and level
        browser.wait_for(f"{CARDS}.length === 2 && {CARDS}.every(c => c.dataset.family)")
        cards = json.loads(browser.eval(f"JSON.stringify({CARDS}.map(c => [c.dataset.stream, c.dataset.family, "
                                        "c.querySelector('.lvl').style.width]))"))
        assert sorted(c[0] for c in cards) == ["radio", "second"]
        assert all(c[1] in engine.labels_shown and c[2].endswith("%") for c in cards)
        # the timeline of the last minutes draws the live hops
        browser.wait_for("Number(document.getElementById('timeline').dataset.runs) >= 1")
        shot = browser.screenshot(ARTIFACTS / "browser.png")
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 5000
        # choosing another stream in the overview shows it
        browser.eval(f"{CARDS}.find(c => c.dataset.stream === 'second').click()")
        assert browser.eval("document.getElementById('stream').value") == "second"
        n_sel = browser.eval(COUNT)
        browser.wait_for(f"{COUNT} >= {n_sel + 2}")

        # The browser's microphone (Chromium's fake device) becomes a stream of its own.
        browser.eval("document.getElementById('mic').click()")
        selected = "document.getElementById('stream').value"
        mic = browser.wait_for(f"{selected}.startsWith('browser-') && {selected}")
        n1 = browser.eval(COUNT)
        browser.wait_for(f"{COUNT} >= {n1 + 2}")
        assert srv.server.hub.streams[mic].source == "websocket"
        assert engine.streams[mic].t > 1.0  # seconds of browser audio reached the engine
        browser.screenshot(ARTIFACTS / "browser-mic.png")
        browser.eval("document.getElementById('mic').click()")  # stop: the page says the stream ended
        browser.wait_for("document.getElementById('notice').dataset.kind === 'ended'")

        # Restart the server on the same port: the page notices, reconnects and shows live bars again.
        browser.eval(f"{CARDS}.find(c => c.dataset.stream === 'radio').click()")
        srv.stop()
        browser.wait_for("document.getElementById('status').dataset.state !== 'connected'")
        srv2 = ServerThread(make_engine(bundle, hop=0.25), port=port, file_speed=2.0, top=TOP).start()
        srv2.add_source("radio", str(tone))
        browser.wait_for("document.getElementById('status').dataset.state === 'connected'", timeout=30)
        n2 = browser.eval(COUNT)
        browser.wait_for(f"{COUNT} >= {n2 + 2}")
        assert browser.eval("document.getElementById('stream').value") == "radio"
    finally:
        srv.stop()
        if srv2 is not None:
            srv2.stop()


@pytest.mark.slow
def test_page_says_why_it_was_refused_and_when_a_stream_ends(browser, bundle, tmp_path):
    token = "a-long-enough-token-0123456789"
    engine = make_engine(bundle, hop=0.25)
    short = write_tone_wav(tmp_path / "short.wav", seconds=4.0)
    port = free_port()
    srv = ServerThread(engine, port=port, file_speed=2.0, token=token).start()
    try:
        browser.navigate(f"http://127.0.0.1:{port}/")  # no ?token=
        browser.wait_for("document.getElementById('notice').dataset.kind === 'auth'")
        text = browser.eval("document.getElementById('notice').textContent")
        assert "token" in text and "?token=" in text
        assert browser.eval("document.getElementById('status').dataset.state") == "refused"
        browser.screenshot(ARTIFACTS / "browser-refused.png")

        browser.navigate(f"http://127.0.0.1:{port}/?token={token}&stream=short")
        browser.wait_for("document.getElementById('status').dataset.state === 'connected'")
        assert browser.eval("document.getElementById('notice').dataset.kind") is None
        srv.add_source("short", str(short))
        browser.wait_for(f"{COUNT} >= 1")
        browser.wait_for("document.getElementById('notice').dataset.kind === 'ended'", timeout=30)
        assert "stream short has ended" in browser.eval("document.getElementById('notice').textContent")
        browser.wait_for(f"{CARDS}.some(c => c.dataset.stream === 'short' && c.dataset.state === 'ended')")
        browser.screenshot(ARTIFACTS / "browser-ended.png")
    finally:
        srv.stop()


@pytest.mark.slow
def test_timeline_shows_the_station_log(browser, bundle, tmp_path):
    """With --record, the timeline starts with the log's segments of the last minutes (a real SQLite log)."""
    from datetime import datetime, timezone

    from streamtag.events import GenreUpdate
    from streamtag.store import StationLog

    db = str(tmp_path / "log.db")
    slog = StationLog(db, checkpoint_s=0.0)
    now = time.time()
    slog.on_stream_added("radio", "x", None)
    labels = list(bundle.labels)
    for i in range(240):  # the four minutes before the page opens: two families
        wall = datetime.fromtimestamp(now - 300 + i, timezone.utc).isoformat(timespec="milliseconds")
        g = labels[0] if i < 120 else labels[1]
        slog.on_update([GenreUpdate(stream="radio", t=i + 1.0, top=[(g, 0.9)], probs={g: 0.9}, raw={g: 0.9},
                                    model="tiny", wall=wall)])
    slog.on_stream_removed("radio", None)
    slog.close()
    engine = make_engine(bundle, hop=0.25)
    tone = write_tone_wav(tmp_path / "tone.wav", seconds=30.0)
    port = free_port()
    srv = ServerThread(engine, port=port, file_speed=1.0).start()
    srv.server.history_log = db
    try:
        srv.add_source("radio", str(tone))
        browser.navigate(f"http://127.0.0.1:{port}/?stream=radio")
        browser.wait_for("document.querySelectorAll('#timeline rect.run[data-source=log]').length >= 2")
        fams = json.loads(browser.eval("JSON.stringify([...document.querySelectorAll("
                                       "'#timeline rect.run[data-source=log]')].map(r => r.dataset.family))"))
        assert fams[:2] == labels[:2]
        browser.wait_for(f"{COUNT} >= 3")
        browser.wait_for("document.querySelectorAll('#timeline rect.run[data-source=live]').length >= 1")
        assert "station log" in browser.eval("document.getElementById('history-note').textContent")
        browser.screenshot(ARTIFACTS / "browser-history.png")
    finally:
        srv.stop()
