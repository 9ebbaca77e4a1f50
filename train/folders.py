"""Folder-per-genre data sets (GTZAN style: ``ROOT/<genre>/<file>``) and unlabelled music folders.

Splits come from a folder of list files in the format of the fault-filtered GTZAN split
(``train_filtered.txt``, ``valid_filtered.txt``, ``test_filtered.txt``; also accepted: ``train.txt``,
``valid.txt``/``val.txt``, ``test.txt``), one path relative to ROOT per line, e.g. ``blues/blues.00012.wav``.
Without split lists every genre's files are split 80/10/10 by a stable hash of the relative path, so the
split never changes between runs or machines.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from streamtag.errors import SourceError

from .data import AUDIO_EXTENSIONS, Item, LabelledSet

__all__ = ["load_folders", "list_audio", "read_split_lists"]

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


def _hash_split(rel: str) -> str:
    h = int.from_bytes(hashlib.sha1(rel.encode()).digest()[:4], "little") % 10
    return "test" if h == 0 else "valid" if h == 1 else "train"


def load_folders(root: str | Path, splits: str | Path | None = None) -> LabelledSet:
    """Single-label data set: each sub-folder of ``root`` is a genre, its audio files (recursive) the examples."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"data folder {root} not found; give --root a folder with one sub-folder per genre")
    genres = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_of = read_split_lists(splits) if splits else None
    items: list[Item] = []
    left_out = 0
    for gi, g in enumerate(genres):
        for p in list_audio(root / g):
            rel = p.relative_to(root).as_posix()
            if split_of is not None:
                split = split_of.get(rel)
                if split is None:
                    left_out += 1
                    continue
            else:
                split = _hash_split(rel)
            items.append(Item(rel, p, split, (gi,)))
    if not items:
        raise SourceError(f"no audio files found in genre folders under {root}")
    used = sorted({it.target[0] for it in items})
    if len(used) < len(genres):  # drop genres with no file in the split lists, keep indices dense
        remap = {old: new for new, old in enumerate(used)}
        genres = [genres[i] for i in used]
        items = [Item(it.key, it.path, it.split, (remap[it.target[0]],)) for it in items]
    if split_of is not None:
        missing = len(set(split_of) - {it.key for it in items})
        if missing:
            log.warning("%d files named in the split lists are not under %s", missing, root)
    notes = {"not in split lists": left_out} if left_out else {}
    return LabelledSet(name=f"folders:{root.name}", labels=genres, multilabel=False, items=items, notes=notes)
