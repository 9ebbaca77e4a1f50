"""The distillation data: corpus tracks with their student-window targets, and the batches the loop reads.

:class:`TrackData` joins a track's student inputs (log-mel frames or the teacher's features, from
``features.py``) with its targets (from ``teacher.py``). :class:`TrackFeed` is the :class:`~.loop.Feed` of a
distillation run: random windows (window students) or random multi-track sequences (stateful students).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamtag.frontend import FrontendSpec
from streamtag.registry import Bundle

from ..config import TrainConfig
from ..loop import Batch
from .corpus import Track, read_manifest, track_hash
from .features import features_dir
from .teacher import Geometry, labels_dir

__all__ = ["TrackData", "load_split", "carve_validation", "segment_bounds", "window_batch", "sequence_batch", "TrackFeed"]

log = logging.getLogger(__name__)


@dataclass
class TrackData:
    track: Track
    mel: np.ndarray  # (T, n_mels) float32
    teacher: np.ndarray  # (K, n_labels) teacher outputs on the grid
    targets: np.ndarray  # (W, n_labels) student-window targets
    starts: np.ndarray  # (W,) first frame of each student window


def load_split(
    corpus: Path, teacher: Bundle, geometry: Geometry, split: str, features: bool = False
) -> list[TrackData]:
    """Tracks of one split with their targets; ``features``: the cached teacher features stand in for ``mel``."""
    d = labels_dir(corpus, teacher)
    fd = features_dir(corpus, teacher)
    out = []
    for tr in read_manifest(corpus):
        if tr.split != split:
            continue
        z = np.load(d / (Path(tr.file).stem + ".npz"))
        targets, starts = geometry.window_targets(z["teacher"], z["mel"].shape[0])
        if len(starts) == 0:
            log.warning("%s is too short for one %d-frame window; left out", tr.id, geometry.window_frames)
            continue
        x = np.load(fd / (Path(tr.file).stem + ".npy")) if features else z["mel"]
        out.append(TrackData(tr, x.astype(np.float32), z["teacher"], targets, starts))
    return out


def carve_validation(data: list[TrackData], fraction: float) -> tuple[list[TrackData], list[TrackData]]:
    """Split training tracks into (train, validation): per source, the ``fraction`` with the LARGEST SHA-1
    of their id (the held-out set took the smallest), at least one per source with 5 or more tracks."""
    by_source: dict[str, list[TrackData]] = {}
    for td in data:
        by_source.setdefault(td.track.source, []).append(td)
    val_ids: set[str] = set()
    for group in by_source.values():
        if len(group) < 5:
            continue
        group = sorted(group, key=lambda td: track_hash(td.track.id), reverse=True)
        val_ids.update(td.track.id for td in group[: max(1, int(round(fraction * len(group))))])
    return [td for td in data if td.track.id not in val_ids], [td for td in data if td.track.id in val_ids]


def window_batch(
    data: list[TrackData], geometry: Geometry, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random student windows (jittered by up to the centring margin) and their targets.

    Returns x (B, window_frames, n_mels) and y (B, n_labels)."""
    W = geometry.window_frames
    jitter = max(0, geometry.offset)
    xs, ys = [], []
    for _ in range(batch):
        td = data[int(rng.integers(len(data)))]
        w = int(rng.integers(len(td.starts)))
        s = int(td.starts[w]) + int(rng.integers(-jitter, jitter + 1))
        s = min(max(0, s), td.mel.shape[0] - W)
        xs.append(td.mel[s : s + W])
        ys.append(td.targets[w])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))



def segment_bounds(rng: np.random.Generator, frames: int, window: int) -> list[int]:
    """Where a training sequence of ``frames`` changes track: [0, cut, ..., frames], 1-3 segments (one half the
    time), every cut at least ``window`` frames from both ends (a stream that changes track, as radio does)."""
    n_seg = int(rng.choice((1, 1, 2, 3)))
    cuts = (sorted(int(c) for c in rng.choice(np.arange(window, frames - window), n_seg - 1, replace=False))
            if n_seg > 1 and frames > 3 * window else [])
    return [0, *cuts, frames]

def sequence_batch(
    data: list[TrackData], geometry: Geometry, batch: int, frames: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of ``frames`` frames joined from 1-3 random track segments, with per-frame targets.

    Returns x (B, frames, n_mels), y (B, frames, n_labels) and mask (B, frames): mask[b, t] is 1 where
    frame t is the last frame of a student window lying inside one segment; y[b, t] is that window's target.
    """
    W = geometry.window_frames
    n_mels = data[0].mel.shape[1]
    n_labels = data[0].targets.shape[1]
    x = np.zeros((batch, frames, n_mels), np.float32)
    y = np.zeros((batch, frames, n_labels), np.float32)
    mask = np.zeros((batch, frames), np.float32)
    for b in range(batch):
        bounds = segment_bounds(rng, frames, W)
        for i in range(len(bounds) - 1):
            a, e = bounds[i], bounds[i + 1]
            n = e - a
            td = data[int(rng.integers(len(data)))]
            T = td.mel.shape[0]
            if T >= n:
                s = int(rng.integers(0, T - n + 1))
                x[b, a:e] = td.mel[s : s + n]
            else:  # a short track: loop it (a repeated track, as radio does)
                reps = -(-n // T)
                x[b, a:e] = np.tile(td.mel, (reps, 1))[:n]
                s = 0
            # windows of this track lying wholly inside [s, s + min(n, T))
            avail = min(n, T)
            ok = (td.starts >= s) & (td.starts + W <= s + avail)
            ends = td.starts[ok] - s + W - 1 + a  # sequence frame of each window's last frame
            y[b, ends] = td.targets[ok]
            mask[b, ends] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)


class TrackFeed:
    """Batches of a distillation run. An "epoch" is as many batches as the tracks have student windows
    (``len(windows) // batch_size``); the batches are drawn at random, so epochs only pace validation.

    Window students: ``window_batch``. Stateful students: ``sequence_batch`` of a random length from
    ``cfg.seq_seconds`` (converted with the student front end's frame rate), per-frame targets and mask."""

    def __init__(self, data: list[TrackData], geometry: Geometry, cfg: TrainConfig, *, stateful: bool,
                 spec: FrontendSpec) -> None:
        if not data:
            raise ValueError("no training tracks")
        self.data, self.geometry, self.cfg, self.stateful = data, geometry, cfg, stateful
        self.frames_per_second = spec.sample_rate / spec.hop_length
        self.steps_per_epoch = max(1, sum(len(t.starts) for t in data) // cfg.batch_size)

    def epoch(self, index: int, rng: np.random.Generator) -> Iterator[Batch]:
        for _ in range(self.steps_per_epoch):
            if self.stateful:
                frames = int(rng.uniform(*self.cfg.seq_seconds) * self.frames_per_second)
                frames = max(frames, self.geometry.window_frames + 2)
                x, y, mask = sequence_batch(self.data, self.geometry, self.cfg.batch_size, frames, rng)
                yield Batch(x, y, mask)
            else:
                x, y = window_batch(self.data, self.geometry, self.cfg.batch_size, rng)
                yield Batch(x, y)
