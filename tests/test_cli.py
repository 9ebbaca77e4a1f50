"""`streamtag tag` / `models` end to end as a user runs them: real decoding, the shipped default model."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "audio").glob("*.ogg"))
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg (apt install ffmpeg) not installed")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtag", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same command line in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from streamtag.cli import main

    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse: --help, --version, usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_models_lists_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "models")
    assert rc == 0, err
    assert "musicnn-msd" in out and "musicnn-mtt" in out


def test_unknown_model_is_one_line_listing_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, stderr = cli(capsys, "tag", str(EXAMPLES[0]), "--model", "no-such-model")
    assert rc != 0
    assert "Traceback" not in stderr
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "no-such-model" in err[0] and "musicnn-msd" in err[0]


@pytest.fixture(scope="module")
def examples_jsonl() -> list[dict]:
    """One run over the three example clips (tagging is the expensive part; several tests read it)."""
    r = run("tag", *map(str, EXAMPLES), "--format", "jsonl", "--timeline", "--hop", "1.0")
    assert r.returncode == 0, r.stderr
    return jsonl(r.stdout)


@pytest.mark.slow
def test_tag_examples_summary_and_timeline(examples_jsonl: list[dict]) -> None:
    events = examples_jsonl
    summaries = [e for e in events if e["type"] == "summary"]
    assert [s["stream"] for s in summaries] == [str(p) for p in EXAMPLES]
    for s in summaries:
        assert s["model"] == "musicnn-msd" and s["duration"] > 40
        assert len(s["mean"]) == 51  # every label's mean raw probability (50 tags + the derived classical)
        assert len(s["top"]) == 5 and s["top"][0][1] >= s["top"][-1][1]
    updates = [e for e in events if e["type"] == "update" and e["stream"] == str(EXAMPLES[0])]
    dur = summaries[0]["duration"]
    assert len(updates) == pytest.approx(dur - 3.0, abs=2)  # one per 1 s hop after the first 3 s window
    ts = [u["t"] for u in updates]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    for u in updates[:3]:
        assert {"type", "stream", "t", "wall", "top", "probs", "raw", "model"} <= set(u)
    # the summary's mean is the mean of the per-hop raw probabilities of the hops that were not silence
    # (Brahms ends in near-silence: those hops are flagged and left out of the summary)
    heard = [u for u in updates if not u.get("silence")]
    assert 0 < len(heard) <= len(updates)
    for label in ("jazz", "rock", "folk"):
        mean_raw = sum(u["raw"][label] for u in heard) / len(heard)
        assert summaries[0]["mean"][label] == pytest.approx(mean_raw, abs=2e-4)


@pytest.mark.slow
def test_updates_and_summaries_carry_families_and_a_fade_out_keeps_the_headline(examples_jsonl: list[dict]) -> None:
    for s in (e for e in examples_jsonl if e["type"] == "summary"):
        assert s["families"] and sum(s["families"].values()) == pytest.approx(1.0, abs=1e-3)
    updates = [e for e in examples_jsonl if e["type"] == "update"]
    for u in updates:
        assert u["family"] in u["families"] and sum(u["families"].values()) == pytest.approx(1.0, abs=1e-3)
    # Brahms ends in a fade-out (a -49 dBFS hop, then silence): the headline must not flip in it
    brahms = [u for u in updates if "brahms" in u["stream"]]
    levels = sorted(u["level_db"] for u in brahms)
    loud = levels[len(levels) // 2] - 6.0  # within 6 dB of the clip's median level
    last_loud = max(i for i, u in enumerate(brahms) if u["level_db"] >= loud)
    assert len(brahms) - last_loud >= 4 and min(u["level_db"] for u in brahms[last_loud:]) < -45
    assert {u["family"] for u in brahms[last_loud:]} == {brahms[last_loud]["family"]}


@pytest.mark.slow
def test_genres_are_plausible_for_the_examples(examples_jsonl: list[dict]) -> None:
    """Not a hard-coded answer: each clip's top genres must fit its music."""
    tops = {Path(e["stream"]).stem: [l for l, _ in e["top"][:3]] for e in examples_jsonl if e["type"] == "summary"}
    assert "jazz" in tops["kevin-macleod-vibe-ace"]
    assert "folk" in tops["karissa-hobbs-lets-go-fishin"]
    assert tops["brahms-hungarian-dance-5"][0] not in {"rock", "metal", "punk", "Hip-Hop", "hard rock", "House"}


def test_all_tags_shows_fifty(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "tag", str(EXAMPLES[2]), "--format", "jsonl", "--all-tags", "--top", "50",
                       "--duration", "8")
    assert rc == 0, err
    s = jsonl(out)[-1]
    assert len(s["top"]) == 50 and "female vocalists" in dict(s["top"])


def test_table_output_names_file_and_genres(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "tag", str(EXAMPLES[1]), "--duration", "10")
    assert rc == 0, err
    assert EXAMPLES[1].name in out and "genre" in out


@needs_ffmpeg
def test_bad_inputs_are_one_line_errors_and_the_rest_is_tagged(tmp_path: Path) -> None:
    good = EXAMPLES[1]
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("this is not music\n" * 50)
    mp3 = tmp_path / "full.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(good), "-t", "12", str(mp3)], check=True)
    truncated = tmp_path / "truncated.mp3"
    truncated.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 2])
    missing = tmp_path / "missing.ogg"
    r = run("tag", str(missing), str(empty), str(text), str(truncated), str(mp3), "--format", "jsonl")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    done = {e["stream"] for e in jsonl(r.stdout) if e["type"] == "summary"}
    assert done == {str(truncated), str(mp3)}  # the truncated file's decodable part is tagged
    errors = [l for l in r.stderr.splitlines() if "error" in l]
    for bad in (missing, empty, text):
        lines = [l for l in errors if str(bad) in l]
        assert len(lines) == 1, r.stderr


@needs_ffmpeg
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["silence", "telephone", "surround"])
def test_odd_audio_is_tagged(tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"{kind}.wav"
    if kind == "silence":
        cmd = ["-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "6"]
    elif kind == "telephone":
        cmd = ["-i", str(EXAMPLES[1]), "-t", "8", "-ar", "8000", "-ac", "1", "-c:a", "pcm_mulaw"]
    else:
        cmd = ["-i", str(EXAMPLES[0]), "-t", "8", "-ac", "6", "-ar", "48000"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *cmd, str(out)], check=True)
    r = run("tag", str(out), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    s = jsonl(r.stdout)[-1]
    assert s["type"] == "summary" and s["duration"] == pytest.approx(6 if kind == "silence" else 8, abs=0.1)
    assert all(0 <= p <= 1 for p in s["mean"].values())


def test_hop_too_small_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "tag", str(EXAMPLES[0]), "--hop", "0.1", "--duration", "5")
    assert rc != 0 and "0.25" in err and "Traceback" not in err


@pytest.mark.slow
def test_engine_path_reproduces_musicnn_clip_tags(shared_dir: Path) -> None:
    """End to end through PyAV decoding + our front end: per-file mean of every tag within 0.03 of musicnn."""
    ref_dir = shared_dir / "reference" / "musicnn"
    refs = [json.loads(l) for l in (ref_dir / "clip_tags.jsonl").read_text().splitlines() if l.strip()]
    labels = json.loads((ref_dir / "labels.json").read_text())
    files = [str(shared_dir / "audio" / r["file"]) for r in refs]
    for model, key in (("musicnn-msd", "MSD_musicnn"), ("musicnn-mtt", "MTT_musicnn")):
        # hop = window = 187 frames (2.992 s), as musicnn's non-overlapping 3 s patches
        r = run("tag", *files, "--model", model, "--hop", "2.992", "--format", "jsonl", "--all-tags")
        assert r.returncode == 0, r.stderr
        means = {Path(e["stream"]).name: e["mean"] for e in jsonl(r.stdout) if e["type"] == "summary"}
        worst = 0.0
        for ref in refs:
            got = means[ref["file"]]
            want = ref[key]
            assert set(want) == set(labels[key])
            worst = max(worst, max(abs(got[t] - want[t]) for t in want))
        assert worst <= 0.03, f"{model}: max clip-level deviation {worst:.4f}"


# -- one CLI: the same flag means the same thing everywhere ----------------------------------------------------------
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from streamtag.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_that_states_its_default() -> None:
    from streamtag.cli import _HelpFormatter

    missing = []
    for name, p in _subparsers().items():
        fmt = _HelpFormatter(prog=p.prog)
        for a in p._actions:
            if not a.option_strings or a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
                continue
            text = fmt._get_help_string(a) or ""
            is_flag = a.nargs == 0
            if not text or not (is_flag or a.required or "default" in text.lower()):  # "no default" counts
                missing.append(f"{name} {a.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)


def test_compute_device_is_device_everywhere_and_top_has_one_default() -> None:
    from streamtag.cli import TOP_DEFAULT

    subs = _subparsers()
    for name in ("tag", "stream", "listen", "demo", "serve", "train", "eval"):
        (device,) = [a for a in subs[name]._actions if "--device" in a.option_strings]
        assert device.dest == "device" and device.default == "auto", name
    for name, p in subs.items():
        for a in p._actions:
            if "--top" in a.option_strings:
                assert a.default == TOP_DEFAULT, name
    assert {"tag", "stream", "listen", "demo", "serve"} <= {
        n for n, p in subs.items() if any("--smoothing" in a.option_strings for a in p._actions)}


@pytest.mark.parametrize(("argv", "device", "mic", "warned"), [
    (["listen", "--input", "USB"], "auto", "USB", False),
    (["listen", "--mic", "3", "--device", "cpu"], "cpu", "3", False),
    (["listen", "--device", "cuda:1"], "cuda:1", None, False),
    (["listen", "--device", "USB Mic"], "auto", "USB Mic", True),  # the old spelling of the microphone
    (["listen", "--device", "2"], "auto", "2", True),
    (["listen", "--compute", "cpu"], "cpu", None, True),
    (["demo", "--compute", "cpu"], "cpu", None, True),
    (["listen", "--device", "pulse", "--compute", "cpu"], "cpu", "pulse", True),  # both old spellings at once
])
def test_listen_device_spellings(argv: list[str], device: str, mic: str | None, warned: bool) -> None:
    from streamtag.cli import apply_old_spellings, build_parser

    args = build_parser(serve_security=False).parse_args(argv)
    apply_old_spellings(args)
    assert args.device == device
    assert getattr(args, "input", None) == mic
    assert bool(getattr(args, "deprecations", None)) == warned


def test_deprecated_spelling_warns_and_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    rc, _, err = cli(capsys, "demo", "--compute", "cpu", str(tmp_path / "missing.ogg"))
    assert rc == 1 and "Traceback" not in err
    assert any("--compute is deprecated" in m and "--device" in m for m in caplog.messages)
    assert "missing.ogg" in err  # the command itself ran with the old flag


def test_unknown_flag_shows_the_subcommand_usage(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "tag", "--no-such-flag", "x.ogg")
    assert rc == 2
    assert "usage: streamtag tag" in err and "--no-such-flag" in err
    rc, _, err = cli(capsys, "train", "--data", "fma")  # a missing required option: train's usage too
    assert rc == 2 and "usage: streamtag train" in err and "--out" in err


def test_version_and_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from streamtag import __version__
    from streamtag.registry import available_models

    rc, out, _ = cli(capsys, "--version")
    assert rc == 0 and out.strip() == f"streamtag {__version__}"
    rc, out, err = cli(capsys, "doctor")
    assert rc == 0, err
    import re

    rows = dict(re.match(r"^(\S.*?)\s{2,}(.*)$", line).groups() for line in out.splitlines())  # type: ignore[union-attr]
    assert rows["torch"] == torch.__version__
    for item in ("python", "numpy", "librosa", "av", "websockets", "rich", "FFmpeg (PyAV)", "PortAudio", "CUDA",
                 "torch threads"):
        assert rows[item], item
    for module in ("numpy", "librosa", "av", "websockets", "rich", "safetensors"):
        assert rows[module][0].isdigit(), (module, rows[module])  # a version number, not "?"
    for name in available_models():
        assert rows[f"model {name}"].endswith(name)  # its path


def test_runtime_commands_never_import_the_training_code_and_training_parsing_is_light() -> None:
    """`streamtag tag ...` parses without streamtag.train; a training command imports only its parser
    (streamtag.train.cli and its config), not torch, until its body runs."""
    code = ("import sys; from streamtag.cli import _command_of, TRAINING_COMMANDS, build_parser\n"
            "def parse(argv):\n"
            "    return build_parser(serve_security=False, training=_command_of(argv) in TRAINING_COMMANDS).parse_args(argv)\n"
            "def loaded():\n"
            "    return sorted(m for m in sys.modules if m.startswith('streamtag.train') or m == 'torch')\n"
            "parse(['tag', 'x.ogg']); print(loaded())\n"
            "a = parse(['train', '--data', 'folders', '--root', 'r', '--out', 'o']); print(loaded())\n"
            "assert a.epochs == 30 and a.batch_size == 32 and a.device == 'auto'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "['streamtag.train', 'streamtag.train.cli', 'streamtag.train.config']"]


def test_train_architectures_match_the_registry() -> None:
    """`train --arch` offers every registered architecture but the converted musicnn and the distilled
    musicnn_student (its front end is a frozen musicnn: `distill --frontend musicnn` makes it)."""
    from streamtag.architectures import available_architectures
    from streamtag.train.cli import ARCHITECTURES
    from streamtag.train.config import DEFAULT_ARCH_CONFIGS, STREAMING

    assert set(ARCHITECTURES) == set(available_architectures()) - {"musicnn", "musicnn_student"}
    assert set(DEFAULT_ARCH_CONFIGS) == set(STREAMING) <= set(available_architectures())


def _flags(p: argparse.ArgumentParser) -> list[tuple]:
    return sorted((tuple(a.option_strings), a.dest, repr(a.default), repr(a.type), repr(a.choices), repr(a.nargs),
                   a.required, a.help) for a in p._actions if not isinstance(a, argparse._HelpAction))


@pytest.mark.parametrize("command", ["train", "eval", "baseline", "cache", "distill"])
def test_training_flags_are_one_parser(command: str) -> None:
    """`streamtag COMMAND` and `python -m streamtag.train COMMAND` have the same flags, defaults, choices and help."""
    from streamtag.cli import TRAINING_COMMANDS
    from streamtag.train.cli import COMMANDS, build_parser

    assert TRAINING_COMMANDS == COMMANDS
    ours = _subparsers()[command]
    theirs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert _flags(ours) == _flags(theirs)
    assert ours.format_help().split("\n\n", 1)[1] == theirs.format_help().split("\n\n", 1)[1]  # past the usage


@pytest.mark.parametrize("module", ["streamtag.train", "streamtag.train.distill"])
def test_python_m_streamtag_train_is_the_training_command_line(module: str, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m streamtag.train distill --help` (and `python -m streamtag.train.distill --help`, the command the
    model cards record) show the one parser."""
    import runpy

    monkeypatch.setattr(sys, "argv", [module, *(["distill"] if module == "streamtag.train" else []), "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "usage: python -m streamtag.train distill" in out and "--time-mask-frames" in out
    assert "--warmup-steps" in out and "--batch-size" in out


def test_smoothing_choices() -> None:
    from streamtag.cli import smoothing_config
    from streamtag.errors import ConfigError

    for method in ("none", "ema", "hmm"):
        assert smoothing_config(method).method == method
    assert smoothing_config("ema").tau_seconds > 0
    with pytest.raises(ConfigError, match="--smoothing"):
        smoothing_config("median")


def test_smoothing_none_shows_the_raw_answers(capsys: pytest.CaptureFixture[str]) -> None:
    updates = {}
    for method in ("none", "ema"):
        rc, out, err = cli(capsys, "tag", str(EXAMPLES[1]), "--format", "jsonl", "--timeline", "--duration", "12",
                           "--smoothing", method)
        assert rc == 0, err
        updates[method] = [e for e in jsonl(out) if e["type"] == "update"]
        assert err == ""  # stderr is not a terminal: no progress bar, nothing extra
    assert len(updates["none"]) == len(updates["ema"]) >= 5
    assert all(u["probs"] == u["raw"] for u in updates["none"])
    assert any(u["probs"] != u["raw"] for u in updates["ema"])
    assert [u["raw"] for u in updates["none"]] == [u["raw"] for u in updates["ema"]]


# -- inputs users have ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of short clips: a.ogg, b.wav, notes.txt, sub/c.flac."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg (apt install ffmpeg) not installed")
    d = tmp_path_factory.mktemp("clips")
    (d / "sub").mkdir()
    for src, out in ((EXAMPLES[0], d / "b.wav"), (EXAMPLES[1], d / "a.ogg"), (EXAMPLES[2], d / "sub" / "c.flac")):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-t", "4", str(out)], check=True)
    (d / "notes.txt").write_text("not audio\n")
    return d


def test_tag_a_folder_walks_it_sorted(clips: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "tag", str(clips), "--format", "jsonl")
    assert rc == 0, err
    assert [e["stream"] for e in jsonl(out)] == [str(clips / "a.ogg"), str(clips / "b.wav")]
    rc, out, err = cli(capsys, "tag", str(clips), "--recursive", "--format", "jsonl")
    assert rc == 0, err
    assert [e["stream"] for e in jsonl(out)] == [str(clips / n) for n in ("a.ogg", "b.wav", "sub/c.flac")]


def test_empty_folder_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "deeper").mkdir()
    rc, _, stderr = cli(capsys, "tag", str(tmp_path))
    assert rc == 1 and "Traceback" not in stderr
    err = [line for line in stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "no audio files" in err[0] and "--recursive" in err[0]


def test_local_playlists_are_expanded(clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamtag.commands_tag import expand_inputs

    m3u = clips / "list.m3u"
    m3u.write_text("#EXTM3U\n#EXTINF:4,first\nsub/c.flac\n\n" + f"{clips / 'a.ogg'}\n")
    pls = tmp_path / "list.pls"
    pls.write_text(f"[playlist]\nNumberOfEntries=2\nFile1={clips / 'b.wav'}\nTitle1=b\nFile2={m3u}\n")
    assert [i.source for i in expand_inputs([str(pls)])] == [
        str(clips / "b.wav"), str(clips / "sub" / "c.flac"), str(clips / "a.ogg")]
    loop = tmp_path / "loop.m3u"
    loop.write_text(f"{loop}\n")
    (bad,) = expand_inputs([str(loop)])
    assert bad.error is not None and "loop" in bad.error
    hls = tmp_path / "live.m3u8"
    hls.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\nseg0.ts\n")
    assert [i.source for i in expand_inputs([str(hls)])] == [str(hls)]  # one HLS stream, not a list
    rc, out, err = cli(capsys, "tag", str(m3u), "--format", "jsonl")
    assert rc == 0, err
    assert [e["stream"] for e in jsonl(out)] == [str(clips / "sub" / "c.flac"), str(clips / "a.ogg")]


# -- progress and interrupts -----------------------------------------------------------------------------------------
def test_progress_bar_on_a_terminal(clips: Path) -> None:
    import os
    import pty
    import select

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "streamtag", "tag", str(clips), "--format", "jsonl"],
                         stdout=subprocess.PIPE, stderr=slave, cwd=REPO, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    out = p.stdout.read() if p.stdout else b""
    assert p.wait(timeout=60) == 0
    text = seen.decode("utf-8", "replace")
    assert "2/2 files" in text and "x real time" in text and "ETA" in text and "/8 s" in text
    assert [e["stream"] for e in jsonl(out.decode())] == [str(clips / "a.ogg"), str(clips / "b.wav")]  # stdout


@needs_ffmpeg
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_ctrl_c_prints_the_partial_summary_and_exits_130(sig: str, code: int) -> None:
    """Ctrl-C (or SIGTERM: a service manager's stop; SIGHUP: a closed terminal) while stdin (the second input) is
    being tagged: the first summary whole, the second partial."""
    import signal

    raw = subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "3", "-i", str(EXAMPLES[1]), "-f", "s16le",
                          "-ac", "1", "-ar", "16000", "-t", "130", "-"], check=True, capture_output=True).stdout
    from live_fixtures import hangup_default

    p = subprocess.Popen([sys.executable, "-m", "streamtag", "tag", str(EXAMPLES[2]), "-", "--raw-rate", "16000",
                          "--format", "jsonl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=REPO, preexec_fn=hangup_default)
    assert p.stdin is not None
    # stdin never ends, so it is in progress; writing 4 MB into a pipe returns only once the tagger has taken all
    # but what its bounded queue (16 blocks, about 1 MB of s16le) and the pipe hold.
    p.stdin.write(raw)
    p.stdin.flush()
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=300)
    assert p.returncode == code, err
    assert b"Traceback" not in err
    summaries = jsonl(out.decode())
    assert [s["stream"] for s in summaries] == [str(EXAMPLES[2]), "-"]
    assert "partial" not in summaries[0] and summaries[1]["partial"] is True
    written = len(raw) / 2 / 16000
    assert written - 80 < summaries[1]["duration"] <= written
    assert b"interrupted: 1 of 2 inputs tagged" in err and b"partial" in err
