"""Streaming students on musicnn's frozen front end: a small head over the teacher's own per-frame features.

Distilling musicnn from scratch into a small network needs far more (and more varied) music than a freely
licensed corpus holds: the front end must rediscover the teacher's timbral and temporal filters. These
students keep those filters instead, frozen and copied from the teacher (as DistilBERT keeps its teacher's
layers), and learn only what musicnn's back end does over time, as a streaming model::

    log-mel (B, n, n_mels), the frames since the last hop
      -> MusicnnFrames: musicnn's front end + mid end, causal and incremental (state: the last frames each
         kernel needs), one 753-channel feature per new frame, 73 frames (1.17 s) behind the input
      -> head "stateful_gru": StatefulGRUTagger over the features (state: GRU + EMA read-out)
         head "transformer": TransformerTagger over the last ``window_frames`` features (state: that window)
      -> logits (B, n_labels)

So a hop costs the front end on its new frames only (not on a whole window, as a window model pays) plus the
head. Both heads are ``stateful`` in the runner's sense: ``step(x, state)`` with one flat (B, S) state
tensor, and a chunked run equals a full-sequence run (tested).

The head modules are the ordinary ``transformer`` / ``stateful_gru`` architectures with ``n_mels`` set to the
feature width, so ``train/distill/run.py`` trains them on cached features and this module only assembles them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from ..errors import ConfigError
from .base import StatefulModel, StreamingModel, check_ends
from .fastfront import bf16_native
from .fasthead import CompactGRUHead
from .gru import StatefulGRUTagger
from .musicnn import MusicnnConfig, MusicnnFrames, group_size
from .threads import few_streams, map_threads, one_thread, workers
from .transformer import TransformerTagger

__all__ = ["MusicnnStudentConfig", "MusicnnStudent", "HEADS"]

HEADS = ("stateful_gru", "transformer")


@dataclass(frozen=True)
class MusicnnStudentConfig:
    n_mels: int = 96  # input mel bands (musicnn's)
    n_labels: int = 50  # output logits
    head: str = "stateful_gru"  # "stateful_gru" or "transformer"
    head_config: dict[str, Any] = field(default_factory=dict)  # the head's config, less n_mels / n_labels
    window_frames: int = 312  # transformer head: feature frames it attends over (312 = 5 s at 16 kHz, hop 256)
    musicnn: dict[str, Any] = field(default_factory=dict)  # MusicnnConfig fields of the frozen feature extractor
    # front-end channels the CPU computes (research/liveness.py measured the others inactive on real music); () = all
    live_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "live_channels", tuple(int(c) for c in self.live_channels))  # JSON gives lists
        if self.head not in HEADS:
            raise ConfigError(f"student head must be one of {HEADS}, got {self.head!r}")
        if self.window_frames < 1:
            raise ConfigError(f"window_frames must be >= 1, got {self.window_frames}")


_SPLIT_STREAMS = 32  # step: fewest streams whose front end is split into groups on worker threads (GEMM path)
_STEP_SPAN = 512  # frames per pass of step_many through the frozen front end (bounds its (B, C, T, bands) temporary)
_HEAD_WINDOWS = 16  # transformer-head windows per forward pass in step_many


class MusicnnStudent(StatefulModel):
    """Stateful student: frozen musicnn features -> trained streaming head."""

    precisions = ("fp32", "bf16")  # bf16: the frozen front end as bfloat16 GEMMs (musicnn.MusicnnFrames.set_precision)

    def auto_precision(self, device: torch.device) -> str:
        """bf16 on a CPU that multiplies bf16 in hardware (AMX / AVX512-BF16: about 3x the speed of fp32, outputs
        within ~3e-3); fp32 elsewhere, CUDA included (fast enough without it, and equal to the CPU reference)."""
        return "bf16" if device.type == "cpu" and bf16_native() else "fp32"

    def __init__(self, config: MusicnnStudentConfig) -> None:
        super().__init__()
        from . import build_model  # the package registry (imported late: it imports this module lazily)

        self.config = c = config
        self.frames = MusicnnFrames(MusicnnConfig(**{**c.musicnn, "n_mels": c.n_mels, "n_labels": c.n_labels}))
        if c.live_channels:
            self.frames.set_live_channels(c.live_channels)
        head_cfg = {**c.head_config, "n_mels": self.frames.channels, "n_labels": c.n_labels}
        self.head: StreamingModel = cast(StreamingModel, build_model(c.head, head_cfg))
        if c.head == "stateful_gru":
            self.head_state = int(self.head.init_state(1).shape[1])
        else:
            self.head_state = c.window_frames * self.frames.channels
        # frames between the newest input and the newest music an answer describes (the front end's look-ahead)
        self.lag_frames = int(self.frames.delay)
        # a live step of any number of streams keeps its ops on one intra-op thread on the CPU (the runner reads
        # this too): the GRU head is 31 frames of small sequential ops, where a second intra-op thread only spins
        # at every op (at 64 and 128 streams, the step's CPU per stream-hop doubled or tripled on a loaded 2-core
        # machine: docs/performance.md), and the front end's work already spreads over the cores as whole groups
        # of streams on worker threads. The transformer head is not small ops, but a live step of 32+ streams runs
        # per group of streams on the workers too (:meth:`_step_in_groups`), the head with its group.
        self.step_on_one_thread = c.head == "stateful_gru"
        self._compact_head: CompactGRUHead | None = None

    @property
    def state_size(self) -> int:
        return self.frames.state_size + self.head_state

    def set_precision(self, precision: str) -> None:
        """"fp32" or "bf16" for the frozen front and mid end and, on the CPU's GEMM path, the GRU head's matrix
        products (architectures/fasthead.py); states, gates and outputs stay float32."""
        self.frames.set_precision(precision)
        self._compact_head = None

    def _compact(self) -> CompactGRUHead | None:
        """The stateful GRU head on the front end's compact features (None for the transformer head)."""
        if self.config.head != "stateful_gru":
            return None
        if self._compact_head is None or self._compact_head.dtype != self.frames.compute_dtype:
            fr = self.frames
            live = fr.live if fr.live is not None else torch.ones(fr.config.frontend_channels, dtype=torch.bool)
            self._compact_head = CompactGRUHead(cast(StatefulGRUTagger, self.head), live, fr.inactive_features(),
                                                fr.config.frontend_channels, fr.compute_dtype)
        return self._compact_head

    def init_state(self, batch_size: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """Fresh state for ``batch_size`` streams: (B, state_size) zeros (zeros are musicnn's padding)."""
        return torch.zeros(batch_size, self.state_size, device=device)

    def head_logits(self, feats: torch.Tensor, head_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head on new features (B, n, channels) -> ((B, n_labels), new head state)."""
        if self.config.head == "stateful_gru":
            return self.head.step(feats, head_state)
        B, W, C = feats.shape[0], self.config.window_frames, self.frames.channels
        window = head_state.view(B, W, C)
        if feats.shape[1]:
            window = torch.cat([window, feats.to(window.dtype)], dim=1)[:, -W:]  # (B, W, C)
        return self.head(window), window.reshape(B, W * C)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New log-mel frames (B, n, n_mels) and state -> (logits (B, n_labels), new state)."""
        n_workers = workers() if x.device.type == "cpu" else 1
        if n_workers > 1 and x.shape[0] >= _SPLIT_STREAMS and x.shape[1] and not self.training:
            return self._step_in_groups(x, state, n_workers)
        with one_thread(few_streams(x) or (self.step_on_one_thread and x.device.type == "cpu")):
            new = state.new_empty(state.shape)  # the front end and the head write their parts in place
            # a few streams' front end as one group on this thread: a hand-over to the workers and each GEMM's fixed
            # cost per group (oneDNN reorders the weights on every call) cost more than the second core gains
            return self._step_into(x, state, new, split=x.shape[0] >= _SPLIT_STREAMS), new

    def _step_into(self, x: torch.Tensor, state: torch.Tensor, out: torch.Tensor, *, split: bool) -> torch.Tensor:
        """:meth:`step` of streams ``x`` with ``state``, the new state written into ``out`` (B, state_size); the
        logits. ``split``: the front end may spread groups of streams over the worker threads."""
        fs = self.frames.state_size
        values, inside, _ = self.frames.step_compact(x, state[:, :fs], out[:, :fs], split=split)
        head = self._compact() if inside is not None and not self.training else None
        if head is not None and inside is not None and x.shape[1]:
            return head.run(values, inside, state[:, fs:], [x.shape[1]], out[:, fs:])[0][:, -1]
        feats = values if inside is None else self.frames.expand(values, inside)  # (B, n, channels)
        logits, h_state = self.head_logits(feats, state[:, fs:])
        out[:, fs:] = h_state.to(out.dtype)
        return logits

    def _step_in_groups(self, x: torch.Tensor, state: torch.Tensor, n_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` of many streams on the CPU: each group of streams runs whole (front end, then head) on a
        worker thread of one intra-op thread. The GRU head's 31 frames of small ops then run on every core instead
        of after the front end on the caller's thread alone, where the other core idles unless another process
        fills it (a live step of 150 streams: 7% less wall time for 1.5% more CPU). The transformer head's window
        ran on one intra-op thread below 64 streams and on two, each waiting at every op, above: per group on the
        workers, 40 streams take 48% less wall time per hop, 72 streams 26% (docs/architecture.md). Streams are
        independent, so the answers are those of one group (tests/test_fastfront.py)."""
        B = x.shape[0]
        new = state.new_empty(state.shape)  # each group writes its rows of the state and logits in place
        logits = x.new_empty((B, self.config.n_labels))
        S = group_size(B, n_workers)

        def run(a: int) -> None:
            logits[a : a + S] = self._step_into(x[a : a + S], state[a : a + S], new[a : a + S], split=False)

        if self.frames._gemm_path(x):  # the GEMM path's parts and the compact head: built here, not by two workers
            self.frames._fast_parts()
            self._compact()
        map_threads(run, list(range(0, B, S)), n_workers)
        return logits, new

    def step_many(
        self, x: torch.Tensor, state: torch.Tensor, ends: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits after each end of ``x`` (B, T, n_mels) with the front end run over spans of up to
        ``_STEP_SPAN`` frames (not hop by hop) and the head batched over the ends: equals :meth:`step` chunk by
        chunk. Returns ((B, len(ends), n_labels), state after ``ends[-1]``)."""
        ends = check_ends(x.shape[1], ends)
        with one_thread(few_streams(x)):
            return self._step_many(x, state, ends)

    def _step_many(
        self, x: torch.Tensor, state: torch.Tensor, ends: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fs = self.frames.state_size
        out: list[torch.Tensor] = []
        start, i = 0, 0
        while i < len(ends):
            j = i + 1  # ends[i:j] form one span: at least one end, at most _STEP_SPAN frames when more fit
            while j < len(ends) and ends[j] - start <= _STEP_SPAN:
                j += 1
            group = ends[i:j]
            rel = [e - start for e in group]
            values, inside, f_state = self.frames.step_compact(x[:, start : group[-1]], state[:, :fs])
            head = self._compact() if inside is not None and not self.training else None
            if head is not None and inside is not None:
                logits, h_state = head.run(values, inside, state[:, fs:], rel)
            else:
                feats = values if inside is None else self.frames.expand(values, inside)  # (B, n, channels)
                logits, h_state = self._head_many(feats, state[:, fs:], rel)  # (B, len(group), n_labels)
            out.append(logits)
            state = torch.cat([f_state, h_state.to(f_state.dtype)], dim=1)
            start, i = group[-1], j
        return torch.cat(out, dim=1), state

    def _head_many(
        self, feats: torch.Tensor, head_state: torch.Tensor, ends: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The head after each end of new features (B, n, channels) -> ((B, len(ends), n_labels), head state)."""
        if self.config.head == "stateful_gru":
            return self.head.step_many(feats, head_state, ends)
        B, W, C = feats.shape[0], self.config.window_frames, self.frames.channels
        seq = torch.cat([head_state.view(B, W, C), feats.to(head_state.dtype)], dim=1)  # (B, W + n, C)
        head = cast(TransformerTagger, self.head)
        normed = head.in_norm(seq)  # per frame: overlapping windows share it (same values as per window)

        def windows(group: list[int]) -> torch.Tensor:
            starts = torch.tensor(group, device=feats.device)  # window g covers seq[:, g : g + W]
            tokens = head.embed_windows(normed, starts, W)  # (B g, T', D)
            return head.head(head.encode(tokens)).view(B, len(group), -1)  # (B, g, n_labels)

        # groups of windows are independent: on the CPU they run on worker threads of one intra-op thread each
        # (a window's small matmuls gain nothing from torch's threads and lose much to their waits)
        n_workers = workers() if feats.device.type == "cpu" else 1
        size = _HEAD_WINDOWS
        if n_workers > 1 and len(ends) > 1:
            size = max(1, min(_HEAD_WINDOWS, math.ceil(len(ends) / n_workers)))
        groups = [ends[g : g + size] for g in range(0, len(ends), size)]
        logits = map_threads(windows, groups, n_workers)
        return torch.cat(logits, dim=1), seq[:, ends[-1] : ends[-1] + W].reshape(B, W * C)
