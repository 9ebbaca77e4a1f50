"""Smoother invariants as equalities: batched == alone, chunked == one by one, constant input -> its fixed point,
hop independence, the headline genre is the highest bar inside the headline family, families absorb
near-synonyms, quiet hops weigh less, and state that only the engine's remove/add of a stream resets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamtag.errors import ConfigError
from streamtag.smoothing import BatchSmoother, Smoother, SmoothingConfig, family_shares

CONFIGS = {
    "hmm": SmoothingConfig(),
    "hmm-cp": SmoothingConfig(switch_per_second=0.005, sharpness=1.5, change_drift=0.25, change_threshold=0.1),
    "ema": SmoothingConfig(method="ema", tau_seconds=2.0),
    "ema-hold": SmoothingConfig(method="ema", tau_seconds=2.0, margin=0.05, hold_seconds=1.0),
    "none": SmoothingConfig(method="none"),
}


def _raws(rng: np.random.Generator, n: int, n_labels: int) -> np.ndarray:
    """(n, n_labels) sigmoid-like outputs whose leading genre changes a few times."""
    centers = rng.uniform(0.0, 0.4, size=(4, n_labels))
    centers[np.arange(4), rng.integers(0, n_labels, 4)] = 0.8
    seg = np.repeat(np.arange(4), -(-n // 4))[:n]
    return np.clip(centers[seg] + 0.15 * rng.standard_normal((n, n_labels)), 0.0, 1.0)


def _reaction(cfg: SmoothingConfig, hop: float, change_at: float = 30.0, end: float = 60.0) -> float:
    """Seconds from a clean change of the leading genre (0 -> 1) until the top follows."""
    sm = Smoother(cfg)
    t, follow = 0.0, math.inf
    while t < end:
        t += hop
        raw = np.array([0.7, 0.2, 0.1]) if t <= change_at else np.array([0.2, 0.7, 0.1])
        sm.update(raw, hop)
        if t > change_at and sm.top == 1 and math.isinf(follow):
            follow = t - change_at
    return follow


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_equals_alone(name: str) -> None:
    rng = np.random.default_rng(1)
    cfg, n, n_labels, streams = CONFIGS[name], 80, 6, 4
    raws = np.stack([_raws(rng, n, n_labels) for _ in range(streams)])  # (S, T, L)
    dts = np.array([0.5, 1.0, 0.25, 0.5])
    active = rng.random((streams, n)) < 0.8  # rows get their updates at different steps
    bs = BatchSmoother(cfg, [0, 1, 2, 3], streams=streams)
    probs, tops = bs.update_many(raws, dts, active)
    for s in range(streams):
        alone = Smoother(cfg, [0, 1, 2, 3])
        for i in range(n):
            if active[s, i]:
                alone_p = alone.update(raws[s, i], dts[s])
                np.testing.assert_allclose(probs[s, i], alone_p, rtol=1e-12, atol=1e-15)
                assert tops[s, i] == alone.top


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunked_updates_equal_one_long_run(name: str) -> None:
    rng = np.random.default_rng(2)
    raws = np.stack([_raws(rng, 60, 5) for _ in range(3)])  # (S, T, L)
    whole = BatchSmoother(CONFIGS[name], streams=3)
    p_whole, t_whole = whole.update_many(raws, 0.5)
    chunked = BatchSmoother(CONFIGS[name], streams=3)
    outs = []
    for a, b in ((0, 7), (7, 8), (8, 31), (31, 60)):
        outs.append(chunked.update_many(raws[:, a:b], 0.5))
    np.testing.assert_array_equal(np.concatenate([o[0] for o in outs], axis=1), p_whole)
    np.testing.assert_array_equal(np.concatenate([o[1] for o in outs], axis=1), t_whole)
    single = BatchSmoother(CONFIGS[name], streams=3)
    for i in range(60):
        single.update(raws[:, i], 0.5)
    np.testing.assert_array_equal(single.probs, whole.probs)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stepping_some_rows_equals_stepping_all_with_the_others_inactive(name: str) -> None:
    # the live engine steps only the streams that completed a hop (rows=...); the rest must not notice
    rng = np.random.default_rng(3)
    cfg, n, n_labels, streams = CONFIGS[name], 40, 6, 5
    raws = np.stack([_raws(rng, n, n_labels) for _ in range(streams)])  # (S, T, L)
    raws[1, 5] = np.nan  # hostile values take the same path either way
    dts = np.array([0.5, 1.0, 0.25, 0.5, 0.75])
    full = BatchSmoother(cfg, [0, 1, 2, 3], genres=[0, 1, 2], streams=streams)
    some = BatchSmoother(cfg, [0, 1, 2, 3], genres=[0, 1, 2], streams=streams)
    for i in range(n):
        stepped = rng.random(streams) < 0.6
        fed = rng.random(streams) < 0.8  # stepped rows may still be inactive (a silent hop)
        rows = rng.permutation(np.flatnonzero(stepped))  # any order
        full_p = full.update(raws[:, i], dts, stepped & fed)
        some_p = some.update(raws[rows, i], dts[rows], fed[rows], rows=rows)
        np.testing.assert_array_equal(some_p, full_p[rows])
        np.testing.assert_array_equal(some.probs, full.probs)
        np.testing.assert_array_equal(some.top, full.top)
        np.testing.assert_array_equal(some.started, full.started)
    with pytest.raises(ConfigError, match="distinct"):
        some.update(raws[:2, 0], 0.5, rows=[1, 1])
    with pytest.raises(ConfigError, match="distinct"):
        some.update(raws[:1, 0], 0.5, rows=[streams])


def test_batch_membership_keeps_the_other_rows_state() -> None:
    rng = np.random.default_rng(5)
    raws = np.stack([_raws(rng, 30, 4) for _ in range(3)])  # (S, T, L)
    bs = BatchSmoother(SmoothingConfig(), streams=3)
    bs.update_many(raws[:, :20], 0.5)
    alone = [Smoother() for _ in range(3)]
    for s_, sm in enumerate(alone):
        for i in range(20):
            sm.update(raws[s_, i], 0.5)
    bs.remove_stream(1)
    row = bs.add_stream()  # a new stream: a fresh row at the end
    assert row == 2 and not bs.started[row]
    p, _ = bs.update_many(np.stack([raws[0, 20:], raws[2, 20:], raws[1, :10]]), 0.5)
    fresh = Smoother()
    for i in range(10):
        np.testing.assert_allclose(p[0, i], alone[0].update(raws[0, 20 + i], 0.5), rtol=1e-12)
        np.testing.assert_allclose(p[1, i], alone[2].update(raws[2, 20 + i], 0.5), rtol=1e-12)
        np.testing.assert_allclose(p[2, i], fresh.update(raws[1, i], 0.5), rtol=1e-12)
    bs.reset([0])
    assert not bs.started[0] and bs.started[1] and bs.top[0] == -1


def test_constant_input_converges_to_it() -> None:
    raw = np.array([0.3, 0.55, 0.5, 0.1])
    hmm = Smoother(SmoothingConfig())
    ema = Smoother(SmoothingConfig(method="ema", tau_seconds=3.0))
    hmm.update(np.array([0.9, 0.1, 0.1, 0.1]), 1.0)  # start from elsewhere
    ema.update(np.array([0.9, 0.1, 0.1, 0.1]), 1.0)
    for _ in range(300):
        p_hmm = hmm.update(raw, 0.5)
        p_ema = ema.update(raw, 0.5)
    assert hmm.top == int(np.argmax(raw)) == ema.top
    np.testing.assert_allclose(p_ema, raw, atol=1e-12)
    np.testing.assert_allclose(p_hmm, raw, atol=1e-12)  # the bars: a moving average of the raw outputs
    post = hmm.batch.posterior[0]
    assert post[1] > 0.5 and post.sum() == pytest.approx(1.0)  # the posterior settles on the evidence's argmax
    before = post.copy()
    hmm.update(raw, 0.5)
    np.testing.assert_allclose(hmm.batch.posterior[0], before, atol=1e-12)  # ... and stays there (a fixed point)


@pytest.mark.parametrize("name", ["hmm", "hmm-cp", "ema"])
def test_hop_independence(name: str) -> None:
    cfg = CONFIGS[name]
    r_half, r_one = _reaction(cfg, 0.5), _reaction(cfg, 1.0)
    assert math.isfinite(r_half) and math.isfinite(r_one)
    assert abs(r_half - r_one) <= 1.0  # within one (the longer) hop of each other


def test_switching_probability_composes_exactly() -> None:
    # with uninformative evidence only the transition acts: two hops of 0.5 s == one hop of 1 s
    flat = np.full(4, 0.5)
    a, b = Smoother(), Smoother()
    for sm in (a, b):
        sm.update(np.array([0.9, 0.1, 0.1, 0.1]), 1.0)
    a.update(flat, 0.5)
    a.update(flat, 0.5)
    b.update(flat, 1.0)
    np.testing.assert_allclose(a.batch.posterior, b.batch.posterior, rtol=1e-12)
    assert a.probs is not None and b.probs is not None
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-12)  # the bars' moving average composes too


@pytest.mark.parametrize("name", list(CONFIGS))
def test_headline_genre_is_the_highest_bar_inside_the_headline_family(name: str) -> None:
    rng = np.random.default_rng(3)
    cands = [0, 2, 3, 5]
    families = [[0, 3], [2], [5]]
    sm = Smoother(CONFIGS[name], cands, families=families)
    disagree = 0
    for raw in _raws(rng, 200, 6):
        p = sm.update(raw, 0.5)
        assert sm.family is not None and sm.top in sm.groups[sm.family]
        inside = sm.groups[sm.family]
        assert sm.ranking(cands)[0] == sm.top and sorted(sm.ranking(cands)) == cands
        shares = sm.family_probs
        assert shares is not None and shares.sum() == pytest.approx(1.0)
        if name == "ema-hold":
            disagree += sm.top != cands[int(np.argmax(p[cands]))]  # main's old hysteresis: held genre lags
            continue
        assert sm.top == inside[int(np.argmax(p[inside]))]
        if not name.startswith("hmm"):  # without the HMM the headline family is the bars' largest share
            assert sm.family == int(np.argmax(shares))
    if name == "ema-hold":
        assert disagree > 0


def test_family_shares_weigh_one_clear_genre_against_many_small_ones() -> None:
    # ten near-zero labels of one family must not outweigh one clear genre elsewhere; near-synonyms add up
    groups = [list(range(10)), [10]]
    tail = np.r_[np.full(10, 0.04), 0.2]
    assert np.argmax(family_shares(tail, groups)) == 1
    split = np.r_[0.2, 0.2, 0.2, np.zeros(7), 0.25]
    assert np.argmax(family_shares(split, groups)) == 0
    both = family_shares(np.stack([tail, split]), groups)  # (2, F): rows are independent
    np.testing.assert_allclose(both.sum(axis=1), 1.0)
    np.testing.assert_allclose(both[1], family_shares(split, groups))
    np.testing.assert_allclose(family_shares(np.zeros(11), groups), 0.5)  # nothing heard: uniform


def test_near_synonyms_do_not_flip_the_family_but_a_real_change_does() -> None:
    rng = np.random.default_rng(6)
    families = [[0, 1, 2], [3], [4]]  # "rock, alternative, indie rock" | "jazz" | "electronic"
    sm = Smoother(SmoothingConfig(), families=families)
    fams, tops = [], []
    for i in range(240):  # 2 min of rock whose leading label flips between three near-synonyms
        r = np.array([0.3, 0.3, 0.3, 0.12, 0.1]) + 0.08 * rng.standard_normal(5)
        r[i // 10 % 3] += 0.15
        sm.update(np.clip(r, 0, 1), 0.5)
        fams.append(sm.family)
        tops.append(sm.top)
    assert sum(a != b for a, b in zip(tops, tops[1:])) > 10  # the genre inside moves ...
    assert set(fams[4:]) == {0}  # ... the family never does
    hops = 0
    while sm.family != 1 and hops < 30:  # then jazz: the family follows within a few seconds
        sm.update(np.array([0.05, 0.04, 0.04, 0.6, 0.1]), 0.5)
        hops += 1
    assert sm.family == 1 and hops * 0.5 <= 4.0


def test_bars_are_graded_and_follow_the_recent_raw_mean() -> None:
    rng = np.random.default_rng(8)
    sm = Smoother(SmoothingConfig())
    center = np.array([0.55, 0.07, 0.04, 0.2, 0.01])
    raws = []
    for _ in range(120):
        r = np.clip(center + 0.05 * rng.standard_normal(5), 0, 1)
        raws.append(r)
        p = sm.update(r, 0.5)
        if len(raws) > 20:
            recent = np.mean(raws[-8:], axis=0)  # the last 4 s
            top3 = np.argsort(-p)[:3]
            assert np.all(np.abs(p[top3] - recent[top3]) <= 0.05)
    assert 0.4 < p[0] < 0.7 and p[1] > 0.02  # graded, not a saturated 1.00 / 0.00


@pytest.mark.parametrize("name", ["hmm", "hmm-cp"])
def test_quiet_hops_weigh_less_and_a_fade_out_does_not_flip_the_headline(name: str) -> None:
    families = [[0], [1]]
    loud, other = np.array([0.7, 0.1]), np.array([0.05, 0.8])

    def run(levels: list[float]) -> Smoother:
        sm = Smoother(CONFIGS[name], families=families)
        for _ in range(40):
            sm.update(loud, 0.5, level_db=-18.0)
        for lv in levels:  # the fade: the model hears something else in the quiet tail
            sm.update(other, 0.5, level_db=lv)
        return sm

    assert run([-18.0] * 12).family == 1  # at full level that evidence is a real change ...
    assert run([-30.0, -36.0, -42.0, -49.0, -52.0, -55.0] * 2).family == 0  # ... in a fade-out it is not
    bs = BatchSmoother(SmoothingConfig(), streams=1)
    np.testing.assert_allclose(bs.weight(np.array([-70.0, -60.0, -50.0, -40.0, -10.0])), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(bs.weight(np.array([-20.0, -30.0, -45.0]), np.array([-20.0, -20.0, -20.0])),
                               [1.0, 0.5, 0.0])
    assert bs.weight(np.array([np.nan]))[0] == 1.0  # no level known: full weight
    # a quiet hop counts as a fraction of its seconds: one hop at weight 0.5 == half a hop at full weight
    a, b = Smoother(CONFIGS[name]), Smoother(CONFIGS[name])
    for sm in (a, b):
        sm.update(np.array([0.9, 0.1, 0.1]), 1.0, level_db=-50.0)  # (the stream's peak: -50 dBFS)
    a.update(np.array([0.1, 0.8, 0.1]), 1.0, level_db=-50.0)
    b.update(np.array([0.1, 0.8, 0.1]), 0.5)
    np.testing.assert_allclose(a.batch.posterior, b.batch.posterior, rtol=1e-12)
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-12)
    np.testing.assert_allclose(a.batch.segment, b.batch.segment, rtol=1e-12)


def test_change_points_restart_the_chain_on_a_real_change_and_stay_quiet_on_steady_music() -> None:
    rng = np.random.default_rng(4)
    cp = CONFIGS["hmm-cp"]
    plain = SmoothingConfig(switch_per_second=cp.switch_per_second, sharpness=cp.sharpness)  # the same, no change points
    center = np.array([0.40, 0.34, 0.1, 0.1])  # two close genres, noisy raw outputs
    steady = np.clip(center + 0.08 * rng.standard_normal((240, 4)), 0, 1)
    sm = Smoother(cp)
    seconds, tops = [], []
    for r in steady:
        sm.update(r, 0.5)
        seconds.append(float(sm.batch.segment_seconds[0]))
        tops.append(sm.top)
    assert np.all(np.diff(seconds) > 0)  # no change point in two minutes of steady (if noisy) music ...
    np.testing.assert_allclose(sm.batch.segment[0], steady.mean(axis=0), rtol=1e-9)  # the segment: their mean
    assert sum(a != b for a, b in zip(tops[20:], tops[21:])) <= 1  # ... and the headline holds
    # a real change after two minutes of one family: with change points the chain restarts and follows sooner
    follow = {}
    for name, cfg in (("cp", cp), ("plain", plain)):
        sm = Smoother(cfg)
        for r in steady:
            sm.update(r, 0.5)
        hops = 0
        while sm.top != 2 and hops < 200:
            sm.update(np.array([0.1, 0.12, 0.6, 0.1]), 0.5)
            hops += 1
        follow[name] = hops
        if name == "cp":
            assert sm.batch.segment_seconds[0] < hops * 0.5  # a change point fell inside the new music
    assert follow["cp"] < follow["plain"] < 200


def test_hmm_does_not_flicker_on_noisy_steady_music_but_follows_a_real_change() -> None:
    rng = np.random.default_rng(0)
    sm = Smoother(SmoothingConfig())
    center = np.array([0.40, 0.34, 0.1, 0.1])  # two close genres, noisy raw outputs
    raw_tops, tops = [], []
    for _ in range(240):
        r = np.clip(center + 0.08 * rng.standard_normal(4), 0, 1)
        sm.update(r, 0.5)
        raw_tops.append(int(np.argmax(r)))
        tops.append(sm.top)
    raw_switches = sum(a != b for a, b in zip(raw_tops, raw_tops[1:]))
    switches = sum(a != b for a, b in zip(tops[20:], tops[21:]))
    assert raw_switches > 20 and switches <= 1
    for hop in (0.5, 1.0):  # the smoother's own delay on a clean step (the model adds its own on real music)
        assert 0 < _reaction(SmoothingConfig(), hop) <= 4.0


def test_floor_keeps_every_genre_possible() -> None:
    sm = Smoother(SmoothingConfig())
    for _ in range(2000):  # a long stretch where genre 1 is exactly impossible by the model's outputs
        sm.update(np.array([1.0, 0.0, 0.0]), 1.0)
    assert np.all(sm.batch.posterior > 0)
    t = 0
    while sm.top != 1:
        sm.update(np.array([0.0, 1.0, 0.0]), 1.0)
        t += 1
        assert t <= 5


def test_non_genre_labels_are_ema_smoothed_and_the_headline_is_a_genre() -> None:
    cfg = SmoothingConfig(tau_seconds=2.0)
    genres, tags = [0, 1, 2], [3, 4]
    sm = Smoother(cfg, candidates=[0, 1, 2, 3, 4], genres=genres)  # all_tags mode
    ema = Smoother(SmoothingConfig(method="ema", tau_seconds=2.0))
    bars = Smoother(SmoothingConfig(method="ema", tau_seconds=cfg.bar_seconds))
    rng = np.random.default_rng(4)
    for raw in _raws(rng, 50, 5):
        raw[3] = 0.99  # a tag that is always stronger than any genre
        p = sm.update(raw, 0.5)
        e = ema.update(raw, 0.5)
        b = bars.update(raw, 0.5)
        np.testing.assert_allclose(p[tags], e[tags], rtol=1e-12)
        np.testing.assert_allclose(p[genres], b[genres], rtol=1e-12)  # genres: the bars' shorter average
        assert sm.top in genres and sm.ranking([0, 1, 2, 3, 4])[0] == sm.top
        assert sm.family_probs is not None and sm.family_probs.shape == (3,)  # families are made of genres only


def test_hostile_raw_values_stay_finite_and_shape_errors_say_so() -> None:
    sm = Smoother()
    p = sm.update(np.array([np.nan, np.inf, -np.inf, 0.5]), 0.5, level_db=float("nan"))
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    assert sm.batch.posterior[0].sum() == pytest.approx(1.0)
    p = sm.update(np.zeros(4), float("nan"))  # all-zero evidence, a nonsense dt
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(sm.batch.posterior))
    with pytest.raises(ConfigError, match="labels"):
        sm.update(np.zeros(5), 0.5)
    with pytest.raises(ConfigError, match="shape"):
        sm.update(np.zeros((2, 4)), 0.5)
    with pytest.raises(ConfigError, match="index"):
        Smoother(candidates=[0, 9]).update(np.zeros(4), 0.5)
    with pytest.raises(ConfigError, match="each in one family"):
        Smoother(families=[[0, 1], [1, 2]]).update(np.zeros(4), 0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "kalman"}, "use one of hmm, ema, none"),
        ({"tau_seconds": -1.0}, "tau_seconds"),
        ({"bar_seconds": -1.0}, "bar_seconds"),
        ({"sharpness": float("nan")}, "sharpness"),
        ({"switch_per_second": 1.0}, "switch_per_second"),
        ({"floor": 0.0}, "floor"),
        ({"quiet_db": -30.0, "loud_db": -40.0}, "below loud_db"),
        ({"loud_db": float("inf")}, "loud_db"),
        ({"relative_db": 0.0}, "relative_db"),
        ({"hold_seconds": 1.0}, "method='ema' only"),
        ({"method": "none", "margin": 0.1}, "method='ema' only"),
    ],
)
def test_bad_settings_raise_config_errors_that_say_what_to_do(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SmoothingConfig(**kwargs)


def test_none_passes_raw_through_and_candidates_restrict_the_top() -> None:
    sm = Smoother(SmoothingConfig(method="none"), candidates=[1, 2])
    out = sm.update(np.array([0.9, 0.2, 0.3]), dt=1.0)
    np.testing.assert_array_equal(out, [0.9, 0.2, 0.3])
    assert sm.top == 2 and sm.ranking([1, 2]) == [2, 1]
    sm.reset()
    assert sm.top is None and sm.probs is None


# -- the engine's reset rules ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from streamtag.architectures import build_model
    from streamtag.frontend import FrontendSpec
    from streamtag.registry import save_bundle

    torch.manual_seed(0)
    cfg = dict(n_mels=32, n_labels=5, d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.0)
    spec = FrontendSpec(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, scaling="db")
    return save_bundle(tmp_path_factory.mktemp("bundles") / "tiny", build_model("transformer", cfg),
                       architecture="transformer", arch_config=cfg, frontend=spec,
                       labels=["rock", "jazz", "classical", "80s", "guitar"], genre_labels=["rock", "jazz", "classical"],
                       window_frames=62, hop_seconds=0.5)


def _tone(seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = 200.0 * 2.0 ** np.floor(t / 1.5)  # a pitch that steps up every 1.5 s: outputs that move
    return (0.4 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def _replay(cfg: SmoothingConfig, updates: list, shown: list[str], dt: float, bundle) -> list[dict[str, float]]:
    from streamtag.pipeline import _families

    sm = Smoother(cfg, families=_families(bundle)[1])  # (the shown labels are the bundle's first ones here)
    out = []
    for u in updates:
        p = sm.update(np.array([u.raw[k] for k in shown]), dt, level_db=u.extra["level_db"])
        out.append(dict(zip(shown, p.tolist())))
    return out


def _heads_inside_its_family(u, bundle) -> bool:
    """The update's headline genre is the highest bar among the genres of its headline family."""
    from streamtag.taxonomy import bundle_taxonomy

    inside = dict(bundle_taxonomy(bundle).families).get(u.family) or (u.top[0][0],)  # a family of its own
    bars = {k: v for k, v in u.probs.items() if k in inside}
    return u.top[0][0] == max(bars, key=lambda k: bars[k]) and sum(u.families.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["hmm", "ema"])
def test_engine_state_survives_everything_but_remove_and_add(tiny_bundle, name: str) -> None:
    from streamtag.pipeline import Engine

    cfg = CONFIGS[name]
    engine = Engine(tiny_bundle, device="cpu", smoothing=cfg)
    sr, shown = engine.sample_rate, engine.labels_shown
    x = _tone(12.0, sr, 0)
    engine.add_stream("a")
    engine.add_stream("b")  # another stream coming and going must not touch "a"
    first: list = []
    for k, block in enumerate(np.array_split(x, 9)):
        engine.push("a", block)
        if k <= 3:
            engine.push("b", block[::-1].copy())
        if k == 3:
            engine.set_title("a", "a new title")  # a title change is not a new stream
            engine.remove_stream("b")
        first.extend(u for u in engine.step() if u.stream == "a")
    assert len(first) >= 10
    expected = _replay(cfg, first, shown, engine.hop_seconds, tiny_bundle)
    for u, p in zip(first, expected):
        assert u.probs == pytest.approx(p, rel=1e-9, abs=1e-12)  # one continuous run, never reset
        assert _heads_inside_its_family(u, tiny_bundle)
    engine.remove_stream("a")
    engine.add_stream("a")  # the same name again is a new stream: a fresh smoother
    engine.push("a", x[: 4 * sr])
    again = engine.step()
    assert again
    assert again[0].probs == pytest.approx(_replay(cfg, again[:1], shown, engine.hop_seconds, tiny_bundle)[0],
                                           rel=1e-9)
    cont = _replay(cfg, first + again[:1], shown, engine.hop_seconds, tiny_bundle)[-1]
    assert again[0].probs != pytest.approx(cont, rel=1e-6)  # ... and not the old state continued


def test_tag_audio_heads_with_a_family_and_a_genre_in_all_tags_mode(tiny_bundle) -> None:
    from streamtag.pipeline import tag_audio
    from streamtag.runner import ModelRunner

    runner = ModelRunner(tiny_bundle, "cpu")
    x = _tone(8.0, tiny_bundle.frontend.sample_rate, 1)
    genres = set(tiny_bundle.genre_labels)
    plain = tag_audio(x, runner, name="x")
    tags = tag_audio(x, runner, name="x", all_tags=True).updates
    assert len(plain.updates) == len(tags) >= 5
    for u in plain.updates:
        assert set(u.probs) == genres and u.family in {"rock", "jazz", "classical"}
        assert _heads_inside_its_family(u, tiny_bundle)
    for u, g in zip(tags, plain.updates):
        assert set(u.probs) == set(tiny_bundle.labels)
        assert u.top[0][0] in genres and u.top[0][0] == g.top[0][0]  # the same genre heads in both modes
        assert u.family == g.family and u.families == g.families
        assert {k: u.probs[k] for k in genres} == pytest.approx(g.probs, rel=1e-12)
    fams = plain.summary.families  # the file's family shares: from the mean raw outputs
    assert set(fams) == {"rock", "jazz", "classical"} and sum(fams.values()) == pytest.approx(1.0)
    mean = plain.summary.mean
    assert max(fams, key=lambda f: fams[f]) == max(genres, key=lambda g: mean[g])  # one genre per family here
