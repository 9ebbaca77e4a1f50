"""Training-time augmentation shared by supervised training and distillation: SpecAugment, mixup, gain.

Every function takes a batch ``x`` of frames (B, T, C) and a ``numpy.random.Generator``, so a run's
augmentation is reproducible from its seed. Gain and power-domain mixing act on the power the front end
took the log of; :func:`power_domain` reads how from the bundle's ``FrontendSpec.scaling`` (never hard-coded).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from streamtag.errors import ConfigError
from streamtag.frontend import FrontendSpec

from .config import TrainConfig

__all__ = ["spec_augment", "mixup", "gain", "power_domain", "augment"]

Convert = Callable[[torch.Tensor], torch.Tensor]


def spec_augment(
    x: torch.Tensor, rng: np.random.Generator, *, time_masks: int, time_mask_frames: int, freq_masks: int,
    freq_mask_bands: int, p: float = 1.0,
) -> torch.Tensor:
    """Time and band masks, independent per example, filled with the example's mean. x (B, T, C) -> (B, T, C).

    Each of the ``time_masks`` masks is 0..``time_mask_frames`` frames wide and each of the ``freq_masks``
    masks 0..``freq_mask_bands`` channels wide, present with probability ``p``."""
    B, T, C = x.shape
    keep = np.ones((B, T, C), dtype=bool)
    t_idx = np.arange(T)[None, :, None]  # (1, T, 1)
    f_idx = np.arange(C)[None, None, :]  # (1, 1, C)
    for n, widest, size, idx in ((time_masks, time_mask_frames, T, t_idx), (freq_masks, freq_mask_bands, C, f_idx)):
        for _ in range(n):
            w = rng.integers(0, min(widest, size) + 1, size=(B, 1, 1))
            w = np.where(rng.random((B, 1, 1)) < p, w, 0)
            s = (rng.random((B, 1, 1)) * (size - w + 1)).astype(np.int64)
            keep &= ~((idx >= s) & (idx < s + w))
    fill = x.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    return torch.where(torch.from_numpy(keep).to(x.device), x, fill)


def mixup(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, *, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with a random partner, weight ~ Beta(alpha, alpha) per example, targets mixed alike.

    x (B, T, C), y (B, L) float (multi-hot, one-hot or soft) -> the same shapes."""
    B = x.shape[0]
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=(B, 1)).astype(np.float32)).to(x.device)  # (B, 1)
    perm = torch.from_numpy(rng.permutation(B)).to(x.device)
    return lam[:, :, None] * x + (1 - lam[:, :, None]) * x[perm], lam * y + (1 - lam) * y[perm]


def gain(power: torch.Tensor, rng: np.random.Generator, *, db: float) -> torch.Tensor:
    """A random gain per example, uniform in +-``db`` dB, applied to a power spectrogram (B, T, C)."""
    g = rng.uniform(-db, db, size=(power.shape[0], 1, 1)).astype(np.float32)
    return power * torch.from_numpy(10.0 ** (g / 10.0)).to(power.device)


def power_domain(spec: FrontendSpec) -> tuple[Convert, Convert]:
    """(to_power, to_log) for frames made by ``spec``: the inverse of its log scaling and the scaling itself.

    Constant factors (log10p's 10000) are left out: they cancel in gain and mixing."""
    if spec.scaling == "log10p":  # log10(1 + 10000 mel)
        return (lambda x: torch.pow(10.0, x) - 1.0), (lambda p: torch.log10(1.0 + p.clamp(min=0.0)))
    if spec.scaling == "db":  # 10 log10(mel)
        return (lambda x: torch.pow(10.0, x / 10.0)), (lambda p: 10.0 * torch.log10(p.clamp(min=1e-10)))
    if spec.scaling == "log":  # ln(mel + 1e-6)
        return (lambda x: torch.exp(x) - 1e-6), (lambda p: torch.log(p.clamp(min=0.0) + 1e-6))
    raise ConfigError(f"no power domain for scaling {spec.scaling!r}")


def augment(
    x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator, *,
    spec: FrontendSpec | None = None, mix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The configured augmentation of one batch, in this order: gain and power-domain mixup (need ``spec``),
    SpecAugment, log-domain mixup. ``mix=False`` (per-frame targets) skips mixup and gain."""
    if mix and (cfg.gain_db > 0 or (cfg.mixup > 0 and cfg.mix_linear)):
        if spec is None:
            raise ConfigError("gain and power-domain mixup need log-mel inputs (they act on the mel power)")
        to_power, to_log = power_domain(spec)
        pw = to_power(x)
        if cfg.gain_db > 0:
            pw = gain(pw, rng, db=cfg.gain_db)
        if cfg.mixup > 0 and cfg.mix_linear:
            pw, y = mixup(pw, y, rng, alpha=cfg.mixup)
        x = to_log(pw)
    if cfg.specaug:
        x = spec_augment(x, rng, time_masks=cfg.time_masks, time_mask_frames=cfg.time_mask_frames,
                         freq_masks=cfg.freq_masks, freq_mask_bands=cfg.freq_mask_bands, p=cfg.mask_p)
    if mix and cfg.mixup > 0 and not cfg.mix_linear:
        x, y = mixup(x, y, rng, alpha=cfg.mixup)
    return x, y
