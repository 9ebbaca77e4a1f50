"""The decoder processes' mux loop: live MP3/AAC stations read on one selector loop (sources/mux.py).

Real parts: a scripted ICY server on loopback (bytes exactly as Icecast sends them: ``icy-metaint`` audio bytes,
a length byte, a StreamTitle block), real FFmpeg-encoded clips, the real decoder process. The loop must give the
samples FFmpeg's demuxer gives for the same bytes, and keep every guarantee of the thread-per-station reader:
titles, deadlines (a stalled server is a drop, then reconnects with backoff), the URL policy, credentials never
shown, figures for the health line.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import live_bundle, make_engine
from radio_fixtures import ScriptedServer, ffmpeg_generate, music_clip, wait_until

from streamtag.errors import SourceError
from streamtag.live import LiveRunner
from streamtag.sources import PolicyError, SourcePolicy, read_audio
from streamtag.sources.pool import SourcePool

SR = 16000
METAINT = 4096
TITLE = "Artist\x1b - Song\x07"  # control characters: shown as spaces, then collapsed


def icy_body(audio: bytes, title: str, metaint: int = METAINT) -> bytes:
    """``audio`` as an Icecast mount sends it with ICY metadata: the title in the first block, empty blocks after."""
    meta = f"StreamTitle='{title}';".encode()
    meta += b"\0" * (-len(meta) % 16)
    out = bytearray()
    for i, start in enumerate(range(0, len(audio), metaint)):
        chunk = audio[start:start + metaint]
        out += chunk
        if len(chunk) == metaint:
            out += bytes([len(meta) // 16]) + meta if i == 0 else b"\0"
    return bytes(out)


def icy_head(ctype: str = "audio/mpeg") -> bytes:
    return f"ICY 200 OK\r\nContent-Type: {ctype}\r\nicy-name: test\r\nicy-metaint: {METAINT}\r\n\r\n".encode()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """The same music as a live MP3 (no Xing/ID3 header, as a mount sends it) and as ADTS AAC, 44.1 kHz stereo."""
    d = tmp_path_factory.mktemp("mux")
    src = music_clip(d / "m.wav", 8.0, channels=2)
    out = {}
    for name, args in (("mp3", ["-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0", "-id3v2_version", "0"]),
                       ("aac", ["-c:a", "aac", "-b:a", "96k", "-f", "adts"]),
                       ("ogg", ["-c:a", "libvorbis", "-q:a", "3"])):
        path = d / f"m.{name}"
        ffmpeg_generate(path, f"amovie={src}", 8.0, sr=44100, channels=2, codec_args=args)
        out[name] = path
    return out


class RecordingFeed:
    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.stamps: list[tuple[float, float, float]] = []  # (its bytes came in from, until; it got here)
        self.titles: list[str | None] = []
        self.events: list[tuple[str, str]] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None

    def push(self, samples: np.ndarray, arrived: tuple[float, float] | None = None) -> None:
        self.blocks.append(np.array(samples))
        first, last = (float("nan"), float("nan")) if arrived is None else arrived
        self.stamps.append((first, last, time.monotonic()))

    def title(self, title: str | None) -> None:
        self.titles.append(title)

    def event(self, kind: str, detail: str) -> None:
        self.events.append((kind, detail))

    def end(self, error: BaseException | None) -> None:
        self.error = error
        self.ended.set()

    def backlog(self) -> float:
        return 0.0

    @property
    def samples(self) -> int:
        return sum(b.shape[0] for b in self.blocks)


def start_in(got: np.ndarray, want: np.ndarray) -> int:
    """Where ``got`` starts in ``want``: before its start a live station keeps only its newest audio
    (PRESTART_KEEP_S), so the first samples of what the server sent before then may be gone."""
    offsets = [int(o) for o in np.flatnonzero(np.abs(want[:16001] - got[0]) <= 1e-6)
               if np.allclose(got[:3200], want[o:o + 3200], atol=1e-6)]
    assert offsets, "the stream's samples are not the file's"
    return offsets[0]


def assert_stamped_by_bursts(stamps: list[tuple[float, float, float]], sent: list[tuple[float, float]]) -> None:
    """Every delivery is stamped (first <= last <= its receipt), and the audio of bursts 1.. (received within 0.9 s
    of the burst's send) came in from after the previous burst was read (the socket then sat empty) until a read
    after this burst began to be sent."""
    assert all(first <= last <= got for first, last, got in stamps)  # NaN (no stamp) fails too
    for i in range(1, len(sent)):
        before, after = sent[i]
        mine = [(first, last) for first, last, got in stamps if before < got < before + 0.9]
        assert mine, f"no audio of burst {i} arrived within 0.9 s"
        assert all(sent[i - 1][1] < first <= after and before <= last for first, last in mine), (mine, sent)


def serve_once(data: bytes, go: threading.Event, *, ctype: str = "audio/mpeg", first: int = 6000):
    """A handler: headers and ``first`` bytes, then (once ``go`` is set) the rest, then the connection closes."""
    def handler(conn: socket.socket, index: int, stop: threading.Event) -> None:
        conn.sendall(icy_head(ctype) + data[:first])
        if not go.wait(30):
            return
        for i in range(first, len(data), 8192):
            conn.sendall(data[i:i + 8192])
            time.sleep(0.002)
        conn.shutdown(socket.SHUT_WR)
        stop.wait(0.5)

    return handler


@pytest.mark.parametrize("codec", ["mp3", "aac", "ogg"])
def test_the_mux_loop_gives_the_samples_ffmpeg_demuxes_and_the_icy_title(clips, codec):
    audio = clips[codec].read_bytes()
    ctype = {"mp3": "audio/mpeg", "aac": "audio/aacp", "ogg": "application/ogg"}[codec]
    go = threading.Event()
    first = 9000 if codec == "ogg" else 6000  # the first frame: Vorbis sends ~4 kB of headers first
    with ScriptedServer(serve_once(icy_body(audio, TITLE), go, ctype=ctype, first=first)) as server, \
            SourcePool(SR, workers=1) as pool:
        src = pool.open(server.url(f"/live.{codec}"), SR, max_retries=0)
        assert src.info["reader"] == "mux" and src.info["codec"] in ("mp3float", "aac", "vorbis")
        assert src.title == "Artist - Song"
        feed = RecordingFeed()
        src.start(feed, None)
        go.set()
        assert feed.ended.wait(30)
    got = np.concatenate(feed.blocks)
    want = read_audio(str(clips[codec]), SR)  # FFmpeg's demuxer on the same bytes, the same conversion
    assert isinstance(feed.error, SourceError) and "ended" in str(feed.error)  # max_retries=0: no reconnect
    o = start_in(got, want)
    # the end: a file's is trimmed to its length (its resampler flushed there), a live stream's is never flushed
    n = min(got.shape[0], want.shape[0] - o - 256)
    assert n >= want.shape[0] - o - 3200
    np.testing.assert_allclose(got[:n], want[o:o + n], atol=1e-6)


@pytest.mark.parametrize("codec", ["mp3", "aac"])
def test_a_station_decodes_only_the_part_of_a_burst_its_owner_keeps(clips, codec):
    """Icecast sends seconds of audio at once to a new listener, and the pool keeps only the newest PRESTART_KEEP_S
    of what a station decodes while it connects and while ``keeping()`` (before its start, its first FRESH_S). With
    keep_connect_s those reads decode only the packets that cover that (plus CONNECT_PRIME_S): every byte is still
    read, and what is decoded is the newest audio, the same music as a full decode's."""
    from streamtag.sources.mux import CONNECT_PRIME_S, NetStation, open_network

    audio = clips[codec].read_bytes()
    ctype = {"mp3": "audio/mpeg", "aac": "audio/aacp"}[codec]
    body = icy_body(audio, TITLE)
    burst = len(body) // 2  # 4 s of the 8 s clip at once, as a burst-on-connect
    decoded = {}
    for keep in (None, 0.25):
        go = threading.Event()
        with ScriptedServer(serve_once(body, go, ctype=ctype, first=burst)) as server:
            station = open_network(server.url(), SR, keep_connect_s=keep, max_retries=0)
            assert isinstance(station, NetStation)
            try:
                station.keeping = lambda: True  # as the pool's in a station's first second
                got = list(station.early)
                quiet, last = 0, -1
                while quiet < 4:  # every byte of the burst read (no new byte in 4 passes)
                    time.sleep(0.05)
                    assert station.read_ready(got) is None
                    quiet, last = (quiet + 1, last) if station.bytes_in == last else (0, station.bytes_in)
                assert station.decode_errors == 0  # a decoder that starts mid-stream skips nothing it was given
                decoded[keep] = (np.concatenate(got), station.connect_skipped, station.bytes_in, station.title)
            finally:
                go.set()
                station.close()
                station.release()
    full, skipped_full, bytes_full, title_full = decoded[None]
    tail, skipped, bytes_tail, title = decoded[0.25]
    assert skipped_full == 0 and skipped > 50  # ~3 s of packets not decoded
    assert bytes_tail == bytes_full and title == title_full == "Artist - Song"  # every byte still read
    assert full.shape[0] / SR > 3.0
    assert (0.25 + CONNECT_PRIME_S) * SR <= tail.shape[0] <= full.shape[0] / 2  # each read: its newest 0.5 s
    # the newest 0.25 s: the same music as the full decode's last 0.25 s. The resampler started elsewhere and holds
    # back a few samples more or less at the end of a read, so the two agree within a few samples' shift (a
    # fraction of a sample apart on top): the best correlation within +-2 ms, not sample by sample
    b = full[-4050:-50].astype(np.float64)
    best = max((np.corrcoef(tail[len(tail) - 4050 + k : len(tail) - 50 + k], b)[0, 1], k) for k in range(-32, 33))
    assert best[0] > 0.99, best
    a = tail[len(tail) - 4050 + best[1] : len(tail) - 50 + best[1]].astype(np.float64)
    assert np.abs(b).max() > 0.01 and abs(np.sqrt((a ** 2).mean()) / np.sqrt((b ** 2).mean()) - 1.0) < 0.05


def test_mux_audio_is_stamped_with_when_its_bytes_could_first_have_arrived(clips):
    """Latency counts from the audio's arrival at the machine, not its decoding: the pool stamps each delivery
    with when its bytes came in: from the time the socket was last seen empty (they wait up to a pass there)
    until the read that took them."""
    audio = clips["mp3"].read_bytes()
    go = threading.Event()
    sent: list[tuple[float, float]] = []  # (before, after) each burst's sendall

    def handler(conn: socket.socket, index: int, stop: threading.Event) -> None:
        conn.sendall(icy_head() + audio[:6000])
        if not go.wait(30):
            return
        for start in range(6000, 6000 + 4 * 8192, 8192):  # 0.5 s of audio a second, in one burst
            before = time.monotonic()
            conn.sendall(audio[start:start + 8192])
            sent.append((before, time.monotonic()))
            if stop.wait(1.0):
                return
        stop.wait(5)

    with ScriptedServer(handler) as server, SourcePool(SR, workers=1) as pool:
        src = pool.open(server.url("/live.mp3"), SR, max_retries=0)
        feed = RecordingFeed()
        src.start(feed, None)
        wait_until(lambda: feed.samples > 0, 10, "the audio decoded at the open")
        go.set()
        wait_until(lambda: len(sent) == 4 and time.monotonic() > sent[-1][1] + 0.8, 15, "four bursts")
        src.close()
    assert_stamped_by_bursts(feed.stamps, sent)


def test_a_station_on_the_mux_loop_gives_the_same_updates_as_the_same_audio_pushed(tmp_path, clips):
    bundle = live_bundle(tmp_path)
    audio = clips["mp3"].read_bytes()
    go = threading.Event()
    engine = make_engine(bundle, hop=0.5)
    events: list[tuple] = []
    removed = threading.Event()

    class Sink:
        def on_stream_added(self, name, source, title): events.append(("added", name, title))
        def on_update(self, updates): events.extend(("update", u.stream, u) for u in updates)
        def on_title(self, name, title): events.append(("title", name, title))
        def on_status(self, name, kind, detail): events.append(("status", name, kind))
        def on_stream_removed(self, name, error):
            events.append(("removed", name, error))
            if name == "radio":
                removed.set()

    runner = LiveRunner(engine, [Sink()]).start()
    try:
        # what comes before the start (~0.1 s) fits in the pre-start keep (PRESTART_KEEP_S): nothing is trimmed
        with ScriptedServer(serve_once(icy_body(audio, TITLE), go, first=1600)) as server, \
                SourcePool(SR, workers=1) as pool:
            runner.add_source("radio", pool.open(server.url(), SR, max_retries=0))
            go.set()
            assert removed.wait(60)
        runner.flush()
        runner.add_stream("pushed")
        want_audio = read_audio(str(clips["mp3"]), SR)
        for block in np.array_split(want_audio, 17):
            runner.push("pushed", block)
        runner.flush()
    finally:
        runner.stop()
    got = [e[2] for e in events if e[0] == "update" and e[1] == "radio"]
    want = [e[2] for e in events if e[0] == "update" and e[1] == "pushed"]
    assert len(got) >= 10 and len(want) >= len(got)
    assert [u.t for u in got] == pytest.approx([u.t for u in want[: len(got)]], abs=1e-9)
    for a, b in zip(got, want):
        assert a.raw == pytest.approx(b.raw, abs=1e-5)
    # the title: with the stream's start, or (its metadata block after the first 4 kB) as an event just after
    assert ("added", "radio", "Artist - Song") in events or ("title", "radio", "Artist - Song") in events


def test_a_stalled_station_on_the_mux_loop_reconnects_with_backoff_and_counts_it(clips):
    """Each connection sends ~1 s of audio and then nothing (socket open): dropped after stall_timeout, reconnected
    with backoff; max_retries ends it with the thread reader's error; the figures count the reconnects."""
    audio = clips["mp3"].read_bytes()

    def handler(conn, index, stop):
        conn.sendall(icy_head() + icy_body(audio[:20000], f"song {index}"))
        stop.wait(60)

    with ScriptedServer(handler) as server, SourcePool(SR, workers=1) as pool:
        src = pool.open(server.url(), SR, stall_timeout=1.0, read_timeout=60.0, max_retries=2,
                        backoff_initial=0.05, backoff_max=0.1)
        assert src.info["reader"] == "mux"
        feed = RecordingFeed()
        src.start(feed, None)
        assert feed.ended.wait(40)
        connections = server.connections
    assert connections == 3
    assert isinstance(feed.error, SourceError) and "2 reconnect attempts failed" in str(feed.error)
    kinds = [k for k, _ in feed.events]
    assert kinds.count("dropped") == 3 and kinds.count("connected") == 2 and kinds.count("reconnecting") == 2
    assert all("no audio for 1 s" in d for k, d in feed.events if k == "dropped")
    assert feed.samples > 2 * SR  # every connection's audio came through
    assert feed.titles[-1] == "song 2"


def test_the_mux_loop_reports_bytes_and_state_for_the_health_line(clips):
    audio = clips["aac"].read_bytes()
    go = threading.Event()
    with ScriptedServer(serve_once(icy_body(audio, "x"), go, ctype="audio/aac", first=30000)) as server, \
            SourcePool(SR, workers=1) as pool:
        src = pool.open(server.url("/a.aac"), SR, max_retries=0)
        src.start(RecordingFeed(), None)
        wait_until(lambda: src.stats.bytes_in > 0 and src.stats.samples > 0, 10, "the figures")
        assert src.stats.state == "live" and src.stats.samples > 0 and src.stats.decode_errors == 0
        go.set()


def test_the_mux_path_keeps_the_policy_and_never_shows_credentials(clips):
    audio = clips["mp3"].read_bytes()
    go = threading.Event()
    with ScriptedServer(serve_once(icy_body(audio, "t"), go)) as server, SourcePool(SR, workers=1) as pool:
        secret = f"http://user:hunter2@127.0.0.1:{server.port}/live.mp3?key=hunter2"
        with pytest.raises(PolicyError, match="refused by policy") as info:
            pool.open(secret, SR, SourcePolicy())  # loopback is private: refused after DNS, nothing opened
        assert "hunter2" not in str(info.value)
        src = pool.open(secret, SR, SourcePolicy.permissive(), max_retries=0)
        assert src.info["reader"] == "mux"
        shown = f"{src.name} {src.label} {src.info}"
        assert "hunter2" not in shown and "127.0.0.1" in shown
        src.close()
        go.set()
        port = server.port
    with SourcePool(SR, workers=1) as pool, pytest.raises(SourceError) as info:
        pool.open(f"http://user:hunter2@127.0.0.1:{port}/gone.mp3", SR, SourcePolicy.permissive(), max_retries=0)
    assert "hunter2" not in str(info.value) and "refused" in str(info.value)


def test_thread_read_audio_is_stamped_with_when_its_bytes_came_in(clips):
    """A station the mux loop does not read (here a chunked body: FFmpeg's demuxer on a reader thread) is stamped
    the same way: from when the socket was last seen empty until the read that took the bytes, not when the
    reader thread got round to delivering the audio."""
    audio = clips["mp3"].read_bytes()
    go = threading.Event()
    sent: list[tuple[float, float]] = []  # (before, after) each burst's sendall

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def handler(conn: socket.socket, index: int, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunk(audio[:40000]))  # enough for FFmpeg's probe
        if not go.wait(30) or stop.wait(0.5):
            return
        for start in range(40000, 40000 + 4 * 8192, 8192):  # 0.5 s of audio a second, in one burst
            before = time.monotonic()
            conn.sendall(chunk(audio[start:start + 8192]))
            sent.append((before, time.monotonic()))
            if stop.wait(1.0):
                return
        stop.wait(5)

    with ScriptedServer(handler) as server, SourcePool(SR, workers=1) as pool:
        src = pool.open(server.url("/live.mp3"), SR, max_retries=0)
        assert "reader" not in src.info  # the thread reader, not the mux loop
        feed = RecordingFeed()
        src.start(feed, None)  # what the open decoded waits for the next block (a live source's newest audio)
        go.set()
        wait_until(lambda: len(sent) == 4 and time.monotonic() > sent[-1][1] + 0.8, 15, "four bursts")
        src.close()
    assert_stamped_by_bursts(feed.stamps, sent)


def test_opus_and_files_over_http_keep_the_thread_reader(tmp_path):
    """What the loop does not decode opens as before: a file of known length over HTTP (one connection), an Ogg
    of another codec than Vorbis (a second connection, for FFmpeg's demuxer)."""
    clip = ffmpeg_generate(tmp_path / "t.ogg", "sine=frequency=440", 3.0, codec_args=["-c:a", "libvorbis"])
    opus = ffmpeg_generate(tmp_path / "t.opus", "sine=frequency=440", 3.0, sr=48000, codec_args=["-c:a", "libopus"])
    file_head = f"HTTP/1.0 200 OK\r\nContent-Type: audio/ogg\r\nContent-Length: {clip.stat().st_size}\r\n\r\n"

    def handler(conn, index, stop):
        if b"opus" in server.requests[index]:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: audio/ogg\r\n\r\n" + opus.read_bytes())
        else:
            conn.sendall(file_head.encode() + clip.read_bytes())
        stop.wait(30)

    with ScriptedServer(handler) as server, SourcePool(SR, workers=1) as pool:
        src = pool.open(server.url("/file.ogg"), SR, max_retries=0)
        assert src.info["codec"] == "vorbis" and "reader" not in src.info
        src.close()
        assert server.connections == 1
        src = pool.open(server.url("/live.opus"), SR, max_retries=0)
        assert src.info["codec"] == "opus" and "reader" not in src.info
        src.close()
        assert server.connections == 3


def test_the_ogg_reader_splits_pages_into_packets_and_follows_a_new_stream(clips):
    """Sans-I/O: any split of the bytes gives the same packets; garbage is skipped; a second logical stream
    (a chained Ogg: the next song) starts over with its own headers."""
    from streamtag.sources.mux import OggReader

    data = clips["ogg"].read_bytes()
    whole = OggReader()
    packets = whole.feed(data)
    assert whole.headers_done and len(packets) > 100
    for size in (1, 7, 4096):
        r = OggReader()
        got = [p for i in range(0, len(data), size) for p in r.feed(data[i:i + size])]
        assert got == packets and r.extradata == whole.extradata
    chained = OggReader()
    got = chained.feed(b"garbage" + data[:5000])
    got += chained.feed(data[5000:])
    assert chained.skipped == 7 and not chained.restarted
    again = chained.feed(with_serial(data, b"ABCD"))  # the same song again, as a new logical stream
    assert chained.restarted and chained.serial == int.from_bytes(b"ABCD", "little") and again == packets


def with_serial(data: bytes, serial: bytes) -> bytes:
    """``data`` (Ogg pages) with every page's stream serial number set to ``serial`` (4 bytes)."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        assert out[pos:pos + 4] == b"OggS"
        out[pos + 14:pos + 18] = serial
        n_seg = out[pos + 26]
        pos += 27 + n_seg + sum(out[pos + 27:pos + 27 + n_seg])
    return bytes(out)


def test_https_stations_on_the_mux_loop(tmp_path, clips, monkeypatch):
    """TLS on a non-blocking socket: decrypted bytes the selector cannot see (SSL's own buffer) are read too, and
    an untrusted certificate is the thread reader's one-line error."""
    import ssl

    from radio_fixtures import self_signed_cert

    pem = self_signed_cert(tmp_path)
    body = icy_body(clips["mp3"].read_bytes(), "over TLS")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop, go = threading.Event(), threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                conn = context.wrap_socket(raw, server_side=True)
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                conns.append(conn)
                conn.sendall(icy_head() + body[:6000])
                if go.wait(30):
                    conn.sendall(body[6000:])  # then silence, socket open: a live stream between songs
            except (OSError, ssl.SSLError):
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/live.mp3"
    try:
        with SourcePool(SR, workers=1) as pool:
            with pytest.raises(SourceError, match="TLS handshake") as info:
                pool.open(url, SR, max_retries=0)
            assert "\n" not in str(info.value)
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # the decoder process inherits it: trusted now
        with SourcePool(SR, workers=1) as pool:
            src = pool.open(url, SR, max_retries=0)
            assert src.info["reader"] == "mux" and src.title == "over TLS"
            feed = RecordingFeed()
            src.start(feed, None)
            go.set()
            want = read_audio(str(clips["mp3"]), SR)
            wait_until(lambda: feed.samples >= want.shape[0] - 3200, 20, "the whole clip over TLS")
            src.close()
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in conns:
            conn.close()
    got = np.concatenate(feed.blocks)
    o = start_in(got, want)
    np.testing.assert_allclose(got[:32000], want[o:o + 32000], atol=1e-6)


def test_closing_a_reconnecting_station_leaves_no_thread_or_socket_behind(clips):
    """In-process loop: a server that cuts every connection after a little audio makes the station reconnect
    over and over; closing it (while connected or waiting to reconnect) ends its reconnect thread and sockets."""
    import os

    from streamtag.sources.mux import MuxLoop, NetStation, open_network

    audio = clips["mp3"].read_bytes()

    def handler(conn, index, stop):
        conn.sendall(icy_head() + icy_body(audio[:12000], f"cut {index}"))
        conn.shutdown(socket.SHUT_WR)

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    delivered: list[int] = []
    ended: list[BaseException | None] = []
    stopping = threading.Event()
    loop = MuxLoop(lambda st, blocks, since: delivered.append(sum(b.shape[0] for b in blocks)),
                   lambda st, e: ended.append(e), stopping)
    before = fds()
    with ScriptedServer(handler) as server:
        stations = []
        for _ in range(4):
            station = open_network(server.url(), SR, backoff_initial=0.01, backoff_max=0.05, healthy_after=0.0)
            assert isinstance(station, NetStation)
            loop.add(station)
            stations.append(station)
        wait_until(lambda: server.connections >= 20, 20, "reconnects")
        for station in stations:
            station.close()
        wait_until(lambda: not [t for t in threading.enumerate() if t.name == "mux-reconnect"], 10,
                   "the reconnect threads to end")
        # the loop still runs: the closed stations' sockets are gone (the server's own stay open till its exit)
        wait_until(lambda: fds() <= before + 1 + len(server._conns), 10, "the closed stations' sockets to close")
        stopping.set()
    wait_until(lambda: fds() <= before, 10, "the sockets to close")  # the server's own are closed by now
    assert sum(delivered) > 4 * SR // 2 and not ended  # audio from the connections; closed is not an error
    assert all(s.reconnects >= 1 for s in stations)
