"""Transformer encoder tagger over log-mel frames (the seed's Transformer, ~0.7 M parameters at d_model 128).

Read top to bottom: building blocks (attention, MLP, pre-norm block, attention pooling), the frozen config,
then the model. The blocks are reused by ``vit.py``.

Data flow::

    x (B, T, n_mels) -> conv frame embedding (stride s) -> + positional embedding -> n_layers x Block
      -> LayerNorm -> pooling over time (attention or mean) -> Linear -> logits (B, n_labels)

The positional embedding is learned for ``max_frames`` embedded frames; longer inputs linearly
interpolate it, shorter ones use its first rows, so any T >= 1 works (streaming windows of any length).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .base import WindowModel

__all__ = ["TransformerConfig", "TransformerTagger", "Block", "AttentionPool", "resize_pos_emb"]


class SelfAttention(nn.Module):
    """Multi-head self-attention (no mask: every frame of a window sees every other)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape  # (B, T, D)
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q = q.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, h, T, D/h)
        k = k.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, h, T, D/h)
        v = v.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, h, T, D/h)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))  # (B, T, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))  # (B, T, D)
        return x + self.mlp(self.ln2(x))  # (B, T, D)


class AttentionPool(nn.Module):
    """Weighted mean over time with weights from a learned scoring layer (softmax over T)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.score(x).float(), dim=1).to(x.dtype)  # (B, T, 1)
        return (w * x).sum(dim=1)  # (B, D)


def resize_pos_emb(pos: torch.Tensor, n: int) -> torch.Tensor:
    """Positional embedding rows for ``n`` positions: the first ``n`` rows, or a linear interpolation.

    Args:
        pos: (1, L, D) learned embedding.
        n: positions needed.

    Returns:
        (1, n, D)
    """
    L = pos.shape[1]
    if n <= L:
        return pos[:, :n]
    return F.interpolate(pos.transpose(1, 2), size=n, mode="linear", align_corners=True).transpose(1, 2)


@dataclass(frozen=True)
class TransformerConfig:
    n_mels: int = 128  # input mel bands
    n_labels: int = 163  # output logits
    d_model: int = 128  # width of the residual stream
    n_layers: int = 3
    n_heads: int = 4
    d_ff: int = 512  # hidden width of each MLP
    embed_kernel: int = 3  # frames seen by the conv frame embedding (1: a per-frame linear embedding)
    embed_stride: int = 2  # frames per token (2 halves the sequence length the attention sees)
    max_frames: int = 512  # tokens with a learned position; more are interpolated (512 tokens = 16 s at stride 2)
    pooling: str = "attention"  # "attention" or "mean"
    dropout: float = 0.1


class TransformerTagger(WindowModel):
    """Window model: (B, T, n_mels) log-mel -> (B, n_labels) logits."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {config.pooling!r}")
        self.config = config
        c = config
        self.in_norm = nn.LayerNorm(c.n_mels)  # per-frame normalisation: log-mel scales differ (db vs log)
        self.embed = nn.Conv1d(c.n_mels, c.d_model, c.embed_kernel, stride=c.embed_stride, padding=c.embed_kernel // 2)
        self.pos = nn.Parameter(torch.zeros(1, c.max_frames, c.d_model))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.d_ff, c.dropout) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.pool = AttentionPool(c.d_model) if c.pooling == "attention" else None
        self.head = nn.Linear(c.d_model, c.n_labels)
        self.apply(_init_weights)
        nn.init.normal_(self.pos, std=0.02)
        for name, p in self.named_parameters():  # GPT-2 style scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layers))

    def features(self, x: torch.Tensor, *, normed: bool = False) -> torch.Tensor:
        """Pooled embedding of a window. x (B, T, n_mels) -> (B, d_model). ``normed``: ``x`` is already through
        ``in_norm`` (per frame, so overlapping windows can share it)."""
        if not normed:
            x = self.in_norm(x)  # (B, T, n_mels)
        return self.encode(self.embed(x.transpose(1, 2)).transpose(1, 2))  # embedded: (B, T', D)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Embedded tokens (B, T', D), T' = ceil(T / stride) -> pooled embedding (B, D)."""
        h = self.drop(h + resize_pos_emb(self.pos, h.shape[1]).to(h.dtype))  # (B, T', D)
        for block in self.blocks:
            h = block(h)  # (B, T', D)
        h = self.ln_f(h)  # (B, T', D)
        return self.pool(h) if self.pool is not None else h.mean(dim=1)  # (B, D)

    def forward(self, x: torch.Tensor, *, normed: bool = False) -> torch.Tensor:
        return self.head(self.features(x, normed=normed))  # (B, n_labels)

    def embed_windows(self, normed: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
        """The conv embedding of the windows ``normed[:, s : s + length]`` for each ``s`` in ``starts``, read
        straight out of one sequence: (B, T, n_mels) already through ``in_norm``, (n,) -> (B * n, T', D).

        Equals ``embed`` on each window stacked (to float rounding: one matmul per token instead of the conv
        kernel), without materialising the windows twice: the frames each token's kernel reads (zeros where it
        reaches into the window's padding) are gathered once, laid out (token, kernel frame, channel) so that
        they are already the matmul's rows.
        """
        conv = self.embed
        K, S, p = conv.kernel_size[0], conv.stride[0], int(cast(tuple[int, ...], conv.padding)[0])
        B, T, C = normed.shape
        n_tok = (length + 2 * p - K) // S + 1
        rel = S * torch.arange(n_tok, device=normed.device)[:, None] - p + torch.arange(K, device=normed.device)
        inside = ((rel >= 0) & (rel < length)).flatten()  # (n_tok * K,) kernel frames inside the window
        idx = starts[:, None] + rel.flatten()[None]  # (n, n_tok * K) frame of the sequence
        idx = torch.where(inside[None], idx, T)  # outside: the zero frame appended below
        padded = torch.cat([normed, normed.new_zeros((B, 1, C))], dim=1)  # (B, T + 1, C)
        rows = padded[:, idx].view(B * starts.shape[0] * n_tok, K * C)  # (B n n_tok, K C)
        weight = conv.weight.permute(0, 2, 1).reshape(conv.out_channels, K * C)  # (D, K C): (k, c) order
        return F.linear(rows, weight, conv.bias).view(B * starts.shape[0], n_tok, -1)  # (B n, T', D)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
