"""How well a student agrees with its teacher, and what it costs: the figures of a student's model card.

On held-out tracks: top-1 agreement of the clip-level genre (argmax over the teacher's genre labels of the
mean probability over the clip, student vs teacher), per-window genre agreement, per-tag ROC-AUC of the
student against the teacher's binarized outputs, the agreement of a constant answer, and the network cost
per hop of student and teacher measured in the same run.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from streamtag.registry import Bundle

from .teacher import Geometry
from .tracks import TrackData

__all__ = ["student_window_outputs", "evaluate", "evaluate_with_gap", "majority_baseline", "cost_per_hop_ms",
           "distill_extra"]


@torch.no_grad()
def student_window_outputs(model: nn.Module, td: TrackData, geometry: Geometry) -> np.ndarray:
    """Student probabilities aligned with td.targets: one per student window. (W, n_labels)."""
    m: Any = model
    if getattr(m, "stateful", False):
        logits, _ = m.forward_frames(torch.from_numpy(td.mel[None]))  # (1, T, n_labels)
        ends = td.starts + geometry.window_frames - 1
        return torch.sigmoid(logits[0, ends]).numpy()
    out = []
    W = geometry.window_frames
    for i in range(0, len(td.starts), 64):
        xb = np.stack([td.mel[s : s + W] for s in td.starts[i : i + 64]])
        out.append(torch.sigmoid(model(torch.from_numpy(xb))).numpy())
    return np.concatenate(out)


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def evaluate(model: nn.Module, data: list[TrackData], geometry: Geometry, teacher: Bundle) -> dict[str, Any]:
    """Agreement with the teacher on held-out tracks (see the module docstring)."""
    gi = np.asarray(teacher.genre_indices())
    clip_agree, per_clip = [], []
    win_agree = []
    S, Y = [], []
    for td in data:
        p = student_window_outputs(model, td, geometry)  # (W, n_labels)
        t = td.targets  # (W, n_labels)
        tg = teacher.genre_labels[int(np.argmax(td.teacher.mean(axis=0)[gi]))]  # teacher: every 3 s window
        sg = teacher.genre_labels[int(np.argmax(p.mean(axis=0)[gi]))]
        clip_agree.append(tg == sg)
        per_clip.append({"id": td.track.id, "teacher": tg, "student": sg})
        win_agree.extend((np.argmax(p[:, gi], axis=1) == np.argmax(t[:, gi], axis=1)).tolist())
        S.append(p)
        Y.append(t)
    S_all, Y_all = np.concatenate(S), np.concatenate(Y)  # (N, n_labels)

    def macro_auc(binary: np.ndarray) -> tuple[float, int]:
        aucs = [_auc(binary[:, j], S_all[:, j]) for j in range(binary.shape[1]) if 0 < binary[:, j].sum() < len(binary)]
        return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)

    auc05, n05 = macro_auc((Y_all > 0.5).astype(np.int64))
    top3 = np.zeros_like(Y_all, dtype=np.int64)
    np.put_along_axis(top3, np.argsort(-Y_all, axis=1)[:, :3], 1, axis=1)
    auc_top3, n_top3 = macro_auc(top3)
    return {
        "clips": len(data),
        "windows": int(len(S_all)),
        "clip_genre_top1_agreement": round(float(np.mean(clip_agree)), 4),
        "window_genre_top1_agreement": round(float(np.mean(win_agree)), 4),
        "tag_auc_teacher_p05": round(auc05, 4),
        "tags_p05": n05,
        "tag_auc_teacher_top3": round(auc_top3, 4),
        "tags_top3": n_top3,
        "mean_abs_prob_error": round(float(np.abs(S_all - Y_all).mean()), 4),
        "per_clip": per_clip,
    }


@torch.no_grad()
def cost_per_hop_ms(model: nn.Module, teacher_model: nn.Module, student: str, window_frames: int,
                    teacher_frames: int, n_mels: int, hop_frames: int, repeats: int = 30) -> dict[str, float]:
    """Median ms of one hop's network compute on this CPU, one thread, batch 1, student vs teacher.

    Window models (the teacher, the transformer) run one whole window per hop; the stateful GRU runs
    ``step`` on the hop's new frames with its carried state. The log-mel front end is not included.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    xt = torch.randn(1, teacher_frames, n_mels) + 2.0
    m: Any = model
    if student == "stateful":
        state = m.init_state(1)
        xs = torch.randn(1, hop_frames, n_mels) + 2.0
        run_student = lambda: m.step(xs, state)  # noqa: E731
    else:
        xs = torch.randn(1, window_frames, n_mels) + 2.0
        run_student = lambda: model(xs)  # noqa: E731
    run_teacher = lambda: teacher_model(xt)  # noqa: E731
    for _ in range(3):
        run_student(), run_teacher()
    # interleaved, so both see the same load on a shared machine
    pairs = [(timed(run_student), timed(run_teacher)) for _ in range(repeats)]
    s_ms = float(np.median([a for a, _ in pairs]) * 1000.0)
    t_ms = float(np.median([b for _, b in pairs]) * 1000.0)
    torch.set_num_threads(threads)
    return {"student_ms": round(s_ms, 3), "teacher_ms": round(t_ms, 3), "speedup": round(t_ms / s_ms, 1)}


def majority_baseline(train: list[TrackData], held: list[TrackData], teacher: Bundle) -> dict[str, Any]:
    """Clip-level agreement of a constant answer: the teacher's most frequent clip genre on the training tracks."""
    gi = np.asarray(teacher.genre_indices())
    top = lambda td: teacher.genre_labels[int(np.argmax(td.teacher.mean(axis=0)[gi]))]  # noqa: E731
    counts: dict[str, int] = {}
    for td in train:
        counts[top(td)] = counts.get(top(td), 0) + 1
    label = max(counts, key=lambda g: counts[g])
    return {"label": label, "agreement": round(float(np.mean([top(td) == label for td in held])), 4),
            "teacher_train_clip_genres": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def evaluate_with_gap(model: nn.Module, held: list[TrackData], train: list[TrackData], geometry: Geometry,
                      teacher: Bundle) -> dict[str, Any]:
    """:func:`evaluate` on the held-out tracks plus the generalization gap: the clip / window agreement on every
    3rd training track, as ``train_clips``, ``train_clip_genre_top1_agreement``, ``train_window_...``."""
    ev = evaluate(model, held, geometry, teacher)
    seen = evaluate(model, train[::3], geometry, teacher)
    ev["train_clips"] = seen["clips"]
    ev["train_clip_genre_top1_agreement"] = seen["clip_genre_top1_agreement"]
    ev["train_window_genre_top1_agreement"] = seen["window_genre_top1_agreement"]
    return ev


def distill_extra(teacher: Bundle, geometry: Geometry, training: dict[str, Any], ev: dict[str, Any],
                  base: dict[str, Any], cost: dict[str, Any]) -> dict[str, Any]:
    """A distilled bundle's ``extra``: the teacher, the target geometry, the training summary, the evaluation
    (per-clip rows apart), the constant-answer baseline and the costs per hop (what the card is rendered from)."""
    return {
        "teacher": teacher.name,
        "distillation": {"grid_frames": geometry.grid_frames, "teacher_frames": geometry.teacher_frames,
                         "n_inside": geometry.n_inside, "offset": geometry.offset,
                         "target": "mean of the teacher's sigmoid outputs on the 3 s windows centred in the 5 s window"},
        "training": training,
        "evaluation": {k: v for k, v in ev.items() if k != "per_clip"},
        "per_clip": ev["per_clip"],
        "baseline": {k: v for k, v in base.items() if k != "teacher_train_clip_genres"},
        "cost_per_hop_ms": cost,
    }
