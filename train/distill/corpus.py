"""The distillation corpus on disk: what ``streamtag distill`` reads, whoever wrote it.

A corpus is a folder::

    CORPUS/corpus.jsonl        one Track per line (JSON of the dataclass below)
    CORPUS/audio/<hash>.npy    each track's audio: mono float32 at SAMPLE_RATE, its first ``seconds``
    CORPUS/corpus_note.txt     optional: a sentence about the corpus for the model card

Whole tracks are either "train" or "eval" (held out). research/build_corpus.py builds one from Debian's
game-music packages and ../shared/audio; research/extend_corpus.py lengthens one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["SAMPLE_RATE", "MANIFEST", "Track", "read_manifest", "write_manifest", "summary", "track_hash"]

SAMPLE_RATE = 16000  # Hz, the rate of the stored audio (the students' and the teacher's front-end rate)
MANIFEST = "corpus.jsonl"


@dataclass
class Track:
    id: str  # "<source>/<path>": unique and stable
    source: str  # Debian package name, or "shared"
    path: str  # path inside the package (or file name in ../shared/audio); "x.pk3!member" for archive members
    licence: str
    licence_file: str
    duration: float  # seconds, whole file
    seconds: float  # seconds kept in the corpus (the first ones)
    file: str  # corpus-relative path of the stored 16 kHz float32 .npy
    split: str = "train"  # "train" or "eval"
    eval_only: bool = False  # its licence does not allow training a shipped model on it: always "eval"


def track_hash(text: str) -> str:
    """SHA-1 hex digest of ``text``: the stable order that decides held-out and validation tracks."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def read_manifest(corpus: Path) -> list[Track]:
    with open(corpus / MANIFEST) as f:
        return [Track(**json.loads(line)) for line in f if line.strip()]


def write_manifest(corpus: Path, tracks: list[Track]) -> Path:
    path = corpus / MANIFEST
    with open(path, "w") as f:
        for t in tracks:
            f.write(json.dumps(asdict(t)) + "\n")
    return path


def summary(tracks: list[Track]) -> str:
    """A Markdown table: per source, tracks and minutes per split, and licences."""
    rows = ["| source | train tracks | eval tracks | minutes (train / eval) | licences |", "| --- | --- | --- | --- | --- |"]
    for source in sorted({t.source for t in tracks}):
        g = [t for t in tracks if t.source == source]
        tr = [t for t in g if t.split == "train"]
        ev = [t for t in g if t.split == "eval"]
        lic = ", ".join(sorted({t.licence for t in g}))
        rows.append(
            f"| {source} | {len(tr)} | {len(ev)} | {sum(t.seconds for t in tr) / 60:.1f} / "
            f"{sum(t.seconds for t in ev) / 60:.1f} | {lic} |"
        )
    tr_min = sum(t.seconds for t in tracks if t.split == "train") / 60
    ev_min = sum(t.seconds for t in tracks if t.split == "eval") / 60
    n_tr = sum(t.split == "train" for t in tracks)
    rows.append(f"| **total** | {n_tr} | {len(tracks) - n_tr} | {tr_min:.1f} / {ev_min:.1f} | |")
    return "\n".join(rows)
