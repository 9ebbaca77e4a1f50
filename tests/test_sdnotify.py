"""serve as a systemd Type=notify service: the notifications a real serve process sends through NOTIFY_SOCKET (a
datagram socket the test holds, as systemd would), and the Notifier's reading of systemd's environment."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_fixtures import free_port, hangup_default, tiny_bundle, write_tone_wav

from streamtag.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[1]


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def test_the_notifier_reads_systemds_environment(tmp_path):
    assert not Notifier({}).enabled and Notifier({}).send(READY=1) is False  # not under systemd: nothing sent
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).address is None  # neither a path nor abstract: ignored
    assert Notifier({"NOTIFY_SOCKET": "@sd-abc"}).address == b"\0sd-abc"
    mine = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier(mine).watchdog_s == 30.0
    assert Notifier({**mine, "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 30.0
    assert Notifier({**mine, "WATCHDOG_PID": "1"}).watchdog_s is None  # meant for another process
    assert Notifier({**mine, "WATCHDOG_USEC": "x"}).watchdog_s is None
    with _listener(tmp_path / "n") as sock:
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n")})
        assert n.send(STATUS="two\nlines", READY=1)
        assert _fields(sock.recv(4096)) == {"STATUS": "two lines", "READY": "1"}  # one line per field
        n.close()
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send(READY=1) is False  # no listener: no error


def test_serve_tells_systemd_ready_reloading_status_watchdog_and_stopping(tmp_path):
    model = tmp_path / "model"
    tiny_bundle(model)
    write_tone_wav(tmp_path / "tone.wav", seconds=120.0)
    stations = tmp_path / "stations.txt"
    stations.write_text("one=tone.wav\n")
    port = free_port()
    sock = _listener(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtag", "serve", "--model", str(model), "--port", str(port), "--sources",
         str(stations), "--device", "cpu", "--health-every", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, preexec_fn=hangup_default,
    )
    got: list[tuple[float, dict[str, str]]] = []

    def until(done, timeout: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                fields = _fields(sock.recv(65536))
            except TimeoutError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                continue
            got.append((time.monotonic(), fields))
            if done(fields):
                return fields
        raise AssertionError(f"timed out; got {got[-5:]}")

    try:
        ready = until(lambda f: f.get("READY") == "1")
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # READY=1: it listens already
            pass
        assert ready["STATUS"].startswith(f"serving ws://127.0.0.1:{port}/") and "1 source" in ready["STATUS"]
        until(lambda f: "1 station" in f.get("STATUS", "") and "updates/s" in f["STATUS"])  # the health line
        stations.write_text("one=tone.wav\ntwo=tone.wav\n")
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        reloading = until(lambda f: f.get("RELOADING") == "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        reloaded = until(lambda f: f.get("READY") == "1")
        assert reloaded["STATUS"] == "reloaded stations.txt: 1 added, 0 removed, 0 changed, 0 restarted, 1 unchanged"
        stations.write_text("one=tone.wav\nbad name=tone.wav\n")  # a list that does not parse: still READY
        proc.send_signal(signal.SIGHUP)
        until(lambda f: f.get("RELOADING") == "1")
        failed = until(lambda f: f.get("READY") == "1")
        assert failed["STATUS"].startswith("reload failed: --sources stations.txt line 2"), failed
        for _ in range(3):  # the watchdog keeps being fed while the engine steps
            until(lambda f: f.get("WATCHDOG") == "1", timeout=10)
        proc.send_signal(signal.SIGTERM)
        until(lambda f: f.get("STOPPING") == "1")
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sock.close()
    assert proc.returncode == 0
    pings = [t for t, f in got if f.get("WATCHDOG") == "1"]
    assert len(pings) >= 4 and pings[0] < t_hup  # every 0.2 s while the engine steps, from the start on


def test_the_watchdog_starves_when_the_engine_thread_stops_iterating():
    """A hung engine (its loop's iteration count stays put) gets no WATCHDOG=1, so systemd restarts serve; a
    runner without an engine thread here (the cluster's gateway) is fed while the event loop runs."""
    import asyncio
    from types import SimpleNamespace

    from streamtag.app import _feed_watchdog

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[dict[str, object]] = []

        def send(self, **fields: object) -> bool:
            self.sent.append(fields)
            return True

    async def run(runner: object, advance: bool) -> int:
        systemd = Recorder()
        task = asyncio.ensure_future(_feed_watchdog(systemd, runner, 0.01))
        for _ in range(20):
            await asyncio.sleep(0.01)
            if advance:
                runner.iterations += 1  # type: ignore[attr-defined]
        task.cancel()
        return sum(1 for f in systemd.sent if f == {"WATCHDOG": 1})

    assert asyncio.run(run(SimpleNamespace(iterations=7), advance=False)) == 0
    assert asyncio.run(run(SimpleNamespace(iterations=7), advance=True)) >= 5
    assert asyncio.run(run(SimpleNamespace(), advance=False)) >= 5


def test_the_systemd_unit_is_a_notify_service_with_a_watchdog():
    from test_examples import _unit

    service = _unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) >= 30  # twice the longest engine step seen under overload, and more


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
