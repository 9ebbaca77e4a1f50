"""The streaming-model protocol: what the runner may rely on, and nothing else.

Every architecture is one of two kinds, told apart by ``stateful`` (a class attribute, never discovered):

- **Window models** (``stateful is False``) see one whole window of log-mel frames per call:
  ``forward(x)`` with ``x`` (B, T, n_mels) returns logits (B, n_labels). ``forward_windows(frames, ends,
  window)`` returns the logits of many overlapping windows of one sequence; the default stacks the windows
  through ``forward``, an architecture whose layers are frame-local (musicnn) overrides it to share work
  between overlapping windows (equal results).
- **Stateful models** (``stateful is True``) carry explicit recurrent state between calls:
  ``init_state(batch_size, device)`` returns fresh state for ``batch_size`` streams and ``step(x, state) ->
  (logits, state)`` consumes the frames ``x`` (B, n, n_mels) that arrived since the last call.
  ``step_many(x, state, ends)`` returns the logits after each of several frame counts of ``x`` in one pass,
  equal to stepping through the chunks one by one (what the file path uses to batch a file's hops).

State layout (both kinds): ONE float tensor of shape (B, state_size), batch first, so a runner can gather,
scatter and reset streams' states with plain indexing; window models have ``state_size == 0``.
``lag_frames``: how many frames behind the newest input an answer describes (a front end that looks ahead);
0 for window models. Precision (both kinds, optional): ``precisions`` names the arithmetic a model offers
(default ``("fp32",)``), ``auto_precision(device)`` the one ``--precision auto`` picks on ``device``, and
``set_precision(name)`` switches to it; the runner asks the model, never an architecture module. A chunked run equals a full-sequence run, and batched streams equal streams run alone
(tests/test_architectures.py).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["StreamingModel", "WindowModel", "StatefulModel", "auto_precision"]

_WINDOW_BATCH = 64  # windows per forward pass of the default forward_windows


@runtime_checkable
class StreamingModel(Protocol):
    """What the runner uses. See the module docstring for the meaning of each member."""

    stateful: bool
    lag_frames: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # (B, T, n_mels) -> (B, n_labels)

    def forward_windows(self, frames: torch.Tensor, ends: list[int], window: int) -> torch.Tensor: ...

    def init_state(self, batch_size: int, device: str | torch.device = "cpu") -> torch.Tensor: ...

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step_many(
        self, x: torch.Tensor, state: torch.Tensor, ends: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def check_ends(n_frames: int, ends: list[int]) -> list[int]:
    ends = [int(e) for e in ends]
    if any(not 0 < e <= n_frames for e in ends) or ends != sorted(ends):
        raise ValueError(f"ends must be increasing and lie in [1, {n_frames}], got {ends[:4]}...")
    return ends


def auto_precision(model: object, device: torch.device) -> str:
    """What ``--precision auto`` runs ``model`` in on ``device``: the model's own ``auto_precision(device)``,
    fp32 for a model without one."""
    choose = getattr(model, "auto_precision", None)
    return str(choose(device)) if callable(choose) else "fp32"


class WindowModel(nn.Module):
    """Base of the window architectures: the protocol's stateful members are trivial or refuse."""

    stateful = False
    lag_frames = 0
    precisions: tuple[str, ...] = ("fp32",)

    def forward_windows(self, frames: torch.Tensor, ends: list[int], window: int) -> torch.Tensor:
        """Logits (n, n_labels) of the windows ``frames[max(0, e - window) : e]`` of one sequence (T, n_mels).

        Windows of equal length are stacked, ``_WINDOW_BATCH`` per forward pass; a shorter first window
        (``e < window``) runs alone.
        """
        if frames.dim() != 2 or frames.shape[0] < 1:
            raise ValueError(f"forward_windows expects frames (T >= 1, n_mels), got {tuple(frames.shape)}")
        ends = check_ends(frames.shape[0], ends)
        outs = []
        full = [e for e in ends if e >= window]
        for e in ends:
            if e < window:
                outs.append(self(frames[None, :e]))  # (1, n_labels)
        for i in range(0, len(full), _WINDOW_BATCH):
            idx = torch.tensor(full[i : i + _WINDOW_BATCH], device=frames.device)[:, None] - window
            idx = idx + torch.arange(window, device=frames.device)  # (b, window)
            outs.append(self(frames[idx]))  # frames[idx]: (b, window, n_mels)
        if not outs:
            return frames.new_zeros((0, 0))
        return torch.cat(outs)

    def init_state(self, batch_size: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """Window models carry no state: (B, 0)."""
        return torch.zeros(batch_size, 0, device=device)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ModelError(f"{type(self).__name__} is a window model: run it on whole windows, not step by step")

    def step_many(
        self, x: torch.Tensor, state: torch.Tensor, ends: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise ModelError(f"{type(self).__name__} is a window model: run it on whole windows, not step by step")


class StatefulModel(nn.Module):
    """Base of the stateful architectures. Subclasses define ``init_state`` and ``step``; ``step_many``
    defaults to stepping chunk by chunk, and ``forward`` to one run from a fresh state."""

    stateful = True
    lag_frames = 0
    precisions: tuple[str, ...] = ("fp32",)

    def init_state(self, batch_size: int, device: str | torch.device = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step_many(
        self, x: torch.Tensor, state: torch.Tensor, ends: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits after each end of ``x`` (B, T, n_mels): ((B, len(ends), n_labels), state after ``ends[-1]``).

        Equals ``step`` on ``x[:, 0:ends[0]]``, ``x[:, ends[0]:ends[1]]``, ... in turn; frames past the last end
        are not consumed.
        """
        ends = check_ends(x.shape[1], ends)
        outs, start = [], 0
        for e in ends:
            logits, state = self.step(x[:, start:e], state)
            outs.append(logits)
            start = e
        return torch.stack(outs, dim=1), state

    def forward_windows(self, frames: torch.Tensor, ends: list[int], window: int) -> torch.Tensor:
        raise ModelError(f"{type(self).__name__} is a stateful model: step it through the stream")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A whole sequence from a fresh state: the logits after its last frame. (B, T, n_mels) -> (B, n_labels)."""
        return self.step(x, self.init_state(x.shape[0], x.device))[0]
