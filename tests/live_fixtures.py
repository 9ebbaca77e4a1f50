"""Helpers for the live tests (dashboard, websocket, microphone, browser): a model, an engine, clips, a server.

Everything here is real: a model bundle saved and loaded through the registry, the real Engine, real decoded
audio, a real websocket server on a free loopback port run by its own event loop in a background thread.

The live plumbing is tested with a small transformer bundle (random weights, seeded; 1 s windows) so a test
sees updates within a second of audio on a loaded 2-core machine; ``default_bundle()`` gives the shipped
musicnn-msd for the end-to-end checks (3 s windows). STREAMTAG_LIVE_MODEL=default runs everything with it.
"""
from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamtag.errors import ModelError
from streamtag.registry import DEFAULT_MODEL, Bundle, load_bundle, save_bundle

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CLIPS = REPO / "examples" / "audio"
TINY_LABELS = ("rock", "jazz", "classical", "electronic", "folk", "hiphop", "pop", "blues")


def tiny_bundle(path: Path, n_labels: int | None = None) -> Bundle:
    """A small window model (transformer, 32 mels, 1 s windows) with seeded random weights.

    ``n_labels`` (default: the 8 genres of TINY_LABELS) makes updates as large as needed (tag000, tag001, ...).
    """
    import torch

    from streamtag.architectures import build_model
    from streamtag.frontend import FrontendSpec

    labels = TINY_LABELS if n_labels is None else tuple(f"tag{i:03d}" for i in range(n_labels))
    torch.manual_seed(0)
    cfg = {"n_mels": 32, "n_labels": len(labels), "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64,
           "max_frames": 64, "dropout": 0.0}
    model = build_model("transformer", cfg)
    spec = FrontendSpec(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, scaling="db")
    return save_bundle(path, model, architecture="transformer", arch_config=cfg, frontend=spec,
                       labels=labels, window_frames=61, hop_seconds=0.5,
                       description="test-only: random weights")


def live_bundle(tmp_dir: Path) -> Bundle:
    """The tiny test bundle (or the shipped default with STREAMTAG_LIVE_MODEL=default)."""
    if os.environ.get("STREAMTAG_LIVE_MODEL") == "default":
        return default_bundle()
    return tiny_bundle(tmp_dir / "tiny-live")


def default_bundle() -> Bundle:
    """The shipped default model; skips the test when it is not in this checkout."""
    import pytest

    try:
        return load_bundle(DEFAULT_MODEL)
    except ModelError as e:
        pytest.skip(f"shipped model {DEFAULT_MODEL} not present ({e})")


def make_engine(bundle: Bundle, hop: float = 0.25):
    from streamtag.pipeline import Engine
    from streamtag.smoothing import SmoothingConfig

    return Engine(bundle, device="cpu", hop_seconds=hop, smoothing=SmoothingConfig(tau_seconds=0.5, hold_seconds=0.0))


def example_clip(name: str = "kevin-macleod-vibe-ace.ogg") -> Path | None:
    for d in (EXAMPLE_CLIPS, Path(os.environ.get("STREAMTAG_SHARED", REPO.parent / "shared")) / "audio"):
        if (d / name).is_file():
            return d / name
    return None


def write_tone_wav(path: Path, seconds: float = 20.0, sr: int = 22050) -> Path:
    """A 16-bit mono WAV of a chord that changes every 2 s (audio that makes the model's output move)."""
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for k, f0 in enumerate((220.0, 330.0, 440.0, 587.0, 784.0)):
        gate = ((t // 2.0) % 5 == k).astype(np.float64)
        x += gate * (np.sin(2 * math.pi * f0 * t) + 0.5 * np.sign(np.sin(2 * math.pi * f0 * 1.5 * t)))
    x += 0.05 * np.random.default_rng(0).standard_normal(t.shape)
    pcm = (np.clip(x / np.abs(x).max(), -1, 1) * 0.6 * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def hangup_default() -> None:
    """A child process's ``preexec_fn``: SIGHUP's default action whatever the test run inherited (a job started
    under nohup ignores SIGHUP, and an ignored signal stays ignored across exec: streamtag then keeps it ignored)."""
    import signal

    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_any(uri: str, sample_rate: int) -> Any:
    """streamtag.sources.open_source (files, URLs)."""
    from streamtag.sources import open_source

    return open_source(uri, sample_rate)


def make_runner(engine: Any) -> Any:
    """A started live runner (the server's tests hand it to a WebsocketServer, which registers as its sink)."""
    from streamtag.live import LiveRunner

    return LiveRunner(engine).start()


class ServerThread:
    """A WebsocketServer (with a runner of its own) on its own event loop in a background thread; ``stop()``
    always cleans up."""

    def __init__(self, engine: Any, **config: Any) -> None:
        from streamtag.publishers.websocket import ServerConfig, WebsocketServer

        config.setdefault("port", 0)
        self.runner = make_runner(engine)
        self.server = WebsocketServer(self.runner, ServerConfig(**config))
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ws-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self, timeout: float = 10.0) -> ServerThread:
        self.thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("server did not start")
        if self._error is not None:
            self.runner.stop()
            raise self._error
        return self

    def call(self, coro_fn: Callable[..., Any], *args: Any, timeout: float = 20.0) -> Any:
        """Run ``coro_fn(*args)`` on the server loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop).result(timeout)

    def add_source(self, name: str, uri: str) -> None:
        """Add a source as the command line's --source does (the user's own input: permissive policy)."""
        from streamtag.sources.policy import SourcePolicy

        async def add() -> None:
            await self.server.add_source(name, uri, policy=SourcePolicy.permissive())

        self.call(add)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self, timeout: float = 15.0) -> None:
        if not self.thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
            if not self.loop.is_running():
                self.loop.close()
            self.runner.stop()
