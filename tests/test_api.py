"""The public Python API (streamtag/api.py) and segments (streamtag/segments.py): docs/api.md's examples run here."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from live_fixtures import REPO, TINY_LABELS, tiny_bundle, write_tone_wav

import streamtag
from streamtag.errors import ConfigError, ModelError
from streamtag.events import GenreUpdate
from streamtag.segments import Segmenter, SegmentSink, segments_of


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    bundle = tiny_bundle(tmp_path_factory.mktemp("api") / "tiny")
    return streamtag.load_model(bundle.path, device="cpu")


def _u(t: float, top: str, p: float = 0.9, title: str | None = None, stream: str = "s") -> GenreUpdate:
    probs = {label: (p if label == top else (1 - p) / (len(TINY_LABELS) - 1)) for label in TINY_LABELS}
    return GenreUpdate(stream=stream, t=t, top=[(top, p)], probs=probs, raw=dict(probs), model="m", title=title)


# -- segments -----------------------------------------------------------------------------------------------------
def test_segments_merge_consecutive_hops_and_tile_the_time():
    seq = ["rock"] * 4 + ["jazz"] * 3 + ["rock"] * 2
    ups = [_u(1.0 + 0.5 * i, g, 0.6 + 0.01 * i, title="A" if i < 5 else "B") for i, g in enumerate(seq)]
    segs = segments_of(ups)
    assert [(s.family, s.hops) for s in segs] == [("rock", 4), ("jazz", 3), ("rock", 2)]
    assert segs[0].start == 0.0 and segs[-1].end == ups[-1].t
    for a, b in zip(segs, segs[1:]):
        assert a.end == b.start
    assert segs[0].confidence == pytest.approx(np.mean([u.top[0][1] for u in ups[:4]]))
    assert segs[1].title == "B" and segs[0].title == "A"
    assert segs[1].to_dict()["type"] == "segment"


def test_segments_follow_the_family_not_the_genre():
    families = {"rock": "rock", "indie": "rock", "jazz": "jazz"}
    seq = ["rock", "indie", "indie", "indie", "rock", "jazz"]
    segs = segments_of([_u(i + 1.0, g) for i, g in enumerate(seq)], family_of=lambda g: families.get(g, g))
    assert [(s.family, s.genre, s.hops) for s in segs] == [("rock", "indie", 5), ("jazz", "jazz", 1)]


def test_updates_that_carry_a_family_use_it():
    ups = [_u(i + 1.0, "rock") for i in range(4)]
    for i, u in enumerate(ups):
        u.family = "metal" if i < 2 else "rock"  # type: ignore[attr-defined]  # contract a (families branch)
        u.families = {"metal": 0.7, "rock": 0.3} if i < 2 else {"rock": 0.8}  # type: ignore[attr-defined]
    segs = segments_of(ups)
    assert [(s.family, s.confidence) for s in segs] == [("metal", pytest.approx(0.7)), ("rock", pytest.approx(0.8))]


def test_segment_sink_closes_on_change_and_on_stream_end():
    got = []
    sink = SegmentSink(got.append)
    sink.on_stream_added("a", "x", None)
    sink.on_update([_u(1.0, "rock", stream="a"), _u(1.5, "rock", stream="a")])
    assert got == [] and len(sink.open_segments()) == 1
    sink.on_title("a", "Song")
    sink.on_update([_u(2.0, "jazz", stream="a")])
    assert [(s.family, s.title) for s in got] == [("rock", "Song")]
    sink.on_stream_removed("a", None)
    assert [s.family for s in got] == ["rock", "jazz"] and got[1].start == got[0].end
    seg = Segmenter("b")
    assert seg.finish() is None


# -- tag --------------------------------------------------------------------------------------------------------
def test_tag_array_and_path_agree_and_give_plain_data(tiny, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", seconds=8.0, sr=16000)
    by_path = streamtag.tag(wav, model=tiny)
    import wave

    with wave.open(str(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    by_array = streamtag.tag(pcm.astype(np.float32) / 32768, sr=16000, model=tiny)
    assert isinstance(by_path.times, np.ndarray) and by_path.probs.dtype == np.float32
    np.testing.assert_allclose(by_path.raw, by_array.raw, atol=1e-5)
    n = len(by_path.times)
    assert by_path.probs.shape == by_path.raw.shape == (n, len(TINY_LABELS)) and n > 10
    assert by_path.family.shape == by_path.confidence.shape == (n,)
    assert by_path.family_probs.shape == (n, len(by_path.families))
    assert sum(s.hops for s in by_path.segments) == n
    assert by_path.segments[-1].end == pytest.approx(by_path.times[-1])
    assert by_path.summary["type"] == "summary" and set(by_path.summary["mean"]) == set(TINY_LABELS)
    assert sum(by_path.headline_shares().values()) == pytest.approx(1.0)
    assert by_path.to_dict()["segments"][0]["type"] == "segment"


def test_tag_validates_its_inputs(tiny):
    with pytest.raises(ConfigError, match="sample rate"):
        streamtag.tag(np.zeros(1000, np.float32), model=tiny)
    with pytest.raises(ConfigError, match="shape"):
        streamtag.tag(np.zeros((2, 2, 100), np.float32), sr=16000, model=tiny)
    with pytest.raises(ConfigError, match="smoothing"):
        streamtag.tag(np.zeros(16000, np.float32), sr=16000, model=tiny, smoothing="kalman")
    with pytest.raises(ModelError, match="unknown model"):
        streamtag.load_model("no-such-model")


def test_public_names():
    assert set(streamtag.__all__) >= {"tag", "load_model", "available_models", "stream", "listen", "Live"}
    for name in streamtag.__all__:
        assert hasattr(streamtag, name), name
    assert "musicnn-msd" in streamtag.available_models()

    import subprocess
    import sys

    code = "import sys, streamtag; print('numpy' in sys.modules, callable(streamtag.tag))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO).stdout
    assert out.split() == ["False", "True"]  # names load on first use: `streamtag --version` stays instant


# -- live -------------------------------------------------------------------------------------------------------
def test_live_iterator_over_a_file_and_callbacks_over_pushed_arrays(tiny, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", seconds=6.0, sr=22050)
    events = []
    with streamtag.stream(wav, speed=20.0, model=tiny, hop=0.5) as live:
        for e in live.events(timeout=30):
            events.append(e)
    updates = [e for e in events if isinstance(e, GenreUpdate)]
    segs = [e for e in events if isinstance(e, streamtag.Segment)]
    assert len(updates) >= 8 and segs, "the iterator ended without updates or segments"
    assert sum(s.hops for s in segs) == len(updates)  # every update is in exactly one segment
    assert segs[-1].end == pytest.approx(updates[-1].t)

    with streamtag.Live(model=tiny) as idle:  # nothing added: the iterator ends at once, it never hangs
        assert list(idle.events()) == []
    with pytest.raises(streamtag.StreamtagError, match="no-such.wav"):
        streamtag.stream(tmp_path / "no-such.wav", model=tiny)

    seen, ended = [], []
    with streamtag.Live(model=tiny, hop=0.5, on_update=seen.append, on_end=lambda n, e: ended.append(n)) as live:
        live.add_stream("pushed", sr=48000)
        y = np.random.default_rng(0).standard_normal(48000 * 4).astype(np.float32) * 0.1
        for block in np.array_split(y, 17):
            live.push("pushed", block)
        live.end("pushed")
        assert live.wait(10)
    assert ended == ["pushed"] and len(seen) >= 4
    assert {u.stream for u in seen} == {"pushed"}
    assert seen[-1].t == pytest.approx(4.0, abs=0.6)  # every pushed second (resampled 48 -> 16 kHz) was tagged


# -- docs/api.md ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_docs_api_examples_run(capsys):
    """Every ```python block of docs/api.md, in order, in one namespace, from the repository root."""
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    cwd = os.getcwd()
    os.chdir(REPO)
    namespace: dict = {}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "segment" in out and "bytes" in out


@pytest.mark.slow
@pytest.mark.shared
def test_segments_of_a_real_splice(audio_dir):
    """31 s of dubstep then 40 s of 1920s jazz piano (real recordings, the default model and smoother): two
    segments, the boundary a few seconds after the splice, no blip in between."""
    from streamtag.sources.file import read_audio

    model = streamtag.load_model(device="cpu")
    a = read_audio(audio_dir / "bensound-dubstep.mp3", model.sample_rate)
    b = read_audio(audio_dir / "fats-waller-aint-misbehavin.ogg", model.sample_rate)[: 40 * model.sample_rate]
    result = streamtag.tag(np.concatenate([a, b]), sr=model.sample_rate, model=model)
    splice = len(a) / model.sample_rate
    segs = result.segments
    assert len(segs) == 2, [(s.family, s.start, s.end) for s in segs]
    assert segs[0].family != segs[1].family and segs[1].family == "jazz"
    assert splice <= segs[0].end <= splice + 8.0
