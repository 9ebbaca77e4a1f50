"""Supervised training: cached log-mel crops of a labelled set -> any registered architecture -> a bundle.

Read top to bottom: the front end, the crop data sets (cached or decoded on the fly), the feed that turns a
DataLoader into the loop's batches, then ``train()``: it builds the model, the feed and the validation
(crop-averaged accuracy or micro PR-AUC) and hands them to ``loop.fit`` (the loop distillation uses too:
AdamW, warm-up + cosine, augmentation, AMP, early stopping, checkpoints, DDP when launched by torchrun).
The best model is written as a bundle (``<out>/bundle``) that ``streamtag.registry.load_bundle`` loads,
with ``summary.json`` beside it and a model card rendered from that summary (``cards.py``).

Stateful models (``model.stateful``) are trained on random-length crops (1 s .. crop) with the loss on
the per-frame logits of every frame after a 1 s warm-up (``model.forward_frames``), so their read-out is
right at every moment of a stream rather than only at the end of a fixed-length crop.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from streamtag.architectures import build_model
from streamtag.errors import ConfigError
from streamtag.frontend import FrontendSpec
from streamtag.registry import save_bundle

from .cache import build_cache, extract, open_cache
from .cards import render_train_card
from .config import TrainConfig, load_config, save_config
from .data import Item, LabelledSet
from .evaluate import fit_length, headline, metrics, predict
from .loop import Batch, Score, fit

__all__ = ["DEFAULT_FRONTEND", "TrainConfig", "CachedCrops", "DecodedCrops", "LoaderFeed", "pos_weights", "train"]

log = logging.getLogger(__name__)

# 16 kHz, 128 mel bands as the seed. n_fft 1024 (64 ms): with 512 the lowest of 128 Slaney bands are
# narrower than one FFT bin and come out empty. hop 256 (16 ms, 62.5 frames/s). Decibels (floor -100 dB).
DEFAULT_FRONTEND = FrontendSpec(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=128, scaling="db")


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
        self._cache: Any = None  # a FeatureCache, opened in the worker that reads it

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


# ------------------------------------------------------------------------------------------ loss


def pos_weights(y: np.ndarray, max_weight: float = 100.0) -> np.ndarray:
    """BCE pos_weight per label = negatives / positives in the training split, clipped to [1, max_weight]."""
    pos = y.sum(axis=0)
    neg = y.shape[0] - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(w, 1.0, max_weight).astype(np.float32)




# ------------------------------------------------------------------------------------------ feed


class LoaderFeed:
    """Batches of labelled crops from a DataLoader. Stateful models get a random-length crop per batch
    (``stateful_warmup_seconds`` .. crop) with the loss on every frame after the warm-up."""

    def __init__(self, loader: DataLoader, *, sampler: Any = None, stateful: bool = False, warm_frames: int = 0):
        self.loader, self.sampler, self.stateful, self.warm_frames = loader, sampler, stateful, warm_frames
        self.steps_per_epoch = len(loader)

    def epoch(self, index: int, rng: np.random.Generator) -> Iterator[Batch]:
        if self.sampler is not None:
            self.sampler.set_epoch(index)
        for x, y in self.loader:  # x (B, crop, n_mels), y (B, L)
            mask = None
            if self.stateful:
                T = int(rng.integers(min(self.warm_frames + 1, x.shape[1]), x.shape[1] + 1))
                x = x[:, :T]
                mask = torch.zeros(x.shape[0], T)
                mask[:, min(self.warm_frames, T - 1):] = 1.0  # (B, T)
            yield Batch(x, y.float(), mask)


# ------------------------------------------------------------------------------------------ train


def _dist() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


_RESUMABLE = ("epochs", "max_steps", "minutes", "patience", "loader_workers", "log_every")  # may change on --resume


def _resume_config(cfg: TrainConfig, out: Path) -> TrainConfig:
    """The saved config of the run in ``out``, with the fields a resumed run may change taken from ``cfg``."""
    saved = load_config(out)
    if saved is None:
        return cfg
    merged = saved.replace(**{k: getattr(cfg, k) for k in _RESUMABLE})
    ignored = {k: v for k, v in cfg.differences(merged).items()}
    if ignored:
        log.warning("resuming %s with its saved settings; ignored from the command line: %s", out,
                    ", ".join(f"{k} {new!r} (run has {old!r})" for k, (new, old) in ignored.items()))
    return merged


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
    """Train ``cfg.arch`` on ``dataset`` and write ``<out_dir>/bundle`` and ``<out_dir>/summary.json``.

    Returns the summary (the figures the bundle's model card is rendered from); empty on ranks > 0."""
    import torch.distributed as dist

    rank, world, local_rank = _dist()
    out = Path(out_dir)
    ckpt_dir = out / "checkpoint"
    if ckpt_dir.exists() and not resume:
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if resume:
        cfg = _resume_config(cfg, out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
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
    cache: Any = None
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
    sampler: Any = None
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
    model: Any = build_model(cfg.arch, arch_config)
    arch_config = asdict(model.config)  # every field, so the bundle rebuilds exactly this model
    stateful = bool(getattr(model, "stateful", False))
    n_params = sum(p.numel() for p in model.parameters())
    feed = LoaderFeed(loader, sampler=sampler, stateful=stateful,
                      warm_frames=frontend.frames_for(cfg.stateful_warmup_seconds))
    metric_name = "validation micro PR-AUC" if dataset.multilabel else "validation accuracy"
    valid_clips = None

    def validate(m: nn.Module) -> Score:
        nonlocal valid_clips
        if valid_clips is None:
            valid_clips = ([cache[it.key] for it in valid_items] if cache is not None
                           else [extract(it.path, frontend) for it in valid_items])
        probs = predict(m, valid_clips, window_frames=crop_frames, crops=cfg.val_crops,
                        activation="sigmoid" if dataset.multilabel else "softmax", device=dev)
        val = metrics(dataset.targets(valid_items), probs, multilabel=dataset.multilabel)
        val.pop("confusion", None)
        return Score((headline(val, dataset.multilabel),), val, metric_name)

    if rank == 0:
        log.info("training %s (%.2f M params) on %s: %d train / %d valid items, device %s x%d",
                 cfg.arch, n_params / 1e6, dataset.name, len(train_items), len(valid_items), dev, world)
    pw = torch.from_numpy(pos_weights(y_train)).to(dev) if dataset.multilabel else None
    result = fit(model, cfg, feed, multilabel=dataset.multilabel, pos_weight=pw,
                 validate=validate if valid_items else None, spec=frontend, run_dir=out, resume=resume,
                 device=dev, rank=rank, world=world, progress=progress)

    summary: dict[str, Any] = {}
    if rank == 0:
        summary = {
            "name": out.name, "dataset": dataset.name, "arch": cfg.arch, "n_params": n_params,
            "labels": len(dataset.labels), "multilabel": dataset.multilabel,
            "n_train": len(train_items), "n_valid": len(valid_items), "n_test": len(dataset.split("test")),
            "skipped": skipped, "left_out": dict(dataset.notes),
            "epochs": result.epochs, "steps": result.steps, "total_steps": result.total_steps,
            "best_epoch": result.best_epoch, "best_step": result.best_step,
            "best_metric": result.best_score[0] if result.best_score else None,
            "metric": metric_name if valid_items else "training loss (negated; no validation set)",
            "best_metrics": result.best_metrics, "stop_reason": result.stop_reason,
            "world_size": world, "device": str(dev), "seconds": result.seconds,
            "frontend": frontend.to_dict(), "train_config": cfg.to_dict(),
        }
        bundle_dir = out / "bundle"
        bundle = save_bundle(
            bundle_dir, model.cpu().eval(), architecture=cfg.arch, arch_config=arch_config, frontend=frontend,
            labels=dataset.labels, window_frames=crop_frames, hop_seconds=cfg.hop_seconds,
            genre_labels=dataset.genre_labels, activation="sigmoid" if dataset.multilabel else "softmax",
            streaming="stateful" if stateful else "window",
            description=f"{cfg.arch} trained on {dataset.name} with streamtag train",
            card=render_train_card(summary),
            extra={"dataset": dataset.name, "best_validation": {"epoch": result.best_epoch, "metrics": result.best_metrics},
                   "train_config": cfg.to_dict()},
        )
        summary["bundle"] = str(bundle.path)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (bundle_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
