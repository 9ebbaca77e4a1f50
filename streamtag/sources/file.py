"""Audio files, decoded by FFmpeg (through PyAV): mp3, ogg/vorbis, opus, flac, wav, m4a/aac, ... any rate/channels."""
from __future__ import annotations

import logging
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from ..audio import to_mono
from ..errors import SourceError
from .base import AudioPipeline, Source, describe_av_error, frame_to_mono, iter_frames

__all__ = ["FileSource", "read_audio", "probe_duration", "mpeg_frame_bytes"]

log = logging.getLogger(__name__)

NOT_AUDIO_HINT = "it is not audio that FFmpeg can decode; pass an audio file (mp3, ogg, opus, flac, wav, m4a ...)"
TRUNCATION_TOLERANCE_S = 0.5  # decoded this much less than the header's duration -> warn "truncated"


def _check_path(path: Path, label: str | None = None) -> None:
    label = label or str(path)
    if "\0" in str(path):
        shown = label.replace("\0", "\\0")
        raise SourceError(f"{shown}: not a valid path (it contains a NUL byte)")
    if not path.exists():
        raise SourceError(f"{label}: no such file; check the path (use - to read from stdin)")
    if path.is_dir():
        raise SourceError(f"{label}: is a directory; pass an audio file inside it")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{label}: permission denied; make the file readable")
    if path.stat().st_size == 0:
        raise SourceError(f"{label}: is an empty file (0 bytes); pass a file that contains audio")


def _open_container(path: Path, label: str | None = None) -> tuple[Any, Any]:
    """Open ``path`` and return (container, its first audio stream); SourceError on any failure."""
    label = label or str(path)
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{label}: {NOT_AUDIO_HINT} ({describe_av_error(e)})") from e
    if not container.streams.audio:
        container.close()
        raise SourceError(f"{label}: has no audio stream; {NOT_AUDIO_HINT}")
    return container, container.streams.audio[0]


def _header_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def probe_duration(path: str | os.PathLike[str]) -> float | None:
    """Duration in seconds from the file's header (cheap, no decoding); None when the header does not say."""
    p = Path(path)
    _check_path(p)
    container, stream = _open_container(p)
    try:
        return _header_duration(container, stream)
    finally:
        container.close()


class FileSource(Source):
    """Blocks of a whole audio file, decoded and resampled continuously; ends at the end of the file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        *,
        block_seconds: float = 0.1,
        name: str | None = None,
        label: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.label = label or str(self.path)  # how messages name the file (a server shows the file name only)
        super().__init__(name or self.path.name, sample_rate, block_seconds)
        _check_path(self.path, self.label)
        self._container, stream = _open_container(self.path, self.label)
        self._stream = stream
        cc = stream.codec_context
        self.duration = _header_duration(self._container, stream)
        self.info = {
            "uri": self.label,
            "format": self._container.format.name,
            "codec": cc.name,
            "sample_rate": cc.sample_rate,
            "channels": cc.layout.nb_channels if cc.layout is not None else cc.channels,
            "duration": self.duration,
        }
        # Decode the first frame now, so a file with nothing decodable fails at open time.
        self._frames = iter_frames(self._container, stream, self)
        self._first = self._next_frame(decoded_s=0.0)
        if self._first is None:
            self._container.close()
            raise SourceError(f"{self.label}: no audio could be decoded; {NOT_AUDIO_HINT}")

    def _next_frame(self, decoded_s: float) -> av.AudioFrame | None:
        """The next frame; None at the end, or at a corrupt tail once some audio has been decoded."""
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except (av.error.FFmpegError, OSError, ValueError) as e:
            if decoded_s == 0.0:
                self._container.close()
                raise SourceError(f"{self.label}: {NOT_AUDIO_HINT} ({describe_av_error(e)})") from e
            log.warning(
                "%s: decoding stopped at %.1f s (%s); the file is truncated or corrupt, using what was decoded",
                self.label, decoded_s, describe_av_error(e),
            )
            return None

    def _blocks(self) -> Generator[np.ndarray, None, None]:
        pipeline = AudioPipeline(self.sample_rate, self.block_size)
        decoded_s = 0.0
        frame = self._first
        self._first = None
        try:
            while frame is not None:
                decoded_s += frame.samples / frame.sample_rate
                yield from pipeline.push_frame(frame)
                if self.closed:
                    return
                frame = self._next_frame(decoded_s)
            self._warn_if_short(decoded_s)
            yield from pipeline.finish()
        finally:
            self._container.close()

    def _warn_if_short(self, decoded_s: float) -> None:
        if self.duration is not None and decoded_s < self.duration - TRUNCATION_TOLERANCE_S:
            log.warning(
                "%s: truncated at %.1f s (its header says %.1f s); using what was decoded",
                self.label, decoded_s, self.duration,
            )
        elif self.info.get("format") == "mp3" and _ends_mid_frame(self.path):
            log.warning("%s: truncated at %.1f s (it ends inside an MPEG audio frame); using what was decoded",
                        self.label, decoded_s)

    def _abort(self) -> None:
        pass  # reads from a local file never block for long; the generator checks .closed

    def _release(self) -> None:
        self._container.close()


def read_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """The whole file as mono float32 ``(N,)`` at ``sample_rate``: ``librosa.load(path, sr=sample_rate)``'s result.

    The same conversion as the streamed blocks (:func:`streamtag.audio.to_mono`), so it equals their concatenation
    sample for sample; the length is ``ceil(n * sr / sr_in)`` like librosa's. A local playlist (.pls/.m3u/.m3u8)
    gives its entries' audio one after the other.
    """
    if os.fspath(path).lower().endswith((".pls", ".m3u", ".m3u8")):
        from . import open_source  # local import: the package imports this module

        with open_source(path, sample_rate) as playlist:
            blocks = list(playlist)
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    source = FileSource(path, sample_rate)
    chunks: list[np.ndarray] = []
    rates: set[int] = set()
    frame, source._first = source._first, None
    decoded_s = 0.0
    try:
        while frame is not None:
            decoded_s += frame.samples / frame.sample_rate
            rates.add(frame.sample_rate)
            if len(rates) > 1:
                break
            chunks.append(frame_to_mono(frame))  # (N,)
            frame = source._next_frame(decoded_s)
    finally:
        source._container.close()
    if len(rates) > 1:  # the rate changes inside the file: resample each stretch in streaming form
        with FileSource(path, sample_rate) as again:
            return np.concatenate(list(again))
    source._warn_if_short(decoded_s)
    y = np.concatenate(chunks).astype(np.float32, copy=False)  # (N,)
    return to_mono(y, sample_rate=rates.pop(), target_rate=sample_rate)


# -- truncated MP3 files ------------------------------------------------------------------------------------------
_MPEG_KBPS = {  # (MPEG-1?, layer) -> bitrate index -> kbit/s
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def mpeg_frame_bytes(head: bytes) -> int | None:
    """Length of the MPEG audio frame (layer II or III) whose header is ``head``'s 4 bytes; None if it is not one.
    A file whose last packet is shorter was cut mid-frame (truncated), whatever its header estimated."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version, layer = (head[1] >> 3) & 3, 4 - ((head[1] >> 1) & 3)  # version 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    rate_index, kbps_index, padding = (head[2] >> 2) & 3, head[2] >> 4, (head[2] >> 1) & 1
    if version == 1 or layer not in (2, 3) or rate_index == 3 or kbps_index in (0, 15):
        return None
    sample_rate = (44100, 48000, 32000)[rate_index] >> {3: 0, 2: 1, 0: 2}[version]
    per_kbit = 72 if (version != 3 and layer == 3) else 144  # MPEG-2/2.5 layer III frames hold half the samples
    return per_kbit * 1000 * _MPEG_KBPS[(version == 3, layer)][kbps_index] // sample_rate + padding


def _ends_mid_frame(path: Path) -> bool:
    """Whether an MP3 file was cut inside its last frame (its header announces more bytes than the file holds): a
    file without a Xing header has its duration estimated from its size, so a cut shows only there."""
    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base:  # the last ~2 s suffice
                container.seek(max(0, int(stream.duration - 2 / stream.time_base)), stream=stream)
            head, size = b"", 0
            for packet in container.demux(stream):
                if packet.size:
                    head, size = bytes(memoryview(packet)[:4]), packet.size
    except (av.error.FFmpegError, OSError, IndexError):
        return False
    expected = mpeg_frame_bytes(head)
    return expected is not None and size < expected
