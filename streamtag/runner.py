"""Model runner: owns the compute device, batches windows, and keeps per-stream recurrent state.

On CUDA the weights and every stream's recurrent state stay on the GPU; only log-mel frames go in and
probabilities come out. The same code runs on the CPU. No I/O here.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .errors import DeviceError
from .registry import Bundle

__all__ = ["ModelRunner", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA when available, else CPU; "cuda" without CUDA is a DeviceError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from e


class ModelRunner:
    """Runs one bundle's network on batches of log-mel windows or on carried streaming state."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", max_batch: int = 128) -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self.max_batch = max_batch
        self.model = bundle.build_model(self.device)
        self.stateful = bool(getattr(self.model, "stateful", False))
        self.lag_frames = int(getattr(self.model, "lag_frames", 0))  # answers describe the music this many frames back
        self._states: dict[str, torch.Tensor] = {}  # stream name -> recurrent state, on self.device
        log.info("loaded %s (%s) on %s", bundle.name, bundle.architecture, self.device)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.bundle.activation == "softmax":
            return torch.softmax(logits.float(), dim=-1)
        return torch.sigmoid(logits.float())

    @torch.inference_mode()
    def predict(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities (B, L) for windows (B, T, n_mels), in chunks of ``max_batch`` per forward pass."""
        x = torch.as_tensor(windows, dtype=torch.float32)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.bundle.labels)), dtype=np.float32)
        outs = []
        for i in range(0, x.shape[0], self.max_batch):
            chunk = x[i : i + self.max_batch].to(self.device, non_blocking=True)  # (b, T, n_mels)
            outs.append(self._activate(self.model(chunk)).cpu())
        return torch.cat(outs).numpy()

    @torch.inference_mode()
    def predict_windows(self, frames: np.ndarray | torch.Tensor, ends: list[int], window: int) -> np.ndarray:
        """Probabilities (n, L) of the windows ``frames[max(0, e - window) : e]`` of one sequence (T, n_mels).

        Models with a ``forward_windows(frames, ends, window)`` method share work between overlapping windows
        (equal results); others get the windows stacked through :meth:`predict`.
        """
        if not len(ends):
            return np.zeros((0, len(self.bundle.labels)), dtype=np.float32)
        if hasattr(self.model, "forward_windows"):
            x = torch.as_tensor(frames, dtype=torch.float32).to(self.device)  # (T, n_mels)
            return self._activate(self.model.forward_windows(x, list(ends), window)).cpu().numpy()
        frames = np.asarray(frames, dtype=np.float32)
        w = min(window, frames.shape[0])
        views = np.lib.stride_tricks.sliding_window_view(frames, (w, frames.shape[1]))[:, 0]  # (T-w+1, w, n_mels)
        return self.predict(views[[e - w for e in ends]])

    @torch.inference_mode()
    def step(self, names: list[str], frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Stateful models: feed each named stream its new frames (B, T, n_mels); returns (B, L) probabilities.

        Each stream's state is carried between calls (created on first use), so calling ``step`` hop by hop
        equals one call on the whole sequence; batching streams together equals running them alone.
        """
        x = torch.as_tensor(frames, dtype=torch.float32).to(self.device)  # (B, T, n_mels)
        states = []
        for n in names:
            if n not in self._states:
                self._states[n] = self.model.init_state(1, self.device)
            states.append(self._states[n])
        state = _cat_states(states)
        logits, new_state = self.model.step(x, state)
        for n, s in zip(names, _split_states(new_state, len(names))):
            self._states[n] = s
        return self._activate(logits).cpu().numpy()

    def reset_state(self, name: str) -> None:
        self._states.pop(name, None)


# Recurrent states are tensors (or tuples of tensors) whose batch dimension is 1 (GRU: (layers, B, H)).
def _batch_dim(t: torch.Tensor) -> int:
    return 1 if t.dim() == 3 else 0


def _cat_states(states: list):
    first = states[0]
    if isinstance(first, (tuple, list)):
        return type(first)(_cat_states([s[i] for s in states]) for i in range(len(first)))
    return torch.cat(states, dim=_batch_dim(first))


def _split_states(state, n: int) -> list:
    if isinstance(state, (tuple, list)):
        parts = [_split_states(s, n) for s in state]
        return [type(state)(p[i] for p in parts) for i in range(n)]
    return list(torch.split(state, 1, dim=_batch_dim(state)))
