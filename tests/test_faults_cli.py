"""Fault suite, command side: no traceback reaches a user, whatever the input, the output or the model bundle.

Each test runs the real command (``python -m streamtag`` in a subprocess, stderr read at the file-descriptor
level, so a C library's or the interpreter's own printing would show) or ``main()`` in this process, against
real files made with FFmpeg/soundfile, a real full device (/dev/full), real trickling HTTP servers on loopback
and broken bundles in a private STREAMTAG_MODELS folder. Each asserts the one line the user gets and the exit
code the README documents (0 done, 1 failed, 3 internal error, 74 output not written, 130 interrupted).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import tiny_bundle, write_tone_wav

REPO = Path(__file__).resolve().parents[1]
TRACEBACK_WORDS = ("Traceback", "Exception ignored", "library exception", "internal error", "nanobind")


def run_cli(*args: str, env: dict[str, str] | None = None, stdout=subprocess.PIPE,
            timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtag", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})


def no_traceback(stderr: str) -> None:
    for word in TRACEBACK_WORDS:
        assert word not in stderr, stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny test bundle (1 s windows): the commands run in seconds."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_bundle(path)
    return path


def ffmpeg_mp3(path: Path, seconds: float, *extra: str) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"sine=f=440:d={seconds}",
                    "-c:a", "libmp3lame", "-b:a", "128k", *extra, str(path)], check=True, timeout=60)
    return path


def cut(path: Path, out: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction) + 77])  # + 77: mid-frame
    return out


# -- odd inputs: one warning per condition, silence reported as silence ------------------------------------------
def test_odd_inputs_warn_once_each_and_silence_is_no_genre(model, tmp_path):
    import soundfile as sf

    sr = 16000
    files = {
        "truncated-noxing.mp3": cut(ffmpeg_mp3(tmp_path / "a.mp3", 8.0, "-write_xing", "0"),
                                    tmp_path / "truncated-noxing.mp3"),
        "truncated-xing.mp3": cut(ffmpeg_mp3(tmp_path / "b.mp3", 8.0), tmp_path / "truncated-xing.mp3"),
        "whole.mp3": ffmpeg_mp3(tmp_path / "whole.mp3", 4.0, "-write_xing", "0"),
        "nan.wav": tmp_path / "nan.wav",
        "zeros.wav": tmp_path / "zeros.wav",
        "some-nan.wav": tmp_path / "some-nan.wav",
        "tone.wav": write_tone_wav(tmp_path / "tone.wav", seconds=4.0),
    }
    sf.write(files["nan.wav"], np.full(4 * sr, np.nan, dtype=np.float32), sr, subtype="FLOAT")
    sf.write(files["zeros.wav"], np.zeros(4 * sr, dtype=np.float32), sr, subtype="PCM_16")
    x = (0.5 * np.sin(np.arange(4 * sr) / 7.0)).astype(np.float32)
    x[::97] = np.nan
    sf.write(files["some-nan.wav"], x, sr, subtype="FLOAT")

    r = run_cli("tag", "--model", str(model), "--format", "jsonl", *map(str, files.values()))
    no_traceback(r.stderr)
    assert r.returncode == 0, r.stderr  # warnings, not failures (README: exit codes)
    summaries = {Path(s["stream"]).name: s for s in map(json.loads, r.stdout.splitlines())}
    assert set(summaries) == set(files)
    lines = r.stderr.strip().splitlines()

    def about(name: str) -> list[str]:
        return [line for line in lines if f"/{name}:" in line]

    assert len(about("truncated-noxing.mp3")) == 1 and "truncated" in about("truncated-noxing.mp3")[0]
    assert len(about("truncated-xing.mp3")) == 1 and "truncated" in about("truncated-xing.mp3")[0]
    assert about("whole.mp3") == [] and about("tone.wav") == []
    assert len(about("some-nan.wav")) == 1 and "repaired" in about("some-nan.wav")[0]  # once, not twice
    assert [("repaired" in line, "silent" in line) for line in about("nan.wav")] == [(True, False), (False, True)]
    assert len(about("zeros.wav")) == 1 and "silent throughout" in about("zeros.wav")[0]
    for name in ("nan.wav", "zeros.wav"):
        assert summaries[name]["silence"] is True and summaries[name]["top"] == []  # not "rock 0.20"
    for name in ("tone.wav", "whole.mp3", "some-nan.wav", "truncated-noxing.mp3"):
        assert "silence" not in summaries[name] and len(summaries[name]["top"]) == 5


# -- output that cannot be written ---------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize("fmt", ["jsonl", "table"])
def test_a_full_disk_is_one_line_and_exit_74(model, tmp_path, fmt):
    wav = write_tone_wav(tmp_path / "tone.wav", seconds=3.0)
    with open("/dev/full", "w") as full:
        r = run_cli("tag", "--model", str(model), "--format", fmt, str(wav), str(wav), stdout=full)
    no_traceback(r.stderr)
    assert r.returncode == 74
    assert r.stderr.strip().splitlines() == [
        "streamtag: error: cannot write output: no space left on device; free some space or write the output "
        "elsewhere"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_live_command_on_a_full_disk_ends_with_one_line_and_exit_74(model):
    """The live commands write JSON lines from a sink thread: a full disk ends the command (it was a traceback
    per update, then exit 0), with one line and exit 74."""
    with open("/dev/full", "w") as full:
        r = run_cli("demo", "--model", str(model), "--format", "jsonl", "--duration", "60", stdout=full)
    no_traceback(r.stderr)
    assert r.returncode == 74
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert errors == ["streamtag: error: cannot write output: no space left on device; free some space or write "
                      "the output elsewhere"]


def test_a_live_command_whose_reader_leaves_ends_quietly(model):
    """`streamtag demo | head -1`: once the reader has gone the command ends, exit 0, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "streamtag", "demo", "--model", str(model), "--format", "jsonl",
                             "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("{")
        proc.stdout.close()  # what `head -1` does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    no_traceback(err)
    assert proc.returncode == 0


def test_exit_codes_are_documented():
    r = run_cli("--help")
    assert "exit codes:" in r.stdout and "74" in r.stdout and "130" in r.stdout
    readme = (REPO / "README.md").read_text()
    assert "### Exit codes" in readme and "| 74 |" in readme


# -- Ctrl-C while the interpreter shuts down -------------------------------------------------------------------
def test_ctrl_c_during_shutdown_prints_no_traceback():
    """A Ctrl-C that lands in an atexit callback (threads joining, a pool shutting down) once the command is done:
    the process ends with 130 and nothing on stderr, not "Exception ignored in atexit callback ... KeyboardInterrupt"."""
    r = run_python("""
        import atexit, os, signal, sys, time
        from streamtag.cli import main

        def slow_cleanup():  # what a pool joining its workers does, with the user's Ctrl-C landing meanwhile
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)

        atexit.register(slow_cleanup)
        sys.argv = ["streamtag", "--version"]
        sys.exit(main())
    """)
    assert r.returncode == 130
    assert r.stderr == "", r.stderr


# -- broken bundles --------------------------------------------------------------------------------------------
def broken_copy(good: Path, folder: Path, name: str, change) -> Path:
    dst = folder / name
    shutil.copytree(good, dst)
    cfg = json.loads((dst / "config.json").read_text())
    change(cfg)
    cfg["name"] = name
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_a_bundle_asking_for_1e9_dimensions_names_the_bundle_and_the_field(model, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    broken_copy(model, models, "huge", lambda c: c["arch_config"].update(d_model=1e9))
    wav = write_tone_wav(tmp_path / "tone.wav", seconds=2.0)
    r = run_cli("tag", "--model", "huge", str(wav), env={"STREAMTAG_MODELS": str(models)})
    no_traceback(r.stderr)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "bundle huge" in line and "arch_config.d_model" in line


@pytest.mark.parametrize("change, words", [
    (lambda c: c["arch_config"].update(d_model=60000, d_ff=60000), "parameters"),  # each size fine, the whole not
    (lambda c: c["frontend"].update(n_mels=10**9), "frontend.n_mels"),
    (lambda c: c.update(window_frames=1e12), "window_frames"),
    (lambda c: c["arch_config"].update(n_heads=float("nan")), "arch_config.n_heads"),
    (lambda c: c.update(labels="rock"), "labels"),
    (lambda c: c["arch_config"].update(n_layers="two"), "arch_config"),
    (lambda c: c.update(labels=c["labels"][:3], genre_labels=c["labels"][:3]), "arch_config.n_labels"),
    (lambda c: (c["arch_config"].update(n_mels=16), c["frontend"].update(n_mels=16)), "do not fit"),
])
def test_bad_bundle_configs_are_model_errors_before_any_allocation(model, tmp_path, change, words):
    from streamtag.errors import ModelError
    from streamtag.registry import load_bundle

    bad = broken_copy(model, tmp_path, "bad", change)
    with pytest.raises(ModelError, match=words) as info:
        load_bundle(bad).build_model()
    assert "bad" in str(info.value) and "\n" not in str(info.value)


def test_models_lists_the_good_bundles_and_marks_the_broken_one(model, tmp_path, monkeypatch, capsys):
    from streamtag.cli import main

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(model, models / "tiny-good")
    broken_copy(model, models, "huge", lambda c: c["arch_config"].update(n_labels=1e9))
    (models / "garbled").mkdir()
    (models / "garbled" / "config.json").write_text("{not json")
    monkeypatch.setenv("STREAMTAG_MODELS", str(models))
    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    rows = {line[2:].split()[0]: line for line in out.splitlines() if line[:1] in ("*", "!", " ")}
    assert rows["tiny-good"].startswith(" ") and "transformer" in rows["tiny-good"]
    assert rows["huge"].startswith("!") and "arch_config.n_labels" in rows["huge"]
    assert rows["garbled"].startswith("!") and "not valid JSON" in rows["garbled"]
    assert "musicnn-msd" in rows or not (REPO / "models" / "musicnn-msd").is_dir()  # the shipped ones still listed
    no_traceback(out + err)


# -- PyAV: one exception, one line ---------------------------------------------------------------------------------
def test_a_radio_that_trickles_its_body_gives_one_line_and_no_pyav_traceback(tmp_path):
    """A server that sends its headers then the body a few bytes at a time: FFmpeg's probe reads on after the
    stall deadline raised in the read callback. The user gets one line naming the input; PyAV never has two
    exceptions to juggle, so it prints no "PyAV library exception being dropped: Traceback"."""
    mp3 = ffmpeg_mp3(tmp_path / "radio.mp3", 6.0)
    r = run_python(f"""
        import logging, sys
        from radio_fixtures import ScriptedServer, trickle
        from streamtag.errors import SourceError
        from streamtag.sources import open_source

        logging.basicConfig(level=logging.WARNING, format="streamtag: %(message)s")
        data = open({str(mp3)!r}, "rb").read()

        def handler(conn, index, stop):
            conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Type: audio/mpeg\\r\\n\\r\\n")
            trickle(conn, data, 0.05, stop)

        with ScriptedServer(handler) as server:
            try:
                for block in open_source(server.url(), 16000, stall_timeout=1.0, read_timeout=30.0, max_retries=1,
                                         backoff_initial=0.05, backoff_max=0.1):
                    pass
            except SourceError as e:
                print(f"streamtag: error: {{e}}", file=sys.stderr)
                sys.exit(1)
    """)
    no_traceback(r.stderr)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines and all(line.startswith("streamtag: ") and "stream.mp3" in line for line in lines), lines


# -- the pure helpers ------------------------------------------------------------------------------------------------
def test_mpeg_frame_bytes_reads_layer_2_and_3_headers():
    from streamtag.sources.file import mpeg_frame_bytes

    assert mpeg_frame_bytes(bytes([0xFF, 0xFB, 0x90, 0x64])) == 417  # MPEG-1 layer III 128 kbit/s 44.1 kHz
    assert mpeg_frame_bytes(bytes([0xFF, 0xFB, 0x92, 0x64])) == 418  # ... padded
    assert mpeg_frame_bytes(bytes([0xFF, 0xF3, 0x94, 0x64])) == 240  # MPEG-2 layer III 80 kbit/s 24 kHz (half)
    assert mpeg_frame_bytes(bytes([0xFF, 0xFD, 0x94, 0x00])) == 480  # MPEG-1 layer II 160 kbit/s 48 kHz
    assert mpeg_frame_bytes(b"OggS") is None and mpeg_frame_bytes(b"\xff") is None
    assert mpeg_frame_bytes(bytes([0xFF, 0xFB, 0xF0, 0x00])) is None  # bitrate index 15: not a frame


@pytest.mark.parametrize("argv, words", [
    (["--duration", "1e309"], "--duration"),  # was a traceback from the decoding thread, and a hang
    (["--duration", "nan"], "--duration"),
    (["--hop", "nan"], "--hop"),
])
def test_non_finite_numbers_on_the_command_line_are_one_line(model, argv, words, capsys):
    from streamtag.cli import main

    assert main(["tag", "-", "--model", str(model), *argv]) == 1
    out, err = capsys.readouterr()
    no_traceback(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]
