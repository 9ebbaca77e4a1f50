"""The distillation feature provider: what a student reads, derived from the teacher's bundle.

Either the teacher's log-mel front end (``student_frontend``: its FrontendSpec without musicnn's float16
rounding; the frames are cached with the targets by ``teacher.label_corpus``), or the teacher's frozen front
end + mid end (``--frontend musicnn``): per-frame features cached in ``CORPUS/features/<teacher>/<track>.npy``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamtag.errors import StreamtagError
from streamtag.frontend import FrontendSpec
from streamtag.registry import Bundle

from .corpus import read_manifest

__all__ = ["student_frontend", "features_dir", "feature_corpus", "musicnn_frames"]

log = logging.getLogger(__name__)


def student_frontend(teacher: Bundle) -> FrontendSpec:
    """The students' front end: the teacher's log-mel (16 kHz, n_fft 512, hop 256, 96 mels, log10(1 + 10^4 x))
    without musicnn's float16 rounding of the mel power."""
    return FrontendSpec(**{**teacher.frontend.to_dict(), "fp16_mel": False})

def features_dir(corpus: Path, teacher: Bundle) -> Path:
    return corpus / "features" / teacher.name


def feature_corpus(corpus: Path, teacher: Bundle, *, shard: int = 0, shards: int = 1) -> Path:
    """Cache the teacher's per-frame front-end + mid-end features of every track (musicnn teachers only).

    ``CORPUS/features/<teacher>/<track>.npy``: float16 (T, channels), computed by
    :class:`~streamtag.architectures.musicnn.MusicnnFrames` from the label cache's log-mel frames with
    musicnn's padding at both ends (what the streaming extractor emits, 73 frames later). Resumable;
    ``shard``/``shards`` split the tracks between processes."""

    if teacher.architecture != "musicnn":
        raise StreamtagError(f"--frontend musicnn needs a musicnn teacher, not {teacher.architecture}")
    src = corpus / "labels" / teacher.name  # teacher.labels_dir: the log-mel frames cached with the targets
    out = features_dir(corpus, teacher)
    out.mkdir(parents=True, exist_ok=True)
    frames: Any = musicnn_frames(teacher)
    tracks = read_manifest(corpus)
    t0 = time.time()
    for i, tr in enumerate(tracks):
        if i % shards != shard:
            continue
        dest = out / (Path(tr.file).stem + ".npy")
        if dest.is_file():
            continue
        mel = np.load(src / (Path(tr.file).stem + ".npz"))["mel"].astype(np.float32)  # (T, n_mels)
        f = frames.offline(torch.from_numpy(mel[None]))[0].numpy().astype(np.float16)  # (T, channels)
        tmp = dest.with_suffix(".tmp.npy")
        np.save(tmp, f)
        tmp.rename(dest)
        log.info("features %d/%d %s (%d frames, %.0f s elapsed)", i + 1, len(tracks), tr.id, len(f), time.time() - t0)
    return out


def musicnn_frames(teacher: Bundle) -> nn.Module:
    """The teacher's front end and mid end as a streaming feature extractor, with the teacher's weights."""
    from streamtag.architectures.musicnn import MusicnnConfig, MusicnnFrames

    model = teacher.build_model("cpu")
    frames = MusicnnFrames(MusicnnConfig(**teacher.arch_config))
    frames.load_state_dict({k: v for k, v in model.state_dict().items() if k in frames.state_dict()})
    return frames.eval()
