"""`streamtag tag` / `models` end to end as a user runs them: real decoding, the shipped default model."""
from __future__ import annotations

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


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_models_lists_the_default() -> None:
    r = run("models")
    assert r.returncode == 0, r.stderr
    assert "musicnn-msd" in r.stdout and "musicnn-mtt" in r.stdout


def test_unknown_model_is_one_line_listing_valid_names() -> None:
    r = run("tag", str(EXAMPLES[0]), "--model", "no-such-model")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "no-such-model" in err[0] and "musicnn-msd" in err[0]


@pytest.fixture(scope="module")
def examples_jsonl() -> list[dict]:
    """One run over the three example clips (tagging is the expensive part; several tests read it)."""
    r = run("tag", *map(str, EXAMPLES), "--format", "jsonl", "--timeline", "--hop", "1.0")
    assert r.returncode == 0, r.stderr
    return jsonl(r.stdout)


def test_tag_examples_summary_and_timeline(examples_jsonl: list[dict]) -> None:
    events = examples_jsonl
    summaries = [e for e in events if e["type"] == "summary"]
    assert [s["stream"] for s in summaries] == [str(p) for p in EXAMPLES]
    for s in summaries:
        assert s["model"] == "musicnn-msd" and s["duration"] > 40
        assert len(s["mean"]) == 50  # every label's mean raw probability
        assert len(s["top"]) == 5 and s["top"][0][1] >= s["top"][-1][1]
    updates = [e for e in events if e["type"] == "update" and e["stream"] == str(EXAMPLES[0])]
    dur = summaries[0]["duration"]
    assert len(updates) == pytest.approx(dur - 3.0, abs=2)  # one per 1 s hop after the first 3 s window
    ts = [u["t"] for u in updates]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    for u in updates[:3]:
        assert {"type", "stream", "t", "wall", "top", "probs", "raw", "model"} <= set(u)
    # the summary's mean is the mean of the per-hop raw probabilities
    for label in ("jazz", "rock", "folk"):
        mean_raw = sum(u["raw"][label] for u in updates) / len(updates)
        assert summaries[0]["mean"][label] == pytest.approx(mean_raw, abs=2e-4)


def test_genres_are_plausible_for_the_examples(examples_jsonl: list[dict]) -> None:
    """Not a hard-coded answer: each clip's top genres must fit its music."""
    tops = {Path(e["stream"]).stem: [l for l, _ in e["top"][:3]] for e in examples_jsonl if e["type"] == "summary"}
    assert "jazz" in tops["kevin-macleod-vibe-ace"]
    assert "folk" in tops["karissa-hobbs-lets-go-fishin"]
    assert tops["brahms-hungarian-dance-5"][0] not in {"rock", "metal", "punk", "Hip-Hop", "hard rock", "House"}


def test_all_tags_shows_fifty(tmp_path: Path) -> None:
    r = run("tag", str(EXAMPLES[2]), "--format", "jsonl", "--all-tags", "--top", "50", "--duration", "8")
    s = jsonl(r.stdout)[-1]
    assert len(s["top"]) == 50 and "female vocalists" in dict(s["top"])


def test_table_output_names_file_and_genres() -> None:
    r = run("tag", str(EXAMPLES[1]), "--duration", "10")
    assert r.returncode == 0, r.stderr
    assert EXAMPLES[1].name in r.stdout and "genre" in r.stdout


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


def test_hop_too_small_is_a_clear_error() -> None:
    r = run("tag", str(EXAMPLES[0]), "--hop", "0.1", "--duration", "5")
    assert r.returncode != 0 and "0.25" in r.stderr and "Traceback" not in r.stderr


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
