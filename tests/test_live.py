"""LiveRunner (sources -> engine -> sinks) and the app loop (streamtag.app): real engine, real decoded audio,
real sockets for the reconnect case. Invariants are equalities: the runner's updates are the engine's updates
for the same audio; every stream gets exactly one added and one removed call, with its updates between."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from live_fixtures import live_bundle, make_engine, write_tone_wav

from streamtag.app import RunSummary, StatusLines, run_live
from streamtag.architectures.threads import map_threads
from streamtag.errors import SourceError, StreamtagError
from streamtag.live import LiveRunner
from streamtag.publishers import status_message
from streamtag.sources import open_source


class Recorder:
    """A sink that records every call (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.removed = threading.Event()

    def _add(self, *call: object) -> None:
        with self.lock:
            self.calls.append(call)

    def on_stream_added(self, name, source, title):
        self._add("added", name, source, title)

    def on_update(self, updates):
        for u in updates:
            self._add("update", u.stream, u)

    def on_title(self, name, title):
        self._add("title", name, title)

    def on_status(self, name, kind, detail):
        self._add("status", name, kind, detail)

    def on_stream_removed(self, name, error):
        self._add("removed", name, error)
        self.removed.set()

    def of(self, name: str) -> list[tuple]:
        with self.lock:
            return [c for c in self.calls if c[1] == name]

    def updates(self, name: str) -> list:
        return [c[2] for c in self.of(name) if c[0] == "update"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return live_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_tone_wav(tmp_path_factory.mktemp("clips") / "a.wav", seconds=6.0, sr=16000)


def offline_updates(bundle, samples: np.ndarray) -> list:
    """The same engine settings fed the whole signal at once, stepped in this thread."""
    engine = make_engine(bundle, hop=0.5)
    engine.add_stream("x")
    engine.push("x", samples)
    return engine.step()


def run_to_end(runner: LiveRunner, sink: Recorder, timeout: float = 60.0) -> None:
    assert sink.removed.wait(timeout), "the stream never ended"
    runner.flush()


def test_a_file_through_the_runner_gives_the_engines_updates_in_order(bundle, clip):
    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    try:
        runner.add_source("tone", open_source(str(clip), engine.sample_rate), display="a.wav")
        run_to_end(runner, sink)
    finally:
        runner.stop()
    calls = sink.of("tone")
    assert calls[0][:3] == ("added", "tone", "a.wav")
    assert calls[-1] == ("removed", "tone", None) and [c[0] for c in calls].count("removed") == 1
    got = sink.updates("tone")
    from streamtag.sources import read_audio

    want = offline_updates(bundle, read_audio(str(clip), engine.sample_rate))
    assert len(got) == len(want) >= 5
    assert [u.t for u in got] == pytest.approx([u.t for u in want], abs=1e-9)
    for a, b in zip(got, want):
        assert a.raw == pytest.approx(b.raw, abs=1e-5)
    assert "tone" not in engine.streams and runner.streams() == []  # an ended source leaves the engine


def _nice(tid: int | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id() if tid is None else tid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
@pytest.mark.parametrize("compute_nice", [0, 3])
def test_the_runners_compute_threads_run_below_the_rest_of_the_process(bundle, compute_nice):
    """The engine thread (sinks run on it), its front-end helpers and the model's worker threads run
    ``compute_nice`` levels below the process's main thread; the thread that feeds the runner keeps its priority
    (so audio intake and delivery get a core first when the cores are short)."""
    want = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + compute_nice)
    here = _nice()
    on_engine: list[int] = []

    class NiceRecorder(Recorder):
        def on_update(self, updates):
            on_engine.append(_nice())
            super().on_update(updates)

    engine = make_engine(bundle, hop=0.5)
    sink = NiceRecorder()
    # a step at most every 0.5 s, the first one after the warm-up: both streams' audio lands in one step
    runner = LiveRunner(engine, [sink], front_end_threads=2, compute_nice=compute_nice, step_interval=0.5).start()
    x = (0.3 * np.sin(np.arange(16000 * 2) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    try:
        for name in ("a", "b"):  # two streams: the step's log-mel runs in two passes, one on a helper
            runner.add_stream(name)
        assert runner.flush()  # the warm-up is done and a step has just started
        for name in ("a", "b"):
            runner.push(name, x)
        runner.flush()
        assert runner._pool is not None
        helpers = [_nice(t.native_id) for t in runner._pool._threads if t.native_id is not None]
        workers = map_threads(lambda _: _nice(), list(range(4)), 2)
    finally:
        runner.stop()
    assert len(sink.updates("a")) >= 2 and set(on_engine) == {want}
    assert helpers and set(helpers) == {want}
    if compute_nice:
        assert min(workers) >= want  # the shared pool's threads (an earlier runner may have lowered them more)
    assert _nice() == here


@pytest.mark.parametrize("warm_up", [True, False])
def test_the_runner_warms_the_model_up_before_its_first_step(bundle, warm_up):
    """The engine thread runs the model on silence before its first step (the one-time cost of a process's first
    model call is paid while the sources open); the answers are those of a runner that did not."""
    calls: list[str] = []
    runs: dict[bool, list] = {}
    x = (0.3 * np.sin(np.arange(16000 * 3) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    for warm in (warm_up, not warm_up):
        engine = make_engine(bundle, hop=0.5)
        warm_up_call, step_call = engine.warm_up, engine.step
        engine.warm_up = lambda w=warm_up_call: (calls.append("warm"), w())[1]  # type: ignore[method-assign]
        engine.step = lambda stop=None, s=step_call: (calls.append("step"), s(stop))[1]  # type: ignore[method-assign]
        sink = Recorder()
        runner = LiveRunner(engine, [sink], warm_up=warm).start()
        try:
            runner.add_stream("a")
            runner.push("a", x)
            assert runner.flush()
        finally:
            runner.stop()
        runs[warm] = [(u.t, u.raw, u.probs) for u in sink.updates("a")]
        if warm:
            assert calls[0] == "warm" and calls.count("warm") == 1 and "step" in calls
            assert engine.runner.streams <= 1  # the warm-up's batches hold no state row
        else:
            assert "warm" not in calls and "step" in calls
        calls.clear()
    assert len(runs[True]) >= 4 and len(runs[True]) == len(runs[False])
    assert runs[True] == runs[False]


def test_push_fed_stream_flush_and_remove(bundle):
    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    x = (0.3 * np.sin(np.arange(16000 * 4) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    try:
        runner.add_stream("ws", display="websocket", title="mic")
        for block in np.array_split(x, 37):
            runner.push("ws", block)
        runner.flush()
        got = sink.updates("ws")
        want = offline_updates(bundle, x)
        assert len(got) == len(want) and all(u.raw.keys() == w.raw.keys() for u, w in zip(got, want))
        # chunked == whole (to float rounding: the engine thread and this one may run other kernels)
        assert max(abs(u.raw[k] - w.raw[k]) for u, w in zip(got, want) for k in u.raw) <= 1e-6
        assert runner.streams() == ["ws"]
        runner.remove("ws")
        runner.push("ws", x)  # after removal: ignored, never raises
        runner.flush()
    finally:
        runner.stop()
    kinds = [c[0] for c in sink.of("ws")]
    assert kinds[0] == "added" and kinds[-1] == "removed" and kinds.count("removed") == 1
    assert len(sink.updates("ws")) == len(got)  # nothing after the removal
    assert "ws" not in engine.streams


def test_remove_many_takes_streams_out_together_and_the_others_play_on(bundle):
    """A station list's reload removes many streams in one wait for the engine: each gets exactly one
    removal, an unknown name is no error, and the stream left keeps its updates coming."""
    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    x = (0.3 * np.sin(np.arange(16000 * 2) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    names = ["a", "b", "c", "stay"]
    try:
        for name in names:
            runner.add_stream(name)
            runner.push(name, x)
        runner.flush()
        runner.remove_many(["a", "b", "nobody", "c"])
        assert runner.streams() == ["stay"] and sorted(engine.streams) == ["stay"]
        before = len(sink.updates("stay"))
        for name in names:
            runner.push(name, x)  # the removed ones: ignored
        runner.flush()
        runner.remove_many([])
    finally:
        runner.stop()
    for name in "abc":
        kinds = [c[0] for c in sink.of(name)]
        assert kinds[0] == "added" and kinds[-1] == "removed" and kinds.count("removed") == 1
        assert len(sink.updates(name)) == len(sink.updates("stay")) // 2 > 0  # nothing after the removal
    assert len(sink.updates("stay")) > before
    assert not sink.of("nobody")


class EventfulSource:
    """A source that reports events (like a radio that drops and comes back) and has input overruns."""

    name = "radio"

    def __init__(self, n_blocks: int = 40, fail: bool = False) -> None:
        self.title: str | None = "First"
        self.on_event = None
        self.overruns = 3
        self.n_blocks, self.fail = n_blocks, fail
        self.closed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(1)
        for i in range(self.n_blocks):
            if i == 10:
                self.on_event("disconnected", "connection reset")
                self.on_event("reconnecting", "attempt 1 in 0.5 s")
                self.on_event("connected", "http://radio.example/live")
                self.title = "Second"
            yield (0.2 * rng.standard_normal(1600)).astype(np.float32)
        if self.fail:
            raise SourceError("radio: the stream ended and 2 reconnect attempts failed")

    def close(self) -> None:
        self.closed = True


def test_source_events_titles_and_input_overruns_reach_the_sinks(bundle):
    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    err = io.StringIO()
    summary = RunSummary()
    runner = LiveRunner(engine, [sink, StatusLines(err), summary]).start()
    src = EventfulSource()
    try:
        runner.add_source("radio", src)
        run_to_end(runner, sink)
    finally:
        runner.stop()
    calls = sink.of("radio")
    statuses = [c[2:] for c in calls if c[0] == "status"]
    assert statuses == [("disconnected", "connection reset"), ("reconnecting", "attempt 1 in 0.5 s"),
                        ("connected", "http://radio.example/live")]
    assert ("title", "radio", "Second") in calls
    assert calls[0] == ("added", "radio", "radio", "First")
    ups = sink.updates("radio")
    assert ups and all(u.extra["input_overruns"] == 3 for u in ups)
    assert err.getvalue().splitlines() == ["streamtag: radio: reconnecting in 0.5 s (attempt 1)",
                                           "streamtag: radio: connected to http://radio.example/live"]
    assert summary.streams["radio"].reconnects == 1 and summary.streams["radio"].updates == len(ups)
    assert src.closed


def test_a_failing_source_ends_its_stream_with_the_error_and_others_go_on(bundle):
    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()

    class BrokenSink:
        def __getattr__(self, name):
            def fail(*args):
                raise RuntimeError("sink bug")
            return fail

    runner = LiveRunner(engine, [BrokenSink(), sink]).start()
    try:
        runner.add_source("bad", EventfulSource(n_blocks=12, fail=True))
        run_to_end(runner, sink)
    finally:
        runner.stop()
    [removed] = [c for c in sink.of("bad") if c[0] == "removed"]
    assert isinstance(removed[2], SourceError) and "reconnect attempts failed" in str(removed[2])
    assert runner.errors()["bad"] is removed[2]
    assert sink.updates("bad")  # the broken sink before it did not starve this one


def test_a_source_that_ends_and_a_stream_that_is_removed_each_get_one_removal(bundle, clip):
    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    try:
        runner.add_source("a", open_source(str(clip), engine.sample_rate))
        runner.add_stream("pushed")
        run_to_end(runner, sink)
        runner.remove("pushed")
    finally:
        runner.stop()
    assert [c for c in sink.calls if c[0] == "removed"] == [("removed", "a", None), ("removed", "pushed", None)]
    assert sink.updates("a") and not sink.updates("pushed")


def test_a_file_through_the_source_pool_gives_the_same_updates_as_the_same_audio_pushed(bundle, clip):
    """The decoder processes change where decoding runs, not what the engine sees: equality with pushed audio."""
    from streamtag.sources import read_audio
    from streamtag.sources.pool import PooledSource, SourcePool

    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    with SourcePool(engine.sample_rate, workers=1) as pool:
        try:
            source = pool.open(str(clip), engine.sample_rate)
            assert isinstance(source, PooledSource) and source.info["sample_rate"] == 16000
            runner.add_source("pooled", source, display="a.wav")
            run_to_end(runner, sink)
            x = read_audio(str(clip), engine.sample_rate)
            runner.add_stream("pushed")
            for block in np.array_split(x, 23):
                runner.push("pushed", block)
            runner.flush()
        finally:
            runner.stop()
    got, want = sink.updates("pooled"), sink.updates("pushed")
    assert len(got) == len(want) >= 5
    assert [u.t for u in got] == pytest.approx([u.t for u in want], abs=1e-9)
    for a, b in zip(got, want):
        assert a.raw == pytest.approx(b.raw, abs=1e-5)
    calls = sink.of("pooled")
    assert calls[0][:3] == ("added", "pooled", "a.wav") and calls[-1] == ("removed", "pooled", None)


def test_the_source_pool_reports_open_errors_at_once_and_stops_promptly(tmp_path):
    import time

    from streamtag.sources.pool import SourcePool

    pool = SourcePool(16000, workers=2)
    try:
        with pytest.raises(SourceError, match="no such file"):
            pool.open(str(tmp_path / "missing.mp3"), 16000)
        with pytest.raises(SourceError, match="connection refused"):
            pool.open(f"http://127.0.0.1:{_free_port()}/live.mp3", 16000, max_retries=0)
        pids = pool.pids()
        assert len(pids) == 2
    finally:
        t0 = time.monotonic()
        pool.close()
        took = time.monotonic() - t0
    assert took < 3.0
    for pid in pids:  # nothing left running
        with pytest.raises(OSError):
            import os

            os.kill(pid, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_engine_failure_ends_every_stream_with_one_error(bundle):
    engine = make_engine(bundle, hop=0.5)

    def broken_step(stop=None):
        raise RuntimeError("CUDA out of memory")

    engine.step = broken_step
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    try:
        runner.add_stream("s", display="x")
        runner.push("s", np.zeros(1600, np.float32))
        assert sink.removed.wait(10)
    finally:
        runner.stop()
    [removed] = [c for c in sink.of("s") if c[0] == "removed"]
    assert isinstance(removed[2], StreamtagError) and "CUDA out of memory" in str(removed[2])
    assert isinstance(runner.engine_error, RuntimeError)


@pytest.mark.parametrize(("kind", "detail", "line"), [
    ("reconnecting", "attempt 3 in 2.0 s", "reconnecting in 2.0 s (attempt 3)"),
    ("reconnecting", "in 2.5 s (attempt 4)", "reconnecting in 2.5 s (attempt 4)"),
    ("reconnecting", "attempt 2 in 1.0 s (HTTP 503)", "reconnecting in 1.0 s (attempt 2): HTTP 503"),
    ("disconnected", "no data for 10 s", "disconnected: no data for 10 s"),
    ("connected", "http://x/y", "connected to http://x/y"),
])
def test_status_messages_read_the_same_whatever_the_source_wrote(kind, detail, line):
    assert status_message(kind, detail) == line


# -- the app loop -------------------------------------------------------------------------------------------
def test_run_live_jsonl_keeps_stdout_pure_and_summarises_each_stream_on_stderr(bundle, clip, tmp_path):
    engine = make_engine(bundle, hop=0.5)
    silent = tmp_path / "silent.wav"
    import wave

    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000 * 3, "<i2").tobytes())
    out, err = io.StringIO(), io.StringIO()
    sources = {"a": open_source(str(clip), engine.sample_rate), "quiet": open_source(str(silent), engine.sample_rate)}
    assert run_live(engine, sources, output="jsonl", stdout=out, stderr=err, top=2) == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {e["stream"] for e in events} == {"a", "quiet"} and all(len(e["top"]) == 2 for e in events)
    for name in ("a", "quiet"):
        ts = [e["t"] for e in events if e["stream"] == name]
        assert len(ts) >= 3 and np.allclose(np.diff(ts), engine.hop_seconds, atol=1e-3)  # none lost
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    n_a = sum(e["stream"] == "a" for e in events)
    mean = {k: np.mean([e["raw"][k] for e in events if e["stream"] == "a"]) for k in events[0]["raw"]}
    best = max(mean, key=mean.get)
    assert lines[0].startswith(f"streamtag: a: {max(e['t'] for e in events if e['stream'] == 'a'):.1f} s tagged, "
                               f"{n_a} updates, top {best} (mean {mean[best]:.2f}), 0 reconnects, 0 overruns, ended")
    n_q = sum(e["stream"] == "quiet" for e in events)
    assert f"{n_q} updates ({n_q} silent), top – (no music heard)" in lines[1]


def _drop_server(payload: bytes, connections: int) -> tuple[str, threading.Thread, socket.socket]:
    """A radio that sends ``payload`` then hangs up, ``connections`` times, then stops listening."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(30)

    def serve() -> None:
        with listener:
            for _ in range(connections):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn, contextlib.suppress(OSError):
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n" + payload)
                    conn.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/live.mp3", thread, listener


def test_a_dropping_radio_says_reconnecting_and_the_summary_counts_it(bundle, tmp_path):
    from radio_fixtures import tone_clip

    engine = make_engine(bundle, hop=0.5)
    payload = tone_clip(tmp_path / "t.mp3", 2.0).read_bytes()
    url, thread, listener = _drop_server(payload, connections=2)
    out, err = io.StringIO(), io.StringIO()
    try:
        src = open_source(url, engine.sample_rate, max_retries=2, backoff_initial=0.05, backoff_max=0.1,
                          read_timeout=5.0)
        with pytest.raises(SourceError, match="reconnect attempts failed"):
            run_live(engine, {"radio": src}, output="jsonl", stdout=out, stderr=err)
    finally:
        listener.close()
        thread.join(10)
    lines = err.getvalue().splitlines()
    reconnecting = [ln for ln in lines if "reconnecting in" in ln]
    assert [ln.split("(")[-1] for ln in reconnecting] == ["attempt 1)", "attempt 2)"]
    assert all(ln.startswith("streamtag: radio: reconnecting in ") for ln in reconnecting)
    [summary] = [ln for ln in lines if " s tagged, " in ln]
    assert ", 1 reconnect, " in summary and "failed: " in summary
    assert out.getvalue().count("\n") >= 3  # updates from both connections


def test_run_live_refuses_bad_settings_in_one_line_and_closes_the_sources(bundle, clip):
    engine = make_engine(bundle, hop=0.5)
    src = open_source(str(clip), engine.sample_rate)
    with pytest.raises(StreamtagError, match="unknown output 'html'; use dashboard, jsonl or auto"):
        run_live(engine, {"a": src}, output="html")
    assert src.closed
    src = open_source(str(clip), engine.sample_rate)
    with pytest.raises(StreamtagError, match="--duration must be positive"):
        run_live(engine, {"a": src}, output="jsonl", duration=0)
    assert src.closed


def test_stream_command_says_reconnecting_summarises_and_ends_with_one_error_line(bundle, tmp_path, capsys):
    from radio_fixtures import tone_clip

    from streamtag.cli import main

    payload = tone_clip(tmp_path / "t.mp3", 2.0).read_bytes()
    url, thread, listener = _drop_server(payload, connections=2)
    try:
        code = main(["stream", url, "--model", str(bundle.path), "--format", "jsonl", "--max-retries", "2",
                     "--device", "cpu", "--hop", "0.5", "--top", "3"])
    finally:
        listener.close()
        thread.join(10)
    captured = capsys.readouterr()
    assert code == 1
    events = [json.loads(line) for line in captured.out.splitlines()]  # stdout: JSON lines only
    assert events and all(e["type"] == "update" and len(e["top"]) == 3 for e in events)
    ours = [ln for ln in captured.err.splitlines() if ln.startswith(f"streamtag: {url}: ")]
    assert [ln.split("(")[-1] for ln in ours if "reconnecting in" in ln] == ["attempt 1)", "attempt 2)"]
    [summary] = [ln for ln in ours if " s tagged, " in ln]
    assert f"{len(events)} updates" in summary and ", 1 reconnect, " in summary
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("streamtag: error: ")]
    assert len(errors) == 1 and "reconnect attempts failed" in errors[0]
    assert "Traceback" not in captured.err


def test_the_live_layer_loads_no_terminal_or_server_library_until_asked():
    import subprocess
    import sys

    code = ("import sys, streamtag.app, streamtag.live, streamtag.publishers.jsonl, streamtag.sources.playlist; "
            "bad = [m for m in ('rich', 'websockets', 'torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_sinks_can_join_and_leave_a_running_runner(bundle):
    engine = make_engine(bundle, hop=0.5)
    first, late = Recorder(), Recorder()
    runner = LiveRunner(engine, [first]).start()
    x = (0.3 * np.random.default_rng(2).standard_normal(16000 * 2)).astype(np.float32)
    try:
        runner.add_stream("s")
        runner.push("s", x)
        assert runner.flush()
        runner.add_sink(late)
        runner.remove_sink(first)
        runner.push("s", x)
        assert runner.flush()
        runner.remove("s")
    finally:
        runner.stop()
    n_first, n_late = len(first.updates("s")), len(late.updates("s"))
    assert n_first >= 1 and n_late >= 1
    assert n_first + n_late == len(offline_updates(bundle, np.concatenate([x, x])))  # none lost, none twice
    assert [c[0] for c in late.of("s")][-1] == "removed" and "removed" not in [c[0] for c in first.of("s")]


class _Failing:
    """An in-process source whose input breaks after one block."""

    name = "failing"

    def __iter__(self):
        yield np.zeros(1600, dtype=np.float32)
        raise SourceError("failing: the input broke")

    def close(self) -> None:
        pass


def test_health_summary_counts_live_reconnecting_and_failed_stations(bundle, clip):
    from streamtag.health import Health
    from streamtag.sources.pool import SourcePool

    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    with SourcePool(engine.sample_rate, workers=1) as pool:
        health = Health(pids=pool.pids)
        runner = LiveRunner(engine, [health, sink]).start()
        try:
            runner.add_source("file", pool.open(str(clip), engine.sample_rate), speed=4.0)
            down = pool.open(f"http://127.0.0.1:{_free_port()}/down.mp3", engine.sample_rate, retry_open=True)
            runner.add_source("down", down)
            runner.add_source("broken", _Failing())
            runner.add_stream("pushed")
            import time

            deadline = time.monotonic() + 60
            while not (sink.updates("file") and ("removed", "broken") in [c[:2] for c in sink.calls]) \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            while runner.pooled()["down"].stats.state != "reconnecting" and time.monotonic() < deadline:
                time.sleep(0.1)  # the decoder process sends its figures once a second
            line = health.summary(runner)
            figures = health.stations(runner)
        finally:
            runner.stop()
    assert line.startswith("4 stations: 2 live, 1 reconnecting, 1 failed · ") and "updates/s" in line and "CPU" in line
    assert figures["down"]["state"] == "reconnecting" and figures["file"]["state"] in ("live", "ended")
    assert figures["pushed"] == {"lag_s": 0.0, "updates": 0, "state": "live"}


def test_health_summary_says_how_much_late_audio_its_stations_skipped(bundle):
    """serve's summary line names the audio the start-up catch-up skipped since the previous line, and only then."""
    from streamtag.health import Health

    engine = make_engine(bundle, hop=0.5)
    health = Health()
    runner = LiveRunner(engine, [health]).start()
    try:
        runner.add_stream("late")
        runner.add_stream("on-time")
        engine.catch_up("late")
        assert "skipped" not in health.summary(runner)
        now = time.monotonic()
        for name in ("late", "on-time"):
            engine.push(name, _chords(4.0), arrived=(now - 6.0, now - 2.0))  # engine.push: no wake-up, one step
        runner.push("late", _chords(0.1))
        assert runner.flush()
        skipped = engine.caught_up_seconds("late")
        line, again = health.summary(runner), health.summary(runner)
    finally:
        runner.stop()
    assert skipped > 0 and engine.caught_up_seconds("on-time") == 0.0
    assert line.endswith(f" · {skipped:.1f} s of late audio skipped (1 station catching up)")
    assert "skipped" not in again


def test_health_warns_when_stations_give_fewer_updates_than_expected(bundle, tmp_path):
    """Two live runners, each with one station read by a decoder process: one plays its file at real time, the
    other at a quarter of it (a station whose audio arrives late). The summaries count what each station should
    have given; the slow one is behind two summaries in a row and gets advice, the other keeps up and gets none."""
    import time

    from streamtag.health import Health
    from streamtag.sources.pool import SourcePool

    wav = write_tone_wav(tmp_path / "long.wav", seconds=30.0, sr=16000)
    lines: dict[str, list[str]] = {"steady": [], "slow": []}
    advice: dict[str, list[str | None]] = {"steady": [], "slow": []}
    with SourcePool(16000, workers=1) as pool:
        runs = {}
        for name, speed in (("steady", 1.0), ("slow", 0.25)):
            engine = make_engine(bundle, hop=0.5)
            health = Health(pids=pool.pids)
            runner = LiveRunner(engine, [health]).start()
            runner.add_source(name, pool.open(str(wav), engine.sample_rate), speed=speed)
            runs[name] = (runner, health)
        try:
            first = runs["steady"][0].engine.first_answer_seconds + 0.5
            time.sleep(first + 0.5)
            for _ in range(3):  # the first summary starts the count, the second judges, the third warns
                for name, (runner, health) in runs.items():
                    lines[name].append(health.summary(runner))
                    advice[name].append(health.advice())
                time.sleep(3.0)
        finally:
            for runner, _ in runs.values():
                runner.stop()
    assert "expected" not in lines["steady"][0]  # nothing to expect before a summary has seen the station live
    assert all("updates/s (2 expected)" in line for line in lines["steady"][1:]), lines["steady"]
    assert advice["steady"] == [None, None, None], advice["steady"]
    assert advice["slow"][:2] == [None, None] and advice["slow"][2] is not None, advice["slow"]
    head = advice["slow"][2].split(",")[0]
    got = float(head.removeprefix("behind: ").split(" of ")[0])
    assert head.endswith(" of 2 expected updates/s") and got < 2 * 0.95, advice["slow"][2]
    assert ("The machine's CPU is the limit" in advice["slow"][2]
            or "The stats request shows each station's lag" in advice["slow"][2]), advice["slow"][2]


@pytest.mark.parametrize("pooled", [False, True])
def test_removing_sixty_four_playing_file_stations_at_once(bundle, clip, pooled):
    """The race a helper saw as a crash: LiveRunner.remove() and the feeder's finally (or the decoder process's
    reader) closing the same source at once, for 64 stations removed together from many threads. Every stream is
    removed exactly once, with no error, and the runner keeps working."""
    from streamtag.sources.pool import SourcePool

    engine = make_engine(bundle, hop=0.5)
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    names = [f"s{i:02d}" for i in range(64)]
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(SourcePool(engine.sample_rate, workers=1)) if pooled else None
        try:
            for name in names:
                uri = str(clip)
                source = pool.open(uri, engine.sample_rate) if pool else open_source(uri, engine.sample_rate)
                runner.add_source(name, source, speed=4.0)
            import time

            deadline = time.monotonic() + 30
            while len({c[1] for c in list(sink.calls) if c[0] == "update"}) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)  # playing: the readers are inside their sources
            barrier = threading.Barrier(16)

            def remove(part: list[str]) -> None:
                barrier.wait()
                for name in part:
                    runner.remove(name)

            threads = [threading.Thread(target=remove, args=(names[i::16],)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads)
            runner.add_stream("after")
            runner.push("after", np.zeros(engine.sample_rate * 2, np.float32))
            assert runner.flush()
        finally:
            runner.stop()
    removed = [c for c in sink.calls if c[0] == "removed"]
    assert sorted(c[1] for c in removed if c[1] != "after") == names
    assert all(c[2] is None for c in removed)
    assert sink.updates("after")


@pytest.mark.parametrize("model", ["tiny", "st-gru-msd"])
def test_a_stop_ends_a_long_step_at_its_next_model_call(bundle, model):
    # An overloaded engine's step covers a large backlog (many model calls); a stop must not wait for all of them.
    from streamtag.registry import load_bundle

    engine = make_engine(bundle if model == "tiny" else load_bundle(model), hop=0.5)
    names = [f"s{i}" for i in range(300 if model == "tiny" else 3)]
    for name in names:
        engine.add_stream(name)
    rng = np.random.default_rng(0)
    for name in names:
        engine.push(name, (0.1 * rng.standard_normal(int(engine.sample_rate * 6.0))).astype(np.float32))
    stop = threading.Event()
    calls = []
    runner = engine.runner
    method = "step" if runner.stateful else "predict"
    real = getattr(runner, method)

    def call_then_stop(*args, **kwargs):
        calls.append(1)
        stop.set()  # the caller stops while the first model call runs
        return real(*args, **kwargs)

    setattr(runner, method, call_then_stop)
    assert engine.step(stop) == []  # a stopped step publishes nothing
    assert len(calls) == 1  # and made no model call after the stop
    setattr(runner, method, real)
    # the same backlog without a stop takes several model calls (so the test could fail)
    engine2 = make_engine(bundle if model == "tiny" else load_bundle(model), hop=0.5)
    for name in names:
        engine2.add_stream(name)
        engine2.push(name, (0.1 * rng.standard_normal(int(engine2.sample_rate * 6.0))).astype(np.float32))
    calls.clear()
    setattr(engine2.runner, method, lambda *a, **k: (calls.append(1), real.__func__(engine2.runner, *a, **k))[1])
    assert len(engine2.step(threading.Event())) > 0 and len(calls) > 1


def _chords(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f = np.where((t // 1.0) % 2 == 0, 440.0, 660.0)
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_a_live_stream_skips_to_its_newest_audio_when_its_start_up_is_late_and_only_then(bundle):
    """Engine.catch_up: a live stream whose backlog the engine reaches late in its start-up (4 s stamped as arrived
    2-6 s ago) is answered at its newest audio, once, with the skipped seconds counted in ``t``; the same audio
    arriving as a burst now (a server's burst-on-connect), or on a stream not caught up, gets every hop, equal
    to one another. After the skip the stream goes on on its own hop grid."""
    engine = make_engine(bundle, hop=0.5)
    for name in ("late", "burst", "plain"):
        engine.add_stream(name)
    engine.catch_up("late")
    engine.catch_up("burst")
    x = _chords(4.0)
    now = time.monotonic()
    engine.push("late", x, arrived=(now - 6.0, now - 2.0))
    engine.push("burst", x)
    engine.push("plain", x, arrived=(now - 6.0, now - 2.0))
    by: dict[str, list] = {}
    for u in engine.step():
        by.setdefault(u.stream, []).append(u)
    plain, burst, late = by["plain"], by["burst"], by["late"]
    assert len(plain) >= 5 and [(u.t, u.raw) for u in burst] == [(u.t, u.raw) for u in plain]
    assert engine.caught_up_seconds("burst") == engine.caught_up_seconds("plain") == 0.0
    assert len(late) == 1 and late[0].t == pytest.approx(x.size / engine.sample_rate, abs=1e-9)
    assert late[0].t > plain[-1].t
    skipped = engine.caught_up_seconds("late")
    assert 0 < skipped < 4.0 and engine.streams["late"].skipped == round(skipped * engine.sample_rate)
    assert late[0].extra["latency_ms"] == pytest.approx(2000.0, abs=300.0)  # its newest audio: 2 s old
    for name in ("late", "plain"):
        engine.push(name, _chords(1.0))  # on time now: nothing more is skipped
    more = [u for u in engine.step() if u.stream == "late"]
    assert len(more) == 2 and engine.caught_up_seconds("late") == skipped
    assert [round(u.t - late[0].t, 6) for u in more] == pytest.approx([engine.hop_seconds, 2 * engine.hop_seconds])


def test_a_stream_that_had_to_skip_keeps_catching_up_while_it_is_late(bundle):
    """A skip extends the stream's start-up (the machine is still short of CPU): late audio past the first window is
    skipped too, and the stream's answers stay on its newest audio."""
    engine = make_engine(bundle, hop=0.5)
    engine.add_stream("live")
    engine.catch_up("live", seconds=0.3)
    skipped = []
    for _ in range(2):
        now = time.monotonic()
        engine.push("live", _chords(4.0), arrived=(now - 6.0, now - 2.0))
        [u] = engine.step()
        skipped.append(engine.caught_up_seconds("live"))
        assert u.t == pytest.approx(engine.streams["live"].ring.written / engine.sample_rate, abs=1e-9)
        time.sleep(0.4)  # past the first window
    assert 0 < skipped[0] < skipped[1]


def test_the_catch_up_ends_with_the_start_up(bundle):
    """Past its first ``seconds`` a live stream's late audio is answered in full, like any stream's."""
    engine = make_engine(bundle, hop=0.5)
    engine.add_stream("live")
    engine.add_stream("plain")
    engine.catch_up("live", seconds=0.05)
    first = _chords(0.2)
    for name in ("live", "plain"):
        engine.push(name, first)  # the first read starts its window
    assert engine.step() == []
    time.sleep(0.1)
    x = _chords(4.0)
    now = time.monotonic()
    for name in ("live", "plain"):
        engine.push(name, x, arrived=(now - 6.0, now - 2.0))
    by: dict[str, list] = {}
    for u in engine.step():
        by.setdefault(u.stream, []).append(u)
    assert len(by["plain"]) >= 5
    assert [(u.t, u.raw) for u in by["live"]] == [(u.t, u.raw) for u in by["plain"]]
    assert engine.caught_up_seconds("live") == 0.0


class _LiveTone:
    """An in-process source of the moment (as a radio is): ``live`` is True; 0.1 s blocks until closed."""

    name = "on-air"
    live = True

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[np.ndarray]:
        x = _chords(2.0)
        i = 0
        while not self.closed.wait(0.02):
            yield x[i : i + 1600]
            i = (i + 1600) % x.size

    def close(self) -> None:
        self.closed.set()


def test_the_runner_catches_up_live_sources_only(bundle, clip, tmp_path):
    """A live source's stream may skip in its start-up, in-process or pooled (a real HTTP radio decoded in a decoder
    process); a file's (in-process or pooled), a paced live source's and pushed audio never."""
    from radio_fixtures import ScriptedServer, tone_clip

    from streamtag.sources.file import FileSource
    from streamtag.sources.pool import SourcePool

    mp3 = tone_clip(tmp_path / "radio.mp3", 20.0, codec_args=["-c:a", "libmp3lame", "-b:a", "64k"]).read_bytes()

    def radio(conn, index, stop) -> None:  # a live stream: no length, played at real time
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n")
        step = len(mp3) // 80
        for i in range(0, len(mp3), step):
            if stop.wait(0.25):
                return
            conn.sendall(mp3[i : i + step])

    engine = make_engine(bundle, hop=0.5)
    asked: list[str] = []
    catch_up = engine.catch_up
    engine.catch_up = lambda name, *a: (asked.append(name), catch_up(name, *a))[1]  # type: ignore[method-assign]
    sink = Recorder()
    runner = LiveRunner(engine, [sink]).start()
    try:
        with SourcePool(engine.sample_rate, workers=1) as pool, ScriptedServer(radio) as server:
            pooled_file = pool.open(str(clip), engine.sample_rate)
            pooled_radio = pool.open(server.url("/live.mp3"), engine.sample_rate)
            assert pooled_file.info["live"] is False and pooled_radio.info["live"] is True
            runner.add_source("pooled-radio", pooled_radio)
            runner.add_source("radio", _LiveTone())
            runner.add_source("paced", _LiveTone(), speed=1.0)
            runner.add_source("file", FileSource(str(clip), engine.sample_rate))
            runner.add_source("pooled-file", pooled_file)
            runner.add_stream("pushed")
            runner.push("pushed", _chords(1.0))
            deadline = time.monotonic() + 30
            while not all(("removed", n, None) in sink.of(n) for n in ("file", "pooled-file")):
                assert time.monotonic() < deadline, "the files never ended"
                time.sleep(0.05)
            while not sink.updates("pooled-radio"):
                assert time.monotonic() < deadline, "the pooled radio never played"
                time.sleep(0.05)
            runner.flush()
            assert sink.updates("radio") and sink.updates("pooled-file") and sink.updates("pushed")
    finally:
        runner.stop()
    assert sorted(asked) == ["pooled-radio", "radio"] and engine.caught_up_seconds("radio") >= 0.0


def test_health_metrics_count_every_update_and_bucket_latencies_by_their_upper_bound(bundle):
    """/metrics' figures from the same sink: a pushed stream through a real engine, then latencies at the buckets'
    bounds (Prometheus' ``le``: a latency equal to a bound is in its bucket) and past the last one."""
    from streamtag.events import GenreUpdate
    from streamtag.health import LATENCY_BUCKETS_S, Health

    engine = make_engine(bundle, hop=0.5)
    health, fresh = Health(), Health()
    runner = LiveRunner(engine, [health]).start()
    latencies = (100.0, 1000.0, 1000.1, 20000.0)
    try:
        runner.add_stream("a")
        runner.push("a", _chords(4.0))
        assert runner.flush()
        played = health.metrics(runner)
        fresh.on_update([GenreUpdate(stream="x", t=1.0, top=[("rock", 1.0)], probs={"rock": 1.0}, raw={"rock": 1.0},
                                     model="m", extra={"latency_ms": ms}) for ms in (*latencies, float("nan"))])
        probed = fresh.metrics(runner)
    finally:
        runner.stop()
    rows = dict(line.rsplit(" ", 1) for line in played.splitlines() if not line.startswith("#"))
    n = int(rows['streamtag_station_updates_total{station="a"}'])
    assert n > 0 and int(rows["streamtag_updates_total"]) == n
    assert int(rows["streamtag_update_latency_seconds_count"]) == n  # every pushed update has a latency
    assert rows['streamtag_station_up{station="a"}'] == "1"  # pushed: no source to reconnect
    assert 'streamtag_station_bytes_total{station="a"}' not in rows  # only sources read by the pool have bytes

    rows = dict(line.rsplit(" ", 1) for line in probed.splitlines() if not line.startswith("#"))
    for bound in LATENCY_BUCKETS_S:
        within = sum(ms / 1000.0 <= bound for ms in latencies)
        assert rows[f'streamtag_update_latency_seconds_bucket{{le="{bound:g}"}}'] == str(within), bound
    assert rows['streamtag_update_latency_seconds_bucket{le="+Inf"}'] == "4"
    assert rows["streamtag_update_latency_seconds_count"] == "4"  # the NaN is no latency
    assert float(rows["streamtag_update_latency_seconds_sum"]) == pytest.approx(sum(latencies) / 1000.0)
    assert rows["streamtag_updates_total"] == "5"
