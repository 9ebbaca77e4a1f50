"""CRNN: 2-D conv blocks over the log-mel image, then a bidirectional GRU over time (the seed's best non-transformer).

Data flow::

    x (B, T, n_mels) -> (B, 1, n_mels, T) -> BatchNorm2d over the input
      -> n_blocks x [Conv3x3 -> BatchNorm -> ELU -> MaxPool (freq, time) -> Dropout]
      -> (B, C * F', T') -> Linear -> bidirectional GRU -> [mean ; max] over T' -> Linear -> logits (B, n_labels)

Time pooling uses ``ceil_mode`` so windows of any length T >= 1 work; frequency pooling stops once a
single band is left.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import WindowModel

__all__ = ["CRNNConfig", "CRNN"]


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: tuple[int, int], dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ELU()
        self.pool = nn.MaxPool2d(pool, ceil_mode=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(self.act(self.bn(self.conv(x)))))  # (B, C, F / pf, T / pt)


@dataclass(frozen=True)
class CRNNConfig:
    n_mels: int = 128  # input mel bands
    n_labels: int = 163  # output logits
    channels: tuple[int, ...] = (32, 64, 64, 128)  # conv block widths
    freq_pool: int = 4  # mel bands merged by each block's max-pool (until one is left)
    time_pool: tuple[int, ...] = (2, 2, 1, 1)  # frames merged by each block's max-pool
    d_rnn_in: int = 128  # projection before the GRU
    hidden: int = 96  # GRU hidden size per direction
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the config hashable and comparable
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "time_pool", tuple(self.time_pool))
        if len(self.time_pool) != len(self.channels):
            raise ValueError("time_pool needs one entry per conv block")


class CRNN(WindowModel):
    """Window model: conv front end + bidirectional GRU."""

    def __init__(self, config: CRNNConfig) -> None:
        super().__init__()
        self.config = c = config
        self.in_bn = nn.BatchNorm2d(1)
        blocks = []
        f, c_in = c.n_mels, 1
        for c_out, pt in zip(c.channels, c.time_pool):
            pf = min(c.freq_pool, f)
            blocks.append(ConvBlock(c_in, c_out, (pf, pt), c.dropout))
            f = -(-f // pf)  # ceil
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(c_in * f, c.d_rnn_in)
        self.gru = nn.GRU(c.d_rnn_in, c.hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(4 * c.hidden, c.n_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, n_mels) -> pooled (B, 4 * hidden)."""
        h = self.in_bn(x.transpose(1, 2).unsqueeze(1))  # (B, 1, n_mels, T)
        h = self.blocks(h)  # (B, C, F', T')
        B, C, Fp, Tp = h.shape
        h = h.permute(0, 3, 1, 2).reshape(B, Tp, C * Fp)  # (B, T', C * F')
        y, _ = self.gru(torch.relu(self.proj(h)))  # (B, T', 2H)
        return torch.cat([y.mean(dim=1), y.amax(dim=1)], dim=1)  # (B, 4H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))  # (B, n_labels)
