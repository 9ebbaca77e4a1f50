"""streamtag.audio: the one PCM -> model-input conversion, and every input path giving the same samples through it.

The same stereo int16 audio goes in as a WAV file, raw PCM on stdin, a WAV on stdin, an HTTP download, websocket
binary frames, microphone callback blocks and the training-corpus decoder; every path must give the same mono
float32 samples, bit for bit (the streaming resampler's output does not depend on how the input is chunked).
"""
from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from streamtag.audio import MonoConverter, Resampler, downmix, int_scale, to_float32, to_mono
from streamtag.errors import ConfigError

SR_IN = 44100
SR = 16000


# the conversion itself ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "bits"), [(np.int8, 8), (np.int16, 16), (np.int32, 32), (np.uint8, 8)])
def test_one_integer_scaling(dtype, bits: int) -> None:
    info = np.iinfo(dtype)
    x = np.array([info.min, 0 if info.min < 0 else 2 ** (bits - 1), info.max], dtype=dtype)
    y = to_float32(x)
    assert y.dtype == np.float32 and int_scale(np.dtype(dtype)) == 2.0 ** (bits - 1)
    assert y[0] == -1.0 and y[1] == 0.0  # full scale negative is exactly -1, silence is exactly 0
    assert y[2] == np.float32((2 ** (bits - 1) - 1) / 2 ** (bits - 1))  # not 1.0: 2**(bits-1), not iinfo.max


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_integer_scaling_equals_the_float64_route(dtype) -> None:
    """Every int16 sample, and edge and random ones of the other widths, convert to the very float32 that
    float64 division gives (to_float32 takes a cheaper float32 route for widths up to 32 bits)."""
    info = np.iinfo(dtype)
    if dtype == np.int16:
        x = np.arange(info.min, info.max + 1, dtype=np.int64).astype(dtype)
    else:
        rng = np.random.default_rng(5)
        x = np.concatenate([np.array([info.min, info.min + 1, -1, 0, 1, info.max - 1, info.max], dtype=dtype),
                            rng.integers(info.min, info.max, 200_000, dtype=dtype, endpoint=True)])
    want = (x.astype(np.float64) / 2.0 ** (x.dtype.itemsize * 8 - 1)).astype(np.float32)
    got = to_float32(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert got.tobytes() == want.tobytes()
    assert to_float32(x.reshape(-1, 1)).shape == (x.shape[0], 1)  # the shape is kept


def test_float_samples_are_taken_as_they_are() -> None:
    x = np.array([0.25, -2.0, 0.5], dtype=np.float64)
    np.testing.assert_array_equal(to_float32(x), x.astype(np.float32))
    with pytest.raises(ConfigError, match="dtype"):
        to_float32(np.array(["a"]))


def test_interleaved_and_planar_downmix_agree() -> None:
    rng = np.random.default_rng(0)
    planar = rng.standard_normal((6, 1001)).astype(np.float32)  # (C, N)
    interleaved = np.ascontiguousarray(planar.T).reshape(-1)  # (N * C,)
    a = downmix(planar, channels=6, planar=True)
    b = downmix(interleaved, channels=6)
    c = downmix(planar.T, channels=6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(a, planar.mean(axis=0), atol=1e-6)  # librosa.to_mono
    with pytest.raises(ConfigError, match="whole number"):
        downmix(interleaved[:-1], channels=6)
    with pytest.raises(ConfigError, match="channels"):
        downmix(planar, channels=2, planar=True)


@pytest.mark.parametrize(("sr_in", "sr_out"), [(44100, 16000), (8000, 16000), (48000, 22050), (16000, 16000)])
def test_streaming_resampler_is_chunk_invariant_and_librosa_long(sr_in: int, sr_out: int) -> None:
    rng = np.random.default_rng(sr_in)
    x = rng.standard_normal(2 * sr_in + 13).astype(np.float32)
    whole = to_mono(x, sample_rate=sr_in, target_rate=sr_out)
    assert whole.shape == (math.ceil(x.shape[0] * sr_out / sr_in),)
    r = Resampler(sample_rate=sr_in, target_rate=sr_out)
    parts, i = [], 0
    while i < x.shape[0]:
        n = int(rng.integers(1, 5000))
        parts.append(r.push(x[i : i + n]))
        i += n
    parts.append(r.flush())
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    if sr_in != sr_out:
        one_shot = soxr.resample(x, sr_in, sr_out, quality="soxr_hq")
        n = min(one_shot.shape[0], whole.shape[0])
        np.testing.assert_allclose(whole[:n], one_shot[:n], atol=1e-6)
    # flush() leaves it ready for the next segment
    again = np.concatenate([r.push(x), r.flush()])
    np.testing.assert_array_equal(again, whole)


# every input path ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    """1.3 s of stereo int16 at 44.1 kHz: a tone on the left, noise on the right, full-scale peaks."""
    rng = np.random.default_rng(7)
    n = int(1.3 * SR_IN)
    t = np.arange(n) / SR_IN
    left = 0.6 * np.sin(2 * np.pi * 440 * t)
    right = rng.uniform(-1, 1, n)
    x = np.stack([left, right], axis=1) * 32767  # (N, 2)
    x[100] = [32767, -32768]
    return np.round(x).astype("<i2")


@pytest.fixture(scope="module")
def reference(pcm: np.ndarray) -> np.ndarray:
    return to_mono(pcm.reshape(-1), sample_rate=SR_IN, target_rate=SR, channels=2)


@pytest.fixture(scope="module")
def wav_path(tmp_path_factory, pcm: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("audio") / "same.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SR_IN)
        w.writeframes(pcm.tobytes())
    return path


def _blocks(source) -> np.ndarray:
    with source:
        blocks = list(source)
    assert all(b.shape == (1600,) and b.dtype == np.float32 for b in blocks[:-1])
    return np.concatenate(blocks)


def test_file_and_read_audio(wav_path: Path, reference: np.ndarray) -> None:
    from streamtag.sources import open_source, read_audio

    np.testing.assert_array_equal(_blocks(open_source(wav_path, SR)), reference)
    np.testing.assert_array_equal(read_audio(wav_path, SR), reference)


def test_stdin_raw_and_wav(wav_path: Path, pcm: np.ndarray, reference: np.ndarray) -> None:
    from streamtag.sources import open_source

    raw = open_source("-", SR, fileobj=io.BytesIO(pcm.tobytes()), raw_rate=SR_IN, raw_channels=2)
    np.testing.assert_array_equal(_blocks(raw), reference)
    piped = open_source("-", SR, fileobj=io.BytesIO(wav_path.read_bytes()))
    np.testing.assert_array_equal(_blocks(piped), reference)


def test_http_download(wav_path: Path, reference: np.ndarray) -> None:
    from radio_fixtures import http_server

    from streamtag.sources import open_source

    with http_server(wav_path.parent) as base:
        np.testing.assert_array_equal(_blocks(open_source(f"{base}/{wav_path.name}", SR)), reference)


def test_websocket_audio_in(pcm: np.ndarray, reference: np.ndarray) -> None:
    from streamtag.protocol import AudioDecoder

    decoder = AudioDecoder(sample_rate=SR_IN, fmt="pcm16", channels=2, target_rate=SR)
    data = pcm.tobytes()
    rng = np.random.default_rng(1)
    out, i = [], 0
    while i < len(data):
        n = 4 * int(rng.integers(1, 3000))  # whole stereo frames, any count
        out.append(decoder.decode(data[i : i + n]))
        i += n
    y = np.concatenate(out)
    assert 0.95 * reference.shape[0] < y.shape[0] <= reference.shape[0]  # a live stream holds back its filter tail
    np.testing.assert_array_equal(y, reference[: y.shape[0]])
    floats = AudioDecoder(sample_rate=SR_IN, fmt="float32", channels=2, target_rate=SR)
    y32 = floats.decode((pcm.astype(np.float32) / 32768.0).astype("<f4").tobytes())
    np.testing.assert_array_equal(y32, reference[: y32.shape[0]])


def test_microphone_callback_blocks(monkeypatch, pcm: np.ndarray, reference: np.ndarray) -> None:
    """The microphone's consumer side: PortAudio float32 blocks (int16 / 32768) through the same converter."""
    from streamtag.sources import microphone

    device = {"index": 0, "name": "fake", "hostapi": "none", "channels": 2, "samplerate": SR_IN, "default": True}
    monkeypatch.setattr(microphone, "resolve_input_device", lambda d: device)
    mic = microphone.MicrophoneSource(None, sample_rate=SR, channels=2)
    floats = pcm.astype(np.float32) / np.float32(32768.0)  # (N, 2), what sounddevice hands the callback
    for i in range(0, floats.shape[0], 2205):
        mic._callback(floats[i : i + 2205], 2205, None, None)
    out = []
    for block in mic._converted():
        out.append(block)
        if mic._queue.empty():
            mic._closed.set()
    y = np.concatenate(out)
    assert y.shape[0] > 0.95 * reference.shape[0]
    np.testing.assert_array_equal(y, reference[: y.shape[0]])


def test_corpus_builder(wav_path: Path, reference: np.ndarray) -> None:
    pytest.importorskip("av")
    from research.build_corpus import decode

    y, duration = decode(wav_path, sr=SR)
    assert abs(duration - 1.3) < 0.01
    np.testing.assert_array_equal(y, reference)


def test_converter_validates() -> None:
    with pytest.raises(ConfigError):
        MonoConverter(sample_rate=0, target_rate=SR)
    with pytest.raises(ConfigError):
        MonoConverter(sample_rate=SR, target_rate=SR, channels=0)


@pytest.mark.parametrize("fmt,layout", [("fltp", "stereo"), ("fltp", "mono"), ("fltp", "5.1"), ("flt", "stereo"),
                                        ("s16p", "stereo"), ("s16", "stereo"), ("dblp", "stereo")])
@pytest.mark.parametrize("samples", [1, 1152, 1021])
def test_a_decoded_frame_downmixes_to_the_same_samples_by_the_fast_path_and_the_general_one(fmt, layout, samples):
    """frame_to_mono reads planar float32 frames (FFmpeg's MP3, AAC and Vorbis output) from their planes; every
    format gives exactly frame_to_array + downmix (so a station's samples stay equal to a file's)."""
    import av

    from streamtag.audio import downmix
    from streamtag.sources.base import frame_to_array, frame_to_mono

    channels = av.AudioLayout(layout).nb_channels
    rng = np.random.default_rng(samples + channels)
    x = rng.uniform(-1.2, 1.2, (channels, samples))
    fmt_ = av.AudioFormat(fmt)
    dtype = np.dtype({"flt": np.float32, "s16": np.int16, "dbl": np.float64}[fmt.rstrip("p")])
    if dtype.kind == "i":
        x = np.round(x * 20000).clip(-32768, 32767)
    x = x.astype(dtype)
    arr = x if fmt_.is_planar else x.T.reshape(1, -1)  # packed: (1, N * C) interleaved
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
    frame.sample_rate = 44100
    want = downmix(frame_to_array(frame), channels=channels, planar=True)
    got = frame_to_mono(frame)
    assert got.dtype == np.float32 and got.shape == (samples,)
    assert np.array_equal(got, want)
    assert not np.allclose(got, 0.0)
