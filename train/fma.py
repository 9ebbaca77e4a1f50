"""FMA (Free Music Archive, Defferrard et al. 2017) metadata as it ships in ``fma_metadata.zip``.

``tracks.csv`` has two header rows (pandas MultiIndex columns such as ``("track", "genre_top")`` and
``("set", "subset")``) followed by a third row naming the index (``track_id``). The list columns
``track.genres`` and ``track.genres_all`` hold Python literals (``"[21, 811]"``) parsed with
``ast.literal_eval``. ``set.subset`` is the *smallest* subset a track belongs to; subsets are nested
(small ⊂ medium ⊂ large), so "medium" selects tracks marked small or medium. ``set.split`` is FMA's own
artist-filtered split: training / validation / test.

Audio lives at ``fma_<size>/NNN/NNNNNN.mp3`` (six-digit zero-padded id, first three digits as folder).

Label modes:
    top  single-label over ``track.genre_top`` (8 classes in small, 16 in medium); tracks without one are left out.
    all  multi-label over ``track.genres_all`` (a genre and all its ancestors), vocabulary = the genres of
         genres.csv that occur in the chosen subset (up to 163), in genre_id order; the default display set
         (``genre_labels``) is the top-level genres among them.

Pure ``csv``; no pandas.
"""
from __future__ import annotations

import ast
import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from streamtag.errors import ConfigError, SourceError

from .data import Item, LabelledSet

__all__ = ["Genre", "load_genres", "read_tracks", "load_fma", "audio_path", "SUBSETS", "FMA_SPLITS"]

log = logging.getLogger(__name__)

SUBSETS = ("small", "medium", "large", "full")  # nested: each contains the ones before it
FMA_SPLITS = {"training": "train", "validation": "valid", "test": "test"}
LABEL_MODES = ("top", "all")


@dataclass(frozen=True)
class Genre:
    genre_id: int
    title: str
    parent: int  # 0 for a top-level genre
    top_level: int


def load_genres(path: str | Path) -> dict[int, Genre]:
    """genres.csv (genre_id,#tracks,parent,title,top_level) -> {genre_id: Genre}."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise SourceError(f"FMA genres file {path} not found; point --fma-metadata at the unzipped fma_metadata") from e
    try:
        genres = {
            int(r["genre_id"]): Genre(int(r["genre_id"]), r["title"], int(r["parent"]), int(r["top_level"]))
            for r in rows
        }
    except (KeyError, ValueError) as e:
        raise SourceError(f"{path} is not FMA's genres.csv (bad column {e}); re-download fma_metadata") from e
    if not genres:
        raise SourceError(f"{path} lists no genres")
    return genres


def _literal_list(text: str) -> list[int]:
    if not text.strip():
        return []
    value = ast.literal_eval(text)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"not a list: {text!r}")
    return [int(v) for v in value]


def read_tracks(path: str | Path) -> list[dict[str, object]]:
    """Rows of tracks.csv as dicts with ``track_id`` (int), ``subset``, ``split``, ``genre_top`` (str),
    ``genres`` and ``genres_all`` (lists of int). Only the columns a genre tagger needs are kept."""
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8")
    except FileNotFoundError as e:
        raise SourceError(f"FMA tracks file {path} not found; point --fma-metadata at the unzipped fma_metadata") from e
    with f:
        reader = csv.reader(f)
        try:
            top, sub = next(reader), next(reader)
        except StopIteration as e:
            raise SourceError(f"{path} is empty; re-download fma_metadata") from e
        # forward-fill is not needed: FMA writes every top-level name, but tolerate blanks
        names: list[tuple[str, str]] = []
        last = ""
        for a, b in zip(top, sub):
            last = a or last
            names.append((last, b))
        col = {name: i for i, name in enumerate(names)}
        wanted = {
            "subset": ("set", "subset"),
            "split": ("set", "split"),
            "genre_top": ("track", "genre_top"),
            "genres": ("track", "genres"),
            "genres_all": ("track", "genres_all"),
        }
        missing = [".".join(v) for v in wanted.values() if v not in col]
        if missing:
            raise SourceError(
                f"{path} lacks the columns {missing}: not FMA's tracks.csv (two header rows, e.g. set/subset)"
            )
        rows: list[dict[str, object]] = []
        for line_no, r in enumerate(reader, start=3):
            if not r or (r[0] == "track_id" and not any(r[1:])):  # the index-name row
                continue
            try:
                row: dict[str, object] = {"track_id": int(r[0])}
                for key, c in wanted.items():
                    v = r[col[c]] if col[c] < len(r) else ""
                    row[key] = _literal_list(v) if key in ("genres", "genres_all") else v
            except (ValueError, SyntaxError) as e:
                raise SourceError(f"{path}:{line_no}: cannot parse track row ({e})") from e
            rows.append(row)
    return rows


def audio_path(audio_dir: Path, track_id: int) -> Path:
    """fma_<size>/NNN/NNNNNN.mp3"""
    tid = f"{track_id:06d}"
    return audio_dir / tid[:3] / f"{tid}.mp3"


def _resolve_audio_dir(audio: Path, subset: str) -> Path:
    """Accept the fma_<size> folder itself or its parent."""
    if (audio / f"fma_{subset}").is_dir():
        return audio / f"fma_{subset}"
    if not audio.is_dir():
        raise SourceError(f"FMA audio folder {audio} not found; give --audio the unzipped fma_{subset} folder")
    return audio


def load_fma(metadata_dir: str | Path, audio_dir: str | Path, *, subset: str = "small", labels: str = "top") -> LabelledSet:
    """The FMA tracks of ``subset`` whose audio file exists, labelled by ``labels`` mode, with FMA's split."""
    if subset not in SUBSETS:
        raise ConfigError(f"unknown FMA subset {subset!r}; use one of {', '.join(SUBSETS)}")
    if labels not in LABEL_MODES:
        raise ConfigError(f"unknown label mode {labels!r}; use 'top' (genre_top) or 'all' (genres_all)")
    meta = Path(metadata_dir)
    if not meta.is_dir():
        raise SourceError(f"FMA metadata folder {meta} not found; unzip fma_metadata.zip and pass its folder")
    genres = load_genres(meta / "genres.csv")
    rows = read_tracks(meta / "tracks.csv")
    audio = _resolve_audio_dir(Path(audio_dir), subset)
    allowed = set(SUBSETS[: SUBSETS.index(subset) + 1]) if subset != "full" else None

    notes: Counter[str] = Counter()
    chosen: list[tuple[dict[str, object], Path]] = []
    for row in rows:
        if allowed is not None and row["subset"] not in allowed:
            continue
        split = FMA_SPLITS.get(str(row["split"]))
        if split is None:
            notes["no split"] += 1
            continue
        if labels == "top" and not row["genre_top"]:
            notes["no genre_top"] += 1
            continue
        if labels == "all" and not row["genres_all"]:
            notes["no genres"] += 1
            continue
        p = audio_path(audio, int(str(row["track_id"])))
        if not p.is_file():
            notes["audio file missing"] += 1
            continue
        chosen.append((row, p))
    if not chosen:
        raise SourceError(
            f"no FMA audio found for subset {subset!r} under {audio} (expected files like {audio_path(audio, 2)}); "
            "check --audio and --subset"
        )

    if labels == "top":
        vocab = sorted({str(r["genre_top"]) for r, _ in chosen})
        index = {g: i for i, g in enumerate(vocab)}
        items = [
            Item(f"{r['track_id']:06d}", p, FMA_SPLITS[str(r["split"])], (index[str(r["genre_top"])],))
            for r, p in chosen
        ]
        genre_labels = None
    else:
        unknown = {g for r, _ in chosen for g in r["genres_all"] if g not in genres}  # type: ignore[attr-defined]
        if unknown:
            log.warning("tracks.csv uses genre ids missing from genres.csv: %s (ignored)", sorted(unknown)[:10])
        present = sorted({g for r, _ in chosen for g in r["genres_all"] if g in genres})  # type: ignore[attr-defined]
        vocab = [genres[g].title for g in present]
        index_id = {g: i for i, g in enumerate(present)}
        items = [
            Item(
                f"{r['track_id']:06d}", p, FMA_SPLITS[str(r["split"])],
                tuple(sorted(index_id[g] for g in r["genres_all"] if g in index_id)),  # type: ignore[attr-defined]
            )
            for r, p in chosen
        ]
        genre_labels = [genres[g].title for g in present if genres[g].parent == 0] or None
    for reason, n in sorted(notes.items()):
        log.warning("FMA %s: left out %d tracks (%s)", subset, n, reason)
    return LabelledSet(
        name=f"fma_{subset}/{labels}", labels=vocab, multilabel=labels == "all", items=items,
        genre_labels=genre_labels, notes=dict(notes),
    )
