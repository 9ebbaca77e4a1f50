"""The incremental front end equals the offline one, and the offline one agrees with librosa."""
from __future__ import annotations

import librosa
import numpy as np
import pytest

from streamtag.errors import ConfigError
from streamtag.frontend import FrontendSpec, IncrementalLogMel, frame_power, logmel, push_many

SPECS = [
    FrontendSpec(),  # musicnn-like: 16 kHz, 512/256, 96 mels, log10p
    FrontendSpec(n_fft=1024, hop_length=320, n_mels=128, scaling="db", fmin=20.0, fmax=7600.0),
    FrontendSpec(sample_rate=22050, n_fft=2048, hop_length=512, win_length=1500, n_mels=64, scaling="log"),
    FrontendSpec(fp16_mel=True),
]


def _music_like(n: int, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 331 * t * (1 + 0.01 * np.sin(t)))
    return (x + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.sample_rate}-{s.n_fft}-{s.n_mels}-{s.scaling}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_equals_offline_for_random_chunks(spec: FrontendSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _music_like(int(3.3 * spec.sample_rate) + int(rng.integers(0, 997)), spec.sample_rate, seed)
    offline = logmel(x, spec)
    inc = IncrementalLogMel(spec)
    parts, pos = [], 0
    while pos < x.shape[0]:
        n = int(rng.choice([1, 7, 100, spec.hop_length - 1, spec.n_fft + 3, int(rng.integers(1, 9000))]))
        parts.append(inc.push(x[pos : pos + n]))
        pos += n
    online = np.concatenate(parts)
    assert online.shape == offline.shape
    assert inc.frames_emitted == offline.shape[0]
    assert np.max(np.abs(online - offline)) <= 1e-4


def test_each_push_computes_only_new_frames() -> None:
    spec = FrontendSpec()
    inc = IncrementalLogMel(spec)
    assert inc.push(np.zeros(spec.n_fft - 1, np.float32)).shape == (0, spec.n_mels)
    assert inc.push(np.zeros(1, np.float32)).shape == (1, spec.n_mels)
    assert inc.push(np.zeros(spec.hop_length * 3, np.float32)).shape == (3, spec.n_mels)
    inc.reset()
    assert inc.frames_emitted == 0 and inc.push(np.zeros(10, np.float32)).shape[0] == 0


@pytest.mark.parametrize("scaling", ["log10p", "db"])
def test_offline_matches_librosa_melspectrogram(scaling: str) -> None:
    spec = FrontendSpec(scaling=scaling)
    x = _music_like(spec.sample_rate * 2, spec.sample_rate, 3)
    ref = librosa.feature.melspectrogram(
        y=x, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, n_mels=spec.n_mels, center=False
    ).T  # (T, n_mels)
    ref = np.log10(1 + 10000 * ref) if scaling == "log10p" else 10 * np.log10(np.maximum(ref, 1e-10))
    ours = logmel(x, spec)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-3


def test_frame_count_and_short_input() -> None:
    spec = FrontendSpec()
    assert logmel(np.zeros(spec.n_fft - 1, np.float32), spec).shape == (0, spec.n_mels)
    n = spec.n_fft + 5 * spec.hop_length + 17
    assert logmel(np.zeros(n, np.float32), spec).shape == (6, spec.n_mels)
    assert spec.samples_for_frames(6) <= n < spec.samples_for_frames(7)


@pytest.mark.parametrize(
    "bad", [dict(n_mels=0), dict(hop_length=-1), dict(win_length=4096), dict(scaling="cube")]
)
def test_bad_specs_raise_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError):
        FrontendSpec(**bad)


def test_spec_round_trip_and_unknown_keys() -> None:
    spec = FrontendSpec(n_mels=128, fmax=8000.0)
    assert FrontendSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="unknown"):
        FrontendSpec.from_dict({**spec.to_dict(), "n_mfcc": 20})


def test_stereo_input_rejected() -> None:
    with pytest.raises(ConfigError):
        logmel(np.zeros((2, 1000), np.float32), FrontendSpec())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.sample_rate}-{s.n_fft}-{s.n_mels}-{s.scaling}")
def test_push_many_equals_each_stream_alone_and_offline(spec: FrontendSpec) -> None:
    # many streams' pushes batched into one FFT == each stream's own incremental push == the offline log-mel
    rng = np.random.default_rng(7)
    clips = [_music_like(int(2.1 * spec.sample_rate) + 37 * i, spec.sample_rate, 20 + i) for i in range(5)]
    clips.append(np.zeros(spec.n_fft // 3, np.float32))  # a stream that never completes a frame
    batched = [IncrementalLogMel(spec) for _ in clips]
    alone = [IncrementalLogMel(spec) for _ in clips]
    got: list[list[np.ndarray]] = [[] for _ in clips]
    got_power: list[list[np.ndarray]] = [[] for _ in clips]
    pos = [0] * len(clips)
    while any(p < x.shape[0] for p, x in zip(pos, clips)):
        blocks = []
        for i, x in enumerate(clips):
            n = int(rng.choice([0, 1, spec.hop_length - 1, spec.n_fft + 3, int(rng.integers(1, 6000))]))
            blocks.append(x[pos[i] : pos[i] + n])
            pos[i] += n
        for i, ((frames, power), b) in enumerate(zip(push_many(batched, blocks), blocks)):
            ref_frames, ref_power = alone[i].push_with_power(b)
            assert np.array_equal(frames, ref_frames) and np.array_equal(power, ref_power)
            got[i].append(frames)
            got_power[i].append(power)
    for i, x in enumerate(clips):
        assert batched[i].frames_emitted == alone[i].frames_emitted and batched[i].samples_seen == x.shape[0]
        assert np.max(np.abs(np.concatenate(got[i]) - logmel(x, spec)), initial=0.0) <= 1e-4
        assert np.array_equal(np.concatenate(got_power[i]), frame_power(x, spec))
    assert push_many([], []) == []


def test_push_many_in_bounded_passes_equals_each_stream_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # streams bringing seconds of backlog are cut into passes of about _CHUNK_FRAMES frames: same results
    import streamtag.frontend as frontend

    monkeypatch.setattr(frontend, "_CHUNK_FRAMES", 16)
    spec = FrontendSpec()
    blocks = [_music_like(n, spec.sample_rate, i) for i, n in enumerate([9000, 10, 30000, 0, 2000, 700])]
    batched, alone = [IncrementalLogMel(spec) for _ in blocks], [IncrementalLogMel(spec) for _ in blocks]
    for (frames, power), m, b in zip(push_many(batched, blocks), alone, blocks):
        ref_frames, ref_power = m.push_with_power(b)
        assert np.array_equal(frames, ref_frames) and np.array_equal(power, ref_power)
    # the live runner splits a step into passes run on threads at once: still the same frames, in stream order
    from concurrent.futures import ThreadPoolExecutor

    more = [_music_like(n, spec.sample_rate, 10 + i) for i, n in enumerate([4000, 1, 600, 9000])]
    with ThreadPoolExecutor(2) as pool:
        threaded = push_many(batched[:4], more, passes=3, map_fn=pool.map)
    for (frames, power), m, b in zip(threaded, alone, more):
        ref_frames, ref_power = m.push_with_power(b)
        assert np.array_equal(frames, ref_frames) and np.array_equal(power, ref_power)


def test_frame_power_is_each_frames_mean_square() -> None:
    spec = FrontendSpec()
    x = _music_like(spec.sample_rate, spec.sample_rate, 4)
    power = frame_power(x, spec)
    starts = np.arange(power.shape[0]) * spec.hop_length
    want = [np.mean(np.square(x[s : s + spec.n_fft].astype(np.float64))) for s in starts]
    assert np.allclose(power, want, rtol=1e-12, atol=0)
