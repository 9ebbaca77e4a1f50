"""musicnn (Pons & Serra, 2019): a musically motivated CNN tagger, ported from the TensorFlow original.

The network reads a log-mel patch (B, T, n_mels) in musicnn's units, log10(1 + 10000 * mel), and returns
one logit per tag; ``sigmoid(logits)`` is musicnn's output. It is fully convolutional in time followed by
global pooling, so any window length T >= 1 frame works (the published models were trained on 187 frames,
3 s at 16 kHz with hop 256).

Layout, as in ``musicnn/models.py`` of the musicnn 0.1.0 wheel (ISC license, MTG-UPF):

- input batch norm (one channel) over the whole spectrogram;
- front end: two *timbral* convs, kernels (7 frames x 38 / 67 mel bands), time padded by 3 on each side,
  and three *temporal* convs, kernels (128 / 64 / 32 frames x 1 band) with TensorFlow "same" padding in
  time; each conv is followed by ReLU, then batch norm, then a max over all remaining mel bands;
- mid end: three 1-D convs of kernel 7 over time (zero padding 3/3), ReLU then batch norm, the 2nd and 3rd
  with residual connections; front-end and mid-end features are concatenated ("dense" connection);
- back end: max and mean over time, interleaved per channel as TensorFlow's concat + flatten lays them out,
  batch norm, dropout, dense + ReLU, batch norm, dropout, output dense.

Batch norm uses TensorFlow's epsilon (1e-3) and, in eval mode, the moving statistics. TensorFlow's "same"
padding puts the odd extra element at the end, which :func:`same_padding` reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["MusicnnConfig", "Musicnn", "same_padding"]


@dataclass(frozen=True)
class MusicnnConfig:
    n_mels: int = 96  # mel bands of the input
    n_labels: int = 50  # output tags
    timbral_filters: int = 204  # filters per timbral conv: int(1.6 * 128)
    timbral_frames: int = 7  # time extent of the timbral kernels (frames)
    timbral_bands: tuple[int, ...] = (38, 67)  # mel extent of each timbral kernel: int(0.4 / 0.7 * n_mels)
    temporal_filters: int = 51  # filters per temporal conv: int(1.6 * 32)
    temporal_frames: tuple[int, ...] = (128, 64, 32)  # time extent of each temporal kernel (frames, 1 band)
    midend_filters: int = 64  # channels of the mid-end convs
    midend_frames: int = 7  # time extent of the mid-end kernels (frames)
    midend_layers: int = 3  # mid-end convs (all but the first residual)
    backend_units: int = 200  # units of the penultimate dense layer
    dropout: float = 0.5  # back-end dropout (training only)
    bn_eps: float = 1e-3  # TensorFlow's batch-norm epsilon

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; store tuples so configs compare equal after a bundle round trip
        object.__setattr__(self, "timbral_bands", tuple(int(b) for b in self.timbral_bands))
        object.__setattr__(self, "temporal_frames", tuple(int(k) for k in self.temporal_frames))
        if any(not 0 < b <= self.n_mels for b in self.timbral_bands):
            raise ConfigError(f"musicnn: timbral_bands {self.timbral_bands} must lie in [1, n_mels={self.n_mels}]")
        sizes = (self.n_mels, self.n_labels, self.timbral_filters, self.timbral_frames, self.temporal_filters,
                 self.midend_filters, self.midend_frames, self.midend_layers, self.backend_units,
                 *self.temporal_frames)
        if min(sizes) <= 0:
            raise ConfigError(f"musicnn: sizes must be positive, got {self}")

    @property
    def frontend_channels(self) -> int:
        return self.timbral_filters * len(self.timbral_bands) + self.temporal_filters * len(self.temporal_frames)

    @property
    def midend_channels(self) -> int:
        """Channels pooled by the back end: front end + every mid-end layer (dense connection)."""
        return self.frontend_channels + self.midend_filters * self.midend_layers


def same_padding(kernel: int) -> tuple[int, int]:
    """(before, after) zero padding of TensorFlow's "same" for stride 1: the odd element goes after."""
    total = kernel - 1
    return total // 2, total - total // 2


class FrontendBlock(nn.Module):
    """Conv2d over (time, mel) -> ReLU -> batch norm -> max over mel. (B, 1, T, n_mels) -> (B, C, T)."""

    def __init__(self, filters: int, frames: int, bands: int, eps: float) -> None:
        super().__init__()
        self.pad = same_padding(frames)  # time only: the max over all bands follows
        self.conv = nn.Conv2d(1, filters, kernel_size=(frames, bands))
        self.bn = nn.BatchNorm2d(filters, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, *self.pad))  # (B, 1, T + frames - 1, n_mels)
        z = self.conv(x)  # (B, C, T, n_mels - bands + 1)
        if self.training:
            return self.bn(F.relu(z)).amax(dim=3)  # (B, C, T)
        # Inference: batch norm is a fixed per-channel affine map a * v + b and ReLU is monotone, so the max
        # over bands of bn(relu(z)) is bn(relu(max z)) where a >= 0 and bn(relu(min z)) where a < 0. Same
        # result (monotone maps commute with max), without three passes over the large (B, C, T, F) tensor.
        zmax, zmin = z.amax(dim=3), z.amin(dim=3)  # (B, C, T) each
        scale_positive = (self.bn.weight >= 0).view(1, -1, 1)  # sign of a = gamma / sqrt(var + eps)
        extreme = torch.where(scale_positive, zmax, zmin)  # (B, C, T)
        return self.bn(F.relu(extreme).unsqueeze(3)).squeeze(3)  # (B, C, T)


class MidendBlock(nn.Module):
    """1-D conv over time -> ReLU -> batch norm. (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, filters: int, frames: int, eps: float) -> None:
        super().__init__()
        self.pad = same_padding(frames)
        self.conv = nn.Conv1d(in_channels, filters, kernel_size=frames)
        self.bn = nn.BatchNorm1d(filters, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad)  # (B, C_in, T + frames - 1)
        return self.bn(F.relu(self.conv(x)))  # (B, C_out, T)


class Musicnn(nn.Module):
    """musicnn tagger. forward: (B, T, n_mels) log10(1 + 10000 mel) -> (B, n_labels) logits."""

    stateful = False

    def __init__(self, config: MusicnnConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.input_bn = nn.BatchNorm2d(1, eps=c.bn_eps)
        self.timbral = nn.ModuleList(
            FrontendBlock(c.timbral_filters, c.timbral_frames, bands, c.bn_eps) for bands in c.timbral_bands
        )
        self.temporal = nn.ModuleList(
            FrontendBlock(c.temporal_filters, frames, 1, c.bn_eps) for frames in c.temporal_frames
        )
        self.midend = nn.ModuleList(
            MidendBlock(c.frontend_channels if i == 0 else c.midend_filters, c.midend_filters, c.midend_frames,
                        c.bn_eps)
            for i in range(c.midend_layers)
        )
        self.pool_bn = nn.BatchNorm1d(2 * c.midend_channels, eps=c.bn_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.dense = nn.Linear(2 * c.midend_channels, c.backend_units)
        self.dense_bn = nn.BatchNorm1d(c.backend_units, eps=c.bn_eps)
        self.out = nn.Linear(c.backend_units, c.n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.config.n_mels or x.shape[1] < 1:
            raise ValueError(f"musicnn expects (B, T >= 1, {self.config.n_mels}) log-mel, got {tuple(x.shape)}")
        x = self.input_bn(x.unsqueeze(1))  # (B, 1, T, n_mels)
        front = torch.cat([blk(x) for blk in (*self.timbral, *self.temporal)], dim=1)  # (B, C_front, T)
        features = [front]
        h = front
        for i, blk in enumerate(self.midend):
            h = blk(h) if i == 0 else blk(h) + h  # (B, midend_filters, T), residual after the first
            features.append(h)
        feats = torch.cat(features, dim=1)  # (B, C_mid, T)
        # TF: concat([max, mean], axis=2) on (B, C_mid, 1) then flatten -> max_0, mean_0, max_1, mean_1, ...
        pooled = torch.stack([feats.amax(dim=2), feats.mean(dim=2)], dim=2)  # (B, C_mid, 2)
        pooled = self.pool_bn(pooled.flatten(1))  # (B, 2 * C_mid)
        h = self.dense_bn(F.relu(self.dense(self.dropout(pooled))))  # (B, backend_units)
        return self.out(self.dropout(h))  # (B, n_labels)
