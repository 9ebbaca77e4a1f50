"""Distil st-gru-msd's musicnn front end into the cheap conv front end of ``lite`` (feature-level distillation),
then fine-tune the whole student on musicnn-msd's window targets; evaluate and write the ``st-lite-msd`` bundle.

Research tool (not in the wheel; run from a checkout). It produced the ``lite`` candidates of docs/distill.md;
none is shipped (they stayed below the agreement goal). It has its own two-stage loop, not ``loop.fit``. Run it
only to continue that experiment, on a corpus with the musicnn features cached.

Stage A (``--minutes-a``): the conv front end learns, per frame, the embedding pre-activation that st-gru-msd's
head computes from musicnn's 753 cached features (``embed.fc(embed.norm(features))``), mean squared error, for
the frame ``lag_frames`` before each output (the look-ahead). 128 targets per frame, 62.5 frames a second: far
more supervision per second of audio than 50 probabilities per 1 s window. The GRU head is st-gru-msd's,
untouched in this stage.

Stage B (``--minutes-b``): the whole student, from stage A's weights, on the distillation targets of
``train/distill/run.py`` (multi-track sequences, binary cross-entropy at the end of every 5 s window, shifted by
``lag_frames``), plus ``--feature-weight`` times stage A's loss on the same frames so the front end stays close to
the teacher's features. The checkpoint is chosen on the validation tracks (carved from the training sources,
as ``distill --val-fraction``): clip-level genre agreement, then window agreement, among stage A's end and
every ``--val-every`` steps of stage B. The held-out tracks are never used for a choice.

Usage (the features come from ``distill --frontend musicnn --features-only``, docs/distill.md)::

    python -m research.lite --corpus /work/corpus --out models/st-lite-msd --minutes-a 20 --minutes-b 15
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtag.architectures import build_model
from streamtag.architectures.lite import LiteConfig, LiteStudent
from streamtag.registry import Bundle, load_bundle, save_bundle
from streamtag.train.config import GRID_FRAMES
from streamtag.train.distill.agreement import (
    cost_per_hop_ms,
    distill_extra,
    evaluate,
    evaluate_with_gap,
    majority_baseline,
)
from streamtag.train.distill.cards import CARD_JSON, DEFAULT_CORPUS_NOTE, render_lite_card
from streamtag.train.distill.corpus import read_manifest, summary
from streamtag.train.distill.features import features_dir, student_frontend
from streamtag.train.distill.teacher import Geometry
from streamtag.train.distill.tracks import TrackData, carve_validation, load_split, segment_bounds

__all__ = ["Aligned", "teacher_embedding", "fit_normalisation", "init_head", "stage_a", "stage_b", "main"]

log = logging.getLogger(__name__)

WINDOW_SECONDS = 5.0
HOP_SECONDS = 0.5


class Aligned(nn.Module):
    """A lite student read as the evaluation code reads a stateful student: per-frame logits whose frame t
    describes input frame t. The last ``lag_frames`` inputs are followed by the training mean (zero after the
    input normalisation), so every frame of a clip gets an answer. (B, T, n_mels) -> (B, T, n_labels)."""

    stateful = True

    def __init__(self, model: LiteStudent) -> None:
        super().__init__()
        self.model = model

    def forward_frames(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lag = self.model.lag_frames
        pad = self.model.in_shift.expand(x.shape[0], lag, -1).to(x.dtype)  # (B, lag, n_mels)
        logits, state = self.model.forward_frames(torch.cat([x, pad], dim=1), state)  # (B, T + lag, n_labels)
        return logits[:, lag:], state


@torch.no_grad()
def teacher_embedding(head: Any, feats: np.ndarray) -> np.ndarray:
    """st-gru-msd's per-frame embedding pre-activation of cached musicnn features. (T, 753) -> (T, d_embed)."""
    emb = head.embed
    out = []
    for s in range(0, feats.shape[0], 4096):
        f = torch.from_numpy(feats[s : s + 4096].astype(np.float32))
        out.append(emb.fc(emb.norm(f)).numpy())
    return np.concatenate(out)


def fit_normalisation(model: LiteStudent, data: list[TrackData]) -> None:
    """The input affine map: per-mel mean and 1 / standard deviation of the training log-mel frames."""
    x = np.concatenate([td.mel for td in data]).astype(np.float64)
    model.in_shift.copy_(torch.from_numpy(x.mean(axis=0)).float())
    model.in_scale.copy_(torch.from_numpy(1.0 / np.maximum(x.std(axis=0), 1e-3)).float())


def init_head(model: LiteStudent, gru_bundle: Bundle) -> None:
    """The GRU, LayerNorm and output layer of st-gru-msd's head (its embedding layer is the front end's job)."""
    student: Any = gru_bundle.build_model("cpu")
    src = student.head.state_dict()
    own = model.head.state_dict()
    model.head.load_state_dict({k: src[k] for k in own})


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))



def _update(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor) -> float:
    """One optimizer step on ``loss`` (gradients clipped at 1.0); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach())

def _optimizer(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr)


def _feature_batch(data: list[TrackData], emb: list[np.ndarray], batch: int, frames: int, lag: int,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crops: log-mel x (B, frames, n_mels), target z (B, frames, d) of the frame ``lag`` before each
    input frame, mask (B, frames) of the outputs whose described frame lies inside the crop."""
    n_mels, d = data[0].mel.shape[1], emb[0].shape[1]
    x = np.zeros((batch, frames, n_mels), np.float32)
    z = np.zeros((batch, frames, d), np.float32)
    mask = np.zeros((batch, frames), np.float32)
    for b in range(batch):
        i = int(rng.integers(len(data)))
        T = data[i].mel.shape[0]
        n = min(frames, T)
        s = int(rng.integers(0, T - n + 1))
        x[b, :n] = data[i].mel[s : s + n]
        z[b, lag:n] = emb[i][s : s + n - lag]
        mask[b, lag:n] = 1.0
    return torch.from_numpy(x), torch.from_numpy(z), torch.from_numpy(mask)


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per = (pred - target).pow(2).mean(dim=2)  # (B, T)
    return (per * mask).sum() / mask.sum().clamp(min=1.0)


def _validate(model: LiteStudent, val: list[TrackData], geometry: Geometry, teacher: Bundle) -> tuple[float, float]:
    model.eval()
    ev = evaluate(Aligned(model), val, geometry, teacher)
    model.train()
    return ev["clip_genre_top1_agreement"], ev["window_genre_top1_agreement"]


def stage_a(model: LiteStudent, data: list[TrackData], emb: list[np.ndarray], *, minutes: float, batch: int,
            frames: int, lr: float, seed: int, log_every: int = 50) -> dict[str, Any]:
    """Front end only, MSE to the teacher's embedding pre-activation. Returns the stage's summary."""
    rng = np.random.default_rng(seed)
    model.train()
    params = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = _optimizer(params, lr, 0.01)
    var = float(np.concatenate([e[::7] for e in emb]).var(axis=0).mean())  # for the fraction of variance explained
    t0, step, total, losses = time.time(), 0, 10**9, []
    while step < total:
        x, z, mask = _feature_batch(data, emb, batch, frames, model.lag_frames, rng)
        for g in opt.param_groups:
            g["lr"] = lr * _schedule(step, total, 50)
        pred, _ = model.embed_frames(x, model.init_state(batch))
        loss = _masked_mse(pred, z, mask)
        losses.append(_update(opt, params, loss))
        step += 1
        if step == 20:  # fix the schedule's length from the measured speed
            total = max(21, int(minutes * 60 / ((time.time() - t0) / 20)))
            log.info("stage A: %d steps planned", total)
        if step % log_every == 0:
            m = float(np.mean(losses[-log_every:]))
            log.info("stage A step %d/%d  mse %.4f  (1 - mse/var %.3f)  %.0f s", step, total, m, 1 - m / var,
                     time.time() - t0)
    final = float(np.mean(losses[-50:]))
    return {"steps": step, "seconds": round(time.time() - t0, 1), "final_mse": round(final, 5),
            "target_variance": round(var, 5), "explained": round(1 - final / var, 4), "batch": batch,
            "frames": frames, "lr": lr}


def stage_b(model: LiteStudent, data: list[TrackData], emb: list[np.ndarray], geometry: Geometry, *,
            val: list[TrackData], teacher: Bundle, minutes: float, batch: int, seq_seconds: tuple[float, float],
            lr: float, feature_weight: float, val_every: int, seed: int, log_every: int = 10) -> dict[str, Any]:
    """The whole student on the teacher's window targets (+ the feature loss); the best validation checkpoint
    (stage A's end included) is loaded into ``model``. Returns the stage's summary."""
    rng = np.random.default_rng(seed + 1)
    lag = model.lag_frames
    fps = 16000 / 256
    best_score = _validate(model, val, geometry, teacher)
    best_step, best_state = 0, {k: v.clone() for k, v in model.state_dict().items()}
    history = [[0, *best_score]]
    log.info("stage B: validation at stage A's end: clip %.3f window %.3f", *best_score)
    model.train()
    params = list(model.parameters())
    opt = _optimizer(params, lr, 0.05)
    t0, step, total, losses = time.time(), 0, 10**9, []
    while step < total:
        frames = int(rng.uniform(*seq_seconds) * fps)
        x, y, mask, zt, zmask = _sequence_batch(data, emb, geometry, batch, frames, lag, rng)
        for g in opt.param_groups:
            g["lr"] = lr * _schedule(step, total, 20)
        state = model.init_state(batch)
        z, _ = model.embed_frames(x, state)
        logits, _ = model.head.forward_frames(z, state[:, model.front_state_size :])
        per = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=2)  # (B, T)
        loss = (per * mask).sum() / mask.sum().clamp(min=1.0)
        if feature_weight > 0:
            loss = loss + feature_weight * _masked_mse(z, zt, zmask)
        losses.append(_update(opt, params, loss))
        step += 1
        if step == 10:
            total = max(11, int(minutes * 60 / ((time.time() - t0) / 10)))
            log.info("stage B: %d steps planned", total)
        if step % log_every == 0:
            log.info("stage B step %d/%d  loss %.4f  %.0f s", step, total, float(np.mean(losses[-log_every:])),
                     time.time() - t0)
        if step % val_every == 0 or step == total:
            score = _validate(model, val, geometry, teacher)
            history.append([step, *score])
            log.info("stage B step %d: validation clip %.3f window %.3f", step, *score)
            if score >= best_score:
                best_score, best_step = score, step
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return {"steps": step, "seconds": round(time.time() - t0, 1), "final_loss": round(float(np.mean(losses[-10:])), 5),
            "batch": batch, "lr": lr, "seq_seconds": list(seq_seconds), "feature_weight": feature_weight,
            "validation": {"tracks": len(val), "best_step": best_step, "best_clip_genre_top1_agreement": best_score[0],
                           "best_window_genre_top1_agreement": best_score[1], "history": history}}


def _sequence_batch(
    data: list[TrackData], emb: list[np.ndarray], geometry: Geometry, batch: int, frames: int, lag: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tracks.sequence_batch`` (1-3 random track segments joined end to end) with every target moved
    ``lag`` frames later (the output at frame j describes frame j - lag; targets that would fall past the end
    are dropped), plus the teacher embedding of the frame each output describes and its mask.

    Returns x (B, T, n_mels), y (B, T, n_labels), mask (B, T), z (B, T, d_embed), zmask (B, T)."""
    W = geometry.window_frames
    n_mels, n_labels, d = data[0].mel.shape[1], data[0].targets.shape[1], emb[0].shape[1]
    x = np.zeros((batch, frames, n_mels), np.float32)
    y = np.zeros((batch, frames, n_labels), np.float32)
    mask = np.zeros((batch, frames), np.float32)
    z = np.zeros((batch, frames, d), np.float32)
    zmask = np.zeros((batch, frames), np.float32)
    for b in range(batch):
        bounds = segment_bounds(rng, frames, W)
        for i in range(len(bounds) - 1):
            a, e = bounds[i], bounds[i + 1]
            n = e - a
            k = int(rng.integers(len(data)))
            td, te = data[k], emb[k]
            T = td.mel.shape[0]
            n_take = min(n, T)  # a short track fills part of its segment; the rest stays silent-mean
            s = int(rng.integers(0, T - n_take + 1))
            x[b, a : a + n_take] = td.mel[s : s + n_take]
            x[b, a + n_take : e] = 0.0
            ok = (td.starts >= s) & (td.starts + W <= s + n_take)
            ends = td.starts[ok] - s + W - 1 + a + lag  # output frame describing each window's last frame
            keep = ends < frames
            y[b, ends[keep]] = td.targets[ok][keep]
            mask[b, ends[keep]] = 1.0
            lo, hi = a + lag, min(a + n_take + lag, frames)  # outputs describing this segment's frames
            if hi > lo:
                z[b, lo:hi] = te[s : s + hi - lo]
                zmask[b, lo:hi] = 1.0
    return (torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask), torch.from_numpy(z),
            torch.from_numpy(zmask))


def _embeddings(corpus: Path, teacher: Bundle, head: Any, data: list[TrackData]) -> list[np.ndarray]:
    fd = features_dir(corpus, teacher)
    return [teacher_embedding(head, np.load(fd / (Path(td.track.file).stem + ".npy"))) for td in data]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m research.lite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="corpus with labels and musicnn features cached")
    ap.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    ap.add_argument("--teacher", default="musicnn-msd", help="the teacher bundle (labels, features)")
    ap.add_argument("--init", default="st-gru-msd", help="the musicnn student whose head initialises the GRU and "
                    "whose embedding the front end learns")
    ap.add_argument("--arch-config", default="{}", help="LiteConfig fields as JSON (n_mels, n_labels are set)")
    ap.add_argument("--minutes-a", type=float, default=20.0, help="stage A (feature regression) minutes")
    ap.add_argument("--minutes-b", type=float, default=15.0, help="stage B (window targets) minutes")
    ap.add_argument("--batch-a", type=int, default=16, help="stage A crops per step")
    ap.add_argument("--frames-a", type=int, default=400, help="stage A crop length in frames")
    ap.add_argument("--lr-a", type=float, default=2e-3, help="stage A peak learning rate")
    ap.add_argument("--batch-b", type=int, default=8, help="stage B sequences per step")
    ap.add_argument("--seq-seconds", type=float, nargs=2, default=[8.0, 20.0], help="stage B sequence lengths")
    ap.add_argument("--lr-b", type=float, default=3e-4, help="stage B peak learning rate")
    ap.add_argument("--feature-weight", type=float, default=1.0, help="stage B: weight of the feature loss")
    ap.add_argument("--val-fraction", type=float, default=0.12, help="training tracks set aside for validation")
    ap.add_argument("--val-every", type=int, default=40, help="stage B steps between validations")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--from-bundle", type=Path, default=None, help="start from this lite bundle's weights (and "
                    "config) instead of a fresh front end; stage A then continues its training")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the bundle in --out and rewrite its card")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher, init = load_bundle(args.teacher), load_bundle(args.init)
    spec = student_frontend(teacher)
    geometry = Geometry(GRID_FRAMES, teacher.window_frames, spec.frames_for(WINDOW_SECONDS))
    train_data = load_split(args.corpus, teacher, geometry, "train")
    eval_data = load_split(args.corpus, teacher, geometry, "eval")
    train_data, val_data = carve_validation(train_data, args.val_fraction)
    log.info("%d train / %d validation / %d held-out tracks", len(train_data), len(val_data), len(eval_data))
    out = Path(args.out)
    if args.eval_only:
        bundle = load_bundle(out)
        model: Any = bundle.build_model("cpu")
        training = bundle.extra["training"]
    else:
        cfg = {"n_mels": spec.n_mels, "n_labels": len(teacher.labels), **json.loads(args.arch_config)}
        cfg.setdefault("head_config", {k: v for k, v in init.arch_config["head_config"].items() if k != "d_embed"})
        if args.from_bundle:
            model = load_bundle(args.from_bundle).build_model("cpu")
        else:
            model = build_model("lite", cfg)
            fit_normalisation(model, train_data)
            init_head(model, init)
        init_model: Any = init.build_model("cpu")
        head = init_model.head
        emb = _embeddings(args.corpus, teacher, head, train_data)
        a = stage_a(model, train_data, emb, minutes=args.minutes_a, batch=args.batch_a, frames=args.frames_a,
                    lr=args.lr_a, seed=args.seed)
        b = stage_b(model, train_data, emb, geometry, val=val_data, teacher=teacher, minutes=args.minutes_b,
                    batch=args.batch_b, seq_seconds=(args.seq_seconds[0], args.seq_seconds[1]), lr=args.lr_b,
                    feature_weight=args.feature_weight, val_every=args.val_every, seed=args.seed)
        training = {"stage_a": a, "stage_b": b, "threads": args.threads, "init": init.name,
                    "from_bundle": str(args.from_bundle) if args.from_bundle else None,
                    "validation": b["validation"], "command": "python -m research.lite " + " ".join(argv)}
        save_bundle(out, model, architecture="lite", arch_config=asdict(model.config), frontend=spec,
                    labels=teacher.labels, genre_labels=teacher.genre_labels, window_frames=geometry.window_frames,
                    hop_seconds=HOP_SECONDS, streaming="stateful", extra={"training": training})
    model.eval()
    ev = evaluate_with_gap(Aligned(model), eval_data, train_data, geometry, teacher)
    base = majority_baseline(train_data, eval_data, teacher)
    log.info("held out: clip %.4f window %.4f AUC %.3f / %.3f; per clip %s", ev["clip_genre_top1_agreement"],
             ev["window_genre_top1_agreement"], ev["tag_auc_teacher_p05"], ev["tag_auc_teacher_top3"],
             [c for c in ev["per_clip"] if c["teacher"] != c["student"]])
    teacher_model = teacher.build_model("cpu")
    hop_frames = spec.frames_for(HOP_SECONDS)
    cost = cost_per_hop_ms(model, teacher_model, "stateful", geometry.window_frames, teacher.window_frames,
                           spec.n_mels, hop_frames)
    init_cost = cost_per_hop_ms(init.build_model("cpu"), teacher_model, "stateful", geometry.window_frames,
                                teacher.window_frames, spec.n_mels, hop_frames)
    cost["init_ms"] = init_cost["student_ms"]
    cost["init_teacher_ms"] = init_cost["teacher_ms"]
    cost["init_speedup"] = round(init_cost["student_ms"] / cost["student_ms"], 1)
    extra = distill_extra(teacher, geometry, training, ev, base, cost)
    n_params = sum(p.numel() for p in model.parameters())
    bundle = save_bundle(
        out, model, architecture="lite", arch_config=asdict(model.config), frontend=spec, labels=teacher.labels,
        genre_labels=teacher.genre_labels, activation="sigmoid", window_frames=geometry.window_frames,
        hop_seconds=HOP_SECONDS, streaming="stateful", extra=extra,
        description=(f"musicnn-msd distilled into a {n_params / 1e6:.2f} M-parameter causal conv front end + GRU "
                     f"(the front end learns {init.name}'s musicnn features)"),
    )
    note = Path(args.corpus) / "corpus_note.txt"
    card_run = {
        "command": training["command"], "corpus_table": summary(read_manifest(Path(args.corpus))),
        "corpus_note": note.read_text().strip() if note.is_file() else DEFAULT_CORPUS_NOTE,
        "train_hours": round(sum(t.track.seconds for t in train_data + val_data) / 3600, 4),
        "n_params": n_params, "size_mb": round(n_params * 4 / 1e6, 4),
        "front_mflop": f"{front_mflop_per_frame(model.config):.2f}",
    }
    (out / CARD_JSON).write_text(json.dumps(card_run, indent=2, ensure_ascii=False) + "\n")
    (out / "model_card.md").write_text(render_lite_card(bundle.config_dict(), card_run))
    log.info("wrote %s: %s", out, json.dumps({k: v for k, v in extra.items() if k != "per_clip"}))
    return 0


def front_mflop_per_frame(c: LiteConfig) -> float:
    """Multiply-adds x 2 of the conv front end per frame (convs and the output layer; norms left out)."""
    macs = c.n_mels * c.channels * c.kernel + len(c.dilations) * (c.kernel + 1) * c.channels**2 + c.channels * c.d_embed
    return 2 * macs / 1e6


def main(argv: list[str] | None = None) -> int:
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    return run(parse_args(argv), argv)


if __name__ == "__main__":
    raise SystemExit(main())
