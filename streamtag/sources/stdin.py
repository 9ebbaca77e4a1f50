"""Standard input ("-"): anything FFmpeg recognizes (WAV, MP3, Ogg, FLAC ...), or raw PCM when told its layout.

    ffmpeg -i song.flac -f wav - | streamtag tag -
    arecord -f S16_LE -r 16000 -c 1 -t raw | streamtag stream - --raw-rate 16000   (raw_rate=16000 here)
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Generator, Iterator
from typing import Any, BinaryIO

import av
import av.error
import numpy as np

from ..errors import ConfigError, SourceError
from .base import (
    AudioPipeline,
    AvReader,
    EventCallback,
    Source,
    describe_av_error,
    interruptible,
    iter_frames,
)

__all__ = ["StdinSource", "RAW_FORMATS"]

log = logging.getLogger(__name__)

# raw_format -> numpy dtype (integers are scaled by streamtag.audio's one rule, 2**(bits-1))
RAW_FORMATS: dict[str, np.dtype] = {
    "s16le": np.dtype("<i2"),
    "s32le": np.dtype("<i4"),
    "f32le": np.dtype("<f4"),
}
READ_SIZE = 16384  # bytes per read from the pipe


class _Unseekable:
    """Only ``read``: PyAV must not try to seek a pipe."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._read = getattr(f, "read1", f.read)

    def read(self, n: int = -1) -> bytes:
        return self._read(n if n and n > 0 else READ_SIZE)


class StdinSource(Source):
    """Audio piped into the process (or any binary file object passed as ``fileobj``)."""

    def __init__(
        self,
        sample_rate: int,
        *,
        block_seconds: float = 0.1,
        raw_rate: int | None = None,
        raw_format: str = "s16le",
        raw_channels: int = 1,
        format: str | None = None,
        fileobj: BinaryIO | None = None,
        name: str = "stdin",
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(name, sample_rate, block_seconds)
        self.on_event = on_event
        self._file: BinaryIO = fileobj if fileobj is not None else sys.stdin.buffer
        self.raw_rate = raw_rate
        self._container: Any = None
        if raw_rate is not None:
            if raw_format not in RAW_FORMATS:
                raise ConfigError(
                    f"raw format {raw_format!r} is not supported; use one of {', '.join(RAW_FORMATS)}"
                )
            if int(raw_rate) <= 0 or int(raw_channels) <= 0:
                raise ConfigError(f"raw PCM needs a positive rate and channel count, got {raw_rate}, {raw_channels}")
            self.raw_format = raw_format
            self.raw_channels = int(raw_channels)
            self.info = {"uri": "-", "format": raw_format, "codec": f"pcm_{raw_format}",
                         "sample_rate": int(raw_rate), "channels": self.raw_channels}
            return
        self._reader = AvReader(_Unseekable(self._file).read, self._closed)
        try:
            with interruptible(self._reader):
                self._container = av.open(self._reader, mode="r", format=format)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise SourceError(
                f"stdin: not audio that FFmpeg can decode ({describe_av_error(e)}); pipe in WAV/MP3/Ogg/FLAC, "
                "or give the raw PCM layout with --raw-rate (and --raw-format, --raw-channels)"
            ) from e
        if not self._container.streams.audio:
            self._container.close()
            raise SourceError("stdin: the piped data has no audio stream; pipe in an audio file")
        stream = self._container.streams.audio[0]
        self._stream = stream
        cc = stream.codec_context
        self.info = {"uri": "-", "format": self._container.format.name, "codec": cc.name,
                     "sample_rate": cc.sample_rate, "channels": cc.layout.nb_channels}

    def _blocks(self) -> Generator[np.ndarray, None, None]:
        if self.raw_rate is not None:
            yield from self._raw_blocks()
            return
        pipeline = AudioPipeline(self.sample_rate, self.block_size)
        decoded_s = 0.0
        try:
            with interruptible(self._reader):
                frames = iter_frames(self._container, self._stream, self)
                while (frame := next(frames, None)) is not None:
                    decoded_s += frame.samples / frame.sample_rate
                    yield from pipeline.push_frame(frame)
                    if self.closed:
                        return
        except (av.error.FFmpegError, OSError, ValueError) as e:
            if decoded_s == 0.0:
                raise SourceError(
                    f"stdin: not audio that FFmpeg can decode ({describe_av_error(e)}); pipe in an audio file"
                ) from e
            log.warning("stdin: decoding stopped at %.1f s (%s)", decoded_s, describe_av_error(e))
        finally:
            self._container.close()
        if decoded_s == 0.0:
            raise SourceError("stdin: no audio could be decoded from the piped data; pipe in an audio file")
        yield from pipeline.finish()

    def _raw_blocks(self) -> Iterator[np.ndarray]:
        dtype = RAW_FORMATS[self.raw_format]
        rate = int(self.raw_rate or 0)
        frame_bytes = dtype.itemsize * self.raw_channels
        pipeline = AudioPipeline(self.sample_rate, self.block_size)
        read = getattr(self._file, "read1", self._file.read)
        rest = b""
        total = 0
        while not self.closed:
            try:
                data = read(READ_SIZE)
            except OSError as e:
                raise SourceError(f"stdin: reading failed ({e})") from e
            if not data:
                break
            data = rest + data
            usable = len(data) - len(data) % frame_bytes
            rest = data[usable:]
            if not usable:
                continue
            x = np.frombuffer(data[:usable], dtype=dtype).reshape(-1, self.raw_channels).T  # (C, N) PCM
            total += x.shape[1]
            yield from pipeline.push(x, rate)
        if total == 0 and not self.closed:
            raise SourceError("stdin: no data arrived on standard input; pipe audio into streamtag")
        yield from pipeline.finish()

    def _abort(self) -> None:
        pass  # a blocked pipe read ends when the writer closes it
