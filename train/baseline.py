"""Classical baselines: summary audio features + scikit-learn classifiers (the fma_small "ML vs CNN" comparison).

Per clip (decoded at 22.05 kHz like FMA's own features; the 30 s FMA clip or the whole file):
log-mel band means and standard deviations (64 bands), MFCC (20) mean/std, spectral centroid, bandwidth,
roll-off, flatness, zero-crossing rate and RMS mean/std, spectral contrast (7 bands) mean/std, chroma (12) mean.
Classifiers (each StandardScaler + model): logistic regression, RBF SVC, k-nearest neighbours, random forest,
fitted on the training split and scored (accuracy, macro F1) on the validation and test splits.
Single-label data only (FMA ``--labels top`` or genre folders).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamtag.errors import ConfigError, StreamtagError

from .data import LabelledSet, decode_audio

__all__ = ["SR", "clip_features", "compute_features", "run_baselines", "CLASSIFIERS"]

log = logging.getLogger(__name__)

SR = 22050  # Hz
CLASSIFIERS = ("logreg", "svm", "knn", "forest")


def clip_features(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """(N,) mono audio -> (D,) float32 summary features."""
    import librosa

    if y.shape[0] < 2048:
        y = np.pad(y, (0, 2048 - y.shape[0]))
    S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512)) ** 2  # (1025, T)
    mel = librosa.power_to_db(librosa.feature.melspectrogram(S=S, sr=sr, n_mels=64))  # (64, T)
    mfcc = librosa.feature.mfcc(S=mel, n_mfcc=20)  # (20, T)
    mag = np.sqrt(S)
    frame = [
        librosa.feature.spectral_centroid(S=mag, sr=sr),
        librosa.feature.spectral_bandwidth(S=mag, sr=sr),
        librosa.feature.spectral_rolloff(S=mag, sr=sr),
        librosa.feature.spectral_flatness(S=mag),
        librosa.feature.zero_crossing_rate(y, frame_length=2048, hop_length=512),
        librosa.feature.rms(S=mag, frame_length=2048),
    ]
    T = min(f.shape[1] for f in frame)
    frame_feats = np.concatenate([f[:, :T] for f in frame])  # (6, T)
    contrast = librosa.feature.spectral_contrast(S=mag, sr=sr)  # (7, T)
    chroma = librosa.feature.chroma_stft(S=S, sr=sr)  # (12, T)
    parts = [mel.mean(1), mel.std(1), mfcc.mean(1), mfcc.std(1), frame_feats.mean(1), frame_feats.std(1),
             contrast.mean(1), contrast.std(1), chroma.mean(1)]
    return np.concatenate(parts).astype(np.float32)


def _job(args: tuple[str, str]) -> tuple[str, np.ndarray | None, str]:
    key, path = args
    try:
        return key, clip_features(decode_audio(path, SR)), ""
    except StreamtagError as e:
        return key, None, str(e)
    except Exception as e:  # noqa: BLE001 - report and skip any unreadable file
        return key, None, f"{type(e).__name__}: {e}"


def _init() -> None:
    import torch

    torch.set_num_threads(1)


def compute_features(ds: LabelledSet, out: Path, *, workers: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """{key: features} for every item (cached in ``out/features.npz``) and {key: reason} for skipped files."""
    from tqdm import tqdm

    path = out / "features.npz"
    feats: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            feats = {str(k): v for k, v in zip(z["keys"], z["feats"])}
    if (out / "skipped.json").is_file():
        skipped = json.loads((out / "skipped.json").read_text())
    jobs = [(it.key, str(it.path)) for it in ds.items if it.key not in feats and it.key not in skipped]
    bar = tqdm(total=len(jobs), desc="baseline features", disable=not progress or not jobs, dynamic_ncols=True)
    if workers > 0 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init) as pool:
            results = []
            for r in pool.imap_unordered(_job, jobs):
                results.append(r)
                bar.update(1)
    else:
        results = []
        for j in jobs:
            results.append(_job(j))
            bar.update(1)
    bar.close()
    for key, f, reason in results:
        if f is None:
            skipped[key] = reason
        else:
            feats[key] = f
    if jobs:
        keys = sorted(feats)
        np.savez(path, keys=np.array(keys), feats=np.stack([feats[k] for k in keys]))
        (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
    return feats, skipped


def _make(name: str, n_train: int, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    model = {
        "logreg": lambda: LogisticRegression(max_iter=2000, C=1.0),
        "svm": lambda: SVC(kernel="rbf", C=10.0, gamma="scale"),
        "knn": lambda: KNeighborsClassifier(n_neighbors=min(10, max(1, n_train // 4))),
        "forest": lambda: RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1),
    }[name]()
    return make_pipeline(StandardScaler(), model)


def run_baselines(ds: LabelledSet, out_dir: str | Path, *, classifiers: tuple[str, ...] = CLASSIFIERS,
                  workers: int = 0, progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Fit each classifier on the training split; write and return accuracy / macro F1 on valid and test."""
    from sklearn.metrics import accuracy_score, f1_score

    if ds.multilabel:
        raise ConfigError("baselines need single-label data: use --labels top or genre folders")
    bad = [c for c in classifiers if c not in CLASSIFIERS]
    if bad:
        raise ConfigError(f"unknown classifiers {bad}; choose from {', '.join(CLASSIFIERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    feats, skipped = compute_features(ds, out, workers=workers, progress=progress)

    def xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        items = [it for it in ds.split(split) if it.key in feats]
        if not items:
            return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
        return np.stack([feats[it.key] for it in items]), ds.targets(items)

    x_tr, y_tr = xy("train")
    if len(np.unique(y_tr)) < 2:
        raise ConfigError("the training split needs at least two genres with readable audio")
    report: dict[str, Any] = {"data": ds.name, "labels": ds.labels, "n_features": int(x_tr.shape[1]),
                              "n_train": int(len(y_tr)), "skipped": skipped, "results": {}}
    for name in classifiers:
        clf = _make(name, len(y_tr), seed).fit(x_tr, y_tr)
        res: dict[str, Any] = {}
        for split in ("valid", "test"):
            x, y = xy(split)
            if len(y):
                pred = clf.predict(x)
                res[split] = {"accuracy": float(accuracy_score(y, pred)),
                              "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
                              "n": int(len(y))}
        report["results"][name] = res
        log.info("baseline %s: %s", name, res)
    report["seconds"] = time.monotonic() - t0
    (out / "baseline.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
