"""Evaluation of a bundle on a labelled split: crop-averaged predictions, metrics, JSON report and plots.

Metrics (scikit-learn):

multi-label (sigmoid bundles)
    ``micro_pr_auc`` / ``macro_pr_auc``   average_precision_score, average="micro" / "macro"
    ``micro_roc_auc`` / ``macro_roc_auc`` roc_auc_score, average="micro" / "macro"
    ``seed_pr_auc``                       the seed's variant: micro PR-AUC over the labels that occur in the
                                          evaluated split only (labels with no positive example are dropped
                                          before averaging; they would add only negatives to the micro pool)
    Macro averages are over the labels that have at least one positive (PR) / both classes (ROC) in the split,
    because the metric is undefined for the others; ``n_labels_scored`` says how many that was.
single-label (softmax bundles)
    ``accuracy``, ``macro_f1`` (f1_score average="macro"), ``confusion`` (rows: true, columns: predicted).

Each metric is reported without test-time averaging (``crops_1``: the centre window) and with it
(``crops_N``: the mean probability of N windows spread evenly over the clip).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["crop_starts", "windows", "predict", "metrics", "evaluate_bundle", "write_plots", "headline"]

log = logging.getLogger(__name__)


def crop_starts(n_frames: int, window: int, crops: int) -> list[int]:
    """Start frames of ``crops`` windows spread evenly over a clip (one crop: the centre window)."""
    span = max(0, n_frames - window)
    if crops <= 1:
        return [span // 2]
    return [int(round(i * span / (crops - 1))) for i in range(crops)]


def fit_length(frames: np.ndarray, length: int, start: int = 0) -> np.ndarray:
    """``length`` frames from ``start``; clips shorter than ``length`` are repeated (wrap padding)."""
    if frames.shape[0] >= length:
        return frames[start : start + length]
    return np.pad(frames, ((0, length - frames.shape[0]), (0, 0)), mode="wrap")


def windows(frames: np.ndarray, window: int, crops: int) -> np.ndarray:
    """(T, n_mels) -> (crops, window, n_mels) float32."""
    return np.stack([fit_length(frames, window, s) for s in crop_starts(frames.shape[0], window, crops)]).astype(
        np.float32
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    clips: Sequence[np.ndarray],
    *,
    window_frames: int,
    crops: int,
    activation: str,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """Mean probability over ``crops`` windows of each clip. clips: N x (T_i, n_mels) -> (N, n_labels)."""
    model.eval()
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def run() -> None:
        x = torch.from_numpy(np.concatenate(pending)).to(device)  # (k * crops, window, n_mels)
        logits = model(x).float()
        p = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)
        out.append(p.view(-1, crops, p.shape[-1]).mean(dim=1).cpu().numpy())
        pending.clear()

    per_batch = max(1, batch_size // crops)
    for clip in clips:
        pending.append(windows(np.asarray(clip, dtype=np.float32), window_frames, crops))
        if len(pending) >= per_batch:
            run()
    if pending:
        run()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def metrics(y: np.ndarray, probs: np.ndarray, *, multilabel: bool) -> dict[str, Any]:
    """y: multi-hot (N, L) when multilabel, else class indices (N,); probs (N, L)."""
    from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, f1_score, roc_auc_score

    if not multilabel:
        pred = probs.argmax(axis=1)
        L = probs.shape[1]
        return {
            "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(L)), zero_division=0)),
            "confusion": confusion_matrix(y, pred, labels=list(range(L))).tolist(),
            "n_items": int(len(y)),
        }
    pos = y.sum(axis=0)
    present = pos > 0
    both = present & (pos < y.shape[0])
    out: dict[str, Any] = {"n_items": int(y.shape[0]), "n_labels_scored": int(present.sum())}
    out["micro_pr_auc"] = float(average_precision_score(y, probs, average="micro")) if present.any() else float("nan")
    out["seed_pr_auc"] = (
        float(average_precision_score(y[:, present], probs[:, present], average="micro"))
        if present.any() else float("nan")
    )
    out["macro_pr_auc"] = (
        float(average_precision_score(y[:, present], probs[:, present], average="macro"))
        if present.any() else float("nan")
    )
    flat_both = 0 < y.sum() < y.size
    out["micro_roc_auc"] = float(roc_auc_score(y, probs, average="micro")) if flat_both else float("nan")
    out["macro_roc_auc"] = (
        float(roc_auc_score(y[:, both], probs[:, both], average="macro")) if both.any() else float("nan")
    )
    return out


def headline(m: dict[str, Any], multilabel: bool) -> float:
    """The single number used for model selection: micro PR-AUC (multi-label) or accuracy."""
    return float(m["micro_pr_auc"] if multilabel else m["accuracy"])


def write_plots(out_dir: Path, y: np.ndarray, probs: np.ndarray, labels: Sequence[str], *, multilabel: bool,
                confusion: list[list[int]] | None = None, top_k: int = 8) -> list[Path]:
    """PR curves of the ``top_k`` most frequent labels (multi-label) or the confusion matrix (single-label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if multilabel:
        order = [i for i in np.argsort(-y.sum(axis=0)) if y[:, i].sum() > 0][:top_k]
        fig, ax = plt.subplots(figsize=(6, 5))
        for i in order:
            p, r, _ = precision_recall_curve(y[:, i], probs[:, i])
            ax.plot(r, p, label=f"{labels[i]} (n={int(y[:, i].sum())})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("precision-recall, most frequent labels")
        ax.legend(fontsize=7)
        path = out_dir / "pr_curves.png"
    else:
        cm = np.asarray(confusion, dtype=np.float64)
        fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(labels), 1 + 0.45 * len(labels)))
        norm = cm / np.maximum(1, cm.sum(axis=1, keepdims=True))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        path = out_dir / "confusion.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def evaluate_bundle(
    bundle_path: str | Path,
    dataset: Any,
    *,
    split: str = "test",
    crops: int = 5,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a bundle on ``dataset`` (a LabelledSet) and write report.json + plots into ``out_dir``."""
    from streamtag.errors import ConfigError
    from streamtag.registry import load_bundle

    from .cache import build_cache, open_cache

    bundle = load_bundle(bundle_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = dataset.split(split)
    if not items:
        raise ConfigError(f"the {split!r} split of {dataset.name} is empty")
    multilabel = bundle.activation == "sigmoid"
    b_index = {label: i for i, label in enumerate(bundle.labels)}
    common = [label for label in dataset.labels if label in b_index]
    if not common:
        raise ConfigError(f"none of the data set's labels are labels of model {bundle.name}; wrong --labels?")
    cache_root = Path(cache_dir) if cache_dir else out / "cache"
    report_cache = build_cache(items, cache_root, bundle.frontend, workers=workers, progress=progress)
    cache = open_cache(cache_root, bundle.frontend)

    kept = []
    ys: list[Any] = []  # (n_labels,) multi-hot vectors, or class indices
    dropped = 0
    for it in items:
        if it.key not in cache:
            continue
        names = [dataset.labels[t] for t in it.target if dataset.labels[t] in b_index]
        if not names:
            dropped += 1
            continue
        kept.append(it)
        if multilabel:
            v = np.zeros(len(bundle.labels), np.float32)
            v[[b_index[n] for n in names]] = 1.0
            ys.append(v)
        else:
            ys.append(b_index[names[0]])
    if not kept:
        raise ConfigError(f"no evaluable items in the {split!r} split (all skipped or unlabelled for this model)")
    y = np.stack(ys) if multilabel else np.asarray(ys, dtype=np.int64)
    model = bundle.build_model(device)
    clips = [cache[it.key] for it in kept]
    result: dict[str, Any] = {
        "model": str(bundle.path), "architecture": bundle.architecture, "data": dataset.name, "split": split,
        "labels": list(bundle.labels), "n_items": len(kept), "n_skipped": len(items) - len(kept) - dropped,
        "n_without_model_label": dropped, "skipped": {k: v for k, v in report_cache.skipped.items()
                                                     if k in {it.key for it in items}},
        "window_frames": bundle.window_frames, "metrics": {},
    }
    probs_n = None
    for n in sorted({1, max(1, crops)}):
        probs = predict(model, clips, window_frames=bundle.window_frames, crops=n, activation=bundle.activation,
                        device=device)
        result["metrics"][f"crops_{n}"] = metrics(y, probs, multilabel=multilabel)
        probs_n = probs
    assert probs_n is not None
    last = result["metrics"][f"crops_{max(1, crops)}"]
    result["plots"] = [p.name for p in write_plots(out, y, probs_n, bundle.labels, multilabel=multilabel,
                                                   confusion=last.get("confusion"))]
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez(out / "predictions.npz", keys=np.array([it.key for it in kept]), y=y, probs=probs_n)
    return result
