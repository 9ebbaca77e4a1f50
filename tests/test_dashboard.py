"""Dashboard rendering (pure, with a capture console) and the live runner's terminal outputs."""
from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pytest
from live_fixtures import live_bundle, make_engine, write_tone_wav
from rich.console import Console

from streamtag.live import LiveRunner, Playlist, run
from streamtag.publishers.dashboard import DashboardState, StreamView, bar, render, snapshot
from streamtag.sources import open_source


def text_of(state: DashboardState, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(render(state))
    return console.file.getvalue()


def bar_len(line: str) -> float:
    """Filled length of the bar on a rendered line (full blocks + eighths)."""
    eighths = " ▏▎▍▌▋▊▉"
    return sum(1.0 if c == "█" else eighths.index(c) / 8 for c in line if c == "█" or c in eighths[1:])


def state_with(probs: dict[str, float], **kw) -> DashboardState:
    top = max(probs.items(), key=lambda kv: kv[1])
    view = StreamView(name="radio", source="http://radio.example/live.mp3", title=kw.pop("title", None),
                      t=12.5, probs=tuple(probs.items()), top=top, history=kw.pop("history", ()),
                      level_db=kw.pop("level_db", -18.0), latency_ms=42.0, overruns=kw.pop("overruns", 0), updates=9)
    return DashboardState(model="musicnn-msd", sample_rate=16000, hop_seconds=1.0, streams=(view,),
                          labels=tuple(probs), **kw)


def test_bar_is_proportional_and_bounded():
    lengths = [bar_len(bar(p, 40)) for p in np.linspace(0, 1, 21)]
    assert lengths[0] == 0 and lengths[-1] == 40
    assert all(b >= a for a, b in zip(lengths, lengths[1:]))
    assert abs(bar_len(bar(0.5, 40)) - 20) <= 1 / 8
    assert bar_len(bar(7.0, 10)) == 10 and bar_len(bar(float("nan"), 10)) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bars_reflect_the_states_probabilities(seed):
    rng = np.random.default_rng(seed)
    labels = ["rock", "jazz", "classical", "electronic", "folk", "hiphop"]
    probs = dict(zip(labels, rng.uniform(0.02, 0.98, len(labels)).round(3)))
    out = text_of(state_with(probs, max_bars=len(labels)))
    rows = {}
    for line in out.splitlines():
        m = re.search(r"(\w+) ([█▏▎▍▌▋▊▉ ]+) (\d\.\d\d)", line)
        if m and m.group(1) in probs:
            rows[m.group(1)] = (bar_len(m.group(2)), float(m.group(3)))
    assert set(rows) == set(labels)
    for label, (length, shown) in rows.items():
        assert shown == pytest.approx(probs[label], abs=0.005)
        assert length == pytest.approx(probs[label] * 32, abs=1 / 8 + 1e-9)
    # highest first
    order = [l for l in (re.search(r"(\w+) [█▏▎▍▌▋▊▉]", line) for line in out.splitlines()) if l]
    ranked = [m.group(1) for m in order if m.group(1) in probs]
    assert ranked == sorted(labels, key=lambda l: -probs[l])


def test_top_genre_title_overruns_level_and_history_are_shown():
    out = text_of(state_with({"rock": 0.2, "jazz": 0.83, "blues": 0.4}, title="Miles Davis - So What",
                             overruns=3, level_db=-23.4, history=("rock",) * 4 + ("jazz",) * 6))
    assert "▶ jazz  83%" in out
    assert "♪ Miles Davis - So What" in out
    assert "overruns 3" in out
    assert "-23.4 dBFS" in out
    assert "rock×4 → jazz×6" in out
    assert "musicnn-msd" in out and "16000 Hz" in out and "radio" in out


def test_max_bars_limits_rows_and_empty_state_renders():
    probs = {f"g{i}": i / 10 for i in range(10)}
    out = text_of(state_with(probs, max_bars=3))
    assert sum(bool(re.search(rf"\bg{i}\b", out)) for i in range(10)) == 3 and "g9" in out and "g0" not in out
    assert "no streams yet" in text_of(DashboardState(model="m", sample_rate=16000, hop_seconds=1.0))
    waiting = DashboardState(model="m", sample_rate=16000, hop_seconds=1.0, streams=(StreamView(name="mic"),))
    assert "listening" in text_of(waiting)


@pytest.fixture(scope="module")
def engine_factory(tmp_path_factory):
    bundle = live_bundle(tmp_path_factory.mktemp("bundle"))
    return lambda: make_engine(bundle, hop=0.5)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return write_tone_wav(d / "a.wav", seconds=6.0), write_tone_wav(d / "b.wav", seconds=5.0, sr=16000)


def test_snapshot_of_a_real_engine_renders_its_latest_update(engine_factory, clips):
    engine = engine_factory()
    updates = []
    runner = LiveRunner(engine, updates.extend).start()
    try:
        runner.add_source("tone", open_source(str(clips[0]), engine.sample_rate))
        deadline = time.monotonic() + 20
        while runner.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.flush()
    finally:
        runner.stop()
    st = engine.streams["tone"]
    assert updates and st.latest is updates[-1]
    state = snapshot(engine, sources={"tone": "a.wav"})
    [view] = state.streams
    assert view.top == tuple(st.latest.top[0]) and view.updates == len(updates)
    assert view.history == tuple(label for _, label, _ in st.history)
    out = text_of(state, width=120)
    assert f"▶ {view.top[0]}" in out and "a.wav" in out and f"updates {len(updates)}" in out


def test_run_prints_json_lines_when_not_a_terminal(engine_factory, clips):
    engine = engine_factory()
    out = io.StringIO()
    sources = {"a": open_source(str(clips[0]), engine.sample_rate), "b": open_source(str(clips[1]), engine.sample_rate)}
    assert run(engine, sources, output="auto", stdout=out, top=2) == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {e["stream"] for e in events} == {"a", "b"}
    for name in ("a", "b"):
        ts = [e["t"] for e in events if e["stream"] == name]
        steps = np.diff(ts)
        assert len(ts) >= 3 and np.allclose(steps, engine.hop_seconds, atol=1e-3)  # one update per hop, none lost
    assert all(e["type"] == "update" and len(e["top"]) == 2 for e in events)


def test_run_dashboard_with_a_playlist_shows_titles_and_finishes(engine_factory, clips):
    engine = engine_factory()
    console = Console(file=io.StringIO(), width=110, color_system=None, force_terminal=True)
    playlist = Playlist([(p.name, lambda p=p: open_source(str(p), engine.sample_rate)) for p in clips])
    code = run(engine, {"demo": playlist}, output="dashboard", console=console, speed=20.0,
               describe={"demo": "two tones"}, refresh_hz=20)
    out = console.file.getvalue()
    assert code == 0
    assert "a.wav" in out and "b.wav" in out  # the title followed the playlist
    assert "done" in out and "two tones" in out
    assert engine.streams["demo"].t == pytest.approx(11.0, abs=0.01)  # both clips, every sample


def test_demo_command_emits_json_lines(engine_factory, clips, capsys):
    from streamtag.cli import main

    engine = engine_factory()
    model = str(engine.bundle.path)
    assert main(["demo", str(clips[0]), "--model", model, "--speed", "50", "--format", "jsonl",
                 "--compute", "cpu", "--hop", "0.5"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events and {e["stream"] for e in events} == {"demo"} and events[-1]["title"] == "a.wav"
    assert main(["demo", "/no/such.ogg", "--model", model]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/no/such.ogg" in err[0]
