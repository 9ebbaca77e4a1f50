"""Engine invariants as equalities: streamed == offline, batched streams == streams run alone."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from streamtag.errors import ConfigError, ModelError
from streamtag.frontend import FrontendSpec
from streamtag.pipeline import Engine, tag_audio, window_ends
from streamtag.registry import load_bundle, save_bundle
from streamtag.runner import ModelRunner

SPEC = FrontendSpec(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, scaling="db")
LABELS = ["rock", "jazz", "classical", "80s", "guitar"]
GENRES = ["rock", "jazz", "classical"]


@pytest.fixture(scope="module", params=["transformer", "stateful_gru", "musicnn_student"])
def bundle(request, tmp_path_factory):
    from streamtag.architectures import build_model

    torch.manual_seed(0)
    if request.param == "transformer":
        cfg = dict(n_mels=32, n_labels=5, d_model=32, n_layers=2, n_heads=2, d_ff=64, dropout=0.0)
        streaming, window = "window", 125  # 2 s
    elif request.param == "stateful_gru":
        cfg = dict(n_mels=32, n_labels=5, d_embed=16, hidden=24, n_layers=2, dropout=0.0)
        streaming, window = "stateful", 125
    else:  # the distilled students' layout: a (tiny) frozen musicnn front end streamed, a transformer on 2 s of it
        cfg = dict(n_mels=32, n_labels=5, head="transformer", window_frames=125,
                   head_config=dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, embed_kernel=5, embed_stride=5,
                                    dropout=0.0),
                   musicnn=dict(timbral_filters=6, timbral_bands=[12, 22], temporal_filters=4,
                                temporal_frames=[32, 16, 8], midend_filters=5))
        streaming, window = "stateful", 125
    model = build_model(request.param, cfg)
    path = tmp_path_factory.mktemp("bundles") / f"tiny-{request.param}"
    return save_bundle(path, model, architecture=request.param, arch_config=cfg, frontend=SPEC, labels=LABELS,
                       genre_labels=GENRES, window_frames=window, hop_seconds=0.5, streaming=streaming)


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SPEC.sample_rate)) / SPEC.sample_rate
    f = rng.uniform(100, 1500)
    x = 0.4 * np.sin(2 * np.pi * f * t * (1 + 0.1 * np.sin(0.5 * t))) + 0.05 * rng.standard_normal(t.shape)
    return x.astype(np.float32)


def _push_randomly(engine: Engine, name: str, x: np.ndarray, rng: np.random.Generator, updates: list) -> None:
    pos = 0
    while pos < x.shape[0]:
        n = int(rng.integers(1, 3000))
        engine.push(name, x[pos : pos + n])
        pos += n
        if rng.random() < 0.5:
            updates.extend(engine.step())
    updates.extend(engine.step())


def test_streamed_equals_offline(bundle) -> None:
    runner = ModelRunner(bundle, "cpu")
    x = _audio(7.3, 1)
    offline = tag_audio(x, runner, name="a", all_tags=True)
    engine = Engine(bundle, device="cpu", all_tags=True, runner=runner)
    engine.add_stream("a")
    ups: list = []
    _push_randomly(engine, "a", x, np.random.default_rng(5), ups)
    assert [round(u.t, 6) for u in ups] == [round(u.t, 6) for u in offline.updates]
    for u, o in zip(ups, offline.updates):
        assert max(abs(u.raw[k] - o.raw[k]) for k in LABELS) <= 1e-5
        assert max(abs(u.probs[k] - o.probs[k]) for k in LABELS) <= 1e-5
    assert len(ups) >= 10


def test_streams_batched_equal_streams_alone(bundle) -> None:
    runner = ModelRunner(bundle, "cpu")
    clips = {f"s{i}": _audio(4.0 + i, 10 + i) for i in range(3)}
    together = Engine(bundle, device="cpu", runner=runner)
    for name in clips:
        together.add_stream(name)
    got: dict[str, list] = {n: [] for n in clips}
    rng = np.random.default_rng(0)
    pos = {n: 0 for n in clips}
    while any(pos[n] < clips[n].shape[0] for n in clips):
        for n, x in clips.items():
            k = int(rng.integers(200, 4000))
            together.push(n, x[pos[n] : pos[n] + k])
            pos[n] += k
        for u in together.step():
            got[u.stream].append(u)
    for n, x in clips.items():
        alone = Engine(bundle, device="cpu", runner=ModelRunner(bundle, "cpu"))
        alone.add_stream(n)
        ref: list = []
        _push_randomly(alone, n, x, np.random.default_rng(1), ref)
        assert len(ref) == len(got[n]) > 0
        for a, b in zip(got[n], ref):
            assert a.t == pytest.approx(b.t)
            assert max(abs(a.raw[k] - b.raw[k]) for k in GENRES) <= 1e-5


def test_update_fields_and_hop_spacing(bundle) -> None:
    engine = Engine(bundle, device="cpu", hop_seconds=0.25)
    engine.add_stream("x", title="Artist - Song")
    engine.push("x", _audio(5.0, 2))
    ups = engine.step()
    assert len(ups) >= 5
    ts = [u.t for u in ups]
    assert all(b - a == pytest.approx(engine.hop_seconds) for a, b in zip(ts, ts[1:]))
    d = ups[-1].to_dict()
    assert d["type"] == "update" and d["stream"] == "x" and d["title"] == "Artist - Song"
    assert set(d["probs"]) == set(GENRES) and set(d["raw"]) == set(GENRES)
    assert d["top"][0][0] in GENRES and all(0 <= p <= 1 for _, p in d["top"])
    assert d["latency_ms"] is not None and d["latency_ms"] >= 0
    assert math.isfinite(d["level_db"])
    assert engine.streams["x"].latest is ups[-1] and engine.streams["x"].updates == len(ups)


def test_latency_counts_from_when_the_audio_arrived(bundle) -> None:
    """A decoder process hands the engine audio that reached the machine earlier: latency counts from then
    (an arrival in the future is taken as now)."""
    engine = Engine(bundle, device="cpu", hop_seconds=0.5)
    for name in ("now", "earlier", "future", "spread"):
        engine.add_stream(name)
    x = _audio(3.0, 3)
    t = time.monotonic()
    engine.push("now", x)
    engine.push("earlier", x, arrived=t - 30.0)
    engine.push("future", x, arrived=t + 30.0)
    engine.push("spread", x, arrived=(t - 30.0, t - 10.0))  # bytes came in steadily over those 20 s
    ups = engine.step()
    lat = {n: [u.extra["latency_ms"] for u in ups if u.stream == n] for n in ("now", "earlier", "future", "spread")}
    assert lat["now"] and len(lat["now"]) == len(lat["earlier"]) == len(lat["future"])
    assert all(0 <= a < 30_000 <= b for a, b in zip(lat["now"], lat["earlier"]))
    assert all(0 <= c for c in lat["future"])
    # a hop ending at a fraction f of the audio arrived at t - 30 + 20 f: later hops, less latency
    spread = lat["spread"]
    assert all(10_000 <= a <= 30_500 for a in spread) and spread == sorted(spread, reverse=True)
    assert spread[0] - spread[-1] > 1_000


def test_overruns_counted_when_consumer_is_slow(bundle) -> None:
    engine = Engine(bundle, device="cpu", ring_seconds=1.0)
    engine.add_stream("x")
    for _ in range(5):
        engine.push("x", _audio(0.5, 3))  # 2.5 s into a 1 s ring without stepping
    assert engine.streams["x"].overruns >= 1
    ups = []
    for _ in range(8):  # the consumer catches up: updates resume and report the overruns
        engine.push("x", _audio(0.5, 4))
        ups.extend(engine.step())
    assert ups and ups[-1].extra["overruns"] >= 1
    st = engine.streams["x"]
    assert st.ring.overrun_samples > 0
    # t stays the stream's real time: the dropped audio is counted, not silently shifted
    assert ups[-1].t == pytest.approx(st.t, abs=engine.hop_seconds + SPEC.n_fft / SPEC.sample_rate)


def test_bad_hop_and_stream_names(bundle) -> None:
    with pytest.raises(ConfigError, match="at least 0.25"):
        Engine(bundle, device="cpu", hop_seconds=0.1)
    engine = Engine(bundle, device="cpu")
    engine.add_stream("a")
    with pytest.raises(ConfigError, match="already exists"):
        engine.add_stream("a")
    with pytest.raises(ConfigError, match="unknown stream"):
        engine.push("b", np.zeros(10, np.float32))
    engine.remove_stream("a")
    assert engine.streams == {}


def test_short_input_gets_one_window_and_silence_is_fine(bundle) -> None:
    runner = ModelRunner(bundle, "cpu")
    tl = tag_audio(np.zeros(SPEC.sample_rate, np.float32), runner, name="silence")
    assert tl.summary.windows >= 1
    assert all(0.0 <= v <= 1.0 for v in tl.summary.mean.values())


def test_window_ends() -> None:
    assert window_ends(0, 10, 5) == []
    assert window_ends(7, 10, 5) == [7]
    assert window_ends(20, 10, 5) == [10, 15, 20]


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_bundle("nope")


def test_push_from_another_thread_while_stepping(bundle) -> None:
    """Producers push while the engine steps: no lost samples, no 'deque mutated' errors, latency measured."""
    import threading

    engine = Engine(bundle, device="cpu")
    engine.add_stream("x")
    x = _audio(6.0, 7)

    def produce() -> None:
        for i in range(0, x.shape[0], 160):
            engine.push("x", x[i : i + 160])

    th = threading.Thread(target=produce)
    th.start()
    ups = []
    while th.is_alive():
        ups.extend(engine.step())
    th.join()
    ups.extend(engine.step())
    assert engine.streams["x"].ring.written == x.shape[0] and engine.streams["x"].overruns == 0
    offline = tag_audio(x, engine.runner, name="x")
    assert len(ups) == len(offline.updates)
    assert all(u.extra["latency_ms"] is not None for u in ups)


def test_updates_carry_the_time_the_answer_describes(bundle) -> None:
    """A model whose front end looks ahead (the musicnn students: lag_frames) stamps each update with the end
    of the music it describes, lag_frames before the newest audio, and says nothing before it has heard any."""
    runner = ModelRunner(bundle, "cpu")
    lag = runner.lag_frames
    assert lag == (16 + 3 * 3 if bundle.architecture == "musicnn_student" else 0)  # tiny musicnn: kernels 32 / 7
    x = _audio(4.0, 3)
    engine = Engine(bundle, device="cpu", runner=runner)
    engine.add_stream("a")
    engine.push("a", x)
    ups = engine.step()
    hop = engine.hop_frames
    first = engine.window_frames if not runner.stateful else hop
    while first <= lag:
        first += hop
    frame_s = SPEC.hop_length / SPEC.sample_rate
    assert ups[0].t == pytest.approx(SPEC.samples_for_frames(first - lag) / SPEC.sample_rate)
    assert all(u.t > 0 for u in ups)
    assert np.allclose(np.diff([u.t for u in ups]), hop * frame_s)
    offline = tag_audio(x, ModelRunner(bundle, "cpu"), name="a")
    assert [round(u.t, 6) for u in offline.updates] == [round(u.t, 6) for u in ups]


def test_file_tagger_chunked_equals_tag_audio(bundle) -> None:
    """Pushing a file in blocks of any sizes gives tag_audio's updates, raw outputs and summary."""
    from streamtag.pipeline import FileTagger

    runner = ModelRunner(bundle, "cpu")
    x = _audio(23.0, 7)  # more than one batch of windows / hops
    whole = tag_audio(x, runner, name="f", all_tags=True)
    rng = np.random.default_rng(3)
    tagger = FileTagger(runner, name="f", all_tags=True)
    ups, pos, partial = [], 0, None
    while pos < x.shape[0]:
        n = int(rng.integers(1, 40000))
        ups += tagger.push(x[pos : pos + n])
        pos += n
        if partial is None and tagger.windows:
            partial = tagger.summary(partial=True)
    ups += tagger.finish()
    assert partial is not None and partial.partial and 0 < partial.windows < len(whole.updates)
    assert [round(u.t, 6) for u in ups] == [round(u.t, 6) for u in whole.updates]
    for u, w in zip(ups, whole.updates):
        assert max(abs(u.raw[k] - w.raw[k]) for k in LABELS) <= 1e-5
        assert max(abs(u.probs[k] - w.probs[k]) for k in LABELS) <= 1e-5
    s, ws = tagger.summary(), whole.summary
    assert s.windows == ws.windows == whole.raw.shape[0] and not s.partial
    assert max(abs(s.mean[k] - float(whole.raw[:, i].mean())) for i, k in enumerate(LABELS)) <= 1e-6
    assert s.duration == pytest.approx(ws.duration) and s.extra["repaired_samples"] == 0


def test_file_tagger_memory_does_not_grow_with_length(bundle) -> None:
    """The frames a FileTagger keeps are bounded by its batch, whatever the file's length."""
    from streamtag.pipeline import FileTagger

    runner = ModelRunner(bundle, "cpu")
    most = {}
    for seconds in (30.0, 90.0):
        tagger = FileTagger(runner, name="f")
        x = _audio(seconds, 9)
        kept = 0
        for i in range(0, x.shape[0], 8000):
            tagger.push(x[i : i + 8000])
            kept = max(kept, tagger._track.frames.shape[0], tagger._track.power.shape[0])
        tagger.finish()
        most[seconds] = kept
        assert tagger.windows > 20
    from streamtag.pipeline import FILE_BATCH, hop_frames_for

    hop = hop_frames_for(bundle, None)  # one batch of hops, one window, one pushed block, the lag: never the file
    bound = bundle.window_frames + (FILE_BATCH + 1) * hop + 8000 // SPEC.hop_length + 1 + runner.lag_frames
    assert most[30.0] <= bound and most[90.0] <= bound


def test_silent_hops_are_flagged_and_do_not_move_the_genres(bundle) -> None:
    from streamtag.pipeline import SILENCE_DB

    loud = _audio(6.0, 11)
    x = np.concatenate([loud, np.zeros(4 * SPEC.sample_rate, np.float32), 1e-5 * loud, _audio(4.0, 12)])
    runner = ModelRunner(bundle, "cpu")
    tl = tag_audio(x, runner, name="s")
    engine = Engine(bundle, device="cpu", runner=runner)
    engine.add_stream("s")
    live: list = []
    _push_randomly(engine, "s", x, np.random.default_rng(2), live)
    for ups in (tl.updates, live):
        flags = [u.extra["silence"] for u in ups]
        assert any(flags) and not all(flags)
        for u in ups:
            assert (u.extra["level_db"] < SILENCE_DB) == u.extra["silence"]
        for prev, u in zip(ups, ups[1:]):
            if u.extra["silence"]:  # the smoothed state holds still while it is silent
                assert u.probs == prev.probs and u.top[0] == prev.top[0]
        assert all(u.top[0][1] == u.probs[u.top[0][0]] for u in ups)  # top[0]: the smoothed top, its smoothed p
    silent = [i for i, u in enumerate(tl.updates) if u.extra["silence"]]
    s = tl.summary
    assert s.extra["silent_windows"] == len(silent)
    heard = np.delete(tl.raw, silent, axis=0).mean(axis=0)
    assert max(abs(s.mean[k] - heard[i]) for i, k in enumerate(LABELS)) <= 1e-6


def test_a_stream_added_to_a_running_engine_gets_its_own_hop_levels(bundle) -> None:
    """A step that answers other streams' hops must not move the frame levels of a stream whose first window is not
    complete yet (a stream added while others run): its levels and silence flags equal the file path's."""
    x = _audio(8.0, 13)
    x[3 * SPEC.sample_rate : 5 * SPEC.sample_rate] = 0.0
    runner = ModelRunner(bundle, "cpu")
    want = [(round(u.t, 6), u.extra["level_db"], u.extra["silence"]) for u in tag_audio(x, runner, name="b").updates]
    engine = Engine(bundle, device="cpu", runner=ModelRunner(bundle, "cpu"))
    engine.add_stream("a")
    engine.push("a", _audio(4.0, 14))
    engine.step()
    engine.add_stream("b")  # joins while "a" runs: steps answer "a" before "b" has a whole window
    got = []
    for i in range(0, x.shape[0], 1000):
        engine.push("a", _audio(1000 / SPEC.sample_rate, i))
        engine.push("b", x[i : i + 1000])
        got += [u for u in engine.step() if u.stream == "b"]
    assert [(round(u.t, 6), u.extra["level_db"], u.extra["silence"]) for u in got] == want


@pytest.mark.parametrize("smoothing", ["hmm", "ema-hold"])
def test_batched_step_equals_each_stream_alone_and_the_per_update_path(bundle, smoothing: str) -> None:
    """One step does each stage once for all streams (one log-mel pass, one smoother step over the streams' rows,
    the rankings and dicts from arrays): every field of every update equals the same stream run in an engine of its
    own, and its smoothing equals a Smoother per stream stepped update by update (silent hops not fed, the raw
    answer shown before the first fed one, the held top first)."""
    from streamtag.pipeline import _families
    from streamtag.smoothing import Smoother, SmoothingConfig

    cfg = (SmoothingConfig() if smoothing == "hmm"
           else SmoothingConfig(method="ema", tau_seconds=2.0, margin=0.05, hold_seconds=1.0))
    clips = {f"s{i}": _audio(6.0 + i, 20 + i) for i in range(4)}
    clips["s1"][SPEC.sample_rate : 3 * SPEC.sample_rate] = 0.0  # silence in the middle
    clips["s2"][: 3 * SPEC.sample_rate] = 0.0  # silence from the start (past the first window)
    clips["s3"][5000:5040] = np.nan  # repaired samples
    runner = ModelRunner(bundle, "cpu")
    together = Engine(bundle, device="cpu", runner=runner, all_tags=True, smoothing=cfg)
    for name in clips:
        together.add_stream(name, title=f"title {name}")
    got: dict[str, list] = {n: [] for n in clips}
    rng = np.random.default_rng(4)
    pushes = {n: [] for n in clips}  # each stream's push sizes, replayed alone below
    pos = {n: 0 for n in clips}
    while any(pos[n] < x.shape[0] for n, x in clips.items()):
        for n, x in clips.items():
            k = int(rng.choice([100, 1600, 5000, 12000]))
            together.push(n, x[pos[n] : pos[n] + k])
            pushes[n].append((pos[n], k))
            pos[n] += k
        for u in together.step():
            got[u.stream].append(u)

    def fields(u) -> dict:
        d = u.to_dict()
        del d["wall"], d["latency_ms"]
        return d

    for n, x in clips.items():
        alone = Engine(bundle, device="cpu", runner=ModelRunner(bundle, "cpu"), all_tags=True, smoothing=cfg)
        alone.add_stream(n, title=f"title {n}")
        ref = []
        for a, k in pushes[n]:
            alone.push(n, x[a : a + k])
            ref.extend(alone.step())
        assert len(got[n]) == len(ref) > 3
        assert [fields(u) for u in got[n]] == [fields(u) for u in ref]
        assert any(u.extra["silence"] for u in got[n]) == (n in ("s1", "s2"))
        # a Smoother stepped update by update on the same raw outputs and silence flags gives the same answers
        names, groups = _families(bundle)
        smoother = Smoother(cfg, candidates=together.shown, genres=bundle.genre_indices(), families=groups)
        shown = together.shown
        for u in got[n]:
            raw = np.array([u.raw[k] for k in LABELS], dtype=np.float32)
            if not u.extra["silence"] and np.isfinite(raw).all():
                smoothed = smoother.update(raw, together.hop_seconds, level_db=u.extra["level_db"])
            elif smoother.probs is not None:
                smoothed = smoother.probs
            else:
                smoothed = np.nan_to_num(raw.astype(np.float64))
            order = smoother.ranking(shown) if smoother.probs is not None else sorted(shown, key=lambda i: -smoothed[i])
            want_top = [(LABELS[i], float(smoothed[i])) for i in order]
            want_probs = {LABELS[i]: float(smoothed[i]) for i in shown}
            want_raw = {LABELS[i]: float(raw[i]) for i in shown}
            assert u.top == want_top and u.probs == want_probs and u.raw == want_raw
            fam, shares = smoother.family, smoother.family_probs
            assert u.family == (names[fam] if fam is not None else None)
            assert u.families == (dict(zip(names, shares.tolist())) if shares is not None else {})
