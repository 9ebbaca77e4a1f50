"""Fault suite, source side: tiny servers on loopback that trickle headers or body, stall, send garbage or redirect
to private addresses, and what the source policy lets a caller open.

Every test asserts a behaviour (an error, a counted reconnect, a refusal) within a generous bound, never a tight
timing: the bounds are several times the configured deadlines so a loaded machine cannot make them flake.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from radio_fixtures import ScriptedServer, http_server, tone_clip, trickle, wait_until

from streamtag.errors import SourceError
from streamtag.sources import PolicyError, ReconnectPolicy, SourcePolicy, display_name, open_source
from streamtag.sources import policy as policy_module

SR = 16000
REPO = Path(__file__).resolve().parents[1]
AUDIO_HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n"


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, kind: str, detail: str) -> None:
        with self._lock:
            self.events.append((kind, detail))

    def of(self, kind: str) -> list[str]:
        with self._lock:
            return [d for k, d in self.events if k == kind]


@pytest.fixture(scope="module")
def mp3_bytes(tmp_path_factory) -> bytes:
    path = tone_clip(tmp_path_factory.mktemp("mp3") / "t.mp3", 3.0, sr=44100, codec_args=["-c:a", "libmp3lame"])
    return path.read_bytes()


def timed(fn):
    start = time.monotonic()
    try:
        fn()
    finally:
        elapsed = time.monotonic() - start
    return elapsed


# deadlines ----------------------------------------------------------------------------------------------------------


def test_trickled_headers_hit_the_overall_header_deadline() -> None:
    """1 header byte every 0.2 s never trips a per-read timeout; the overall header deadline ends it."""
    def handler(conn, index, stop):
        trickle(conn, b"HTTP/1.0 200 OK\r\n" + b"X-Slow: " + b"a" * 10_000, 0.2, stop)

    with ScriptedServer(handler) as server:
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"did not answer within 1\.5 s") as info:
            open_source(server.url(), SR, header_timeout=1.5, read_timeout=30.0, max_retries=0)
        elapsed = time.monotonic() - start
    assert elapsed < 15.0  # 1.5 s deadline, generous bound; without it this would run for 2000 s
    assert "\n" not in str(info.value)


def test_redirect_hops_share_one_header_budget(mp3_bytes: bytes) -> None:
    """Five redirects, each answered just under the header deadline, cannot add up to five deadlines."""
    def handler(conn, index, stop):
        if index < 5:
            answer = f"HTTP/1.0 302 Found\r\nLocation: /hop{index + 1}\r\n\r\n".encode()
            trickle(conn, answer, 1.0 / len(answer), stop)  # ~1 s per hop, under the 1.5 s header deadline
        else:
            conn.sendall(AUDIO_HEAD + mp3_bytes)

    with ScriptedServer(handler) as server:
        with pytest.raises(SourceError, match="did not answer within"):
            open_source(server.url(), SR, connect_timeout=0.5, header_timeout=1.5, max_retries=0)
        assert server.connections < 5  # the budget (connect + header = 2 s) ran out after two or three hops


def test_trickled_body_without_audio_is_an_error_at_open(mp3_bytes: bytes) -> None:
    """Headers arrive, then the body at 20 bytes/s: no decoded audio within stall_timeout -> one-line error."""
    def handler(conn, index, stop):
        conn.sendall(AUDIO_HEAD)
        trickle(conn, mp3_bytes, 0.05, stop)

    with ScriptedServer(handler) as server:
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"no audio arrived within 1\.5 s"):
            open_source(server.url(), SR, stall_timeout=1.5, read_timeout=30.0)
        assert time.monotonic() - start < 15.0


def test_stall_after_audio_is_a_drop_and_reconnects_are_counted(mp3_bytes: bytes) -> None:
    """Every connection sends ~1 s of audio then goes silent (socket open): each is dropped after stall_timeout,
    reconnected with backoff, and max_retries ends it with an error; events say so in usable words."""
    def handler(conn, index, stop):
        conn.sendall(AUDIO_HEAD + mp3_bytes[:20000])
        stop.wait(60)

    events = Events()
    with ScriptedServer(handler) as server:
        source = open_source(server.url(), SR, stall_timeout=1.0, read_timeout=60.0, max_retries=2,
                             backoff_initial=0.05, backoff_max=0.1, on_event=events)
        blocks: list[np.ndarray] = []
        start = time.monotonic()
        with pytest.raises(SourceError, match="2 reconnect attempts failed") as info:
            for block in source:
                blocks.append(block)
        elapsed = time.monotonic() - start
        connections = server.connections
    assert elapsed < 30.0
    assert connections == 3  # the first connection + 2 reconnects
    assert len(events.of("dropped")) == 3 and all("no audio for 1 s" in d for d in events.of("dropped"))
    reconnecting = events.of("reconnecting")
    # attempts 1 and 2 connect (then stall again); a third would exceed max_retries=2, so the source gives up
    assert [re.fullmatch(r"in \d+\.\d s \(attempt (\d+)\)", d).group(1) for d in reconnecting] == ["1", "2"]
    assert len(events.of("connected")) == 2
    assert sum(b.shape[0] for b in blocks) > 2 * SR  # audio from every connection came through
    assert "\n" not in str(info.value)


def test_close_wakes_a_source_reconnecting_into_a_trickling_server(mp3_bytes: bytes) -> None:
    """close() from another thread ends the iteration while a reconnect is stuck in a trickled header phase."""
    def handler(conn, index, stop):
        if index == 0:
            conn.sendall(AUDIO_HEAD + mp3_bytes[:20000])
            conn.shutdown(socket_shut_wr())
            stop.wait(60)
        else:
            trickle(conn, b"HTTP/1.0 200 OK\r\n" + b"X" * 10_000, 0.5, stop)

    events = Events()
    with ScriptedServer(handler) as server:
        source = open_source(server.url(), SR, header_timeout=120.0, read_timeout=120.0, backoff_initial=0.01,
                             on_event=events)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (list(source), done.set()), daemon=True)
        thread.start()
        wait_until(lambda: server.connections >= 2, 20, "the reconnect")
        time.sleep(0.3)  # inside the trickled header phase
        source.close()
        assert done.wait(10), "close() did not wake the reconnecting source"
        thread.join(timeout=5)


def socket_shut_wr() -> int:
    import socket

    return socket.SHUT_WR


def test_garbage_from_the_server_is_an_error_not_a_hang() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()

    def handler(conn, index, stop):
        conn.sendall(AUDIO_HEAD)
        for i in range(0, len(noise), 4096):
            if stop.is_set():
                return
            conn.sendall(noise[i : i + 4096])
            time.sleep(0.01)

    with ScriptedServer(handler) as server:
        start = time.monotonic()
        with pytest.raises(SourceError) as info:
            source = open_source(server.url(), SR, stall_timeout=2.0, max_retries=0)
            for _ in zip(range(10_000), source):
                pass
        assert time.monotonic() - start < 30.0
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"SSH-2.0-OpenSSH_9.6 SECRET-BANNER\r\n", "did not answer in HTTP"),
        (b"HTTP/1.0 404 SECRET-BANNER\r\n\r\n", "HTTP 404 Not Found"),
        (b"HTTP/1.0 500 SECRET-BANNER\r\n\r\n", "HTTP 500 Internal Server Error"),
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/secret-banner\r\n\r\n<html>SECRET-BANNER</html>", "web page"),
        (b"HTTP/1.0 200 OK\r\nContent-Type: application/secret-banner\r\n\r\n" + b"SECRET-BANNER " * 5000, ""),
        (b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Length: " + b"9" * 20000
         + b"\r\nicy-metaint: " + b"9" * 20000 + b"\r\n\r\nSECRET-BANNER", ""),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: audio/mpeg\r\n\r\nSECRET-BANNER\r\n",
         ""),
    ],
)
def test_errors_never_echo_the_servers_bytes(answer: bytes, fragment: str) -> None:
    def handler(conn, index, stop):
        conn.sendall(answer)

    with ScriptedServer(handler) as server:
        with pytest.raises(SourceError) as info:
            open_source(server.url(), SR, stall_timeout=2.0, max_retries=0)
    message = str(info.value)
    assert fragment in message and "SECRET" not in message and "OpenSSH" not in message and "\n" not in message


def test_reconnect_policy_validates_its_fields() -> None:
    from streamtag.errors import ConfigError

    with pytest.raises(ConfigError, match="read_timeout"):
        ReconnectPolicy(read_timeout=-1)
    with pytest.raises(ConfigError, match="max_retries"):
        ReconnectPolicy(max_retries=-2)
    p = ReconnectPolicy(backoff_initial=1.0, backoff_max=4.0, jitter=0.0)
    assert [p.backoff(k) for k in (1, 2, 3, 4, 60)] == [1.0, 2.0, 4.0, 4.0, 4.0]


# Ctrl-C -------------------------------------------------------------------------------------------------------------


def _bundle_arg(tmp_path: Path) -> list[str]:
    try:
        from live_fixtures import tiny_bundle
    except ImportError:
        return []
    return ["--model", str(tiny_bundle(tmp_path / "tiny").path)]


@pytest.mark.parametrize("state", ["headers", "body"])
def test_ctrl_c_ends_stream_on_a_trickling_server(tmp_path: Path, mp3_bytes: bytes, state: str) -> None:
    """`streamtag stream URL` stuck on a trickling server (in the header phase, or inside PyAV's probe of a
    trickled body) exits with 130 soon after SIGINT: the PyAV read callback no longer swallows it."""
    def handler(conn, index, stop):
        if state == "headers":
            trickle(conn, b"HTTP/1.0 200 OK\r\n" + b"X" * 10_000, 0.3, stop)
        else:
            conn.sendall(AUDIO_HEAD)
            trickle(conn, b"\0" * 10_000, 0.3, stop)

    with ScriptedServer(handler) as server:
        cmd = [sys.executable, "-m", "streamtag", "stream", server.url(), "--format", "jsonl", "--device", "cpu",
               *_bundle_arg(tmp_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            wait_until(lambda: server.connections >= 1 or proc.poll() is not None, 120, "the connection")
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(1.5)  # well inside the trickle (headers: 15 s deadline; body: 15 s stall deadline)
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=10)  # a behaviour bound, not a timing: without the fix it never exits
            except subprocess.TimeoutExpired:
                pytest.fail("streamtag stream did not exit within 10 s of SIGINT")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
    assert code == 130, stderr
    assert "Traceback" not in stderr


# policy: URLs ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def only_127_0_0_1_public(monkeypatch):
    """Treat 127.0.0.1 as a public address (so a loopback test server can play the public one) and every other
    non-global address as the policy normally does."""
    real = policy_module.is_public_address

    def fake(address: str) -> bool:
        return address == "127.0.0.1" or real(address)

    monkeypatch.setattr(policy_module, "is_public_address", fake)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "[::1]", "10.1.2.3", "169.254.169.254",
                                  "0.0.0.0", "224.0.0.1", "[::ffff:127.0.0.1]"])
def test_private_addresses_are_refused_without_connecting(host: str) -> None:
    def handler(conn, index, stop):
        conn.sendall(AUDIO_HEAD)

    with ScriptedServer(handler) as server:
        url = f"http://user:secret@{host}:{server.port}/live.mp3"
        with pytest.raises(PolicyError) as info:
            open_source(url, SR, policy=SourcePolicy(), connect_timeout=2.0)
        assert server.connections == 0
    assert str(info.value) == f"http://{host}:{server.port}/live.mp3: refused by policy"


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/secret", "http://[::1]:{port}/", "http://169.254.169.254/latest/meta-data",
                                    "file:///etc/passwd", "gopher://127.0.0.1:{port}/"])
def test_every_redirect_is_checked(only_127_0_0_1_public, target: str) -> None:
    inner = ScriptedServer(lambda conn, index, stop: conn.sendall(AUDIO_HEAD), host="127.0.0.2")
    with inner:
        location = target.format(port=inner.port)

        def handler(conn, index, stop):
            conn.sendall(f"HTTP/1.0 302 Found\r\nLocation: {location}\r\n\r\n".encode())

        with ScriptedServer(handler) as outer:
            with pytest.raises(PolicyError) as info:
                open_source(outer.url("/go"), SR, policy=SourcePolicy(), connect_timeout=2.0)
            assert outer.connections == 1
        assert inner.connections == 0
    assert str(info.value) == f"{outer.url('/go')}: refused by policy"


def test_playlist_entries_and_hls_segments_are_checked(only_127_0_0_1_public, tmp_path: Path) -> None:
    inner = ScriptedServer(lambda conn, index, stop: conn.sendall(AUDIO_HEAD), host="127.0.0.2")
    with inner:
        (tmp_path / "radio.pls").write_text(f"[playlist]\nFile1=http://127.0.0.2:{inner.port}/x.mp3\n")
        (tmp_path / "index.m3u8").write_text(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n"
            f"http://127.0.0.2:{inner.port}/seg0.ts\n#EXT-X-ENDLIST\n"
        )
        (tmp_path / "master.m3u8").write_text(
            f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://127.0.0.2:{inner.port}/v.m3u8\n"
        )
        with http_server(tmp_path) as base:
            for name in ("radio.pls", "master.m3u8"):
                with pytest.raises(PolicyError, match="refused by policy"):
                    open_source(f"{base}/{name}", SR, policy=SourcePolicy())
            source = open_source(f"{base}/index.m3u8", SR, policy=SourcePolicy())
            with pytest.raises(PolicyError, match="refused by policy"):
                list(source)
        assert inner.connections == 0


def test_allow_private_urls_opens_loopback(mp3_bytes: bytes) -> None:
    def handler(conn, index, stop):
        conn.sendall(AUDIO_HEAD + mp3_bytes)

    with ScriptedServer(handler) as server:
        with open_source(server.url(), SR, policy=SourcePolicy(allow_private_urls=True), max_retries=0) as source:
            assert next(source).shape == (1600,)


# policy: local files ------------------------------------------------------------------------------------------------


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "music"
    allowed.mkdir()
    outside = tmp_path / "private"
    outside.mkdir()
    tone_clip(allowed / "ok.wav", 0.5, sr=16000)
    tone_clip(outside / "secret.wav", 0.5, sr=16000)
    (allowed / "escape.wav").symlink_to(outside / "secret.wav")
    (allowed / "dirlink").symlink_to(outside)
    return allowed, outside


def test_files_only_under_allowed_directories(jail: tuple[Path, Path]) -> None:
    allowed, outside = jail
    policy = SourcePolicy(allow_files=(allowed,))
    with open_source(allowed / "ok.wav", SR, policy=policy) as source:
        assert source.info["uri"] == "ok.wav" and next(source).dtype == np.float32
    refused = {
        str(outside / "secret.wav"): "secret.wav",
        str(outside / "missing.wav"): "missing.wav",  # same answer whether it exists or not
        str(allowed / ".." / "private" / "secret.wav"): "secret.wav",
        str(allowed / "escape.wav"): "escape.wav",  # symlink out of the jail
        str(allowed / "dirlink" / "secret.wav"): "secret.wav",
        f"file://{outside / 'secret.wav'}": "secret.wav",
        "/etc/passwd": "passwd",
        "-": "stdin",
    }
    for spec, shown in refused.items():
        with pytest.raises(PolicyError) as info:
            open_source(spec, SR, policy=policy)
        assert str(info.value) == f"{shown}: refused by policy", spec
    with pytest.raises(PolicyError):
        open_source("/anything", SR, policy=SourcePolicy())  # the default allows no files at all


def test_errors_inside_the_jail_show_the_file_name_only(jail: tuple[Path, Path]) -> None:
    allowed, _ = jail
    with pytest.raises(SourceError) as info:
        open_source(allowed / "nope.wav", SR, policy=SourcePolicy(allow_files=(allowed,)))
    assert str(info.value).startswith("nope.wav: ") and str(allowed) not in str(info.value)


def test_local_playlist_entries_obey_the_policy(jail: tuple[Path, Path]) -> None:
    allowed, outside = jail
    (allowed / "list.m3u").write_text(f"ok.wav\n{outside / 'secret.wav'}\n../private/secret.wav\n")
    policy = SourcePolicy(allow_files=(allowed,))
    with open_source(allowed / "list.m3u", SR, policy=policy) as source:
        y = np.concatenate(list(source))
        assert source.played == 1 and source.skipped == 2
    assert y.shape == (SR // 2,)
    (allowed / "bad.m3u").write_text(f"{outside / 'secret.wav'}\n")
    with pytest.raises(SourceError, match="none of its 1 entries"):
        open_source(allowed / "bad.m3u", SR, policy=policy)


# playlists and display names ----------------------------------------------------------------------------------------


def test_local_playlists_play_each_entry_in_turn(tmp_path: Path) -> None:
    sub = tmp_path / "songs"
    sub.mkdir()
    a = tone_clip(sub / "a.wav", 1.0, 440.0, sr=16000)
    b = tone_clip(sub / "b.ogg", 0.5, 660.0, sr=22050, codec_args=["-c:a", "libvorbis"])
    (tmp_path / "list.pls").write_text("[playlist]\nNumberOfEntries=3\nFile1=songs/a.wav\nTitle1=First\n"
                                       "File2=songs/missing.wav\nFile3=songs/b.ogg\n")
    (tmp_path / "list.m3u8").write_text("#EXTM3U\n#EXTINF:1,Song A\nsongs/a.wav\nsongs/b.ogg\n")
    from streamtag.sources import read_audio

    expected = np.concatenate([read_audio(a, SR), read_audio(b, SR)])
    for name, titles in [("list.pls", ["First", "b.ogg"]), ("list.m3u8", ["Song A", "b.ogg"])]:
        events = Events()
        with open_source(tmp_path / name, SR, on_event=events) as source:
            blocks = list(source)
        assert all(x.shape == (1600,) for x in blocks[:-1])  # re-blocked across entries
        np.testing.assert_array_equal(np.concatenate(blocks), expected)
        assert events.of("title") == titles


def test_display_name_strips_credentials_and_paths() -> None:
    assert display_name("http://user:pw@radio.example:8000/live.mp3") == "http://radio.example:8000/live.mp3"
    assert display_name("https://radio.example/live?key=abc") == "https://radio.example/live?…"
    assert display_name("/home/me/Music/song.mp3") == "song.mp3"
    assert display_name("file:///home/me/Music/song%20x.mp3") == "song x.mp3"
    assert display_name("-") == "stdin"
    assert display_name("../../etc/passwd") == "passwd"


# hostile metadata ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["nan", "inf", "-5", "0", "abc", "1e308", ""])
def test_hostile_hls_numbers_are_clamped(target: str) -> None:
    from streamtag.sources.hls import MAX_TARGET_DURATION, MIN_TARGET_DURATION, MediaPlaylist, parse_playlist

    text = (f"#EXTM3U\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{target}\n"
            f"#EXTINF:{target},x\nseg0.ts\n")
    playlist = parse_playlist(text, "http://cdn.example/live.m3u8")
    assert isinstance(playlist, MediaPlaylist)
    assert MIN_TARGET_DURATION <= playlist.target_duration <= MAX_TARGET_DURATION  # never a busy re-poll loop
    assert playlist.media_sequence >= 0
    assert 0.0 <= playlist.segments[0].duration <= MAX_TARGET_DURATION
    with pytest.raises(SourceError, match="not a valid HLS playlist"):
        parse_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://[bad/seg.ts\n", "http://cdn.example/x")
    master = parse_playlist(f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH={'9' * 20000}\nv.m3u8\n", "http://cdn.example/m")
    assert master.variants[0].bandwidth == 0  # type: ignore[union-attr]


def test_remote_titles_cannot_drive_the_terminal() -> None:
    from streamtag.sources.base import MAX_TITLE_CHARS, clean_title

    assert clean_title("Song\x1b[2J\x1b]0;pwned\x07 – Artist\r\n") == "Song [2J ]0;pwned – Artist"
    assert clean_title("a\u202eb") == "a b"  # no right-to-left override spoofing
    assert len(clean_title("x" * 10_000)) == MAX_TITLE_CHARS
    assert clean_title("Sigur Rós – Hoppípolla") == "Sigur Rós – Hoppípolla"


def test_read_audio_of_a_local_playlist(tmp_path: Path) -> None:
    from streamtag.sources import read_audio

    a = tone_clip(tmp_path / "a.wav", 0.5, 440.0, sr=16000)
    b = tone_clip(tmp_path / "b.wav", 0.25, 660.0, sr=8000)
    (tmp_path / "two.m3u").write_text("a.wav\nb.wav\n")
    expected = np.concatenate([read_audio(a, SR), read_audio(b, SR)])
    np.testing.assert_array_equal(read_audio(tmp_path / "two.m3u", SR), expected)



def test_a_thousand_reconnects_leave_no_thread_or_descriptor_behind(mp3_bytes: bytes) -> None:
    """A radio that sends a little audio and hangs up, 1,000 times: the source reconnects every time and keeps
    delivering audio, and afterwards this process holds no more threads or open files than before."""
    def handler(conn, index, stop):
        conn.sendall(AUDIO_HEAD + mp3_bytes[:6000])  # a few frames, then the connection ends
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    events = Events()
    with ScriptedServer(handler) as server:
        threads_before, fds_before = threading.active_count(), fds()
        source = open_source(server.url(), SR, max_retries=None, backoff_initial=0.0, backoff_max=0.0,
                             read_timeout=10.0, stall_timeout=10.0, on_event=events)
        samples = 0
        for block in source:
            samples += block.shape[0]
            if len(events.of("connected")) >= 1000:
                break
        source.close()
        connections = server.connections
    wait_until(lambda: threading.active_count() <= threads_before, 10, "the source's threads to end")
    assert connections >= 1000 and len(events.of("connected")) >= 1000
    assert samples > 1000 * 0.1 * SR  # every connection's audio came through
    assert fds() <= fds_before + 1  # (+1: at most a descriptor the interpreter opened meanwhile)
