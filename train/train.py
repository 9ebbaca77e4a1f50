"""Training loop: cached log-mel crops -> any registered architecture -> a model bundle.

Read top to bottom: the front end and config, data sets (cached or decoded on the fly), augmentation
(SpecAugment, mixup), the loss, checkpoints (safetensors tensors + JSON scalars, never pickles), then
``train()`` itself: AdamW, linear warm-up + cosine decay, mixed precision on CUDA, validation with
crop averaging, early stopping, a CSV log, DDP when launched by torchrun. The best model is written as a
bundle (``<out>/bundle``) that ``streamtag.registry.load_bundle`` loads.

Stateful models (``model.stateful``) are trained on random-length crops (1 s .. crop) with the loss on
the per-frame logits of every frame after a 1 s warm-up (``model.forward_frames``), so their read-out is
right at every moment of a stream rather than only at the end of a fixed-length crop.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from streamtag.architectures import build_model
from streamtag.errors import ConfigError
from streamtag.frontend import FrontendSpec
from streamtag.registry import save_bundle

from .cache import build_cache, extract, open_cache
from .data import Item, LabelledSet
from .evaluate import fit_length, headline, metrics, predict

__all__ = ["DEFAULT_FRONTEND", "TrainConfig", "CachedCrops", "DecodedCrops", "train"]

log = logging.getLogger(__name__)

# 16 kHz, 128 mel bands as the seed. n_fft 1024 (64 ms): with 512 the lowest of 128 Slaney bands are
# narrower than one FFT bin and come out empty. hop 256 (16 ms, 62.5 frames/s). Decibels (floor -100 dB).
DEFAULT_FRONTEND = FrontendSpec(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=128, scaling="db")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "transformer"
    arch_config: dict[str, Any] = field(default_factory=dict)  # overrides of the architecture's defaults
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500  # linear warm-up, then cosine decay to lr * 0.01 (capped at 10% of all steps)
    max_steps: int | None = None  # stop after this many optimizer steps (tests, benchmarks)
    crop_seconds: float = 5.0  # training crop = the window of window models
    hop_seconds: float = 0.5  # default hop between updates written into the bundle
    specaug: bool = True
    time_masks: int = 2
    time_mask_frames: int = 40
    freq_masks: int = 2
    freq_mask_bands: int = 16
    mixup: float = 0.2  # Beta(alpha, alpha) mixup of inputs and targets; 0 disables
    patience: int = 5  # epochs without a better validation metric before stopping
    val_crops: int = 3
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    loader_workers: int = 2
    seed: int = 0
    stateful_warmup_seconds: float = 1.0


# ------------------------------------------------------------------------------------------ data


class _CropsBase(Dataset):
    def __init__(self, items: list[Item], targets: np.ndarray, crop_frames: int, train: bool) -> None:
        self.items, self.targets, self.crop_frames, self.train = items, targets, crop_frames, train

    def __len__(self) -> int:
        return len(self.items)

    def _frames(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self._frames(i)  # (T, n_mels)
        span = max(0, frames.shape[0] - self.crop_frames)
        start = int(np.random.randint(0, span + 1)) if self.train else span // 2
        x = fit_length(frames, self.crop_frames, start).astype(np.float32)  # (crop, n_mels)
        return torch.from_numpy(x), torch.as_tensor(self.targets[i])


class CachedCrops(_CropsBase):
    """Random crops read from the feature cache (opened lazily so each loader worker maps it itself)."""

    def __init__(self, cache_root: Path, items: list[Item], targets: np.ndarray, crop_frames: int, train: bool = True):
        super().__init__(items, targets, crop_frames, train)
        self.cache_root = cache_root
        self._cache = None

    def _frames(self, i: int) -> np.ndarray:
        if self._cache is None:
            self._cache = open_cache(self.cache_root)
        return self._cache[self.items[i].key]


class DecodedCrops(_CropsBase):
    """Random crops of audio decoded on the fly (slow; for comparison and for one-off runs)."""

    def __init__(self, spec: FrontendSpec, items: list[Item], targets: np.ndarray, crop_frames: int, train: bool = True):
        super().__init__(items, targets, crop_frames, train)
        self.spec = spec

    def _frames(self, i: int) -> np.ndarray:
        return extract(self.items[i].path, self.spec)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- augmentation


def spec_augment(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Time and frequency masks, independent per example, filled with the example's mean. x (B, T, M)."""
    B, T, M = x.shape
    fill = x.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    keep = torch.ones(B, T, M, dtype=torch.bool, device=x.device)
    t_idx = torch.arange(T, device=x.device)[None, :, None]  # (1, T, 1)
    f_idx = torch.arange(M, device=x.device)[None, None, :]  # (1, 1, M)
    for _ in range(cfg.time_masks):
        w = torch.randint(0, min(cfg.time_mask_frames, T) + 1, (B, 1, 1), device=x.device)
        s = (torch.rand(B, 1, 1, device=x.device) * (T - w + 1)).long()
        keep &= ~((t_idx >= s) & (t_idx < s + w))
    for _ in range(cfg.freq_masks):
        w = torch.randint(0, min(cfg.freq_mask_bands, M) + 1, (B, 1, 1), device=x.device)
        s = (torch.rand(B, 1, 1, device=x.device) * (M - w + 1)).long()
        keep &= ~((f_idx >= s) & (f_idx < s + w))
    return torch.where(keep, x, fill)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Beta(alpha, alpha) weight per batch; y is a float target (multi-hot or one-hot). x (B, T, M), y (B, L)."""
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


# ------------------------------------------------------------------------------------------ loss


class _FrameLogits(nn.Module):
    """What DDP wraps: window models -> (B, L); stateful models -> per-frame logits (B, T, L)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.model, "stateful", False):
            return self.model.forward_frames(x)[0]  # (B, T, L)
        return self.model(x)  # (B, L)


def _loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """logits (B, L) or (B, T, L); y (B, L) float (multi-hot or one-hot, possibly mixed)."""
    logits = logits.float()
    if logits.dim() == 3:
        y = y[:, None].expand(-1, logits.shape[1], -1)  # (B, T, L)
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
    return -(y * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def pos_weights(y: np.ndarray, max_weight: float = 100.0) -> np.ndarray:
    """BCE pos_weight per label = negatives / positives in the training split, clipped to [1, max_weight]."""
    pos = y.sum(axis=0)
    neg = y.shape[0] - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(w, 1.0, max_weight).astype(np.float32)


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


def _load_checkpoint(d: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: Any) -> dict:
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


# ------------------------------------------------------------------------------------- helpers


def _dist() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def lr_lambda(step: int, warmup: int, total: int, floor: float = 0.01) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _card(name: str, cfg: TrainConfig, ds: LabelledSet, spec: FrontendSpec, n_params: int, best: dict) -> str:
    return f"""# {name}

## Model Details
Architecture `{cfg.arch}` ({n_params / 1e6:.2f} M parameters), config `{json.dumps(cfg.arch_config)}`, trained with
`streamtag train` (AdamW lr {cfg.lr}, batch {cfg.batch_size}, {cfg.crop_seconds} s crops, SpecAugment {cfg.specaug},
mixup {cfg.mixup}). Front end: {spec.sample_rate} Hz, n_fft {spec.n_fft}, hop_length {spec.hop_length},
{spec.n_mels} mel bands, scaling "{spec.scaling}".

## Intended Use
Genre tagging of music streams with streamtag; labels: {len(ds.labels)} ({'multi-label' if ds.multilabel else 'single-label'}).

## Training Data
{ds.name}: {len(ds.split('train'))} training / {len(ds.split('valid'))} validation / {len(ds.split('test'))} test items.

## Performance
Best validation metrics (epoch {best.get('epoch')}): `{json.dumps(best.get('metrics', {}))}`.
Run `streamtag eval` for test figures.

## Limitations
Genre labels are coarse and culturally loaded; a model trained on one archive's tagging reflects its
uploaders' conventions. Validation figures of small runs are noisy.
"""


# ------------------------------------------------------------------------------------------ train


def train(
    cfg: TrainConfig,
    dataset: LabelledSet,
    out_dir: str | Path,
    *,
    frontend: FrontendSpec = DEFAULT_FRONTEND,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    cache_workers: int = 0,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``dataset`` and write ``<out_dir>/bundle``. Returns a summary dict."""
    import torch.distributed as dist
    from tqdm import tqdm

    rank, world, local_rank = _dist()
    out = Path(out_dir)
    ckpt_dir = out / "checkpoint"
    if rank == 0:
        if ckpt_dir.exists() and not resume:
            raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" and world > 1 else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    train_items, valid_items = dataset.split("train"), dataset.split("valid")
    if not train_items:
        raise ConfigError(f"{dataset.name} has no training items")
    crop_frames = frontend.frames_for(cfg.crop_seconds)

    # features: rank 0 fills the cache, the others wait
    cache_root = Path(cache_dir) if cache_dir else out / "cache"
    skipped: dict[str, str] = {}
    if use_cache:
        if rank == 0:
            rep = build_cache(train_items + valid_items, cache_root, frontend, workers=cache_workers, progress=progress)
            skipped = rep.skipped
        if world > 1:
            dist.barrier()
        cache = open_cache(cache_root, frontend)
        skipped = skipped or cache.skipped
        train_items = [it for it in train_items if it.key in cache]
        valid_items = [it for it in valid_items if it.key in cache]
    if not train_items:
        raise ConfigError(f"every training file of {dataset.name} failed to decode; see the skipped list in {cache_root}")

    y_train = dataset.targets(train_items)
    if dataset.multilabel:
        targets = y_train
    else:
        targets = np.eye(len(dataset.labels), dtype=np.float32)[y_train]  # one-hot, so mixup can mix them
    ds_train: Dataset = (
        CachedCrops(cache_root, train_items, targets, crop_frames) if use_cache
        else DecodedCrops(frontend, train_items, targets, crop_frames)
    )
    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds_train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    per_rank = len(train_items) // world
    loader = DataLoader(
        ds_train, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=per_rank > cfg.batch_size, num_workers=cfg.loader_workers, worker_init_fn=_seed_worker,
        pin_memory=dev.type == "cuda", persistent_workers=cfg.loader_workers > 0,
    )

    arch_config = {"n_mels": frontend.n_mels, "n_labels": len(dataset.labels), **cfg.arch_config}
    model = build_model(cfg.arch, arch_config).to(dev)
    arch_config = asdict(model.config)  # every field, so the bundle rebuilds exactly this model
    stateful = bool(getattr(model, "stateful", False))
    wrapped: nn.Module = _FrameLogits(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, device_ids=[dev.index] if dev.type == "cuda" else None)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "pos" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), fused=dev.type == "cuda",
    )
    total_steps = cfg.epochs * max(1, len(loader))
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(1, min(cfg.warmup_steps, total_steps // 10))
    amp_dtype = _amp_dtype(cfg, dev)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    pw = torch.from_numpy(pos_weights(y_train)).to(dev) if dataset.multilabel else None

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": -math.inf, "best_epoch": None, "best_metrics": {},
                             "bad_epochs": 0}
    if resume and (ckpt_dir / "state.json").is_file():
        state = _load_checkpoint(ckpt_dir, model, opt, scaler)
        log.info("resumed %s at epoch %d, step %d", out, state["epoch"], state["step"])
    # LambdaLR is stateless apart from its step count; on resume it restarts at the saved step
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, warmup, total_steps), last_epoch=state["step"] - 1 if state["step"] else -1
    )

    log_path = out / "log.csv"
    if rank == 0 and not log_path.is_file():
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerow(["epoch", "step", "train_loss", "val_metric", "lr", "seconds"])
    warm_frames = frontend.frames_for(cfg.stateful_warmup_seconds)
    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        log.info("training %s (%.2f M params) on %s: %d train / %d valid items, %d steps, device %s x%d",
                 cfg.arch, n_params / 1e6, dataset.name, len(train_items), len(valid_items), total_steps, dev, world)

    t_start = time.monotonic()
    stop = state["step"] >= total_steps
    while not stop and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        if sampler is not None:
            sampler.set_epoch(epoch)
        wrapped.train()
        losses: list[float] = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0,
                   dynamic_ncols=True, leave=False)
        for x, y in bar:
            x = x.to(dev, non_blocking=True)  # (B, T, n_mels)
            y = y.to(dev, non_blocking=True).float()  # (B, L)
            if cfg.specaug:
                x = spec_augment(x, cfg)
            if cfg.mixup > 0:
                x, y = mixup(x, y, cfg.mixup)
            if stateful:  # random-length crop, the same length for the whole batch
                T = int(np.random.randint(min(warm_frames + 1, x.shape[1]), x.shape[1] + 1))
                x = x[:, :T]
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = wrapped(x)
            if stateful:
                logits = logits[:, min(warm_frames, logits.shape[1] - 1):]  # (B, T - warm, L)
            loss = _loss(logits, y, dataset.multilabel, pw)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            sched.step()
            state["step"] += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if state["step"] >= total_steps:
                stop = True
                break
        bar.close()
        state["epoch"] = epoch + 1

        # validation (rank 0), then every rank learns whether to stop
        flag = torch.zeros(1, device=dev)
        if rank == 0:
            val_metrics: dict[str, Any] = {}
            metric = float(np.mean(losses)) * -1.0 if losses else -math.inf  # no validation set: lowest loss
            if valid_items:
                probs = predict(model, [cache[it.key] for it in valid_items] if use_cache
                                else [extract(it.path, frontend) for it in valid_items],
                                window_frames=crop_frames, crops=cfg.val_crops,
                                activation="sigmoid" if dataset.multilabel else "softmax", device=dev)
                val_metrics = metrics(dataset.targets(valid_items), probs, multilabel=dataset.multilabel)
                val_metrics.pop("confusion", None)
                metric = headline(val_metrics, dataset.multilabel)
                if math.isnan(metric):
                    metric = -math.inf
            train_loss = float(np.mean(losses)) if losses else float("nan")
            with log_path.open("a", newline="") as f:
                csv.writer(f).writerow([state["epoch"], state["step"], f"{train_loss:.5f}", f"{metric:.5f}",
                                        f"{sched.get_last_lr()[0]:.3e}", f"{time.monotonic() - t_start:.1f}"])
            log.info("epoch %d: train loss %.4f, validation %s %.4f", state["epoch"], train_loss,
                     "micro PR-AUC" if dataset.multilabel else "accuracy", metric)
            if metric > state["best"] or state["best_epoch"] is None:
                state.update(best=metric, best_epoch=state["epoch"], best_metrics=val_metrics, bad_epochs=0)
                from safetensors.torch import save_file

                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                          str(out / "best.safetensors"))
            else:
                state["bad_epochs"] += 1
            if state["bad_epochs"] >= cfg.patience:
                log.info("early stop: no better validation metric for %d epochs", cfg.patience)
                stop = True
            _save_checkpoint(ckpt_dir, model, opt, scaler, state)
            flag[0] = float(stop)
        if world > 1:
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())

    summary: dict[str, Any] = {}
    if rank == 0:
        from safetensors.torch import load_file

        if (out / "best.safetensors").is_file():
            model.load_state_dict(load_file(str(out / "best.safetensors")))
        best = {"epoch": state["best_epoch"], "metrics": state["best_metrics"]}
        bundle_dir = out / "bundle"
        bundle = save_bundle(
            bundle_dir, model.cpu().eval(), architecture=cfg.arch, arch_config=arch_config, frontend=frontend,
            labels=dataset.labels, window_frames=crop_frames, hop_seconds=cfg.hop_seconds,
            genre_labels=dataset.genre_labels, activation="sigmoid" if dataset.multilabel else "softmax",
            streaming="stateful" if stateful else "window",
            description=f"{cfg.arch} trained on {dataset.name} with streamtag train",
            card=_card(out.name, cfg, dataset, frontend, n_params, best),
            extra={"dataset": dataset.name, "best_validation": best,
                   "train_config": json.loads(json.dumps(dataclasses.asdict(cfg)))},
        )
        summary = {"bundle": str(bundle.path), "epochs": state["epoch"], "steps": state["step"],
                   "best_epoch": state["best_epoch"], "best_metric": state["best"],
                   "skipped": skipped, "n_train": len(train_items), "n_valid": len(valid_items),
                   "world_size": world, "device": str(dev),
                   "seconds": time.monotonic() - t_start}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
