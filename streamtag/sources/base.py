"""What every source shares: the Source contract and the decoded-frames -> mono blocks pipeline.

Decoded audio goes through :mod:`streamtag.audio` (the one conversion: integer PCM / 2**(bits-1), channel mean,
streaming soxr HQ resampling padded like librosa's ``fix_length``), so the engine sees the samples the musicnn
reference saw, whatever the input. PyAV reads of Python file objects go through :class:`AvReader`, so Ctrl-C is
not lost inside PyAV's read callback and a closed source reads nothing more.
"""
from __future__ import annotations

import logging
import math
import threading
import unicodedata
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import av
import av.error
import numpy as np

from ..audio import Resampler, downmix, mean_of_channels, to_float32
from ..errors import ConfigError

__all__ = [
    "Source",
    "EventCallback",
    "AudioPipeline",
    "frame_to_array",
    "frame_to_mono",
    "iter_frames",
    "describe_av_error",
    "AvReader",
    "SourceInterrupted",
    "interruptible",
    "clean_title",
]

log = logging.getLogger(__name__)

EventCallback = Callable[[str, str], None]

MAX_BAD_PACKETS = 64  # consecutive undecodable packets before a decoder gives up
# s of input audio an AudioPipeline's fifo may keep room for: FFmpeg's fifo grows to the largest read it held and
# never shrinks, so one that held more (a radio's burst-on-connect) is replaced once drained
FIFO_KEEP_S = 1


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as mono float32 ``(samples,)``: :func:`frame_to_array` then
    :func:`streamtag.audio.downmix`, the same samples. Planar float32 (what FFmpeg's MP3, AAC and Vorbis
    decoders give) is read from the planes directly: PyAV's ``to_ndarray`` stacks them in Python first (10.7 ->
    6.6 us per 0.2 s read of 44.1 kHz stereo, ~1.5% of a station's decoding)."""
    n, channels = frame.samples, frame.layout.nb_channels
    if frame.format.name != "fltp" or len(frame.planes) != channels:
        x = frame_to_array(frame)
        return downmix(x, channels=x.shape[0], planar=True)
    return mean_of_channels([np.frombuffer(memoryview(plane), dtype=np.float32, count=n) for plane in frame.planes])


def frame_to_array(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 ``(channels, samples)``, integers scaled by :func:`streamtag.audio.to_float32`."""
    x = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        x = x.reshape(-1, channels).T  # (1, N * C) interleaved -> (C, N)
    return to_float32(x)


def describe_av_error(e: BaseException) -> str:
    """A short text for an FFmpeg/PyAV/OS error, without the file path PyAV sometimes appends."""
    if isinstance(e, av.error.FFmpegError):
        return e.strerror or type(e).__name__
    text = str(e) or type(e).__name__
    return text


def iter_frames(container: Any, stream: Any, counts: Source | None = None) -> Iterator[av.AudioFrame]:
    """Decode ``stream`` of ``container``, skipping isolated undecodable packets (as the ffmpeg CLI does).

    Demuxer errors and long runs of bad packets propagate (``av.error.FFmpegError`` or ``OSError``). ``counts``:
    a source whose ``bytes_in`` (compressed audio bytes demuxed) and ``decode_errors`` (packets skipped) to keep.
    """
    bad = 0
    for packet in container.demux(stream):
        if counts is not None:
            counts.bytes_in += packet.size
        try:
            frames = packet.decode()
        except (av.error.InvalidDataError, av.error.UndefinedError) as e:  # one corrupt packet: skip it
            # (an ADTS stream joined mid-frame makes the AAC decoder fail its first packet with an odd code)
            bad += 1
            if counts is not None:
                counts.decode_errors += 1
            if bad > MAX_BAD_PACKETS:
                raise
            log.debug("skipping an undecodable packet: %s", describe_av_error(e))
            continue
        bad = 0
        yield from frames


MAX_TITLE_CHARS = 256


def clean_title(title: str | None) -> str:
    """A title from a remote (ICY StreamTitle, HLS #EXTINF, playlist) fit to show: control characters (terminal
    escapes included) replaced by spaces, whitespace collapsed, at most ``MAX_TITLE_CHARS`` characters."""
    if not title:
        return ""
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in title)
    return " ".join(text.split())[:MAX_TITLE_CHARS]


class SourceInterrupted(Exception):
    """A KeyboardInterrupt that arrived inside a PyAV read callback, carried out as an Exception.

    PyAV's callbacks catch only ``Exception`` (a KeyboardInterrupt raised there is printed and dropped), so
    :class:`AvReader` turns it into this, PyAV re-raises it from its own call, and :func:`interruptible`
    turns it back into KeyboardInterrupt.
    """


class AvReader:
    """``read(n)`` for ``av.open(file_like)``: lets Ctrl-C through, and reads nothing once ``closed`` is set.

    After a read raised (a stall, a dropped connection), later reads return b"" (the end): PyAV keeps one pending
    exception per thread and prints a second one with its traceback ("PyAV library exception being dropped")
    when FFmpeg reads again before giving up, so the first one is all it ever gets, and it re-raises that one.
    """

    def __init__(self, read: Callable[[int], bytes], closed: threading.Event) -> None:
        self._read = read
        self._closed = closed
        self.interrupted = False
        self.failed = False

    def read(self, n: int = -1) -> bytes:
        if self.interrupted or self.failed or self._closed.is_set():
            return b""
        try:
            return self._read(n)
        except (KeyboardInterrupt, SystemExit) as e:
            self.interrupted = True
            raise SourceInterrupted() from e
        except BaseException:
            self.failed = True
            raise



@contextmanager
def interruptible(reader: AvReader | None = None) -> Iterator[None]:
    """Around PyAV calls that read through an :class:`AvReader`: a Ctrl-C caught inside one propagates."""
    try:
        yield
    except SourceInterrupted:
        raise KeyboardInterrupt from None
    except GeneratorExit:
        raise
    except BaseException:
        if reader is not None and reader.interrupted:  # PyAV turned it into an error of its own
            raise KeyboardInterrupt from None
        raise
    if reader is not None and reader.interrupted:  # PyAV took it for the end of the input
        raise KeyboardInterrupt


class AudioPipeline:
    """Float32 ``(C, N)`` chunks at any rate -> mono float32 blocks of ``block_size`` samples at ``sample_rate``.

    The conversion itself is :mod:`streamtag.audio` (downmix + streaming resampler); this class only cuts blocks.
    ``restart()`` ends a continuous segment (a reconnect, an input rate change): the resampler's tail is flushed
    and the next chunk starts a fresh resampler. ``finish()`` also returns the last, possibly shorter, block.
    """

    def __init__(self, sample_rate: int, block_size: int, *, whole: bool = False) -> None:
        self.sample_rate = int(sample_rate)
        self.block_size = int(block_size)
        # whole: no cutting and no gathering; each call returns everything it converted as one array (the mux
        # loop's stations: a pass's audio goes out at once, stamped with when its bytes arrived)
        self.whole = whole
        self._resampler: Resampler | None = None
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._fifo: av.AudioFifo | None = None  # decoded frames not converted yet (push_frame)
        self._fifo_key: tuple[int, str, str] | None = None
        self._fifo_min = 0
        self._fifo_keep = 0  # input samples beyond which a drained fifo is replaced (see _drain_fifo)

    def push_frame(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """Add one decoded frame; return the complete blocks now available. Frames are gathered (in FFmpeg's
        AudioFifo) until they hold a block's worth of input, then converted and resampled in one pass: the same
        samples as :meth:`push` per frame, at a fraction of the per-frame cost."""
        return self.push_frames((frame,))

    def push_frames(self, frames: Iterable[av.AudioFrame]) -> list[np.ndarray]:
        """:meth:`push_frame` for several frames (e.g. all a network read decoded): one conversion for all of
        them once they hold a block's worth of input. The same samples as pushing them one by one."""
        blocks = self.gather(frames)
        if self._fifo is not None and self._fifo.samples >= self._fifo_min:
            blocks += self._drain_fifo()
        return blocks

    def gather(self, frames: Iterable[av.AudioFrame]) -> list[np.ndarray]:
        """Copy ``frames`` into the fifo without converting them (a later :meth:`push_frames`, even of no frames,
        converts what was gathered): a caller decoding many frames hands each over as it comes, so FFmpeg's frame
        buffers go back to the decoder's pool at once instead of all being held until the conversion. Returns the
        blocks of a format change only (the fifo's earlier frames, converted)."""
        blocks: list[np.ndarray] = []
        for frame in frames:
            key = (frame.sample_rate, frame.format.name, frame.layout.name)
            if key != self._fifo_key:  # checked here: PyAV's AudioFifo crashes on a frame of another layout
                blocks += self._drain_fifo()
                self._fifo, self._fifo_key = av.AudioFifo(), key
                self._fifo_min = 1 if self.whole else max(1, self.block_size * frame.sample_rate // self.sample_rate)
                self._fifo_keep = max(FIFO_KEEP_S * frame.sample_rate, self._fifo_min)
            assert self._fifo is not None
            frame.pts = None  # the fifo checks timestamps for gaps; ours are continuous by construction
            self._fifo.write(frame)
        return blocks

    def _drain_fifo(self) -> list[np.ndarray]:
        fifo = self._fifo
        frame = fifo.read() if fifo is not None and fifo.samples else None
        if frame is None:
            return []
        if frame.samples > self._fifo_keep:  # FFmpeg's fifo never shrinks: after a burst, start a small one
            self._fifo = av.AudioFifo()
        return self._push_mono(frame_to_mono(frame), frame.sample_rate)

    def push(self, x: np.ndarray, sr_in: int) -> list[np.ndarray]:
        """Add ``x`` (C, N) or (N,) samples at ``sr_in`` (any PCM dtype); return the complete blocks now available."""
        x = to_float32(x)
        return self._push_mono(downmix(x, channels=x.shape[0], planar=True) if x.ndim == 2 else downmix(x), sr_in)

    def _push_mono(self, mono: np.ndarray, sr_in: int) -> list[np.ndarray]:
        if self._resampler is None or self._resampler.sample_rate != int(sr_in):
            self._flush_segment()
            self._resampler = Resampler(sample_rate=int(sr_in), target_rate=self.sample_rate)
        self._append(self._resampler.push(mono))
        return self._take_blocks()

    def restart(self) -> list[np.ndarray]:
        """End the continuous segment; return the complete blocks its flushed tail produced."""
        blocks = self._drain_fifo()
        self._fifo = self._fifo_key = None
        self._flush_segment()
        return blocks + self._take_blocks()

    def finish(self) -> list[np.ndarray]:
        """End of input: every remaining sample, the last block possibly shorter than ``block_size``."""
        blocks = self.restart()
        if self._n_pending:
            blocks.append(np.concatenate(self._pending))
            self._pending, self._n_pending = [], 0
        return blocks

    def _flush_segment(self) -> None:
        if self._resampler is not None:
            self._append(self._resampler.flush())
        self._resampler = None

    def _append(self, y: np.ndarray) -> None:
        if y.shape[0]:
            self._pending.append(np.asarray(y, dtype=np.float32))
            self._n_pending += y.shape[0]

    def _take_blocks(self) -> list[np.ndarray]:
        if self.whole:
            pending, self._pending, self._n_pending = self._pending, [], 0
            return [pending[0] if len(pending) == 1 else np.concatenate(pending)] if pending else []
        if self._n_pending < self.block_size:
            return []
        data = np.concatenate(self._pending)
        n_blocks = data.shape[0] // self.block_size
        cut = n_blocks * self.block_size
        blocks = [data[i : i + self.block_size].copy() for i in range(0, cut, self.block_size)]
        rest = data[cut:]
        self._pending = [rest] if rest.shape[0] else []
        self._n_pending = rest.shape[0]
        return blocks


class Source:
    """An iterator of mono float32 blocks ``(block_size,)`` at ``sample_rate``.

    Attributes: ``name`` (str), ``title`` (latest ICY StreamTitle or None), ``info`` (codec, input rate, channels,
    content type, ...), ``on_event`` (optional ``callback(kind, detail)``: ("title", title), ("dropped", reason),
    ("reconnecting", "in 2.0 s (attempt 3)"), ("connected", display name)). ``close()`` may be called from any
    thread; it ends the iteration.
    """

    def __init__(self, name: str, sample_rate: int, block_seconds: float = 0.1) -> None:
        if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
            raise ConfigError(f"sample rate must be a positive integer number of Hz, got {sample_rate!r}")
        if not (block_seconds > 0 and math.isfinite(block_seconds)):
            raise ConfigError(f"block_seconds must be a positive number of seconds, got {block_seconds!r}")
        self.name = name
        self.sample_rate = int(sample_rate)
        self.block_seconds = float(block_seconds)
        self.block_size = max(1, round(block_seconds * sample_rate))
        self.title: str | None = None
        # a network source: when the bytes behind the block it yielded last came in, (first, last) in
        # time.monotonic() (set before each yield); None: as it is delivered. Latency counts from it.
        self.arrived: tuple[float, float] | None = None
        self.info: dict[str, Any] = {}
        self.on_event: EventCallback | None = None
        self.bytes_in = 0  # compressed audio bytes demuxed so far (health figures)
        self.decode_errors = 0  # undecodable packets skipped so far
        self._closed = threading.Event()
        self._gen: Generator[np.ndarray, None, None] | None = None
        # close() vs a read in another thread: the generator is finished (its finally runs: containers and sockets
        # are released) exactly once, and never while another thread is inside it; see close()
        self._state_lock = threading.Lock()
        self._reading = False  # a thread is inside next(self._gen)
        self._finished = False  # the generator was closed (or _release() ran), by whichever thread came last

    # iteration -------------------------------------------------------------------------------------------------
    def __iter__(self) -> Source:
        return self

    def __next__(self) -> np.ndarray:
        with self._state_lock:
            if self._closed.is_set() or self._finished:
                raise StopIteration
            if self._reading:
                raise ValueError(f"{self.name}: a source is read by one thread at a time")
            if self._gen is None:
                self._gen = self._blocks()
            gen = self._gen
            self._reading = True
        try:
            return next(gen)
        finally:
            with self._state_lock:
                self._reading = False
                finish = self._closed.is_set() and not self._finished
                self._finished = self._finished or finish
            if finish:  # close() came while this thread was reading: the generator is ours to finish
                self._finish(gen)

    def _blocks(self) -> Generator[np.ndarray, None, None]:
        raise NotImplementedError

    # lifetime --------------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop the source and release its file/socket; safe to call any number of times, from any threads.

        Resources are released exactly once: here when no thread is reading, else by the reading thread as its
        read returns (``_abort()`` unblocks it), so two threads never close the same decoder or generator (a
        generator closed from two threads at once, or while it runs, can crash inside FFmpeg)."""
        with self._state_lock:
            self._closed.set()
            finish = not self._reading and not self._finished
            self._finished = self._finished or finish
            gen = self._gen
        self._abort()
        if finish:
            self._finish(gen)

    def _finish(self, gen: Generator[np.ndarray, None, None] | None) -> None:
        """Release what the source holds (called once): close its generator, or, never started, ``_release()``."""
        try:
            if gen is not None:
                gen.close()
            else:
                self._release()
        except Exception:  # noqa: BLE001 - closing must not raise into a reader or a finally
            log.debug("%s: releasing the source failed", self.name, exc_info=True)

    def _abort(self) -> None:
        """Unblock a read in progress (subclasses with sockets shut them down); may run more than once, from
        any thread, so it only signals and shuts down: releasing belongs in the generator's finally or
        ``_release``."""

    def _release(self) -> None:
        """Release what the constructor opened, for a source closed before its first block (called once)."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._closed.set()
            self._abort()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    # events ----------------------------------------------------------------------------------------------------
    def _emit(self, kind: str, detail: str) -> None:
        emit_event(self, kind, detail)

    def _set_title(self, title: str | None) -> None:
        set_title(self, title)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, sample_rate={self.sample_rate})"



class _Titled(Protocol):
    name: str
    title: str | None
    on_event: EventCallback | None


def emit_event(source: _Titled, kind: str, detail: str) -> None:
    """Call ``source.on_event(kind, detail)`` if set; a broken callback is logged and must not kill the stream
    (every source, in-process or on a worker's mux loop, reports events this way)."""
    callback = source.on_event
    if callback is None:
        return
    try:
        callback(kind, detail)
    except Exception:
        log.exception("%s: on_event callback failed for %s event", source.name, kind)


def set_title(source: _Titled, title: str | None) -> None:
    """Clean and record ``source``'s now-playing title; a change is logged and reported as a ``title`` event."""
    title = clean_title(title) or None
    if title != source.title:
        source.title = title
        log.info("%s: title %r", source.name, title)
        emit_event(source, "title", title or "")
