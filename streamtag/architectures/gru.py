"""Recurrent taggers: the seed's bidirectional GRU (a window model) and a stateful unidirectional GRU for streaming.

BiGRU (window model)::

    x (B, T, n_mels) -> LayerNorm -> Linear + GELU (per frame) -> bidirectional GRU
      -> [mean over T ; max over T] -> Linear -> logits (B, n_labels)

StatefulGRU (streaming model, ``stateful = True``)::

    x (B, T, n_mels) -> LayerNorm -> Linear + GELU (per frame, no look-ahead) -> unidirectional GRU -> y_t
      -> bias-corrected exponential moving average of y_t (time constant tau_frames) -> LayerNorm -> Linear
      -> per-frame logits (B, T, n_labels); ``step``/``forward`` return the logits after the last frame.

Calibration over long streams: a GRU's last output reacts to the last fraction of a second, so its raw
read-out flickers, and a model trained only on 5 s crops has never been asked for an answer at hour 3. The
read-out therefore comes from an EMA of the GRU outputs (an explicit part of the state, like the hidden
state) with bias correction ``m_t / (1 - d^n)`` so the first frames are not pulled towards zero, and
training (``train/train.py``) uses random-length crops with a loss on the per-frame logits of every frame
after a short warm-up (``forward_frames``), so the read-out is trained to be right at every time, not only
at the end of one fixed-length crop.

State layout: ONE tensor of shape (B, n_layers * hidden + hidden + 1), batch first, so a runner can stack,
index and reset streams' states with plain tensor ops: ``[h_layer0 | ... | h_layer{L-1} | ema m | count n]``.
Every operation is causal and frame-local before the GRU, so feeding a stream in chunks of any sizes gives
exactly the logits of one full-sequence run (``tests/test_architectures.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import StatefulModel, WindowModel, check_ends
from .threads import few_streams, one_thread

__all__ = ["BiGRUConfig", "BiGRUTagger", "StatefulGRUConfig", "StatefulGRUTagger"]


class FrameEmbed(nn.Module):
    """Per-frame (frame-local, hence causal) input layer: LayerNorm over mels, Linear, GELU."""

    def __init__(self, n_mels: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(n_mels)
        self.fc = nn.Linear(n_mels, d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.gelu(self.fc(self.norm(x))))  # (B, T, d_out)


# --------------------------------------------------------------------------------------------- BiGRU


@dataclass(frozen=True)
class BiGRUConfig:
    n_mels: int = 128  # input mel bands
    n_labels: int = 163  # output logits
    d_embed: int = 128  # per-frame embedding width
    hidden: int = 128  # GRU hidden size per direction
    n_layers: int = 2
    dropout: float = 0.1


class BiGRUTagger(WindowModel):
    """Window model: bidirectional GRU over a whole window, mean+max pooled."""

    def __init__(self, config: BiGRUConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = FrameEmbed(c.n_mels, c.d_embed, c.dropout)
        self.gru = nn.GRU(
            c.d_embed, c.hidden, num_layers=c.n_layers, batch_first=True, bidirectional=True,
            dropout=c.dropout if c.n_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(4 * c.hidden, c.n_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, n_mels) -> pooled (B, 4 * hidden)."""
        y, _ = self.gru(self.embed(x))  # (B, T, 2H)
        return torch.cat([y.mean(dim=1), y.amax(dim=1)], dim=1)  # (B, 4H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))  # (B, n_labels)


# --------------------------------------------------------------------------------------- StatefulGRU


@dataclass(frozen=True)
class StatefulGRUConfig:
    n_mels: int = 128  # input mel bands
    n_labels: int = 163  # output logits
    d_embed: int = 128  # per-frame embedding width
    hidden: int = 192  # GRU hidden size
    n_layers: int = 2
    tau_frames: float = 94.0  # EMA time constant of the read-out, frames (94 x 16 ms = 1.5 s at hop 256, 16 kHz)
    dropout: float = 0.1


class StatefulGRUTagger(StatefulModel):
    """Streaming model: explicit state in, state out; chunked runs equal one full run."""

    _EMA_BLOCK = 256  # frames per block of the vectorised EMA (bounds the (block, block) weight matrix)

    def __init__(self, config: StatefulGRUConfig) -> None:
        super().__init__()
        if config.tau_frames < 1.0:
            raise ValueError(f"tau_frames must be >= 1, got {config.tau_frames}")
        self.config = c = config
        self.embed = FrameEmbed(c.n_mels, c.d_embed, c.dropout)
        self.gru = nn.GRU(
            c.d_embed, c.hidden, num_layers=c.n_layers, batch_first=True,
            dropout=c.dropout if c.n_layers > 1 else 0.0,
        )
        self.ln = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.n_labels)

    # -- state -------------------------------------------------------------------------------------

    @property
    def state_size(self) -> int:
        return self.config.n_layers * self.config.hidden + self.config.hidden + 1

    def init_state(self, batch_size: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """A fresh state for ``batch_size`` streams: (B, n_layers * hidden + hidden + 1) zeros."""
        return torch.zeros(batch_size, self.state_size, device=device)

    def _unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L, H = self.config.n_layers, self.config.hidden
        B = state.shape[0]
        h = state[:, : L * H].reshape(B, L, H).transpose(0, 1).contiguous()  # (L, B, H) as nn.GRU wants
        m = state[:, L * H : L * H + H]  # (B, H) un-normalised EMA
        n = state[:, -1]  # (B,) frames seen
        return h, m, n

    @staticmethod
    def _pack(h: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        B = m.shape[0]
        return torch.cat([h.transpose(0, 1).reshape(B, -1), m, n[:, None]], dim=1)  # (B, S)

    # -- EMA read-out ------------------------------------------------------------------------------

    def _ema(self, y: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
        """Un-normalised EMA m_t = d * m_{t-1} + a * y_t for every frame. y (B, T, H), m0 (B, H) -> (B, T, H)."""
        a = 1.0 / self.config.tau_frames
        d = 1.0 - a
        out = []
        m = m0
        for s in range(0, y.shape[1], self._EMA_BLOCK):
            blk = y[:, s : s + self._EMA_BLOCK]  # (B, t, H)
            t = blk.shape[1]
            idx = torch.arange(t, device=y.device, dtype=torch.float32)
            lag = idx[:, None] - idx[None, :]  # (t, t): i - k
            w = torch.where(lag >= 0, a * d ** lag.clamp(min=0), torch.zeros((), device=y.device))  # (t, t)
            carry = d ** (idx + 1.0)  # (t,) decay of the state entering the block
            mb = torch.einsum("ik,bkh->bih", w.to(blk.dtype), blk) + carry.to(blk.dtype)[None, :, None] * m[:, None]
            out.append(mb)  # (B, t, H)
            m = mb[:, -1]
        return torch.cat(out, dim=1)  # (B, T, H)

    def forward_frames(
        self, x: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits after every frame. x (B, T, n_mels), T >= 1 -> ((B, T, n_labels), new state (B, S))."""
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, x.device)
        h0, m0, n0 = self._unpack(state.float())
        # a few streams step frame by frame through tiny matmuls: one intra-op thread is 20-50x faster than
        # two under load (see .threads); many streams' larger matmuls keep torch's threads
        with one_thread(few_streams(x)):
            y, hT = self.gru(self.embed(x), h0.to(x.dtype))  # (B, T, H), (L, B, H)
        m = self._ema(y.float(), m0)  # (B, T, H)
        n = n0[:, None] + torch.arange(1, T + 1, device=x.device, dtype=torch.float32)[None]  # (B, T)
        d = 1.0 - 1.0 / self.config.tau_frames
        ema = m / (1.0 - d ** n)[..., None]  # (B, T, H) bias-corrected
        logits = self.head(self.drop(self.ln(ema.to(x.dtype))))  # (B, T, n_labels)
        return logits, self._pack(hT.float(), m[:, -1], n[:, -1])

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the frames that arrived since the last call. x (B, T, n_mels) -> ((B, n_labels), state)."""
        if x.shape[1] == 0:  # nothing new: the current read-out, state unchanged
            _, m, n = self._unpack(state.float())
            d = 1.0 - 1.0 / self.config.tau_frames
            ema = m / (1.0 - d ** n.clamp(min=1.0))[:, None]
            return self.head(self.ln(ema.to(x.dtype))), state
        logits, state = self.forward_frames(x, state)
        return logits[:, -1], state  # (B, n_labels)

    def step_many(
        self, x: torch.Tensor, state: torch.Tensor, ends: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over ``x[:, :ends[-1]]``; the per-frame logits at each end. -> ((B, n, n_labels), state)."""
        ends = check_ends(x.shape[1], ends)
        if not ends:
            return x.new_zeros((x.shape[0], 0, self.config.n_labels)), state
        logits, state = self.forward_frames(x[:, : ends[-1]], state)  # (B, T, n_labels)
        return logits[:, [e - 1 for e in ends]], state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full-sequence run from a fresh state: the logits after the last frame. (B, T, n_mels) -> (B, n_labels)."""
        logits, _ = self.forward_frames(x)
        return logits[:, -1]
