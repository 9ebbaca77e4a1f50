"""Radio sources against real servers on loopback: Icecast2 fed by ffmpeg (mp3 / aac / ogg mounts, ICY titles
through the admin endpoint, a server restart), HLS served by http.server, PLS playlists, redirects, stalls."""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from radio_fixtures import (
    feed,
    http_server,
    icecast_server,
    make_hls,
    music_clip,
    require_icecast,
    self_signed_cert,
    set_title,
    stalling_server,
    stop_process,
    tone_clip,
    wait_until,
)

from streamtag.errors import SourceError
from streamtag.sources import HlsSource, ReconnectPolicy, UrlSource, open_source
from streamtag.sources.http_client import IcyDemuxer, parse_stream_title

SR = 16000
REPO = Path(__file__).resolve().parents[1]


def dominant_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spectrum) * sr / len(y))


class Recorder:
    """on_event callback that keeps (kind, detail) pairs, thread-safe."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, kind: str, detail: str) -> None:
        with self._lock:
            self.events.append((kind, detail))

    def kinds(self) -> list[str]:
        with self._lock:
            return [k for k, _ in self.events]


def read_until(source, predicate, max_blocks: int) -> list[np.ndarray]:
    """Read blocks until predicate() holds; fail after max_blocks (bounded, so nothing hangs)."""
    blocks = []
    for block in source:
        blocks.append(block)
        if predicate():
            return blocks
        if len(blocks) >= max_blocks:
            break
    raise AssertionError(f"condition not met after {len(blocks)} blocks")


# ICY parsing (sans-I/O) ---------------------------------------------------------------------------------------------


def _icy_stream(audio: bytes, metaint: int, titles: dict[int, bytes]) -> bytes:
    out = bytearray()
    for k, i in enumerate(range(0, len(audio), metaint)):
        out += audio[i : i + metaint]
        if len(audio[i : i + metaint]) == metaint:
            meta = titles.get(k, b"")
            padded = meta + b"\0" * (-len(meta) % 16)
            out += bytes([len(padded) // 16]) + padded
    return bytes(out)


def test_icy_demuxer_strips_metadata_for_any_split() -> None:
    rng = np.random.default_rng(0)
    audio = rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    titles = {0: b"StreamTitle='A - B';", 3: b"StreamTitle='C';StreamUrl='http://x';"}
    wire = _icy_stream(audio, 1000, titles)
    for _ in range(5):
        demuxer = IcyDemuxer(1000)
        got, blocks, i = bytearray(), [], 0
        while i < len(wire):
            n = int(rng.integers(1, 3000))
            a, b = demuxer.feed(wire[i : i + n])
            got += a
            blocks += b
            i += n
        assert bytes(got) == audio
        assert [parse_stream_title(b) for b in blocks] == ["A - B", "C"]


@pytest.mark.parametrize(
    ("block", "title"),
    [
        (b"StreamTitle='Guns N' Roses - Paradise City';StreamUrl='';", "Guns N' Roses - Paradise City"),
        ("StreamTitle='Sigur Rós – Hoppípolla';".encode(), "Sigur Rós – Hoppípolla"),
        ("StreamTitle='Café del Mar';".encode("latin-1"), "Café del Mar"),
        (b"StreamTitle='';\0\0\0\0", ""),
        (b"StreamUrl='http://example.com';", None),
    ],
)
def test_parse_stream_title(block: bytes, title: str | None) -> None:
    assert parse_stream_title(block) == title


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    cfg = ReconnectPolicy(backoff_initial=0.5, backoff_max=30.0)
    for attempt, nominal in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0), (10**6, 30.0)]:
        delays = [cfg.backoff(attempt) for _ in range(200)]
        assert all(0.5 * nominal <= d <= nominal for d in delays)
        assert len(set(delays)) > 1  # jittered, so reconnecting clients do not stampede


# Icecast --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def radio(tmp_path_factory, request):
    """One Icecast with four mounts: music mp3, 440 Hz tone mp3, music aac, music ogg."""
    require_icecast()
    tmp = tmp_path_factory.mktemp("icecast")
    shared = Path(__file__).resolve().parents[2] / "shared" / "audio" / "kevin-macleod-vibe-ace.ogg"
    music = shared if shared.is_file() else music_clip(tmp / "music.wav", 8.0)
    tone = tone_clip(tmp / "tone.wav", 4.0, 440.0, sr=44100)
    with contextlib.ExitStack() as stack:
        ice = stack.enter_context(icecast_server(tmp))
        for mount, clip, fmt in [("/live.mp3", music, "mp3"), ("/tone.mp3", tone, "mp3"),
                                 ("/live.aac", music, "aac"), ("/live.ogg", music, "ogg")]:
            stack.enter_context(feed(ice.port, mount, clip, fmt))
        yield ice


def test_mp3_mount_blocks_and_icy_titles(radio) -> None:
    first = "Kevin MacLeod – Vibe Ace (première)"
    set_title(radio.port, "/live.mp3", first)
    events = Recorder()
    with open_source(f"{radio.url}/live.mp3", SR, block_seconds=0.1, on_event=events) as source:
        assert isinstance(source, UrlSource)
        info = source.info
        assert info["content_type"] == "audio/mpeg" and info["format"] == "mp3"
        assert info["codec"].startswith("mp3") and info["sample_rate"] == 44100 and info["channels"] == 2
        assert info["icy_metaint"] and info["server"].startswith("Icecast")
        blocks = read_until(source, lambda: source.title == first, max_blocks=100)
        assert all(b.shape == (1600,) and b.dtype == np.float32 and np.isfinite(b).all() for b in blocks)
        assert np.sqrt(np.mean(np.concatenate(blocks) ** 2)) > 1e-3
        set_title(radio.port, "/live.mp3", "Second Song")
        read_until(source, lambda: source.title == "Second Song", max_blocks=100)
    titles = [d for k, d in events.events if k == "title"]
    assert titles[-2:] == [first, "Second Song"]


def test_live_blocks_have_the_right_rate_and_pace(radio) -> None:
    """A 440 Hz tone arrives at 440 Hz at 16 kHz, and 4.5 s of live audio cannot arrive much faster than live."""
    with open_source(f"{radio.url}/tone.mp3", SR, block_seconds=0.1) as source:
        start = time.monotonic()
        blocks = [b for _, b in zip(range(45), source)]
        elapsed = time.monotonic() - start
    y = np.concatenate(blocks)
    assert y.shape == (45 * 1600,)
    assert abs(dominant_hz(y[SR : 3 * SR], SR) - 440.0) < 1.0
    assert elapsed > 1.5  # 4.5 s of audio minus Icecast's 32 KB (2 s at 128 kbit/s) burst: paced by the feed


@pytest.mark.parametrize(("mount", "codec", "fmt"), [("/live.aac", "aac", "aac"), ("/live.ogg", "vorbis", "ogg")])
def test_aac_and_ogg_mounts(radio, mount: str, codec: str, fmt: str) -> None:
    with open_source(f"{radio.url}{mount}", SR) as source:
        assert source.info["codec"] == codec and source.info["format"] == fmt
        y = np.concatenate([b for _, b in zip(range(15), source)])
    assert y.shape == (15 * 1600,) and np.sqrt(np.mean(y**2)) > 1e-3


@pytest.mark.parametrize("case", ["404", "closed-port", "web-page", "bad-host"])
def test_first_connection_failures_raise_at_once(radio, case: str) -> None:
    """The default retries forever, yet a failing first connection raises a one-line SourceError at once."""
    from radio_fixtures import free_port

    url, fragment = {
        "404": (f"{radio.url}/no-such-mount.mp3", "HTTP 404"),
        "closed-port": (f"http://127.0.0.1:{free_port()}/live.mp3", "connection refused"),
        "web-page": (f"{radio.url}/status.xsl", "not an audio stream"),
        "bad-host": ("http://no-such-host.invalid/live.mp3", "cannot resolve host"),
    }[case]
    with pytest.raises(SourceError) as info:
        open_source(url, SR)
    assert url in str(info.value) and fragment in str(info.value) and "\n" not in str(info.value)


def test_pls_playlist_and_redirect_lead_to_the_stream(radio, tmp_path: Path) -> None:
    (tmp_path / "radio.pls").write_text(f"[playlist]\nNumberOfEntries=1\nFile1={radio.url}/live.mp3\nTitle1=x\n")
    with http_server(tmp_path, redirects={"/go": f"{radio.url}/live.ogg"}) as base:
        with open_source(f"{base}/radio.pls", SR) as source:
            assert source.info["url"] == f"{radio.url}/live.mp3"
            assert next(source).shape == (1600,)
        with open_source(f"{base}/go", SR) as source:
            assert source.info["url"] == f"{radio.url}/live.ogg" and source.info["codec"] == "vorbis"
            assert next(source).shape == (1600,)


def test_plain_http_audio_file_ends_without_reconnecting(tmp_path: Path) -> None:
    tone_clip(tmp_path / "song.ogg", 2.0, 440.0, sr=22050, codec_args=["-c:a", "libvorbis"])
    events = Recorder()
    with http_server(tmp_path) as base:
        with open_source(f"{base}/song.ogg", SR, on_event=events) as source:
            assert source.info["content_type"] == "audio/ogg" and source.info["codec"] == "vorbis"
            y = np.concatenate(list(source))
    assert events.events == []
    assert abs(y.shape[0] / SR - 2.0) < 0.05 and abs(dominant_hz(y, SR) - 440.0) < 1.0


def test_https_verifies_certificates(tmp_path: Path, monkeypatch) -> None:
    """https:// works with a trusted certificate and fails with a one-line error for an untrusted one."""
    pem = self_signed_cert(tmp_path)
    tone_clip(tmp_path / "song.mp3", 1.0, 440.0, sr=44100, codec_args=["-c:a", "libmp3lame"])
    with http_server(tmp_path, tls_cert=pem) as base:
        url = f"{base}/song.mp3"
        with pytest.raises(SourceError, match="TLS handshake") as info:
            open_source(url, SR)
        assert url in str(info.value) and "\n" not in str(info.value)
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # trust it, as a system CA store would
        with open_source(url, SR) as source:
            y = np.concatenate(list(source))
    assert abs(dominant_hz(y, SR) - 440.0) < 2.0


def test_stream_that_ends_raises_when_retries_run_out(radio, tmp_path: Path) -> None:
    clip = tone_clip(tmp_path / "short.wav", 2.0, 330.0, sr=44100)
    events = Recorder()
    with feed(radio.port, "/short.mp3", clip, "mp3", loop=False):
        source = open_source(f"{radio.url}/short.mp3", SR, max_retries=1, backoff_initial=0.1, on_event=events)
    with pytest.raises(SourceError) as info:
        for _ in zip(range(400), source):  # bounded: a 2 s clip
            pass
    message = str(info.value)
    assert "short.mp3" in message and "ended" in message and "1 reconnect attempts failed" in message
    assert events.kinds()[:2] == ["dropped", "reconnecting"]


def test_stalled_stream_counts_as_a_drop(tmp_path: Path) -> None:
    clip = tone_clip(tmp_path / "t.mp3", 3.0, sr=44100, codec_args=["-c:a", "libmp3lame"])
    events = Recorder()
    with stalling_server(clip.read_bytes()[:20000]) as url:
        source = open_source(url, SR, read_timeout=1.0, max_retries=0, on_event=events)
        with pytest.raises(SourceError, match="no data for 1 s"):
            list(source)
    assert events.kinds() == ["dropped"]


def test_cut_http_download_is_an_error_not_a_replay(tmp_path: Path) -> None:
    clip = tone_clip(tmp_path / "t.mp3", 3.0, sr=44100, codec_args=["-c:a", "libmp3lame"])
    data = clip.read_bytes()
    with stalling_server(data[:20000], extra_headers=f"Content-Length: {len(data)}\r\n", hang=False) as url:
        source = open_source(url, SR)
        with pytest.raises(SourceError, match=f"download stopped after 20000 of {len(data)} bytes"):
            for _ in zip(range(1000), source):
                pass


def test_shoutcast_icy_status_line_and_close_from_another_thread(tmp_path: Path) -> None:
    """A Shoutcast v1 answer (``ICY 200 OK``) is accepted; close() from another thread ends a blocked read."""
    clip = tone_clip(tmp_path / "t.mp3", 3.0, sr=44100, codec_args=["-c:a", "libmp3lame"])
    payload = clip.read_bytes()[:16000]
    with stalling_server(payload, status_line="ICY 200 OK", extra_headers="icy-name: Test FM\r\n") as url:
        source = open_source(url, SR, read_timeout=30.0)
        assert source.info["station"] == "Test FM" and source.info["codec"].startswith("mp3")
        blocks: list[np.ndarray] = []
        thread = threading.Thread(target=lambda: blocks.extend(source), daemon=True)
        thread.start()
        wait_until(lambda: len(blocks) >= 5, 10, "blocks")
        time.sleep(0.3)  # the payload (1 s of audio) is consumed: the reader now waits on the silent socket
        source.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert all(b.shape == (1600,) for b in blocks)


@pytest.mark.slow
def test_reconnects_after_icecast_restart(tmp_path: Path) -> None:
    require_icecast()
    clip = music_clip(tmp_path / "music.wav", 6.0)
    events = Recorder()
    blocks: list[np.ndarray] = []
    errors: list[BaseException] = []
    def consume(source) -> None:
        try:
            for block in source:
                blocks.append(block)
        except BaseException as e:  # surfaced by the assertions below
            errors.append(e)

    source = thread = None
    with icecast_server(tmp_path) as ice:
        try:
            with feed(ice.port, "/live.mp3", clip):
                set_title(ice.port, "/live.mp3", "Before restart")
                source = open_source(f"{ice.url}/live.mp3", SR, on_event=events, backoff_initial=0.2,
                                     backoff_max=1.0, read_timeout=5.0)
                thread = threading.Thread(target=consume, args=(source,), daemon=True)
                thread.start()
                wait_until(lambda: len(blocks) >= 10 and source.title == "Before restart", 15, "first blocks")
                ice.stop()  # the server goes away: the listener connection drops
            wait_until(lambda: "dropped" in events.kinds(), 10, "the drop")
            wait_until(lambda: "reconnecting" in events.kinds(), 10, "a reconnect attempt")
            n_before = len(blocks)
            ice.start()  # same port, same config
            with feed(ice.port, "/live.mp3", clip):
                set_title(ice.port, "/live.mp3", "After restart")
                wait_until(lambda: "connected" in events.kinds(), 15, "the reconnect")
                wait_until(lambda: len(blocks) >= n_before + 10 and source.title == "After restart", 15,
                           "blocks after the restart")
        finally:
            if source is not None:
                source.close()
            if thread is not None:
                thread.join(timeout=10)
    assert not thread.is_alive() and not errors
    kinds = events.kinds()
    assert kinds.index("dropped") < kinds.index("reconnecting") < kinds.index("connected")
    assert source.info["reconnects"] >= 1
    assert all(b.shape == (1600,) for b in blocks)


# HLS ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hls_dir(tmp_path_factory) -> Path:
    """VOD HLS renditions: /tone (440 Hz, 3 s, 1 s segments), /low (330 Hz) and /high (660 Hz) for a master."""
    root = tmp_path_factory.mktemp("hls")
    for sub, hz in [("tone", 440.0), ("low", 330.0), ("high", 660.0)]:
        clip = tone_clip(root / f"{sub}.wav", 3.0, hz, sr=44100)
        make_hls(root / sub, clip, segment_seconds=1.0)
    make_hls(root / "fmp4", root / "tone.wav", segment_seconds=1.0, segment_type="fmp4")
    (root / "master.m3u8").write_text(
        "#EXTM3U\n"
        '#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS="mp4a.40.2"\nlow/index.m3u8\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=128000,CODECS="mp4a.40.2"\nhigh/index.m3u8\n'
    )
    return root


@pytest.mark.parametrize("rendition", ["tone", "fmp4"])
def test_hls_vod(hls_dir: Path, rendition: str) -> None:
    with http_server(hls_dir) as base:
        t0 = time.monotonic()
        with open_source(f"{base}/{rendition}/index.m3u8", SR) as source:
            assert isinstance(source, HlsSource) and source.info["live"] is False
            blocks, spans = [], []
            for block in source:
                blocks.append(block)
                spans.append(source.arrived)  # when the bytes of the segment it came from were downloaded
            assert source.info["codec"] == "aac" and source.info["sample_rate"] == 44100
        t1 = time.monotonic()
    assert all(s is not None and t0 <= s[0] <= s[1] <= t1 for s in spans)
    assert len(set(spans)) >= 3 and spans == sorted(spans)  # one span per segment (3), in order
    y = np.concatenate(blocks)
    assert all(b.shape == (1600,) for b in blocks[:-1])
    assert abs(y.shape[0] / SR - 3.0) < 0.1  # continuous across segments: no gaps, no repeats
    assert abs(dominant_hz(y[: 2 * SR], SR) - 440.0) < 1.0


def test_a_file_over_http_is_not_stamped_with_its_download(hls_dir: Path) -> None:
    """A file's bytes may wait in the socket long before they are due: its blocks keep their delivery time
    (``arrived`` None), unlike a live stream's (tests/test_sources_mux.py) and HLS segments' (above)."""
    with http_server(hls_dir) as base, open_source(f"{base}/tone.wav", SR) as source:
        blocks = list(source)
        assert not source.live and len(blocks) >= 20
        assert source.arrived is None


def test_hls_master_picks_highest_bandwidth_and_content_type_dispatch(hls_dir: Path, tmp_path: Path) -> None:
    (hls_dir / "master.hls").write_text((hls_dir / "master.m3u8").read_text())  # no .m3u8: by content type
    with http_server(hls_dir) as base:
        for name in ("master.m3u8", "master.hls"):
            with open_source(f"{base}/{name}", SR) as source:
                assert isinstance(source, HlsSource)
                y = np.concatenate(list(source))
            assert abs(dominant_hz(y[: 2 * SR], SR) - 660.0) < 1.0


def test_hls_missing_segment_is_skipped_with_a_warning(hls_dir: Path, tmp_path: Path, caplog) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(hls_dir / "tone", broken)
    (broken / "seg001.ts").unlink()
    with http_server(tmp_path) as base, caplog.at_level(logging.WARNING, logger="streamtag.sources"):
        source = open_source(f"{base}/broken/index.m3u8", SR, segment_retries=1, backoff_initial=0.05)
        y = np.concatenate(list(source))
    assert source.skipped_segments == 1
    assert any("skipping segment 1" in r.getMessage() for r in caplog.records)
    assert 1.5 < y.shape[0] / SR < 2.5  # two of three 1 s segments


def test_hls_live_playlist_is_polled_without_repeats(hls_dir: Path, tmp_path: Path) -> None:
    """A live playlist that grows (sliding window, media sequence advancing) and finally ends."""
    live = tmp_path / "live"
    shutil.copytree(hls_dir / "tone", live)
    segments = sorted(p.name for p in live.glob("seg*.ts"))
    assert len(segments) >= 3

    def write(first: int, last: int, ended: bool) -> None:
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for name in segments[first : last + 1]:
            lines += ["#EXTINF:1.0,", name]
        if ended:
            lines.append("#EXT-X-ENDLIST")
        tmp = live / "live.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(live / "live.m3u8")

    write(0, 1, ended=False)
    with http_server(tmp_path) as base:
        source = open_source(f"{base}/live/live.m3u8", SR)
        assert source.info["live"] is True
        got: list[np.ndarray] = []
        done = threading.Event()

        def consume() -> None:
            got.extend(source)
            done.set()

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(0.3)
        write(1, 2, ended=False)  # window slides: segment 0 leaves, 2 arrives
        time.sleep(1.2)
        write(2, len(segments) - 1, ended=True)
        assert done.wait(15)
        thread.join(timeout=5)
    y = np.concatenate(got)
    assert abs(y.shape[0] / SR - 3.0) < 0.1  # the whole 3 s rendition, every segment exactly once


def test_master_playlist_prefers_the_default_audio_rendition() -> None:
    from streamtag.sources.hls import MasterPlaylist, parse_playlist

    text = (
        "#EXTM3U\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="en",DEFAULT=NO,URI="audio/en.m3u8"\n'
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="main",DEFAULT=YES,URI="audio/main.m3u8"\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO="aud"\nvideo/low.m3u8\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720,AUDIO="aud"\nvideo/high.m3u8\n'
    )
    master = parse_playlist(text, "https://cdn.example/live/master.m3u8")
    assert isinstance(master, MasterPlaylist) and [v.bandwidth for v in master.variants] == [800000, 2000000]
    assert HlsSource._choose_variant(master) == "https://cdn.example/live/audio/main.m3u8"
    master.audio_renditions.clear()
    assert HlsSource._choose_variant(master) == "https://cdn.example/live/video/high.m3u8"


def test_hls_encrypted_is_refused(tmp_path: Path) -> None:
    (tmp_path / "enc.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI=\"key.bin\"\n#EXTINF:2.0,\nseg0.ts\n"
        "#EXT-X-ENDLIST\n"
    )
    with http_server(tmp_path) as base:
        with pytest.raises(SourceError, match="encrypted.*not supported"):
            open_source(f"{base}/enc.m3u8", SR)
        with pytest.raises(SourceError, match="HTTP 404"):
            open_source(f"{base}/missing.m3u8", SR)


# the CLI against a real Icecast ------------------------------------------------------------------------------------


def _bundle_arg(tmp_path: Path) -> list[str]:
    """`--model X`: a tiny random bundle (the live helpers' fixture): this test is about the radio, not the model."""
    try:
        from live_fixtures import tiny_bundle
    except ImportError:
        return []  # the shipped default model
    return ["--model", str(tiny_bundle(tmp_path / "tiny").path)]


@pytest.mark.slow
def test_cli_stream_jsonl_titles_and_restart(tmp_path: Path) -> None:
    """`streamtag stream URL --format jsonl` against Icecast: updates carry the ICY title and resume after a restart."""
    require_icecast()
    if not (REPO / "streamtag" / "cli.py").is_file():
        pytest.skip("streamtag/cli.py not present yet")
    clip = music_clip(tmp_path / "music.wav", 6.0)
    lines: queue.Queue[str] = queue.Queue()
    stderr_path = tmp_path / "stderr.txt"
    with icecast_server(tmp_path) as ice, stderr_path.open("w") as stderr:
        url = f"{ice.url}/live.mp3"
        cmd = [sys.executable, "-m", "streamtag", "stream", url, "--format", "jsonl", "--hop", "0.5",
               "--device", "cpu", *_bundle_arg(tmp_path)]
        proc = None

        def next_update(timeout: float) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    if proc.poll() is not None:
                        raise AssertionError(f"exit {proc.returncode}: {stderr_path.read_text()}") from None
                    continue
                event = json.loads(line)
                if event.get("type") == "update":
                    return event
            raise AssertionError(f"no update within {timeout:g} s; stderr: {stderr_path.read_text()}")

        def wait_title(title: str, timeout: float) -> dict:
            deadline = time.monotonic() + timeout
            while (update := next_update(deadline - time.monotonic())).get("title") != title:
                pass
            return update

        try:
            with feed(ice.port, "/live.mp3", clip):
                set_title(ice.port, "/live.mp3", "CLI Before")
                proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
                threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
                update = wait_title("CLI Before", 60)
                assert update["stream"] == url and update["top"]
                ice.stop()
            ice.start()
            with feed(ice.port, "/live.mp3", clip):
                set_title(ice.port, "/live.mp3", "CLI After")
                t_after = wait_title("CLI After", 40)["t"]
                assert next_update(10)["t"] > t_after  # updates keep coming after the reconnect
            assert proc.poll() is None
        finally:
            if proc is not None:
                stop_process(proc, timeout=10)
                proc.stdout.close()
