"""A mini FMA on disk, in FMA's exact layout, for the training tests.

``make_mini_fma(root)`` writes::

    root/fma_metadata/tracks.csv   two header rows + the "track_id" index row, FMA's 52 columns
    root/fma_metadata/genres.csv   the real genres.csv from ../shared when present, else an embedded subset
    root/fma_small/NNN/NNNNNN.mp3  6 s mono MP3 clips (real excerpts from ../shared/audio when present,
                                   else synthesized tones with a distinct timbre per genre)

Four top-level genres (Classical, Electronic, Folk, Jazz), 8 "small" tracks each (5 training, 1 validation,
2 test), plus 2 "medium" and 1 "large" track that the small subset must leave out, and one deliberately
broken MP3 in the training split that the feature cache must skip and report.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SR = 22050  # Hz of the written MP3s
CLIP_SECONDS = 6.0

# FMA's tracks.csv columns, in file order: (top-level, sub-level)
TRACKS_COLUMNS: list[tuple[str, str]] = (
    [("album", c) for c in (
        "comments", "date_created", "date_released", "engineer", "favorites", "id", "information", "listens",
        "producer", "tags", "title", "tracks", "type")]
    + [("artist", c) for c in (
        "active_year_begin", "active_year_end", "associated_labels", "bio", "comments", "date_created",
        "favorites", "id", "latitude", "location", "longitude", "members", "name", "related_projects", "tags",
        "website", "wikipedia_page")]
    + [("set", "split"), ("set", "subset")]
    + [("track", c) for c in (
        "bit_rate", "comments", "composer", "date_created", "date_recorded", "duration", "favorites",
        "genre_top", "genres", "genres_all", "information", "interest", "language_code", "license", "listens",
        "lyricist", "number", "publisher", "tags", "title")]
)

# top-level genre -> (genre_id, sub-genre ids, ../shared/audio sources)
GENRES = {
    "Classical": (5, [187], ["brahms-hungarian-dance-5.ogg", "kevin-macleod-sugar-plum-fairy.ogg"]),
    "Electronic": (15, [181, 42], ["bensound-dubstep.mp3", "admiralbob77-choice-drum-bass.ogg"]),
    "Folk": (17, [103], ["karissa-hobbs-lets-go-fishin.ogg", "bensound-cute.mp3"]),
    "Jazz": (4, [74], ["fats-waller-aint-misbehavin.ogg", "kevin-macleod-vibe-ace.ogg"]),
}
_EMBEDDED_GENRES = """genre_id,#tracks,parent,title,top_level
4,4126,0,Jazz,4
5,4106,0,Classical,5
15,34413,0,Electronic,15
17,12706,0,Folk,17
42,5723,15,Ambient Electronic,15
74,1531,4,Free-Jazz,4
103,4162,17,Singer-Songwriter,17
181,2140,15,Techno,15
187,292,5,20th Century Classical,5
"""


@dataclass(frozen=True)
class MiniFMA:
    root: Path
    metadata: Path  # fma_metadata/
    audio: Path  # fma_small/
    n_small: int  # tracks in the small subset (including the broken one)
    broken: tuple[str, ...]  # keys (6-digit ids) of deliberately broken files
    real_audio: bool  # True when the clips are excerpts of ../shared/audio


def _synth(genre: str, seed: int, n: int) -> np.ndarray:
    """A music-like tone sequence with a timbre that identifies the genre."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    out = np.zeros(n, dtype=np.float64)
    note_len = {"Classical": 0.6, "Electronic": 0.125, "Folk": 0.3, "Jazz": 0.25}[genre]
    base = {"Classical": 220.0, "Electronic": 55.0, "Folk": 196.0, "Jazz": 146.8}[genre]
    for start in np.arange(0.0, n / SR, note_len):
        f = base * 2 ** (rng.integers(0, 12) / 12)
        m = (t >= start) & (t < start + note_len)
        tt = t[m] - start
        if genre == "Classical":  # bowed strings: many harmonics, slow attack, vibrato
            ph = 2 * np.pi * f * tt + 0.3 * np.sin(2 * np.pi * 5 * tt)
            sig = sum(np.sin(k * ph) / k for k in range(1, 8)) * np.minimum(tt / 0.1, 1.0)
        elif genre == "Electronic":  # saw bass + kick + noise hat
            sig = 2 * ((f * tt) % 1.0) - 1 + np.sin(2 * np.pi * 50 * tt) * np.exp(-tt * 30) * 2
            sig = sig + rng.normal(0, 0.3, tt.shape) * np.exp(-tt * 80)
        elif genre == "Folk":  # plucked string: decaying harmonics
            sig = sum(np.sin(2 * np.pi * k * f * tt) * 0.6 ** k for k in range(1, 6)) * np.exp(-tt * 6)
        else:  # Jazz: soft sine chords with swing and brush noise
            sig = sum(np.sin(2 * np.pi * f * r * tt) for r in (1.0, 1.26, 1.5, 1.78)) * np.exp(-tt * 3)
            sig = sig + rng.normal(0, 0.05, tt.shape)
        out[m] += sig
    out /= max(1e-9, np.abs(out).max())
    return (0.5 * out).astype(np.float32)


@lru_cache(maxsize=8)
def _decoded(path: Path) -> np.ndarray:
    from streamtag.train.data import decode_audio

    return decode_audio(path, SR)


def _excerpt(path: Path, seed: int, n: int) -> np.ndarray:
    x = _decoded(path)
    if x.shape[0] <= n:
        x = np.tile(x, n // max(1, x.shape[0]) + 1)
    start = (seed * 7919) % (x.shape[0] - n)
    return x[start : start + n]


def _write_mp3(samples: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-f", "f32le", "-ar", str(SR), "-ac", "1", "-i", "-",
             "-c:a", "libmp3lame", "-b:a", "64k", "-compression_level", "9", str(path)],
            input=samples.astype("<f4").tobytes(), check=True, timeout=60,
        )
        return
    import av  # PyAV's bundled FFmpeg

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp3", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = SR
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def make_mini_fma(root: str | Path, shared: Path | None = None) -> MiniFMA:
    root = Path(root)
    meta = root / "fma_metadata"
    audio = root / "fma_small"
    meta.mkdir(parents=True, exist_ok=True)
    shared_genres = shared / "data" / "fma_metadata" / "genres.csv" if shared else None
    if shared_genres and shared_genres.is_file():
        shutil.copyfile(shared_genres, meta / "genres.csv")
    else:
        (meta / "genres.csv").write_text(_EMBEDDED_GENRES)
    audio_src = shared / "audio" if shared else None
    real = bool(audio_src and all((audio_src / s).is_file() for g in GENRES.values() for s in g[2]))

    n = int(CLIP_SECONDS * SR)
    rows: list[list[str]] = []
    broken: list[str] = []
    n_small = 0
    tid = 2
    for gi, (genre, (gid, subs, sources)) in enumerate(GENRES.items()):
        plan = ["training"] * 5 + ["validation"] + ["test"] * 2
        subsets = ["small"] * 8 + ["medium"] * (2 if gi < 2 else 0) + (["large"] if gi == 3 else [])
        plan += ["training"] * (len(subsets) - 8)
        for k, (split, subset) in enumerate(zip(plan, subsets)):
            sub = subs[k % len(subs)]
            genres_list = [sub]
            genres_all = sorted({gid, sub})
            path = audio / f"{tid:06d}"[:3] / f"{tid:06d}.mp3"
            if subset == "small":
                n_small += 1
            if gi == 0 and k == 1:  # a broken file in the training split
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(7, 250)) * 40)
                broken.append(f"{tid:06d}")
            elif subset == "small":  # medium/large audio is not in fma_small, as in the real archives
                if real:
                    samples = _excerpt(audio_src / sources[k % len(sources)], tid, n)  # type: ignore[operator]
                else:
                    samples = _synth(genre, tid, n)
                _write_mp3(samples, path)
            values = {
                ("set", "split"): split, ("set", "subset"): subset,
                ("track", "genre_top"): genre, ("track", "genres"): str(genres_list),
                ("track", "genres_all"): str(genres_all), ("track", "title"): f"Track {tid}, with a comma",
                ("track", "duration"): str(int(CLIP_SECONDS)), ("track", "bit_rate"): "64000",
                ("track", "tags"): "[]", ("album", "tags"): "[]", ("artist", "tags"): "[]",
                ("album", "id"): str(100 + gi), ("artist", "id"): str(200 + gi),
                ("artist", "name"): f"Artist {gi}", ("track", "license"): "Attribution",
                ("track", "date_created"): "2008-11-26 01:48:12",
            }
            rows.append([str(tid)] + [values.get(c, "") for c in TRACKS_COLUMNS])
            tid += 3
    with (meta / "tracks.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([""] + [a for a, _ in TRACKS_COLUMNS])
        w.writerow([""] + [b for _, b in TRACKS_COLUMNS])
        w.writerow(["track_id"] + [""] * len(TRACKS_COLUMNS))
        w.writerows(rows)
    return MiniFMA(root, meta, audio, n_small, tuple(broken), real)


def shared_or_none() -> Path | None:
    env = os.environ.get("STREAMTAG_SHARED")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return p if (p / "README.md").is_file() else None
