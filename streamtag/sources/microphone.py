"""Microphone / line-in capture through PortAudio (sounddevice), resampled to the model's rate.

``sounddevice`` is imported lazily inside functions, so file and URL tagging work on machines without
PortAudio. The audio callback runs on PortAudio's real-time thread and only copies the block into a bounded
queue (counting status overflows and full-queue drops as overruns); the consumer side (the source's
iterator, running on a feeder thread) converts with :class:`streamtag.audio.MonoConverter` (down-mix, stateful
soxr resampling) from the device's native rate to the engine's rate.

On Linux with PulseAudio/PipeWire, PortAudio's ALSA devices ``pulse`` / ``default`` record the server's
default source; pick another PulseAudio source (e.g. a sink's ``.monitor``) with ``PULSE_SOURCE=<name>``.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..audio import MonoConverter
from ..errors import DeviceError

__all__ = ["MicrophoneSource", "list_input_devices", "resolve_input_device", "PORTAUDIO_HINT"]

log = logging.getLogger(__name__)

PORTAUDIO_HINT = "install libportaudio2 (apt) / portaudio (brew)"
BLOCK_SECONDS = 0.05  # s of audio per PortAudio callback
QUEUE_SECONDS = 10.0  # s of captured audio the callback queue holds before blocks are dropped
STALL_SECONDS = 10.0  # s without any callback before the device counts as dead


def _sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio into a one-line DeviceError."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise DeviceError(f"PortAudio library not found ({e}); {PORTAUDIO_HINT}") from e
    except ImportError as e:
        raise DeviceError(f"the sounddevice package is missing ({e}); pip install sounddevice") from e
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Input devices as dicts: index, name, hostapi, channels, samplerate (Hz), default (bool)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except sd.PortAudioError as e:
        raise DeviceError(f"PortAudio cannot list devices ({e}); check your sound system") from e
    out = []
    for d in devices:
        if d["max_input_channels"] > 0:
            out.append(
                {
                    "index": d["index"],
                    "name": d["name"],
                    "hostapi": hostapis[d["hostapi"]]["name"],
                    "channels": d["max_input_channels"],
                    "samplerate": int(d["default_samplerate"]),
                    "default": d["index"] == default_in,
                }
            )
    return out


def _describe(devices: list[dict[str, Any]]) -> str:
    return ", ".join(f"{d['index']} {d['name']!r}" for d in devices)


def resolve_input_device(device: int | str | None) -> dict[str, Any]:
    """The input device for an index, a (sub)string of its name, or None (the default input)."""
    devices = list_input_devices()
    if not devices:
        raise DeviceError(
            "no audio input device found; connect a microphone or start PulseAudio/PipeWire "
            "(`streamtag devices` lists what PortAudio sees)"
        )
    if device is None or device == "":
        return next((d for d in devices if d["default"]), devices[0])
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        idx = int(device)
        for d in devices:
            if d["index"] == idx:
                return d
        raise DeviceError(f"no input device with index {idx}; available: {_describe(devices)}")
    name = str(device).strip().lower()
    exact = [d for d in devices if d["name"].lower() == name]
    if exact:
        return exact[0]
    partial = [d for d in devices if name in d["name"].lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        raise DeviceError(f"input device {device!r} is ambiguous: {_describe(partial)}; give its index")
    raise DeviceError(f"no input device matching {device!r}; available: {_describe(devices)}")


class MicrophoneSource:
    """Iterable of mono float32 blocks at ``sample_rate`` from a PortAudio input device.

    Attributes: ``name`` (the device's name), ``title`` (always None), ``device_rate`` (Hz captured),
    ``overruns`` (callbacks flagged input-overflow + blocks dropped because the consumer fell behind).
    """

    title: str | None = None
    live = True  # audio of the moment: the live runner may skip what it could not reach in its start-up

    def __init__(self, device: int | str | None = None, *, sample_rate: int, channels: int | None = None) -> None:
        self.device = resolve_input_device(device)
        self.name = str(self.device["name"])
        self.sample_rate = int(sample_rate)
        self.device_rate = int(self.device["samplerate"])
        self.channels = int(channels or 1)
        self.overruns = 0
        self.status_flags = 0  # callbacks that reported any PortAudio status flag
        self._queue: queue.Queue[np.ndarray] = queue.Queue(
            maxsize=max(4, int(QUEUE_SECONDS / BLOCK_SECONDS))
        )
        self._closed = threading.Event()
        self._stream: Any = None

    # Runs on PortAudio's thread: copy and count, nothing else.
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.status_flags += 1
            if status.input_overflow:
                self.overruns += 1
        try:
            self._queue.put_nowait(indata.copy())  # (frames, channels)
        except queue.Full:
            self.overruns += 1

    def _open(self) -> None:
        sd = _sounddevice()
        try:
            self._stream = sd.InputStream(
                device=self.device["index"],
                samplerate=self.device_rate,
                channels=self.channels,
                dtype="float32",
                blocksize=max(1, int(BLOCK_SECONDS * self.device_rate)),
                callback=self._callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise DeviceError(
                f"cannot open input device {self.device['index']} {self.name!r} at {self.device_rate} Hz ({e}); "
                "try another --device (`streamtag devices`)"
            ) from e
        log.info("recording %r at %d Hz -> %d Hz", self.name, self.device_rate, self.sample_rate)

    def __iter__(self) -> Iterator[np.ndarray]:
        self._open()
        try:
            yield from self._converted()
        finally:
            self.close()

    def _converted(self) -> Iterator[np.ndarray]:
        """Queued ``(frames, channels)`` callback blocks -> mono float32 at ``sample_rate`` (streamtag.audio)."""
        converter = MonoConverter(sample_rate=self.device_rate, target_rate=self.sample_rate, channels=self.channels)
        waited = 0.0
        while not self._closed.is_set():
            try:
                block = self._queue.get(timeout=0.25)
            except queue.Empty:
                waited += 0.25
                if waited >= STALL_SECONDS:
                    raise DeviceError(
                        f"input device {self.name!r} delivered no audio for {STALL_SECONDS:.0f} s; "
                        "check that it is not in use or muted"
                    ) from None
                continue
            waited = 0.0
            out = converter.push(block)  # (frames, channels) interleaved -> (M,)
            if out.size:
                yield out

    def close(self) -> None:
        self._closed.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:  # PortAudio may already have torn the device down
                log.debug("closing the input stream failed", exc_info=True)
