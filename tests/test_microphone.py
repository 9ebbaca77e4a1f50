"""Microphone capture through real PortAudio: a private PulseAudio server, a null sink playing a real clip,
and `streamtag listen` recording the sink's monitor through PortAudio's ALSA ``pulse`` device.

Needs: pulseaudio + pulseaudio-utils (paplay, pactl), libportaudio2, libasound2-plugins (the ALSA pulse plugin).
Skips cleanly when any is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from live_fixtures import example_clip, live_bundle, write_tone_wav

from streamtag.errors import DeviceError

SINK = "streamtag_test"


def _portaudio_ok() -> bool:
    try:
        import sounddevice  # noqa: F401
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """Environment for a private PulseAudio daemon with a null sink whose monitor is the default source."""
    missing = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt install pulseaudio pulseaudio-utils)")
    if not _portaudio_ok():
        pytest.skip("PortAudio missing (apt install libportaudio2)")
    if not Path("/usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so").exists() and not list(
        Path("/usr/lib").glob("**/libasound_module_pcm_pulse.so")
    ):
        pytest.skip("the ALSA pulse plugin is missing (apt install libasound2-plugins)")
    root = tmp_path_factory.mktemp("pulse")
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(root),
        "PULSE_RUNTIME_PATH": str(root / "pulse"),
        "PULSE_STATE_PATH": str(root / "state"),
        "HOME": str(root),
        "PULSE_SOURCE": f"{SINK}.monitor",  # what PortAudio's "pulse"/"default" ALSA devices record
        "PULSE_SINK": SINK,
    }
    started = subprocess.run(
        ["pulseaudio", "--daemonize=yes", "--system=false", "--exit-idle-time=-1", "-n", "--disallow-exit",
         "--load=module-native-protocol-unix", f"--load=module-null-sink sink_name={SINK} rate=44100 channels=2",
         "--log-target=stderr"],
        env=env, capture_output=True, text=True, timeout=20,
    )
    try:
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=5).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip(f"pulseaudio did not start: {started.stderr.strip()[-300:]}")
        yield env
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> str:
    return str(live_bundle(tmp_path_factory.mktemp("bundle")).path)


def _cli(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtag", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _py(code: str, env: dict) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (PortAudio reads the PulseAudio environment once, at start-up)."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_devices_lists_the_pulse_device(pulse):
    res = _py("import sys; from streamtag.commands_live import cmd_devices; sys.exit(cmd_devices(None))", pulse)
    assert res.returncode == 0, res.stderr
    assert "pulse" in res.stdout and "* default input" in res.stdout


@pytest.mark.slow
def test_listen_records_a_clip_played_into_a_null_sink(pulse, bundle_path, tmp_path):
    clip = example_clip() or write_tone_wav(tmp_path / "tone.wav", seconds=30)
    player = subprocess.Popen(["paplay", f"--device={SINK}", str(clip)], env=pulse,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        res = _cli(["listen", "--device", "pulse", "--format", "jsonl", "--duration", "5", "--model", bundle_path,
                    "--compute", "cpu", "--hop", "0.5", "--record", str(tmp_path / "mic.db")], pulse)
    finally:
        player.kill()
        player.wait(5)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(events) >= 4, res.stderr
    assert {e["stream"] for e in events} == {"mic"}
    ts = [e["t"] for e in events]
    steps = {round(b - a, 3) for a, b in zip(ts, ts[1:])}
    assert len(steps) == 1 and abs(steps.pop() - 0.5) < 0.01  # one update per hop, none skipped
    levels = [e["level_db"] for e in events if e["level_db"] is not None]
    assert levels and max(levels) > -40, f"the monitor carried no music: levels {levels}"
    assert all(e["overruns"] == 0 for e in events)
    # the microphone's own PortAudio overflow count travels with every update
    assert all(isinstance(e["input_overruns"], int) and e["input_overruns"] >= 0 for e in events)
    # --record: the station log holds the microphone's segments, up to its last update
    conn = sqlite3.connect(tmp_path / "mic.db")
    try:
        rows = conn.execute("SELECT station, family, end_ts FROM segments WHERE closed = 1").fetchall()
    finally:
        conn.close()
    last_wall = datetime.fromisoformat(events[-1]["wall"]).timestamp()
    assert rows and {r[0] for r in rows} == {"mic"} and max(r[2] for r in rows) == pytest.approx(last_wall, abs=0.01)


_LISTEN_API = """
import streamtag
model = streamtag.load_model({bundle!r}, device="cpu")
levels = []
with streamtag.listen("pulse", model=model, hop=0.5) as live:
    for event in live.events(timeout=15):
        if isinstance(event, streamtag.GenreUpdate):
            levels.append(event.extra["level_db"])
            if len(levels) >= 6:
                break
print(len(levels), max(levels))
"""


@pytest.mark.slow
def test_the_python_api_listens_to_the_microphone(pulse, bundle_path, tmp_path):
    """streamtag.listen(): the live iterator over a real PortAudio device (docs/api.md)."""
    clip = example_clip() or write_tone_wav(tmp_path / "tone.wav", seconds=30)
    player = subprocess.Popen(["paplay", f"--device={SINK}", str(clip)], env=pulse,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        res = _py(_LISTEN_API.format(bundle=bundle_path), pulse)
    finally:
        player.kill()
        player.wait(5)
    assert res.returncode == 0, res.stderr
    n, level = res.stdout.split()
    assert int(n) == 6 and float(level) > -40, res.stdout


_OPEN = """
from streamtag.errors import DeviceError
from streamtag.sources.microphone import MicrophoneSource
try:
    MicrophoneSource({device!r}, sample_rate=16000)
except DeviceError as e:
    print(e)
else:
    print("opened")
"""


def test_unknown_device_is_one_line_listing_the_devices(pulse):
    res = _py(_OPEN.format(device="no-such-mic"), pulse)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "no input device matching 'no-such-mic'" in lines[0] and "'pulse'" in lines[0]
    assert _py(_OPEN.format(device="pulse"), pulse).stdout.strip() == "opened"
    assert _py(_OPEN.format(device=999), pulse).stdout.startswith("no input device with index 999; available:")


def test_no_input_device_is_a_clear_error(tmp_path):
    if not _portaudio_ok():
        pytest.skip("PortAudio missing")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "PULSE_RUNTIME_PATH": str(tmp_path / "none"),
           "PULSE_SERVER": f"unix:{tmp_path}/no-server", "HOME": str(tmp_path)}
    res = _py(_OPEN.format(device=None), env)
    if res.stdout.strip() == "opened":
        pytest.skip("this machine has an input device without PulseAudio")
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no audio input device found;")


def test_missing_portaudio_is_a_one_line_device_error(monkeypatch):
    """sounddevice raises OSError when libportaudio cannot be loaded; we turn it into a hint."""
    from streamtag.sources import microphone

    class NoPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    with pytest.raises(DeviceError) as info:
        microphone.list_input_devices()
    msg = str(info.value)
    assert "\n" not in msg and "libportaudio2 (apt)" in msg and "portaudio (brew)" in msg


def test_file_tagging_does_not_import_sounddevice():
    code = ("import sys, streamtag.cli, streamtag.live, streamtag.publishers.websocket, streamtag.commands_live; "
            "sys.exit(1 if 'sounddevice' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_listen_ends_promptly_on_sigterm_and_sigint_with_its_summary(pulse, bundle_path, sig, code):
    proc = subprocess.Popen([sys.executable, "-m", "streamtag", "listen", "--device", "pulse", "--format", "jsonl",
                             "--model", bundle_path, "--compute", "cpu", "--hop", "0.5"], env=pulse,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # listening: the first update arrived
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(first)["stream"] == "mic"
    assert proc.returncode == code, err
    assert time.monotonic() - t0 < 10.0  # bench/bench_radio.py measures the real figure
    assert "Traceback" not in err and "mic:" in err and "stopped" in err
