"""Sources with real FFmpeg decoding: many formats, rates and channel counts; streaming == one-shot; bad inputs."""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soxr
from radio_fixtures import ffmpeg_generate, music_clip, require_ffmpeg, tone_clip

from streamtag.errors import ConfigError, SourceError
from streamtag.sources import AudioPipeline, Source, open_source, probe_duration, read_audio

SR = 16000


def dominant_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spectrum) * sr / len(y))


def collect(source) -> tuple[list[np.ndarray], np.ndarray]:
    with source:
        blocks = list(source)
    return blocks, np.concatenate(blocks)


# formats, rates, channels ------------------------------------------------------------------------------------------

FORMATS = [  # (file name, codec args, input rate, channels)
    ("tone.mp3", ["-c:a", "libmp3lame", "-b:a", "128k"], 44100, 2),
    ("tone.ogg", ["-c:a", "libvorbis"], 22050, 1),
    ("tone.opus", ["-c:a", "libopus"], 48000, 2),
    ("tone.flac", ["-c:a", "flac"], 32000, 1),
    ("tone6.wav", ["-c:a", "pcm_s16le"], 8000, 6),
    ("tonef.wav", ["-c:a", "pcm_f32le"], 48000, 2),
    ("tone24.flac", ["-c:a", "flac", "-sample_fmt", "s32"], 96000, 2),
    ("tone.m4a", ["-c:a", "aac", "-b:a", "96k"], 44100, 2),
]


@pytest.mark.parametrize(("name", "codec_args", "sr_in", "channels"), FORMATS, ids=[f[0] for f in FORMATS])
def test_formats_decode_mix_and_resample(tmp_path: Path, name, codec_args, sr_in, channels) -> None:
    seconds = 2.0
    path = tone_clip(tmp_path / name, seconds, 440.0, sr=sr_in, channels=channels, codec_args=codec_args)
    source = open_source(path, SR, block_seconds=0.1)
    assert source.info["sample_rate"] == sr_in
    assert source.info["channels"] == channels
    assert source.name == name
    blocks, y = collect(source)
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert all(b.shape == (1600,) for b in blocks[:-1]) and 0 < blocks[-1].shape[0] <= 1600
    # streaming (blocks) == one-shot (read_audio) to float rounding
    whole = read_audio(path, SR)
    assert whole.dtype == np.float32 and whole.shape == y.shape
    np.testing.assert_allclose(y, whole, atol=1e-6)
    # the right rate: a 440 Hz tone is still at 440 Hz at 16 kHz, and lasts about `seconds`
    assert abs(dominant_hz(y[: SR], SR) - 440.0) < 2.0
    assert abs(y.shape[0] / SR - seconds) < 0.1
    assert np.sqrt(np.mean(y**2)) > 0.01


@pytest.mark.parametrize("name", ["tone.mp3", "tone.ogg", "tone6.wav", "tone.flac"])
def test_read_audio_matches_librosa(tmp_path: Path, name) -> None:
    librosa = pytest.importorskip("librosa")
    spec = next(f for f in FORMATS if f[0] == name)
    path = tone_clip(tmp_path / name, 1.5, 523.25, sr=spec[2], channels=spec[3], codec_args=spec[1])
    ours = read_audio(path, SR)
    ref, _ = librosa.load(path, sr=SR)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_channel_mix_is_the_mean_of_channels(tmp_path: Path) -> None:
    """Left = tone, right = the same tone inverted: the mono mix (mean) cancels to (near) silence."""
    path = ffmpeg_generate(tmp_path / "inv.wav", "sine=frequency=300:sample_rate=16000", 1.0, sr=16000, channels=2,
                           codec_args=["-af", "pan=stereo|c0=0.5*c0|c1=-0.5*c0", "-c:a", "pcm_f32le"])
    left_only = ffmpeg_generate(tmp_path / "left.wav", "sine=frequency=300:sample_rate=16000", 1.0, sr=16000,
                                channels=2, codec_args=["-af", "pan=stereo|c0=0.5*c0|c1=0*c0", "-c:a", "pcm_f32le"])
    assert np.abs(read_audio(path, SR)).max() < 1e-4  # s16 sine source: half an LSB of rounding
    sf = pytest.importorskip("soundfile")
    stereo, _ = sf.read(left_only, dtype="float32")  # (N, 2)
    assert np.abs(stereo[:, 0]).max() > 0.05 and np.abs(stereo[:, 1]).max() == 0
    np.testing.assert_array_equal(read_audio(left_only, SR), stereo.mean(axis=1))  # half the left channel


def test_real_clips_match_librosa_and_stream(audio_dir: Path) -> None:
    librosa = pytest.importorskip("librosa")
    names = ["sorohanro-solo-trumpet.ogg", "msd-preview-TRWJAZW128F42760DD.mp3", "mtat-joram-solipsism.mp3"]
    for name in names:
        path = audio_dir / name
        if not path.is_file():
            pytest.skip(f"{path} missing")
        whole = read_audio(path, SR)
        ref, _ = librosa.load(path, sr=SR)
        assert whole.shape == ref.shape, name
        np.testing.assert_allclose(whole, ref, atol=1e-4, err_msg=name)
        _, streamed = collect(open_source(path, SR, block_seconds=0.37))
        np.testing.assert_allclose(streamed, whole, atol=1e-6, err_msg=name)
        duration = probe_duration(path)
        assert duration is not None and abs(duration - whole.shape[0] / SR) < 0.1


@pytest.mark.parametrize(("sr_in", "sr_out"), [(44100, 16000), (8000, 16000), (48000, 22050), (16000, 16000)])
def test_streaming_resample_equals_one_shot(sr_in: int, sr_out: int) -> None:
    rng = np.random.default_rng(sr_in)
    x = rng.standard_normal(3 * sr_in + 17).astype(np.float32)  # (N,)
    pipeline = AudioPipeline(sr_out, block_size=1000)
    blocks: list[np.ndarray] = []
    i = 0
    while i < x.shape[0]:
        n = int(rng.integers(1, 4000))
        blocks += pipeline.push(x[None, i : i + n], sr_in)  # (1, n)
        i += n
    blocks += pipeline.finish()
    assert all(b.shape == (1000,) for b in blocks[:-1])
    streamed = np.concatenate(blocks)
    one_shot = x if sr_in == sr_out else soxr.resample(x, sr_in, sr_out, quality="soxr_hq")
    expected_len = math.ceil(x.shape[0] * sr_out / sr_in)  # librosa's fix_length
    assert streamed.shape == (expected_len,)
    np.testing.assert_allclose(streamed[: one_shot.shape[0]], one_shot[:expected_len], atol=1e-6)


def test_block_seconds_sets_block_size(tmp_path: Path) -> None:
    path = tone_clip(tmp_path / "t.wav", 1.0, sr=16000)
    blocks, y = collect(open_source(path, 22050, block_seconds=0.25))
    assert [b.shape[0] for b in blocks[:-1]] == [5512] * (len(blocks) - 1)
    assert y.shape == (22050,)


def test_close_stops_iteration(tmp_path: Path) -> None:
    path = tone_clip(tmp_path / "t.ogg", 3.0, sr=22050)
    source = open_source(path, SR)
    next(source)
    source.close()
    assert list(source) == []
    source.close()  # twice is fine


class _Counting(Source):
    """A source whose generator records, under a lock, how many threads are inside it and how often its finally
    ran (the place a real source closes its decoder)."""

    def __init__(self) -> None:
        super().__init__("counting", SR)
        self.lock = threading.Lock()
        self.inside = 0
        self.overlap = False
        self.finals = 0

    def _enter(self, delta: int) -> None:
        with self.lock:
            self.inside += delta
            self.overlap = self.overlap or self.inside > 1

    def _blocks(self):
        try:
            while True:
                self._enter(1)
                time.sleep(0.0005)  # a decode: another thread's close() lands here
                self._enter(-1)
                yield np.zeros(self.block_size, np.float32)
        finally:
            self._enter(1)
            with self.lock:
                self.finals += 1
            time.sleep(0.001)
            self._enter(-1)


@pytest.mark.parametrize("started", [True, False])
def test_close_from_many_threads_while_reading_finishes_the_source_once(started: bool) -> None:
    """The remove() vs feeder-finally race: many threads close a source while one reads it. The generator is
    finished exactly once and never while another thread is inside it (which can crash inside FFmpeg)."""
    for _ in range(20):
        source = _Counting()
        if started:
            next(source)
        go = threading.Barrier(9)

        def read(source: _Counting, go: threading.Barrier) -> None:
            go.wait()
            for _ in source:
                pass

        def close(source: _Counting, go: threading.Barrier) -> None:
            go.wait()
            source.close()

        threads = [threading.Thread(target=read, args=(source, go))]
        threads += [threading.Thread(target=close, args=(source, go)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert not source.overlap
        assert source.finals == (1 if source._gen is not None else 0) and source.closed
        assert list(source) == []


def test_a_close_while_another_thread_reads_is_finished_by_that_thread_at_once() -> None:
    """close() lands while the reader is inside the generator (decoding): the cleanup is not run beside it, and
    not left to the garbage collector either: the reader runs it as its read returns."""
    inside, closed = threading.Event(), threading.Event()

    class Slow(_Counting):
        def _blocks(self):
            try:
                inside.set()
                closed.wait(5)
                yield np.zeros(self.block_size, np.float32)
            finally:
                with self.lock:
                    self.finals += 1

    source = Slow()
    got: list[np.ndarray] = []
    reader = threading.Thread(target=lambda: got.extend(source))
    reader.start()
    assert inside.wait(5)
    source.close()
    assert source.finals == 0  # not while the reader is inside
    closed.set()
    reader.join(5)
    assert source.finals == 1 and len(got) <= 1


# bad input ---------------------------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.mp3").write_text("this is a text file, not an mp3\n" * 20)
    (tmp_path / "noise.ogg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return {
        "missing": (str(tmp_path / "missing.mp3"), "no such file"),
        "directory": (str(tmp_path / "adir"), "is a directory"),
        "empty": (str(tmp_path / "empty.wav"), "empty file"),
        "text": (str(tmp_path / "notes.mp3"), "not audio that FFmpeg can decode"),
        "noise": (str(tmp_path / "noise.ogg"), "not audio that FFmpeg can decode"),
        "scheme": ("rtsp://example.invalid/stream", "unsupported URL scheme"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "noise", "scheme"])
def test_bad_inputs_raise_one_line_source_error(tmp_path: Path, case: str) -> None:
    uri, fragment = _bad_inputs(tmp_path)[case]
    with pytest.raises(SourceError) as info:
        source = open_source(uri, SR)
        list(source)
    message = str(info.value)
    assert uri in message and fragment in message
    assert "\n" not in message and "Traceback" not in message


def test_truncated_mp3_decodes_what_it_can_and_warns(tmp_path: Path, caplog) -> None:
    full = tone_clip(tmp_path / "full.mp3", 6.0, sr=44100, codec_args=["-c:a", "libmp3lame", "-b:a", "128k"])
    data = full.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="streamtag.sources"):
        y = read_audio(cut, SR)
    assert 2.0 < y.shape[0] / SR < 4.0  # about half of 6 s
    assert any("truncated at" in r.getMessage() and "cut.mp3" in r.getMessage() for r in caplog.records)
    # a header alone decodes nothing: that is an error, not a warning
    stub = tmp_path / "stub.mp3"
    stub.write_bytes(data[:200])
    with pytest.raises(SourceError, match="stub.mp3"):
        list(open_source(stub, SR))


def test_garbage_inside_an_mp3_is_skipped(tmp_path: Path) -> None:
    full = tone_clip(tmp_path / "full.mp3", 4.0, sr=44100, codec_args=["-c:a", "libmp3lame"])
    data = bytearray(full.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 3000] = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(bytes(data))
    y = read_audio(bad, SR)
    assert 3.0 < y.shape[0] / SR < 4.2


def test_unknown_option_is_an_error(tmp_path: Path) -> None:
    path = tone_clip(tmp_path / "t.wav", 0.5, sr=16000)
    with pytest.raises(TypeError, match="bogus"):
        open_source(path, SR, bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="read_timout"):
        open_source("http://127.0.0.1:9/x.mp3", SR, read_timout=1.0)  # type: ignore[call-arg]
    with pytest.raises(ConfigError):
        open_source(path, 0)


# stdin --------------------------------------------------------------------------------------------------------------


def test_stdin_wav_through_a_real_pipe(tmp_path: Path) -> None:
    path = tone_clip(tmp_path / "t.wav", 1.5, sr=22050, channels=2)
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb") as f:
            f.write(path.read_bytes())

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb") as pipe:
        source = open_source("-", SR, fileobj=pipe)
        assert source.name == "stdin" and source.info["channels"] == 2
        _, y = collect(source)
    thread.join(timeout=5)
    np.testing.assert_allclose(y, read_audio(path, SR), atol=1e-6)


def test_stdin_raw_pcm_subprocess(tmp_path: Path) -> None:
    """`... | python -c 'open_source("-", raw_rate=8000, raw_format="s16le", raw_channels=2)'` really reads stdin."""
    require_ffmpeg()
    path = tone_clip(tmp_path / "t.wav", 1.0, sr=8000, channels=2)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"], capture_output=True,
                         check=True, timeout=30).stdout
    code = ("import numpy as np, sys\n"
            "from streamtag.sources import open_source\n"
            "y = np.concatenate(list(open_source('-', 16000, raw_rate=8000, raw_format='s16le', raw_channels=2)))\n"
            "np.save(sys.argv[1], y)\n")
    out = tmp_path / "y.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], input=raw, check=True, timeout=60)
    y = np.load(out)
    np.testing.assert_allclose(y, read_audio(path, SR), atol=1e-6)


def test_stdin_garbage_and_empty(tmp_path: Path) -> None:
    import io

    with pytest.raises(SourceError, match="stdin"):
        open_source("-", SR, fileobj=io.BytesIO(b"not audio at all " * 100))
    with pytest.raises(SourceError, match="stdin"):
        list(open_source("-", SR, fileobj=io.BytesIO(b""), raw_rate=16000))
    f32 = np.sin(np.arange(1600, dtype=np.float32) * 0.1).astype("<f4")
    y = np.concatenate(list(open_source("-", SR, fileobj=io.BytesIO(f32.tobytes()), raw_rate=16000,
                                        raw_format="f32le")))
    np.testing.assert_array_equal(y, f32)


@pytest.mark.parametrize("codec", ["mp3", "ogg"])
def test_frames_gathered_across_a_burst_and_small_reads_equal_one_conversion(tmp_path: Path, codec: str) -> None:
    """The radio loop's way to convert: every frame goes into the pipeline's fifo as it is decoded (gather), and
    each read is converted once (push_frames of none). After a 6 s burst the fifo is replaced by a small one
    (FFmpeg's never shrinks) and the resampler is fed in bounded chunks; neither may change a sample: the blocks
    equal the same frames converted in one call, and the file path's samples."""
    path = music_clip(tmp_path / f"clip.{codec}", 12.0, sr=44100, channels=2)
    with av.open(str(path)) as c:
        frames = list(c.decode(audio=0))
    rate = frames[0].sample_rate
    burst = next(i for i, f in enumerate(frames) if sum(g.samples for g in frames[: i + 1]) >= 6 * rate) + 1
    pipeline = AudioPipeline(SR, block_size=SR // 10, whole=True)
    got: list[np.ndarray] = []
    reads = [frames[:burst]] + [frames[i : i + 7] for i in range(burst, len(frames), 7)]
    for read in reads:
        for f in read:
            got += pipeline.gather([f])
        got += pipeline.push_frames(())
        assert pipeline._fifo is not None and pipeline._fifo.samples == 0  # each read converted at once
    got += pipeline.finish()
    assert len(got) == len(reads) + 1  # one array per read, and the tail
    one = AudioPipeline(SR, block_size=SR // 10, whole=True)
    ref = one.push_frames(frames) + one.finish()
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(ref))
    np.testing.assert_allclose(np.concatenate(got), read_audio(path, SR), atol=1e-6)
