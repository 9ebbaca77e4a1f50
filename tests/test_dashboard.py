"""The dashboard: a sink whose state comes only from sink calls, rendered purely (capture console), and the
terminal app loop that shows it."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from live_fixtures import live_bundle, make_engine, write_tone_wav
from rich.console import Console

from streamtag.app import run_live
from streamtag.errors import SourceError
from streamtag.events import GenreUpdate
from streamtag.live import LiveRunner
from streamtag.publishers.dashboard import SILENCE_DB, DashboardSink, DashboardState, StreamView, bar, render
from streamtag.sources import Playlist, open_source


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
    history = tuple((3.0 + i, "rock" if i < 4 else "jazz") for i in range(10))  # (t, headline) per hop
    out = text_of(state_with({"rock": 0.2, "jazz": 0.83, "blues": 0.4}, title="Miles Davis - So What",
                             overruns=3, level_db=-23.4, history=history))
    assert "▶ jazz  83%" in out  # an update without a family heads with its top genre, as before
    assert "♪ Miles Davis - So What" in out
    assert "overruns 3" in out
    assert "-23.4 dBFS" in out
    assert "rock 0:04 → jazz 0:06" in out
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


def update(stream: str, t: float, probs: dict[str, float], top: str | None = None, level_db: float | None = -20.0,
           **extra) -> GenreUpdate:
    held = top or max(probs, key=probs.get)
    order = [held] + sorted((k for k in probs if k != held), key=lambda k: -probs[k])
    return GenreUpdate(stream=stream, t=t, top=[(k, probs[k]) for k in order], probs=dict(probs), raw=dict(probs),
                       model="m", extra={"level_db": level_db, "latency_ms": 40.0, "overruns": 1, **extra})


def new_sink() -> DashboardSink:
    return DashboardSink(model="m", sample_rate=16000, hop_seconds=0.5, labels=("rock", "jazz", "folk", "pop"))


def test_the_sink_state_is_built_only_from_sink_calls():
    sink = new_sink()
    sink.on_stream_added("radio", "http://radio.example/live.mp3", "Song A")
    sink.on_update([update("radio", 1.0, {"rock": 0.6, "jazz": 0.3}, input_overruns=2),
                    update("radio", 1.5, {"rock": 0.2, "jazz": 0.7})])
    [v] = sink.state().streams
    assert (v.name, v.source, v.title, v.t, v.updates) == ("radio", "http://radio.example/live.mp3", "Song A", 1.5, 2)
    assert v.top == ("jazz", 0.7) and dict(v.probs) == {"rock": 0.2, "jazz": 0.7}
    assert v.history == ((1.0, "rock"), (1.5, "jazz"))
    assert v.overruns == 1 and v.latency_ms == 40.0 and v.level_db == -20.0 and v.status == "live"
    sink.on_title("radio", "Song B")
    sink.on_status("radio", "reconnecting", "attempt 3 in 2.0 s")
    out = text_of(sink.state(), width=120)
    assert "♪ Song B" in out and "reconnecting in 2.0 s (attempt 3)" in out
    sink.on_status("radio", "connected", "http://radio.example/live.mp3")
    assert sink.state().streams[0].notice is None and "reconnecting" not in text_of(sink.state(), width=120)
    sink.on_stream_removed("radio", SourceError("radio: 5 reconnect attempts failed"))
    assert sink.state().streams[0].status == "radio: 5 reconnect attempts failed"
    assert "5 reconnect attempts failed" in text_of(sink.state(), width=120)


def headline(out: str) -> str:
    return next(line for line in out.splitlines() if "▶" in line and "%" in line)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_headline_is_the_top_bar_and_its_number(seed):
    rng = np.random.default_rng(seed)
    probs = dict(zip(["rock", "jazz", "folk", "pop"], rng.dirichlet(np.ones(4)).round(3)))
    sink = new_sink()
    sink.on_stream_added("s", "x", None)
    sink.on_update([update("s", 3.0, probs)])
    out = text_of(sink.state(), width=120)
    best = max(probs, key=probs.get)
    m = re.search(r"▶ (\w+)\s+(\d+)%", headline(out))
    assert m and m.group(1) == best and f"{m.group(2)}%" == f"{probs[best]:.0%}"  # the smoothed probability
    [row] = [line for line in out.splitlines() if re.search(rf"▶ +{best} [█▏▎▍▌▋▊▉ ]+ \d\.\d\d", line)]
    assert row.split()[-2] == f"{probs[best]:.2f}"  # the marked bar carries the same number
    assert "held" not in out


def test_a_held_genre_is_marked_and_the_headline_says_why():
    # hysteresis: the smoother still holds pop while folk's smoothed probability is (slightly) higher
    sink = new_sink()
    sink.on_update([update("s", 3.0, {"pop": 0.21, "folk": 0.22, "rock": 0.1}, top="pop")])
    out = text_of(sink.state(), width=120)
    assert "▶ pop  21%" in out and "held: folk 22% challenging" in out
    marked = [line for line in out.splitlines() if re.search(r"▶ +pop [█▏▎▍▌▋▊▉ ]+ \d\.\d\d", line)]
    assert len(marked) == 1 and marked[0].split()[-2] == "0.21"
    assert re.search(r"│ +folk [█▏▎▍▌▋▊▉ ]+ 0\.22", out)  # folk's bar, unmarked, is the higher one


def test_silence_is_shown_and_holds_the_genre_state():
    sink = new_sink()
    sink.on_update([update("s", 1.0, {"rock": 0.3, "jazz": 0.19, "folk": 0.1}, top="rock")])
    before = sink.state().streams[0]
    # Brahms' silent ending: the model still says something, the level says there is nothing to tag
    sink.on_update([update("s", 1.5 + 0.5 * i, {"rock": 0.05, "jazz": 0.9, "folk": 0.05}, level_db=-97.6)
                    for i in range(4)])
    v = sink.state().streams[0]
    assert v.silent and v.updates == 5 and v.t == 3.0 and v.level_db == -97.6
    assert (v.top, v.probs, v.history) == (before.top, before.probs, before.history)  # nothing updated
    out = text_of(sink.state(), width=120)
    assert "◼ silence" in out and f"< {SILENCE_DB:g} dBFS" in out
    assert not re.search(r"\b(jazz|rock)\s+\d+%", out)  # no genre headline at all
    # the threshold is the documented one: just above it is music, just below is silence
    assert not sink.is_silent(SILENCE_DB) and sink.is_silent(SILENCE_DB - 0.1) and not sink.is_silent(None)
    sink.on_update([update("s", 3.5, {"rock": 0.05, "jazz": 0.9, "folk": 0.05}, level_db=-30.0)])
    v = sink.state().streams[0]
    assert not v.silent and v.top == ("jazz", 0.9) and v.history == ((1.0, "rock"), (3.5, "jazz"))


TAXONOMY = (("rock", ("rock", "indie rock", "punk")), ("jazz", ("jazz", "easy listening")), ("folk", ("folk",)))


def family_update(t: float, family: str, families: dict[str, float], probs: dict[str, float], top: str,
                  level_db: float = -20.0) -> GenreUpdate:
    u = update("s", t, probs, top=top, level_db=level_db)
    u.family, u.families = family, families
    return u


def family_sink() -> DashboardSink:
    return DashboardSink(model="m", sample_rate=16000, hop_seconds=1.0, taxonomy=TAXONOMY,
                         labels=("rock", "indie rock", "punk", "jazz", "easy listening", "folk"))


def test_the_headline_is_the_family_with_its_leading_genre_and_confidence():
    sink = family_sink()
    probs = {"rock": 0.2, "indie rock": 0.41, "punk": 0.15, "jazz": 0.45, "easy listening": 0.02, "folk": 0.1}
    # jazz is the highest single bar, but the rock family holds more of the bars: the headline is the family
    sink.on_update([family_update(5.0, "rock", {"rock": 0.61, "jazz": 0.3, "folk": 0.09}, probs, top="indie rock")])
    out = text_of(sink.state(), width=120)
    assert re.search(r"▶ rock · indie rock  61% of the bars", headline(out))
    assert "rock 61% · jazz 30% · folk 9%" in out  # the families' shares, largest first
    marked = [line for line in out.splitlines() if re.search(r"▶ +indie rock [█▏▎▍▌▋▊▉ ]+ \d\.\d\d", line)]
    assert len(marked) == 1 and marked[0].split()[-2] == "0.41"  # the headline genre's bar is marked
    assert re.search(r"│ +jazz [█▏▎▍▌▋▊▉ ]+ 0\.45", out)  # graded bars: the others keep their values
    state = sink.state()
    from streamtag.publishers.dashboard import _color

    # a genre is drawn in its family's colour, families in distinct colours
    assert _color("indie rock", state) == _color("punk", state) == _color("rock", state) != _color("jazz", state)
    sink.on_update([family_update(6.0, "jazz", {"rock": 0.2, "jazz": 0.7, "folk": 0.1},
                                  {**probs, "jazz": 0.8}, top="jazz")])
    assert re.search(r"▶ jazz  70% of the bars", headline(text_of(sink.state(), width=120)))  # no "jazz · jazz"
    assert "held" not in text_of(sink.state(), width=120)
    # the smoother holds jazz while rock leads the bars for a moment: the headline says so
    sink.on_update([family_update(7.0, "jazz", {"rock": 0.5, "jazz": 0.4, "folk": 0.1}, probs, top="jazz")])
    assert re.search(r"▶ jazz  40% of the bars  held: rock 50% rising", headline(text_of(sink.state(), width=120)))


def test_the_strip_shows_the_families_of_the_last_minutes_with_gaps_for_silence():
    sink = family_sink()
    fams = {"rock": 0.5, "jazz": 0.4, "folk": 0.1}
    probs = {"rock": 0.5, "jazz": 0.4, "folk": 0.1}
    ups = [family_update(float(t), "jazz", fams, probs, "jazz") for t in range(1, 81)]  # 80 s of jazz
    ups += [family_update(float(t), "rock", fams, probs, "rock", level_db=-90.0) for t in range(81, 111)]  # silence
    ups += [family_update(float(t), "rock", fams, probs, "rock") for t in range(111, 146)]  # 35 s of rock
    sink.on_update(ups)
    [v] = sink.state().streams
    assert [f for _, f in v.history].count("jazz") == 80 and v.history[-1] == (145.0, "rock")
    line = next(ln for ln in text_of(sink.state(), width=120).splitlines() if "history" in ln)
    strip = re.search(r"history +([█·]+)", line)
    assert strip and len(strip.group(1)) <= 40  # STRIP_CELLS cells at most
    assert "█·" in strip.group(1) and "·█" in strip.group(1)  # the silent half minute is a gap
    assert "jazz 1:20 → rock 0:35" in line
    sink.on_update([family_update(400.0, "folk", fams, probs, "folk")])  # minutes later: the old runs are gone
    [v] = sink.state().streams
    assert v.history == ((400.0, "folk"),)


def test_max_bars_limits_rows_and_empty_state_renders_also_from_the_sink():
    assert "no streams yet" in text_of(new_sink().state())
    sink = new_sink()
    sink.on_stream_added("mic", "input device 0", None)
    assert "listening" in text_of(sink.state())


def write_wav(path, x: np.ndarray, sr: int = 16000):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_a_real_engine_through_the_runner_with_a_silent_ending(engine_factory):
    sr = 16000
    t = np.arange(4 * sr) / sr
    music = (0.5 * np.sin(2 * np.pi * 440 * t) * (1 + np.sign(np.sin(2 * np.pi * 2 * t))) / 2).astype(np.float32)
    engine = engine_factory()
    dash = DashboardSink.for_engine(engine)
    seen: list[GenreUpdate] = []

    class Collect:
        def __getattr__(self, name):
            return (lambda updates: seen.extend(updates)) if name == "on_update" else (lambda *a: None)

    runner = LiveRunner(engine, [dash, Collect()]).start()
    try:
        runner.add_stream("clip", display="ending.wav")
        runner.push("clip", music)
        assert runner.flush()
        n_music = len(seen)
        runner.push("clip", np.zeros(3 * sr, np.float32))  # the silent ending
        assert runner.flush()
        runner.remove("clip")
    finally:
        runner.stop()
    [v] = dash.state().streams
    heard = [u for u in seen if u.extra["level_db"] is not None and u.extra["level_db"] >= SILENCE_DB]
    assert len(heard) == n_music >= 3 and len(seen) > n_music and v.updates == len(seen)
    assert all(u.extra["level_db"] < SILENCE_DB for u in seen[n_music:]) and v.silent
    assert v.top == tuple(heard[-1].top[0]) and dict(v.probs) == heard[-1].probs  # the last music's state
    assert v.history == tuple((u.t, u.family) for u in heard)[-len(v.history):]
    assert v.family == heard[-1].family is not None and dict(v.families) == heard[-1].families
    assert v.status == "ended" and v.source == "ending.wav"
    out = text_of(dash.state(), width=120)
    assert "◼ silence" in out and "ended" in out


def test_run_live_dashboard_with_a_playlist_shows_titles_and_summarises(engine_factory, clips):
    engine = engine_factory()
    console = Console(file=io.StringIO(), width=110, color_system=None, force_terminal=True)
    err = io.StringIO()
    playlist = Playlist([(p.name, lambda p=p: open_source(str(p), engine.sample_rate)) for p in clips])
    code = run_live(engine, {"demo": playlist}, output="dashboard", console=console, speed=20.0, stderr=err,
                    describe={"demo": "two tones"}, refresh_hz=20)
    out = console.file.getvalue()
    assert code == 0
    assert "a.wav" in out and "b.wav" in out  # the title followed the playlist
    assert "done" in out and "two tones" in out
    [line] = err.getvalue().splitlines()
    assert line.startswith("streamtag: demo: ") and line.endswith(", 0 reconnects, 0 overruns, ended")
    assert float(line.split()[2]) == pytest.approx(11.0, abs=1.0)  # both clips (6 s + 5 s), up to the last hop


def test_a_station_list_reload_swaps_the_dashboards_bars_and_keeps_the_rest(engine_factory, tmp_path):
    """stream --sources's reload in dashboard mode (the request as SIGHUP's handler makes it): the removed
    station's bar goes, the new one's comes, the kept one plays on; the summary says why one ended."""
    import threading

    from streamtag.app import StationListReload

    engine = engine_factory()
    for name in ("keep", "goes", "new"):
        write_tone_wav(tmp_path / f"{name}.wav", seconds=8.0)
    listing = tmp_path / "stations.txt"
    stations = [("keep", str(tmp_path / "keep.wav")), ("goes", str(tmp_path / "goes.wav"))]
    reload = StationListReload(str(listing), stations, lambda uri: open_source(uri, engine.sample_rate),
                               taken=set(), err=(err := io.StringIO()))
    listing.write_text(f"keep={tmp_path / 'keep.wav'}\nnew={tmp_path / 'new.wav'}\n")
    timer = threading.Timer(1.5, reload.request)
    timer.start()
    console = Console(file=io.StringIO(), width=110, color_system=None, force_terminal=True)
    code = run_live(engine, {n: open_source(u, engine.sample_rate) for n, u in stations}, output="dashboard",
                    console=console, speed=1.0, stderr=err, refresh_hz=20, duration=4.0, reload=reload)
    timer.join()
    frames = console.file.getvalue()
    final = frames.rsplit("Ctrl-C to stop", 1)[1]  # the last frame (its footer says "done")
    assert code == 0
    assert "source   goes" in frames  # shown before the reload
    assert "done" in final and "source   keep" in final and "source   new" in final and "goes" not in final, final
    lines = {ln.split(":")[1].strip(): ln for ln in err.getvalue().splitlines() if " tagged, " in ln}
    assert lines["goes"].endswith("removed from the station list")
    assert lines["keep"].endswith("stopped") and float(lines["keep"].split()[2]) > 3.0  # never restarted
    assert "reloaded stations.txt: 1 added, 1 removed, 0 changed, 0 restarted, 1 unchanged" in err.getvalue()
    assert reload.listed == {"keep": str(tmp_path / "keep.wav"), "new": str(tmp_path / "new.wav")}


def test_demo_command_emits_json_lines(engine_factory, clips, capsys):
    from streamtag.cli import main

    engine = engine_factory()
    model = str(engine.bundle.path)
    assert main(["demo", str(clips[0]), "--model", model, "--speed", "50", "--format", "jsonl",
                 "--compute", "cpu", "--hop", "0.5"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert events and {e["stream"] for e in events} == {"demo"} and events[-1]["title"] == "a.wav"
    assert "streamtag: demo: " in captured.err and f"{len(events)} updates" in captured.err
    assert main(["demo", "/no/such.ogg", "--model", model]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/no/such.ogg" in err[0]
