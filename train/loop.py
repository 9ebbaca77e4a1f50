"""The one training loop, used by supervised training (``train.py``) and by distillation (``distill.py``).

What differs between them is plugged in: a :class:`Feed` yields batches of frames and targets (labelled crops
from the feature cache, or a student's windows with the teacher's probabilities), and a ``validate`` callback
scores the model (accuracy / PR-AUC, or genre agreement with the teacher). The loop owns everything else:
AdamW, the schedule (``schedule.py``, a function of the step, so ``--resume`` continues it), augmentation
(``augment.py``), mixed precision on CUDA, gradient clipping, the time budget, validation with best-weight
keeping and early stopping (which says why and when), checkpoints (safetensors + JSON, never pickles) and DDP.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment
from .config import TrainConfig
from .schedule import lr_factor, warmup_for

__all__ = ["Batch", "Feed", "Score", "FitResult", "fit", "frame_loss", "plan_steps", "make_optimizer"]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
BEST_WEIGHTS = "best.safetensors"
LOG_CSV = "log.csv"


@dataclass
class Batch:
    x: torch.Tensor  # (B, T, C) frames: log-mel bands or feature channels
    y: torch.Tensor  # (B, L) one target per example, or (B, T, L) one per frame
    mask: torch.Tensor | None = None  # (B, T): 1 where a frame's logits carry loss (per-frame models)


class Feed(Protocol):
    """Where batches come from. ``epoch(i, rng)`` yields the batches of epoch ``i``."""

    steps_per_epoch: int

    def epoch(self, index: int, rng: np.random.Generator) -> Iterator[Batch]: ...


@dataclass
class Score:
    value: tuple[float, ...]  # higher is better, compared as a tuple (ties: the earlier one stays best)
    metrics: dict[str, Any]
    name: str  # what value[0] is, for log lines: "validation accuracy"


@dataclass
class FitResult:
    steps: int
    epochs: int
    total_steps: int
    seconds: float
    final_loss: float
    best_step: int | None = None
    best_epoch: int | None = None
    best_score: tuple[float, ...] | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation
    stop_reason: str = ""


class _FrameLogits(nn.Module):
    """What DDP wraps: window models -> (B, L); stateful models -> per-frame logits (B, T, L)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        if getattr(m, "stateful", False):
            return m.forward_frames(x)[0]  # (B, T, L)
        return m(x)  # (B, L)


def frame_loss(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, *, multilabel: bool = True,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss over examples (or over the masked frames). logits (B, L) or (B, T, L); y (B, L) or (B, T, L)
    float targets (multi-hot, one-hot, soft or mixed); mask (B, T). Multi-label: binary cross-entropy averaged
    over labels; single-label: cross-entropy with the target distribution."""
    logits = logits.float()
    if logits.dim() == 3 and y.dim() == 2:
        y = y[:, None].expand(-1, logits.shape[1], -1)  # (B, T, L)
    if multilabel:
        per = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none").mean(dim=-1)
    else:
        per = -(y * F.log_softmax(logits, dim=-1)).sum(dim=-1)  # (B,) or (B, T)
    if mask is None:
        return per.mean()
    return (per * mask).sum() / mask.sum().clamp(min=1.0)


def plan_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run from the epoch and step limits (the time budget re-plans later)."""
    limits = [cfg.epochs * max(1, steps_per_epoch)] if cfg.epochs is not None else []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if not limits:  # minutes only: a provisional length until the speed is known
        limits.append(1_000_000)
    return max(1, min(limits))


def make_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not biases, norms or position tables)."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.dim() >= 2 and "pos" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, cfg.adam_beta2), fused=fused or None,
    )


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ----------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(d: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: Any, state: dict) -> None:
    """model.safetensors + optimizer.safetensors + state.json (scalars), replaced atomically."""
    from safetensors.torch import save_file

    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    osd = opt.state_dict()
    tensors = {f"{i}/{k}": v.detach().cpu().contiguous()
               for i, st in osd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    groups = json.loads(json.dumps(osd["param_groups"], default=lambda o: list(o) if isinstance(o, tuple) else None))
    full = {**state, "param_groups": groups, "scaler": scaler.state_dict() if scaler is not None else None}
    (tmp / "state.json").write_text(json.dumps(full, indent=1))
    if d.exists():
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
    tmp.rename(d)


def _load_checkpoint(d: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(d / "model.safetensors")))
    state = json.loads((d / "state.json").read_text())
    tensors = load_file(str(d / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        i, k = name.split("/", 1)
        opt_state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    sc = state.pop("scaler", None)
    if scaler is not None and sc:
        scaler.load_state_dict(sc)
    return state


# ------------------------------------------------------------------------------------------ fit


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    feed: Feed,
    *,
    multilabel: bool = True,
    pos_weight: torch.Tensor | None = None,
    validate: Callable[[nn.Module], Score] | None = None,
    spec: Any = None,
    run_dir: Path | None = None,
    resume: bool = False,
    device: torch.device | None = None,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    log_file: Path | None = None,
) -> FitResult:
    """Train ``model`` in place; afterwards it holds the best validated weights (or the last ones).

    ``validate`` runs on rank 0 every ``cfg.val_every`` steps (0: after every epoch) once ``cfg.val_from`` of
    the run has passed; without it an epoch-based run scores the epoch's training loss, a step-based run keeps
    its last weights. ``run_dir`` receives ``checkpoint/``, ``best.safetensors`` and ``log.csv``; ``resume``
    continues from the checkpoint there (step, epoch, optimizer, best score: the schedule goes on, not over).
    ``spec`` (a FrontendSpec) lets gain and power-domain mixup invert the log scaling."""
    dev = device or torch.device("cpu")
    model.to(dev)
    wrapped: nn.Module = _FrameLogits(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = make_optimizer(model, cfg, fused=dev.type == "cuda")
    amp_dtype = _amp_dtype(cfg, dev)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    total = plan_steps(cfg, feed.steps_per_epoch)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_step": None, "best_epoch": None,
                             "best_metrics": {}, "bad": 0, "history": [], "total": total}
    ckpt = run_dir / CHECKPOINT_DIR if run_dir is not None else None
    if resume and ckpt is not None and (ckpt / "state.json").is_file():
        state = {**state, **_load_checkpoint(ckpt, model, opt, scaler)}
        state.pop("stop_reason", None)  # a resumed run ends for its own reason
        if cfg.minutes is not None:
            total = int(state["total"])  # the time-planned length of the interrupted run
        elif state["total"] != total:
            log.warning("resuming with a run of %d steps instead of %d: the schedule is stretched from step %d",
                        total, state["total"], state["step"])
        log.info("resumed %s at epoch %d, step %d of %d", run_dir, state["epoch"], state["step"], total)
    state["total"] = total
    best_weights: dict[str, torch.Tensor] | None = None
    if run_dir is not None and (run_dir / BEST_WEIGHTS).is_file() and state["best"] is not None:
        from safetensors.torch import load_file

        best_weights = load_file(str(run_dir / BEST_WEIGHTS))
    csv_path = run_dir / LOG_CSV if run_dir is not None and rank == 0 else None
    if csv_path is not None and not csv_path.is_file():
        with csv_path.open("w", newline="") as f:
            csv.writer(f).writerow(["epoch", "step", "train_loss", "val_metric", "lr", "seconds"])

    t0 = time.monotonic()
    steps_here = 0
    ema: float | None = None
    lr = cfg.lr
    unit = "epoch" if not cfg.val_every else "step"

    def note(msg: str) -> None:
        log.info(msg)
        if log_file is not None and rank == 0:
            with open(log_file, "a") as f:
                f.write(msg + "\n")

    def run_validation(losses: list[float]) -> bool:
        """Score the model, keep the best weights; True when early stopping says stop."""
        nonlocal best_weights
        if validate is not None:
            score = validate(model)
            wrapped.train()
        else:
            score = Score((-float(np.mean(losses)) if losses else -math.inf,), {}, "training loss (negated)")
        value = tuple(-math.inf if math.isnan(v) else float(v) for v in score.value)
        where = state["epoch"] if unit == "epoch" else state["step"]
        state["history"].append({"epoch": state["epoch"], "step": state["step"], "score": list(value)})
        note(f"{unit} {where}: train loss {float(np.mean(losses)) if losses else float('nan'):.4f}, "
             f"{score.name} {value[0]:.4f}" + (f" ({', '.join(f'{v:.4f}' for v in value[1:])})" if len(value) > 1 else ""))
        if csv_path is not None:
            with csv_path.open("a", newline="") as f:
                csv.writer(f).writerow([state["epoch"], state["step"], f"{np.mean(losses) if losses else math.nan:.5f}",
                                        f"{value[0]:.5f}", f"{lr:.3e}", f"{time.monotonic() - t0:.1f}"])
        if state["best"] is None or value > tuple(state["best"]):
            state.update(best=list(value), best_step=state["step"], best_epoch=state["epoch"],
                         best_metrics=score.metrics, bad=0, best_name=score.name)
            best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if run_dir is not None:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in best_weights.items()}, str(run_dir / BEST_WEIGHTS))
            return False
        state["bad"] += 1
        if cfg.patience and state["bad"] >= cfg.patience:
            best_at = state["best_epoch"] if unit == "epoch" else state["best_step"]
            reason = (f"{score.name} did not improve for {state['bad']} "
                      f"{'epochs' if unit == 'epoch' else 'validations'} (best {state['best'][0]:.4f} at {unit} {best_at})")
            state["stop_reason"] = f"early stop at {unit} {where}: {reason}"
            log.warning("%s", state["stop_reason"])
            return True
        return False

    def sync(stop: bool) -> bool:
        if world > 1:
            import torch.distributed as dist

            flag = torch.tensor([float(stop)], device=dev)
            dist.broadcast(flag, src=0)
            return bool(flag.item())
        return stop

    stop = state["step"] >= total
    while not stop and (cfg.epochs is None or state["epoch"] < cfg.epochs):
        epoch = state["epoch"]
        rng = np.random.default_rng([cfg.seed, rank, epoch])
        wrapped.train()
        losses: list[float] = []
        batches = feed.epoch(epoch, rng)
        if progress and rank == 0:
            from tqdm import tqdm

            batches = tqdm(batches, total=feed.steps_per_epoch, desc=f"epoch {epoch + 1}", leave=False,
                           dynamic_ncols=True)
        for batch in batches:
            x = batch.x.to(dev, non_blocking=True)  # (B, T, C)
            y = batch.y.to(dev, non_blocking=True).float()  # (B, L) or (B, T, L)
            mask = batch.mask.to(dev) if batch.mask is not None else None
            x, y = augment(x, y, cfg, rng, spec=spec, mix=y.dim() == 2)
            lr = cfg.lr * lr_factor(state["step"], warmup=warmup_for(total, cfg.warmup_steps), total=total)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = wrapped(x)
            loss = frame_loss(logits, y, mask, multilabel=multilabel, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
            state["step"] += 1
            steps_here += 1
            value = float(loss.detach())
            losses.append(value)
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            if cfg.minutes is not None:
                elapsed = time.monotonic() - t0
                if steps_here == 20:  # fit the schedule to the budget from the measured speed
                    per_step = elapsed / steps_here
                    planned = state["step"] + int((cfg.minutes * 60.0 - elapsed) / per_step)
                    total = max(state["step"] + 1, min(total, planned))
                    state["total"] = total
                    note(f"{per_step:.3f} s per step -> {total} steps in {cfg.minutes:g} min")
                elif elapsed > 1.2 * cfg.minutes * 60.0 and state["step"] < total:
                    log.warning("stopping at step %d of %d: over the time budget (schedule unfinished)",
                                state["step"], total)
                    total = state["step"]
            if state["step"] % cfg.log_every == 0 or state["step"] == total:
                note(f"step {state['step']}/{total} loss {ema:.4f} lr {lr:.2e} {time.monotonic() - t0:.0f}s")
            if cfg.val_every and (state["step"] % cfg.val_every == 0 or state["step"] >= total) \
                    and state["step"] >= cfg.val_from * total:
                if validate is not None and rank == 0:
                    stop = run_validation(losses)
                stop = sync(stop)
                if ckpt is not None and rank == 0:
                    _save_checkpoint(ckpt, model, opt, scaler, state)
            if state["step"] >= total:
                stop = True
            if stop:
                break
        state["epoch"] = epoch + 1
        if not cfg.val_every:
            if rank == 0 and state["step"] >= cfg.val_from * total:
                stop = run_validation(losses) or stop
            stop = sync(stop)
        if ckpt is not None and rank == 0:
            _save_checkpoint(ckpt, model, opt, scaler, state)
    if not state.get("stop_reason"):
        state["stop_reason"] = (f"finished {state['step']} of {total} steps" if state["step"] >= total
                                else f"finished {state['epoch']} epochs")
    if best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    return FitResult(
        steps=state["step"], epochs=state["epoch"], total_steps=total, seconds=round(time.monotonic() - t0, 1),
        final_loss=round(float(ema if ema is not None else math.nan), 5), best_step=state["best_step"],
        best_epoch=state["best_epoch"], best_score=tuple(state["best"]) if state["best"] is not None else None,
        best_metrics=state["best_metrics"], history=state["history"], stop_reason=state["stop_reason"],
    )
