"""Folder-per-genre data sets (GTZAN style: ``ROOT/<genre>/<file>``) and unlabelled music folders.

Splits come from a folder of list files in the format of the fault-filtered GTZAN split
(``train_filtered.txt``, ``valid_filtered.txt``, ``test_filtered.txt``; also accepted: ``train.txt``,
``valid.txt``/``val.txt``, ``test.txt``), one path relative to ROOT per line, e.g. ``blues/blues.00012.wav``.
Without split lists the split is stratified: each genre's files, ordered by a stable hash of their relative
path, give 10 % (at least one) to the test split, 10 % (at least one) to validation and the rest to
training, so no genre is missing from any split and the split never changes between runs or machines
(adding files to a genre can move that genre's files between splits). A genre with fewer than
``MIN_CLIPS_PER_GENRE`` files is refused with a ConfigError that says so.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from streamtag.errors import ConfigError, SourceError

from .data import AUDIO_EXTENSIONS, Item, LabelledSet

__all__ = ["load_folders", "list_audio", "read_split_lists", "stratified_split", "MIN_CLIPS_PER_GENRE"]

log = logging.getLogger(__name__)

_SPLIT_FILES = {
    "train": ("train_filtered.txt", "train.txt"),
    "valid": ("valid_filtered.txt", "valid.txt", "val.txt"),
    "test": ("test_filtered.txt", "test.txt"),
}


def list_audio(root: str | Path) -> list[Path]:
    """Every audio file under ``root`` (recursive, sorted), for unlabelled corpora."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"music folder {root} not found")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def read_split_lists(splits_dir: str | Path) -> dict[str, str]:
    """{relative path: split} from a folder of split list files."""
    d = Path(splits_dir)
    out: dict[str, str] = {}
    for split, names in _SPLIT_FILES.items():
        f = next((d / n for n in names if (d / n).is_file()), None)
        if f is None:
            raise SourceError(f"split folder {d} has no {names[0]} (or {', '.join(names[1:])})")
        for line in f.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out[line] = split
    return out


MIN_CLIPS_PER_GENRE = 3  # one each for training, validation and test
HOLDOUT_FRACTION = 0.1  # of each genre, for validation and again for test


def _hash(rel: str) -> bytes:
    return hashlib.sha1(rel.encode()).digest()


def stratified_split(files_by_genre: dict[str, list[str]]) -> dict[str, str]:
    """{relative path: split} with every genre in every split: per genre, in hash order, the first
    max(1, round(10 %)) files go to test, the next max(1, round(10 %)) to valid, the rest to train."""
    short = {g: len(f) for g, f in files_by_genre.items() if len(f) < MIN_CLIPS_PER_GENRE}
    if short:
        listed = ", ".join(f"{g!r} has {n}" for g, n in sorted(short.items()))
        raise ConfigError(f"too few clips for a stratified split: {listed}; each genre needs at least "
                          f"{MIN_CLIPS_PER_GENRE} (1 train, 1 validation, 1 test): add clips, drop the genre's "
                          "folder, or give --splits")
    out: dict[str, str] = {}
    for files in files_by_genre.values():
        order = sorted(files, key=_hash)
        n_hold = max(1, int(round(HOLDOUT_FRACTION * len(order))))
        for i, rel in enumerate(order):
            out[rel] = "test" if i < n_hold else "valid" if i < 2 * n_hold else "train"
    return out


def load_folders(root: str | Path, splits: str | Path | None = None) -> LabelledSet:
    """Single-label data set: each sub-folder of ``root`` is a genre, its audio files (recursive) the examples."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"data folder {root} not found; give --root a folder with one sub-folder per genre")
    genres = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {g: [p.relative_to(root).as_posix() for p in list_audio(root / g)] for g in genres}
    if not any(files.values()):
        raise SourceError(f"no audio files found in genre folders under {root}")
    genres = [g for g in genres if files[g]]  # folders without audio are not genres
    split_of = read_split_lists(splits) if splits else stratified_split({g: files[g] for g in genres})
    items: list[Item] = []
    left_out = 0
    for gi, g in enumerate(genres):
        for rel in files[g]:
            split = split_of.get(rel)
            if split is None:
                left_out += 1
                continue
            items.append(Item(rel, root / rel, split, (gi,)))
    if not items:
        raise SourceError(f"none of the files named in the split lists {splits} is under {root}")
    used = sorted({it.target[0] for it in items})
    if len(used) < len(genres):  # drop genres with no file in the split lists, keep indices dense
        remap = {old: new for new, old in enumerate(used)}
        genres = [genres[i] for i in used]
        items = [Item(it.key, it.path, it.split, (remap[it.target[0]],)) for it in items]
    if splits:
        missing = len(set(split_of) - {it.key for it in items})
        if missing:
            log.warning("%d files named in the split lists are not under %s", missing, root)
        if left_out:
            log.warning("left out %d files under %s that no split list names", left_out, root)
        if not any(it.split == "valid" for it in items):
            raise ConfigError(f"the split lists in {splits} put no file under {root} in the validation split; "
                              "list some in valid_filtered.txt (or valid.txt)")
        absent = [g for gi, g in enumerate(genres) if not any(it.split == "train" and it.target == (gi,) for it in items)]
        if absent:
            log.warning("genres with no training file in the split lists: %s", ", ".join(absent))
    notes = {"not in split lists": left_out} if left_out else {}
    return LabelledSet(name=f"folders:{root.name}", labels=genres, multilabel=False, items=items, notes=notes)
