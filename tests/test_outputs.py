"""`streamtag tag --segments`, `--plot`, `--format csv`: run through the real command line (streamtag.cli.main)."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest
from live_fixtures import TINY_LABELS, tiny_bundle, write_tone_wav

from streamtag.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    bundle = tiny_bundle(d / "tiny")
    wav = write_tone_wav(d / "tone.wav", seconds=12.0, sr=16000)
    return bundle, wav, d


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["tag", *args, "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_jsonl_carries_segments_that_tile_the_timeline(setup, capsys):
    bundle, wav, _ = setup
    code, out, _ = _run(capsys, str(wav), "--model", str(bundle.path), "--format", "jsonl", "--segments",
                        "--timeline")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    updates = [e for e in events if e["type"] == "update"]
    segs = [e for e in events if e["type"] == "segment"]
    assert events[-1]["type"] == "summary" and segs
    assert sum(s["hops"] for s in segs) == len(updates)
    assert segs[0]["start"] == 0 and segs[-1]["end"] == updates[-1]["t"]
    for s in segs:
        assert s["family"] in TINY_LABELS and 0 <= s["confidence"] <= 1


def test_csv_tables(setup, capsys):
    bundle, wav, _ = setup
    m = ["--model", str(bundle.path)]
    code, out, _ = _run(capsys, str(wav), str(wav), *m, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 2 and set(TINY_LABELS) <= set(rows[0])
    assert sum(float(rows[0][label]) for label in TINY_LABELS) > 0 and float(rows[0]["duration"]) == pytest.approx(12, 0.01)

    code, out, _ = _run(capsys, str(wav), *m, "--format", "csv", "--timeline")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) > 10
    code, out, _ = _run(capsys, str(wav), *m, "--format", "jsonl", "--timeline")
    updates = [e for e in map(json.loads, out.splitlines()) if e["type"] == "update"]
    assert len(rows) == len(updates)
    for r, u in zip(rows, updates):  # the CSV row is the update: its time, top genre and smoothed probabilities
        assert float(r["t"]) == u["t"] and r["genre"] == u["top"][0][0] and r["family"] == u.get("family", r["genre"])
        assert [float(r[label]) for label in TINY_LABELS] == [u["probs"][label] for label in TINY_LABELS]

    code, out, _ = _run(capsys, str(wav), *m, "--format", "csv", "--segments")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows and list(rows[0]) == ["stream", "start", "end", "family", "genre", "confidence",
                                                    "hops", "title"]
    assert float(rows[-1]["end"]) > float(rows[0]["start"])

    code, _, err = _run(capsys, str(wav), *m, "--format", "csv", "--segments", "--timeline")
    assert code == 1 and "one table" in err and err.count("\n") == 1


def test_table_lists_segments(setup, capsys):
    bundle, wav, _ = setup
    code, out, _ = _run(capsys, str(wav), "--model", str(bundle.path), "--segments")
    assert code == 0 and re.search(r"0:00\s+0:\d\d\s+\w+", out)


def test_plot_png_svg_html(setup, capsys):
    bundle, wav, d = setup
    for suffix in ("png", "svg", "html"):
        path = d / f"taggram.{suffix}"
        code, _, err = _run(capsys, str(wav), "--model", str(bundle.path), "--plot", str(path))
        assert code == 0 and path.is_file() and "taggram written" in err
        data = path.read_bytes()
        if suffix == "png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        else:
            text = data.decode()
            assert "<svg" in text
            for label in TINY_LABELS:
                assert f">{label}<" in text or f">{label} " in text or label in text
        if suffix == "html":  # one self-contained file: nothing loaded from elsewhere
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
            assert "<table id=\"segments\">" in text and "<script" not in text
    code, _, err = _run(capsys, str(wav), "--model", str(bundle.path), "--plot", str(d / "x.jpg"))
    assert code == 1 and ".png, .svg or .html" in err
    code, _, err = _run(capsys, str(wav), "--model", str(bundle.path), "--plot", str(d / "missing" / "x.png"))
    assert code == 1 and "does not exist" in err


def test_html_taggram_of_a_long_input_stays_small_and_covers_it_all(tmp_path):
    """Hours of hops: the HTML taggram averages neighbouring hops into at most MAX_HTML_COLUMNS columns."""
    import numpy as np

    from streamtag.api import result_from_updates
    from streamtag.events import GenreUpdate
    from streamtag.plot import MAX_HTML_COLUMNS, taggram

    rng = np.random.default_rng(0)
    n = 5 * MAX_HTML_COLUMNS + 7  # not a multiple of the averaging step: the remainder is a column too
    ups = []
    for i in range(n):
        g = TINY_LABELS[(i // 500) % 3]
        raw = {label: float(rng.uniform(0, 0.2)) for label in TINY_LABELS}
        raw[g] = 0.9
        ups.append(GenreUpdate(stream="long", t=(i + 1) * 0.5, top=[(g, 0.9)], probs=raw, raw=raw, model="m"))
    result = result_from_updates(ups, {"duration": n * 0.5, "mean": {}}, labels=list(TINY_LABELS), name="long",
                                 model="m")
    assert [s.family for s in result.segments][:3] == list(TINY_LABELS[:3])
    path = taggram(result, tmp_path / "long.html")
    text = path.read_text()
    cells = text.count('height="14" fill="#') - len(TINY_LABELS)  # the taggram's cells (not the family marks)
    step = -(-n // MAX_HTML_COLUMNS)  # hops averaged per column
    assert cells == -(-n // step) * len(TINY_LABELS) and -(-n // step) <= MAX_HTML_COLUMNS
    assert len(text) < 2_000_000 and text.count('class="segment"') == len(result.segments)
