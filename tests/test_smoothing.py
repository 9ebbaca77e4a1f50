from __future__ import annotations

import numpy as np

from streamtag.smoothing import Smoother, SmoothingConfig


def _noisy(center: np.ndarray, n: int, rng: np.random.Generator, noise: float) -> list[np.ndarray]:
    return [np.clip(center + noise * rng.standard_normal(center.shape), 0, 1) for _ in range(n)]


def test_top_does_not_flicker_on_steady_music_with_noisy_raw() -> None:
    rng = np.random.default_rng(0)
    sm = Smoother(SmoothingConfig(tau_seconds=3.0))
    center = np.array([0.40, 0.36, 0.1])  # two close genres, noisy raw outputs
    raw_tops, tops = [], []
    for r in _noisy(center, 120, rng, 0.08):
        sm.update(r, dt=0.5)
        raw_tops.append(int(np.argmax(r)))
        tops.append(sm.top)
    raw_switches = sum(a != b for a, b in zip(raw_tops, raw_tops[1:]))
    switches = sum(a != b for a, b in zip(tops, tops[1:]))
    assert raw_switches > 10  # the raw top flickers ...
    assert switches <= 1  # ... the smoothed one does not


def test_follows_a_real_change_within_a_few_seconds() -> None:
    sm = Smoother(SmoothingConfig(tau_seconds=2.0, hold_seconds=1.0))
    for _ in range(20):
        sm.update(np.array([0.8, 0.1]), dt=0.5)
    assert sm.top == 0
    t = 0.0
    while sm.top == 0:
        sm.update(np.array([0.1, 0.8]), dt=0.5)
        t += 0.5
        assert t < 10
    assert 0.5 <= t <= 5.0


def test_no_smoothing_passes_raw_through_and_candidates_restrict_top() -> None:
    sm = Smoother(SmoothingConfig(tau_seconds=0.0), candidates=[1, 2])
    out = sm.update(np.array([0.9, 0.2, 0.3]), dt=1.0)
    assert np.allclose(out, [0.9, 0.2, 0.3])
    assert sm.top == 2
    assert sm.ranking([1, 2]) == [2, 1]
