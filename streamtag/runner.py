"""Model runner: owns the compute device, batches windows, and keeps every stream's recurrent state.

The runner uses only the streaming-model protocol (``architectures/base.py``): ``stateful`` and
``lag_frames`` say what a model is, window models run through ``forward`` / ``forward_windows``, stateful
ones through ``init_state`` / ``step`` / ``step_many`` on one batch-first (B, state_size) state tensor.

Per-stream state lives in ONE tensor of shape (capacity, state_size) on the runner's device, with a slot
index per stream name: a hop of many streams gathers their rows, runs one batched forward and scatters the
new rows back, so nothing is concatenated per stream. On CUDA the weights and that table stay on the GPU;
only log-mel frames go in and probabilities come out. The same code runs on the CPU. No I/O here.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .architectures.base import StreamingModel, auto_precision
from .architectures.threads import FEW_STREAMS, few_streams, one_thread
from .errors import ConfigError, DeviceError, ModelError
from .registry import Bundle

__all__ = ["ModelRunner", "PRECISIONS", "resolve_device", "resolve_precision"]

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


PRECISIONS = ("auto", "fp32", "bf16")
# streams in the second batch of a stateful model's warm-up: FEW_STREAMS (architectures/threads.py), so the path a
# live step of many stations takes (every intra-op thread; a student's groups on the worker threads) is warm too
WARM_STREAMS = FEW_STREAMS


def resolve_precision(model: object, device: torch.device, precision: str = "auto") -> str:
    """The arithmetic a model runs in: "fp32", or another it offers (``model.precisions``, e.g. bf16).

    "auto" is the model's own choice for the device (``model.auto_precision(device)``; architectures/base.py):
    the distilled students pick bf16 on a CPU with hardware bf16, everything else fp32. Models without
    ``precisions`` run in fp32.
    """
    offered = tuple(getattr(model, "precisions", ("fp32",)))
    if precision == "auto":
        chosen = auto_precision(model, device)
        return chosen if chosen in offered else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision not in offered:
        raise ConfigError(f"this model runs only in {', '.join(offered)}; use --precision auto or fp32")
    return precision


class ModelRunner:
    """Runs one bundle's network on batches of log-mel windows or on carried streaming state."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", max_batch: int = 128,
                 precision: str = "auto") -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            # full fp32 on the GPU: cuDNN's default TF32 convolutions move musicnn's outputs by ~1e-3, beyond the
            # 1e-4 the CPU path is held to (parity tests); the GPU is fast enough without it
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.max_batch = max_batch
        self.model: StreamingModel = bundle.build_model(self.device)  # checks the protocol and bundle.streaming
        self.precision = resolve_precision(self.model, self.device, precision)
        set_precision = getattr(self.model, "set_precision", None)
        if callable(set_precision):
            set_precision(self.precision)
        self.stateful = self.model.stateful
        self.lag_frames = int(self.model.lag_frames)  # answers describe the music this many frames back
        self._slots: dict[str, int] = {}  # stream name -> row of self._state
        self._free: list[int] = []  # rows released by reset_state, reused first
        self._state: torch.Tensor | None = None  # (capacity, state_size), stateful models only
        # the bundle's derived labels: a linear head on the network's logits, (L_net, D) weights and (D,) biases
        self._derived: tuple[torch.Tensor, torch.Tensor] | None = None
        if bundle.derived:
            w = torch.tensor([d["weights"] for d in bundle.derived], dtype=torch.float32).T.contiguous()
            b = torch.tensor([float(d["bias"]) for d in bundle.derived], dtype=torch.float32)
            self._derived = (w.to(self.device), b.to(self.device))
        if self.stateful:
            with torch.inference_mode():
                self._state = self.model.init_state(0, self.device)
        log.info("loaded %s (%s) on %s, %s", bundle.name, bundle.architecture, self.device, self.precision)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., L_net) logits -> (..., L) probabilities: the network's, then the derived labels' (if any)."""
        z = logits.float()
        probs = torch.softmax(z, dim=-1) if self.bundle.activation == "softmax" else torch.sigmoid(z)
        if self._derived is not None:
            w, b = self._derived
            probs = torch.cat([probs, torch.sigmoid(z @ w + b)], dim=-1)
        return probs

    # -- window models -----------------------------------------------------------------------------
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
        """Probabilities (n, L) of the windows ``frames[max(0, e - window) : e]`` of one sequence (T, n_mels),
        through the model's ``forward_windows`` (which shares work between overlapping windows where it can)."""
        if not len(ends):
            return np.zeros((0, len(self.bundle.labels)), dtype=np.float32)
        x = torch.as_tensor(frames, dtype=torch.float32).to(self.device)  # (T, n_mels)
        return self._activate(self.model.forward_windows(x, list(ends), window)).cpu().numpy()

    # -- stateful models: explicit state ----------------------------------------------------------
    def init_state(self, batch_size: int = 1) -> torch.Tensor:
        """Fresh state (B, state_size) on the runner's device, for callers that hold their own (files)."""
        return self.model.init_state(batch_size, self.device)

    @torch.inference_mode()
    def step_many(
        self, frames: np.ndarray | torch.Tensor, state: torch.Tensor, ends: list[int]
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Probabilities after each end of ``frames`` (B, T, n_mels) in one pass: ((B, n, L), new state)."""
        x = torch.as_tensor(frames, dtype=torch.float32).to(self.device)
        logits, state = self.model.step_many(x, state, list(ends))
        return self._activate(logits).cpu().numpy(), state

    # -- stateful models: named streams -----------------------------------------------------------
    def _slot_rows(self, names: list[str]) -> torch.Tensor:
        assert self._state is not None
        new = [n for n in names if n not in self._slots]
        if new:
            reuse = self._free[: len(new)]
            del self._free[: len(reuse)]
            grow = len(new) - len(reuse)
            if grow:  # double the table so adding streams one by one costs amortised O(1) copies
                cap = self._state.shape[0]
                extra = max(grow, cap)
                self._free.extend(range(cap + grow, cap + extra))
                reuse = reuse + list(range(cap, cap + grow))
                self._state = torch.cat([self._state, self.model.init_state(extra, self.device)])
            fresh = torch.tensor(reuse, device=self.device)
            self._state[fresh] = self.model.init_state(len(reuse), self.device)
            self._slots.update(zip(new, reuse))
        return torch.tensor([self._slots[n] for n in names], device=self.device)

    @torch.inference_mode()
    def step(self, names: list[str], frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Stateful models: feed each named stream its new frames (B, T, n_mels); returns (B, L) probabilities.

        Each stream's state is carried between calls (created on first use), so calling ``step`` hop by hop
        equals one call on the whole sequence; batching streams together equals running them alone.
        """
        if len(set(names)) != len(names):
            raise ModelError(f"step: each stream may appear once per call, got {names}")
        x = torch.as_tensor(frames, dtype=torch.float32).to(self.device)  # (B, T, n_mels)
        rows = self._slot_rows(names)
        assert self._state is not None
        # a live step of a few streams: every op on one intra-op thread, not only the model's own small ops (the
        # rule of architectures/threads.py); on a busy machine a second intra-op thread spins at each op for nothing.
        # A model whose step is small ops at any batch says so (``step_on_one_thread``: the GRU student)
        single = few_streams(x) or (x.device.type == "cpu" and bool(getattr(self.model, "step_on_one_thread", False)))
        with one_thread(single):
            logits, new_state = self.model.step(x, self._state[rows])  # state rows: (B, S)
            self._state[rows] = new_state.to(self._state.dtype)
            return self._activate(logits).cpu().numpy()

    @torch.inference_mode()
    def warm_up(self, frames: int, batches: tuple[int, ...] | None = None) -> None:
        """Run the network once per batch size on ``frames`` frames of silence, no stream's state touched.

        A process's first model call pays once for kernel selection, weight packing and the worker threads:
        0.7-1.3 s for st-gru-msd on a 2-core CPU, where a warm call of 3 streams takes ~10 ms. A live runner
        pays it before its first audio (:meth:`LiveRunner.start`), not in the first step of hundreds of
        stations, which would start them all that far behind. Stateful models run 1 stream and
        :data:`WARM_STREAMS` (the few-streams path and the grouped one), window models 1 window."""
        if batches is None:
            batches = (1, WARM_STREAMS) if self.stateful else (1,)
        n_mels = self.bundle.frontend.n_mels
        for b in batches:
            x = torch.zeros(b, max(1, int(frames)), n_mels, device=self.device)
            if self.stateful:
                single = few_streams(x) or (x.device.type == "cpu" and bool(getattr(self.model, "step_on_one_thread", False)))
                with one_thread(single):
                    self._activate(self.model.step(x, self.model.init_state(b, self.device))[0]).cpu()
            else:
                self._activate(self.model(x)).cpu()

    def reset_state(self, name: str) -> None:
        """Forget a stream's state (its row is reused by the next new stream)."""
        row = self._slots.pop(name, None)
        if row is not None:
            self._free.append(row)

    @property
    def streams(self) -> int:
        """Named streams holding state."""
        return len(self._slots)
