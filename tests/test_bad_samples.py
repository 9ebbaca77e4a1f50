"""Bad samples never poison a stream: NaN/inf zeroed, loud samples clipped and counted, no fp16 overflow, and the
output recovers within one window of the bad input (Engine and FileTagger, a shipped model on a real clip)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streamtag.frontend import FP16_MAX, FrontendSpec, IncrementalLogMel, logmel
from streamtag.pipeline import CLIP_LEVEL, Engine, FileTagger, repair, tag_audio
from streamtag.registry import load_bundle
from streamtag.runner import ModelRunner
from streamtag.smoothing import SmoothingConfig

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "audio" / "kevin-macleod-vibe-ace.ogg"
SR = 16000
BAD_AT = 6 * SR  # the bad samples sit 6 s into the clip
# An EMA remembers any input for a few time constants by design (tau 3 s: a loud click is still 4e-3 away
# 13 s later). A short tau makes the comparison test the stream's own state (ring, front end, model), not
# the smoother's intended memory.
QUICK = SmoothingConfig(method="ema", tau_seconds=0.1, margin=0.05, hold_seconds=0.0)


def test_repair_zeroes_non_finite_and_clips_loud_samples() -> None:
    x = np.array([0.1, np.nan, -np.inf, np.inf, 100.0, -7.0, 1.05, -0.5], dtype=np.float32)
    y, n = repair(x)
    assert n == 5  # 3 non-finite, 2 beyond the clip level
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= CLIP_LEVEL
    assert y[1] == y[2] == y[3] == 0.0 and y[4] == CLIP_LEVEL and y[5] == -CLIP_LEVEL
    assert y[6] == np.float32(1.05) and y[0] == np.float32(0.1)  # decoder overs above 1.0 are kept
    assert math.isnan(x[1])  # the caller's array is left alone
    clean = np.linspace(-1, 1, 50, dtype=np.float32)
    same, n0 = repair(clean)
    assert n0 == 0 and np.shares_memory(same, clean)  # clean input is not copied


def test_fp16_front_end_saturates_instead_of_overflowing() -> None:
    spec = FrontendSpec(fp16_mel=True)  # musicnn's front end: mel power rounded to float16 before the log
    t = np.arange(SR) / SR
    loud = (100.0 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    frames = logmel(loud, spec)
    assert np.all(np.isfinite(frames))
    assert frames.max() <= np.log10(1 + 10000 * FP16_MAX) + 1e-4  # saturated at float16's largest value
    assert frames.max() > logmel(loud / 100.0, spec).max()  # ... and still louder than the quiet signal
    inc = IncrementalLogMel(spec)
    assert np.array_equal(np.concatenate([inc.push(loud[:7000]), inc.push(loud[7000:])]), frames)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    from streamtag.sources import read_audio

    return read_audio(str(CLIP), SR)[20 * SR : 36 * SR]  # 16 s of real music


def _bad(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[BAD_AT : BAD_AT + 100] = 100.0  # 100 samples of 100.0 ...
    y[BAD_AT + 200] = np.nan  # ... and one NaN
    return y


def _after_one_window(updates: list, bundle) -> list:
    """Updates whose window starts after the bad samples (window models: the window is clear of them)."""
    return [u for u in updates if u.t - bundle.window_seconds > (BAD_AT + 201) / SR]


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner(load_bundle("musicnn-msd"), "cpu")


def test_file_tagger_recovers_within_one_window(clip: np.ndarray, runner: ModelRunner) -> None:
    clean = tag_audio(clip, runner, name="clean", smoothing=QUICK)
    tagger = FileTagger(runner, name="bad", smoothing=QUICK)
    bad_updates = []
    bad = _bad(clip)
    for i in range(0, bad.shape[0], 4000):
        bad_updates += tagger.push(bad[i : i + 4000])
    bad_updates += tagger.finish()
    summary = tagger.summary()
    assert tagger.repaired == 101 and summary.extra["repaired_samples"] == 101
    assert len(bad_updates) == len(clean.updates)
    assert all(math.isfinite(p) for u in bad_updates for p in u.probs.values())
    late_bad, late_clean = _after_one_window(bad_updates, runner.bundle), _after_one_window(clean.updates, runner.bundle)
    assert len(late_bad) >= 3
    for b, c in zip(late_bad, late_clean):
        assert max(abs(b.probs[k] - c.probs[k]) for k in c.probs) <= 1e-3
        assert max(abs(b.raw[k] - c.raw[k]) for k in c.raw) <= 1e-6  # the window clear of bad input is clean
        assert max(b.probs.values()) > 0.01  # never a stuck 0.0
    # the bad input did reach the model (the test would be empty otherwise)
    hit = [u for u in bad_updates if not u.t - runner.bundle.window_seconds > (BAD_AT + 201) / SR and u.t > BAD_AT / SR]
    ref = {round(u.t, 3): u for u in clean.updates}
    assert any(max(abs(u.raw[k] - ref[round(u.t, 3)].raw[k]) for k in u.raw) > 1e-3 for u in hit)


def test_engine_recovers_within_one_window_and_publishes_repairs(clip: np.ndarray, runner: ModelRunner) -> None:
    engines = {}
    got: dict[str, list] = {"clean": [], "bad": []}
    for name, x in (("clean", clip), ("bad", _bad(clip))):
        engines[name] = Engine(runner.bundle, runner=runner, smoothing=QUICK)
        engines[name].add_stream(name)
        for i in range(0, x.shape[0], 3000):
            engines[name].push(name, x[i : i + 3000])
            got[name] += engines[name].step()
    assert len(got["bad"]) == len(got["clean"]) > 10
    assert got["bad"][-1].extra["repaired"] == 101 and got["clean"][-1].extra["repaired"] == 0
    late_bad = _after_one_window(got["bad"], runner.bundle)
    late_clean = _after_one_window(got["clean"], runner.bundle)
    assert len(late_bad) >= 3
    for b, c in zip(late_bad, late_clean):
        assert b.t == c.t
        assert max(abs(b.probs[k] - c.probs[k]) for k in c.probs) <= 1e-3
        assert b.top[0][0] == c.top[0][0]


def test_stateful_student_recovers(clip: np.ndarray) -> None:
    """A stateful model carries the click in its recurrent state for a while (its read-out is an EMA of 1.5 s):
    the difference must fade, never stick."""
    r = ModelRunner(load_bundle("st-gru-msd"), "cpu")
    clean, bad = tag_audio(clip, r, name="c", smoothing=QUICK), tag_audio(_bad(clip), r, name="b", smoothing=QUICK)
    assert bad.summary.extra["repaired_samples"] == 101
    diffs = [max(abs(b.probs[k] - c.probs[k]) for k in c.probs) for b, c in zip(bad.updates, clean.updates)]
    assert np.all(np.isfinite(bad.raw)) and bad.raw.max() > 0.01
    peak = int(np.argmax(diffs))
    assert diffs[peak] > 1e-3  # the click was heard
    assert diffs[-1] < diffs[peak] / 10  # ... and fades
