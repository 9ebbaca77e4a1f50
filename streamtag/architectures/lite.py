"""A cheap streaming student: a causal dilated 1-D conv front end over log-mel, trained to reproduce the
per-frame embedding that st-gru-msd's head computes from musicnn's 753 features, under that head's GRU.

st-gru-msd pays musicnn's frozen front end on every hop (~0.47 GFLOP per 0.5 s hop), so it sustains only a few
dozen real-time streams on a 2-core CPU. This model replaces that front end with a small temporal conv net
(TCN) whose per-frame cost is about 1 MFLOP, and keeps the rest of st-gru-msd (its GRU and EMA read-out)::

    log-mel (B, n, n_mels), the frames since the last hop
      -> per-mel affine normalisation (buffers fitted on the training corpus)
      -> causal Conv1d(n_mels -> channels, kernel)                            state: its last kernel - 1 inputs
      -> len(dilations) residual blocks: x + Conv1x1(GELU(CausalConv_d(LN(x))))   state: (kernel - 1) * d inputs each
      -> LN -> Linear(channels -> d_embed): z, the predicted pre-activation embedding of stream frame t - lag
      -> GELU -> StatefulGRUTagger's GRU + bias-corrected EMA + LayerNorm + Linear (state: GRU + EMA + count)
      -> logits (B, n_labels)

Training (``research/lite.py``) regresses z on the teacher's ``embed.fc(embed.norm(features))`` of the frame
``lag_frames`` earlier (stage A: many targets per second of audio), then fine-tunes on the teacher's window
targets (stage B). Every layer is causal, so the front end sees ``lag_frames`` frames past the frame it
describes: ``lag_frames`` is that look-ahead, reported to the engine like the musicnn students' delay.

State layout: ONE (B, state_size) tensor ``[conv_in history | block 0 history | ... | head state]``, each
history (B, channels, frames) flattened channels first. Zero history is the zero padding a full-sequence run
uses, so a chunked run equals a full-sequence run and batched streams equal streams run alone (tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import StatefulModel, check_ends
from .gru import StatefulGRUConfig, StatefulGRUTagger

__all__ = ["LiteConfig", "LiteStudent"]


@dataclass(frozen=True)
class LiteConfig:
    n_mels: int = 96  # input mel bands
    n_labels: int = 50  # output logits
    channels: int = 128  # width of the conv front end
    kernel: int = 3  # time extent of every conv kernel (frames)
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # one residual block per dilation
    d_embed: int = 128  # the head's per-frame input (st-gru-msd's embedding width)
    lag_frames: int = 64  # frames between the newest input and the frame an output describes
    head_config: dict[str, Any] = field(default_factory=dict)  # StatefulGRUConfig fields less n_mels / n_labels / d_embed

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))  # JSON gives lists
        if min(self.n_mels, self.n_labels, self.channels, self.kernel, self.d_embed) < 1:
            raise ConfigError(f"lite: sizes must be positive, got {self}")
        if any(d < 1 for d in self.dilations) or self.lag_frames < 0:
            raise ConfigError(f"lite: dilations must be >= 1 and lag_frames >= 0, got {self}")
        unknown = set(self.head_config) - {"hidden", "n_layers", "tau_frames", "dropout"}
        if unknown:
            raise ConfigError(f"lite: head_config does not take {sorted(unknown)}")

    @property
    def receptive_field(self) -> int:
        """Input frames one output reads (the newest included)."""
        return 1 + (self.kernel - 1) * (1 + sum(self.dilations))


class _ChannelNorm(nn.Module):
    """LayerNorm over channels of every frame, in (B, C, T) layout (frame-local, hence causal)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)  # (B, 1, T)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)  # (B, 1, T)
        return (x - mu) * torch.rsqrt(var + self.eps) * self.weight[:, None] + self.bias[:, None]  # (B, C, T)


class _Gelu(nn.Module):
    """The head's input layer: the front end already produced the embedding's pre-activation."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.gelu(x))  # (B, T, d_embed)


class _Block(nn.Module):
    """x + Conv1x1(GELU(causal dilated Conv(LN(x)))). The causal conv reads ``hist`` earlier LN(x) frames."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.norm = _ChannelNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.hist = (kernel - 1) * dilation


class LiteStudent(StatefulModel):
    """Causal TCN front end -> st-gru-msd's GRU head. Explicit state; chunked runs equal one full run."""

    in_shift: torch.Tensor
    in_scale: torch.Tensor

    def __init__(self, config: LiteConfig) -> None:
        super().__init__()
        self.config = c = config
        self.register_buffer("in_shift", torch.zeros(c.n_mels))  # per-mel mean of the training log-mel
        self.register_buffer("in_scale", torch.ones(c.n_mels))  # 1 / its standard deviation
        self.conv_in = nn.Conv1d(c.n_mels, c.channels, c.kernel)
        self.blocks = nn.ModuleList(_Block(c.channels, c.kernel, d) for d in c.dilations)
        self.out_norm = _ChannelNorm(c.channels)
        self.out = nn.Linear(c.channels, c.d_embed)
        hc = {"hidden": 160, "n_layers": 1, "tau_frames": 94.0, "dropout": 0.1, **c.head_config}
        self.head = StatefulGRUTagger(StatefulGRUConfig(n_mels=c.d_embed, n_labels=c.n_labels, d_embed=c.d_embed,
                                                        **hc))
        self.head.embed = _Gelu(float(hc["dropout"]))  # type: ignore[assignment]  # z is the embedding
        self.lag_frames = int(c.lag_frames)
        # (channels, history frames) of each causal conv's input, in state order
        self._hists = [(c.n_mels, c.kernel - 1)] + [(c.channels, int(b.hist)) for b in self._blocks]

    @property
    def _blocks(self) -> list[_Block]:
        return [b for b in self.blocks if isinstance(b, _Block)]

    @property
    def front_state_size(self) -> int:
        return sum(ch * h for ch, h in self._hists)

    @property
    def state_size(self) -> int:
        return self.front_state_size + self.head.state_size

    def init_state(self, batch_size: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """Fresh state for ``batch_size`` streams: (B, state_size) zeros (zero history = zero padding)."""
        return torch.zeros(batch_size, self.state_size, device=device)

    def _split(self, state: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        B, o, hs = state.shape[0], 0, []
        for ch, h in self._hists:
            hs.append(state[:, o : o + ch * h].view(B, ch, h))  # (B, C, H) channels first, as Conv1d wants
            o += ch * h
        return hs, state[:, o:]

    def embed_frames(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The front end: log-mel (B, T, n_mels) -> (z (B, T, d_embed), new front-end state (B, front_state_size)).
        z[:, j] is the predicted embedding pre-activation of the frame ``lag_frames`` before input frame j."""
        B, T, _ = x.shape
        hs, _ = self._split(state.to(x.dtype))
        h = ((x - self.in_shift) * self.in_scale).transpose(1, 2)  # (B, n_mels, T)
        new_hs = []
        z = torch.cat([hs[0], h], dim=2)  # (B, n_mels, H0 + T)
        new_hs.append(z[:, :, z.shape[2] - hs[0].shape[2] :])
        h = self.conv_in(z)  # (B, C, T)
        for blk, hist in zip(self._blocks, hs[1:]):
            u = torch.cat([hist, blk.norm(h)], dim=2)  # (B, C, hist + T)
            new_hs.append(u[:, :, u.shape[2] - blk.hist :])
            h = h + blk.mix(F.gelu(blk.conv(u)))  # (B, C, T)
        zf = self.out(self.out_norm(h).transpose(1, 2))  # (B, T, d_embed)
        return zf, torch.cat([s.reshape(B, -1) for s in new_hs], dim=1)

    def forward_frames(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits after every input frame: x (B, T >= 1, n_mels) -> ((B, T, n_labels), new state). Output j
        describes the music up to input frame j - lag_frames."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        fs = self.front_state_size
        zf, f_state = self.embed_frames(x, state)
        logits, h_state = self.head.forward_frames(zf, state[:, fs:])
        return logits, torch.cat([f_state.to(h_state.dtype), h_state], dim=1)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New log-mel frames (B, n, n_mels) and state -> (logits (B, n_labels), new state)."""
        if x.shape[1] == 0:  # nothing new: the head's current read-out, state unchanged
            fs = self.front_state_size
            return self.head.step(x.new_zeros((x.shape[0], 0, self.config.d_embed)), state[:, fs:])[0], state
        logits, state = self.forward_frames(x, state)
        return logits[:, -1], state  # (B, n_labels)

    def step_many(self, x: torch.Tensor, state: torch.Tensor, ends: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over ``x[:, :ends[-1]]``; the per-frame logits at each end. -> ((B, n, n_labels), state)."""
        ends = check_ends(x.shape[1], ends)
        if not ends:
            return x.new_zeros((x.shape[0], 0, self.config.n_labels)), state
        logits, state = self.forward_frames(x[:, : ends[-1]], state)  # (B, T, n_labels)
        return logits[:, [e - 1 for e in ends]], state
