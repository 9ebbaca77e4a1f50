"""ViT / AST-style tagger: a transformer over non-overlapping patches of the log-mel spectrogram.

Data flow::

    x (B, T, n_mels) -> (B, 1, n_mels, T), zero-padded up to whole patches
      -> Conv2d patch embedding (patch x patch, stride patch) -> (B, F' * T', D)
      -> + [frequency embedding (F') + time embedding (T', cropped or interpolated)]
      -> [CLS] + tokens -> n_layers x Block -> LayerNorm -> [CLS ; mean of tokens] -> Linear -> (B, n_labels)

The positional embedding is factorised (one table over frequency patches, one over time patches) so a
window of any length T >= 1 gets positions: the first T' time rows, or a linear interpolation beyond
``max_time_patches``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import WindowModel
from .transformer import Block, _init_weights, resize_pos_emb

__all__ = ["ViTConfig", "ViTTagger"]


@dataclass(frozen=True)
class ViTConfig:
    n_mels: int = 128  # input mel bands
    n_labels: int = 163  # output logits
    patch: int = 16  # patch side, in mel bands and frames
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 3
    d_ff: int = 768
    max_time_patches: int = 64  # learned time positions (64 x 16 frames = 16 s at hop 256, 16 kHz)
    dropout: float = 0.1


class ViTTagger(WindowModel):
    """Window model over spectrogram patches."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.n_freq = math.ceil(c.n_mels / c.patch)  # frequency patches F'
        self.in_norm = nn.BatchNorm2d(1, affine=False)  # global input standardisation (running statistics)
        self.patch_embed = nn.Conv2d(1, c.d_model, c.patch, stride=c.patch)
        self.freq_pos = nn.Parameter(torch.zeros(1, self.n_freq, 1, c.d_model))
        self.time_pos = nn.Parameter(torch.zeros(1, c.max_time_patches, c.d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.d_ff, c.dropout) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(2 * c.d_model, c.n_labels)
        self.apply(_init_weights)
        for p in (self.freq_pos, self.time_pos, self.cls):
            nn.init.normal_(p, std=0.02)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, n_mels) -> (B, 2 * d_model)."""
        c = self.config
        B, T, M = x.shape
        img = self.in_norm(x.transpose(1, 2).unsqueeze(1))  # (B, 1, n_mels, T)
        pad_t = (-T) % c.patch
        pad_f = (-M) % c.patch
        img = F.pad(img, (0, pad_t, 0, pad_f))  # (B, 1, F' * p, T' * p)
        h = self.patch_embed(img)  # (B, D, F', T')
        Tp = h.shape[-1]
        h = h.permute(0, 2, 3, 1)  # (B, F', T', D)
        pos = self.freq_pos + resize_pos_emb(self.time_pos, Tp)[:, None]  # (1, F', T', D)
        h = (h + pos.to(h.dtype)).reshape(B, self.n_freq * Tp, c.d_model)  # (B, N, D)
        h = torch.cat([self.cls.expand(B, -1, -1).to(h.dtype), h], dim=1)  # (B, 1 + N, D)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h)  # (B, 1 + N, D)
        h = self.ln_f(h)
        return torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], dim=1)  # (B, 2D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, n_labels)
