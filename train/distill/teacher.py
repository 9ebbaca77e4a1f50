"""The distillation target provider: the teacher's probabilities on a fixed grid of windows, cached per track.

For every corpus track (``build_corpus.py``), ``CORPUS/labels/<teacher>/<track>.npz`` holds the students'
log-mel frames (``mel`` float16 (T, n_mels)) and the teacher's sigmoid outputs on its own window every
``grid_frames`` frames (``teacher`` float32 (K, n_labels)). :class:`Geometry` places a student window on that
grid: its target is the mean of the teacher windows centred inside it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamtag.errors import StreamtagError
from streamtag.frontend import logmel
from streamtag.registry import Bundle

from ..config import GRID_FRAMES
from .corpus import SAMPLE_RATE, read_manifest
from .features import student_frontend

__all__ = ["GRID_FRAMES", "Geometry", "teacher_windows", "teacher_probs", "labels_dir", "label_corpus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """Where the student windows sit on the teacher's grid (all in frames of the shared hop)."""

    grid_frames: int  # frames between teacher windows
    teacher_frames: int  # frames of one teacher window
    window_frames: int  # frames of one student window

    @property
    def n_inside(self) -> int:
        """Teacher windows that fit inside one student window."""
        return (self.window_frames - self.teacher_frames) // self.grid_frames + 1

    @property
    def offset(self) -> int:
        """Frames from a student window's start to its first teacher window (centres the teacher span)."""
        span = self.teacher_frames + (self.n_inside - 1) * self.grid_frames
        return (self.window_frames - span) // 2

    def window_targets(self, teacher: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Targets and start frames of every student window of a track.

        Args:
            teacher: (K, n_labels) teacher outputs, window k starting at frame k * grid_frames.
            n_frames: frames of the track (windows must end inside it).

        Returns:
            targets (W, n_labels) float32 and starts (W,) int64, window w covering
            frames [starts[w], starts[w] + window_frames) with target mean(teacher[k : k + n_inside]).
        """
        K = teacher.shape[0]
        ks = [
            k for k in range(K - self.n_inside + 1)
            if k * self.grid_frames - self.offset >= 0 and k * self.grid_frames - self.offset + self.window_frames <= n_frames
        ]
        if not ks:
            return np.zeros((0, teacher.shape[1]), np.float32), np.zeros(0, np.int64)
        c = np.cumsum(np.concatenate([np.zeros((1, teacher.shape[1])), teacher.astype(np.float64)]), axis=0)
        ks_a = np.asarray(ks)
        targets = (c[ks_a + self.n_inside] - c[ks_a]) / self.n_inside
        return targets.astype(np.float32), ks_a * self.grid_frames - self.offset

def teacher_windows(frames: np.ndarray, teacher_frames: int, grid_frames: int) -> np.ndarray:
    """(T, n_mels) frames -> (K, teacher_frames, n_mels) windows every grid_frames frames (a view)."""
    T = frames.shape[0]
    K = 0 if T < teacher_frames else (T - teacher_frames) // grid_frames + 1
    s0, s1 = frames.strides
    return np.lib.stride_tricks.as_strided(frames, (K, teacher_frames, frames.shape[1]), (s0 * grid_frames, s0, s1))


@torch.no_grad()
def teacher_probs(model: nn.Module, windows: np.ndarray, batch: int = 64, *,
                  derived: tuple[dict, ...] = ()) -> np.ndarray:
    """Sigmoid outputs of the teacher on (K, T, n_mels) windows -> (K, n_labels) float32; ``derived`` (the
    bundle's ``derived_labels``) appends those labels' outputs, as ModelRunner does, so the columns match the
    bundle's labels."""
    w = torch.tensor([d["weights"] for d in derived], dtype=torch.float32).T if derived else None  # (L_net, D)
    b = torch.tensor([float(d["bias"]) for d in derived], dtype=torch.float32) if derived else None
    out = []
    for i in range(0, windows.shape[0], batch):
        x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch], dtype=np.float32))
        z = model(x).float()  # (k, L_net) logits
        p = torch.sigmoid(z)
        if w is not None and b is not None:
            p = torch.cat([p, torch.sigmoid(z @ w + b)], dim=1)
        out.append(p.numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def labels_dir(corpus: Path, teacher: Bundle) -> Path:
    return corpus / "labels" / teacher.name


def label_corpus(corpus: Path, teacher: Bundle, *, grid_frames: int = GRID_FRAMES) -> Path:
    """Cache students' frames and teacher outputs for every track of the corpus (resumable)."""
    out = labels_dir(corpus, teacher)
    out.mkdir(parents=True, exist_ok=True)
    spec = student_frontend(teacher)
    meta = {
        "teacher": teacher.name,
        "teacher_frontend": teacher.frontend.to_dict(),
        "student_frontend": spec.to_dict(),
        "teacher_frames": teacher.window_frames,
        "grid_frames": grid_frames,
        "labels": list(teacher.labels),
    }
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise StreamtagError(f"{out} holds labels made with other settings; delete it to relabel")
    else:
        weights = teacher.path / "model.safetensors"
        meta["teacher_weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    tf = teacher.frontend
    if (tf.sample_rate, tf.hop_length, tf.n_fft) != (SAMPLE_RATE, spec.hop_length, spec.n_fft):
        raise StreamtagError("the label cache needs the teacher at 16 kHz with the students' framing")
    model = teacher.build_model("cpu")
    tracks = read_manifest(corpus)
    t0 = time.time()
    for i, tr in enumerate(tracks):
        dest = out / (Path(tr.file).stem + ".npz")
        if dest.is_file():
            continue
        x = np.load(corpus / tr.file)  # (N,) float32, 16 kHz
        mel = logmel(x, spec)  # (T, n_mels)
        tmel = logmel(x, tf)  # (T, n_mels) the teacher's units
        probs = teacher_probs(model, teacher_windows(tmel, teacher.window_frames, grid_frames),
                              derived=teacher.derived)  # (K, n_labels)
        tmp = dest.with_suffix(".tmp.npz")
        np.savez(tmp, mel=mel.astype(np.float16), teacher=probs.astype(np.float32))
        tmp.rename(dest)
        log.info("labelled %d/%d %s (%d windows, %.0f s elapsed)", i + 1, len(tracks), tr.id, len(probs), time.time() - t0)
    return out
