"""What every data set loader returns, and the one audio decoding function the training module uses.

A data set is a :class:`LabelledSet`: a vocabulary of labels, whether targets are multi-label, and a list of
:class:`Item` (a file, its split and its label indices). ``fma.py`` and ``folders.py`` build them; the
feature cache, the trainer, the evaluator and the baselines only ever see these two types.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamtag.errors import SourceError

__all__ = ["Item", "LabelledSet", "SPLITS", "AUDIO_EXTENSIONS", "decode_audio"]

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
AUDIO_EXTENSIONS = (".mp3", ".wav", ".ogg", ".flac", ".au", ".m4a", ".aac", ".opus", ".aiff", ".aif")


@dataclass(frozen=True)
class Item:
    """One audio file with its labels."""

    key: str  # unique and stable across runs (FMA: the 6-digit track id; folders: the relative path)
    path: Path
    split: str  # one of SPLITS
    target: tuple[int, ...]  # indices into LabelledSet.labels (exactly one when single-label)


@dataclass
class LabelledSet:
    name: str  # e.g. "fma_small/top", "folders:gtzan"
    labels: list[str]
    multilabel: bool
    items: list[Item]
    genre_labels: list[str] | None = None  # labels shown by default (e.g. FMA's top-level genres in "all" mode)
    notes: dict[str, int] = field(default_factory=dict)  # counts of tracks left out, by reason

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def targets(self, items: list[Item]) -> np.ndarray:
        """Multi-hot (N, n_labels) float32 when multi-label, else class indices (N,) int64."""
        if self.multilabel:
            y = np.zeros((len(items), len(self.labels)), dtype=np.float32)
            for i, it in enumerate(items):
                y[i, list(it.target)] = 1.0
            return y
        return np.array([it.target[0] for it in items], dtype=np.int64)


def decode_audio(path: str | Path, sr: int) -> np.ndarray:
    """Decode a whole file to mono float32 at ``sr`` Hz. Raises SourceError for unreadable files.

    Uses ``streamtag.sources.read_audio`` when the sources package provides it (one decoder for the engine
    and for training), else PyAV directly.
    """
    try:
        from streamtag.sources import read_audio
    except ImportError:
        return _decode_pyav(Path(path), sr)
    return np.asarray(read_audio(path, sr), dtype=np.float32).reshape(-1)


def _decode_pyav(path: Path, sr: int) -> np.ndarray:
    import av

    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SourceError(f"{path} has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
    except SourceError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise SourceError(f"cannot decode {path}: {e}") from e
    if not chunks:
        raise SourceError(f"{path} decoded to no audio")
    return np.concatenate(chunks).astype(np.float32, copy=False)
