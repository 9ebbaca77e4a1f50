"""CPU threading for inference: whole work items on worker threads of one intra-op thread each.

Small or sequential work (a GRU stepping one stream frame by frame, a few windows through a transformer)
runs far slower on torch's intra-op threads than on one: every op is a parallel region that waits for its
slowest thread, and when the other core is busy (a decoder, another process) that wait dominates (figures:
docs/performance.md, "The students on files"). So:

- :func:`one_thread` runs a block on one intra-op thread (the caller's count is restored after);
- :func:`map_threads` runs independent items on a persistent pool of worker threads, one intra-op thread
  each, so threads pulling whole items never wait for each other (musicnn's front end, window groups).

Grad and inference modes are thread-local: the workers inherit the caller's.

A live engine also lowers its compute threads' CPU priority (:func:`lower_compute_priority`, Linux): when the
cores are short, a server's audio intake (the decoder processes, the pool's receiver) and its delivery (the event
loop) then run as soon as they have work instead of queueing behind a model step, and the step takes the CPU
they leave. The work done is the same; the latency added by waiting for a core is not (docs/architecture.md).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

__all__ = [
    "COMPUTE_NICE", "FEW_STREAMS", "few_streams", "lower_compute_priority", "lower_this_thread", "map_threads",
    "one_thread", "workers", "workspace",
]

log = logging.getLogger(__name__)

T_in = TypeVar("T_in")
T_out = TypeVar("T_out")

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
FEW_STREAMS = 64  # fewer streams than this run their small ops on one intra-op thread (CPU)
_local = threading.local()  # .outer: the thread count one_thread replaced (so workers() still sees it); .store;
# .lowered: the nice increment this thread already took
COMPUTE_NICE = 5  # nice levels a live engine's compute threads run below the process's other threads
_compute_nice = 0  # the increment map_threads' workers take (lower_compute_priority sets it)


def lower_compute_priority(increment: int = COMPUTE_NICE) -> None:
    """From now on, :func:`map_threads`' workers run ``increment`` nice levels below the process (each lowers
    itself before its next item; Linux only, elsewhere nothing changes). Process-wide and one-way: an
    unprivileged thread cannot raise its priority again, so a process that ran a live engine keeps niced workers."""
    global _compute_nice
    _compute_nice = max(_compute_nice, int(increment))


def lower_this_thread(increment: int | None = None) -> None:
    """Run the calling thread ``increment`` nice levels below the process's main thread (default: the increment
    set by :func:`lower_compute_priority`); a thread already that low (e.g. one started by a lowered thread,
    which inherits its priority) is left as it is. Linux only (``setpriority`` on a thread id); where the OS
    refuses, the thread keeps its priority (logged at debug level)."""
    n = _compute_nice if increment is None else int(increment)
    if n <= 0 or getattr(_local, "lowered", 0) >= n or not sys.platform.startswith("linux"):
        return
    _local.lowered = n
    tid = threading.get_native_id()
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + n)  # the main thread's id is the pid
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as e:
        log.debug("could not lower the priority of thread %s: %s", threading.current_thread().name, e)


def workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A reusable (never shrunk) per-thread buffer viewed as ``shape``; contents undefined. For the large
    temporaries of the CPU kernels (GEMM inputs and outputs): a fresh multi-MB tensor per call costs page faults."""
    store = getattr(_local, "store", None)
    if store is None:
        store = _local.store = {}
    n = 1
    for s in shape:
        n *= s
    buf = store.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode alike
            buf = store[name] = torch.empty(max(n, 1), dtype=dtype)
    return buf[:n].view(shape)


def workers() -> int:
    """Worker threads a CPU op may spread whole items over: torch's thread count, as it was outside any
    :func:`one_thread` block (inside one, torch's own count is 1 but the pool may still use every core)."""
    outer = getattr(_local, "outer", None)
    return int(outer) if outer is not None else torch.get_num_threads()


@contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block on one intra-op thread when ``enabled``; restores the caller's thread count after."""
    saved = torch.get_num_threads()
    if not enabled or saved <= 1 or getattr(_local, "outer", None) is not None:
        yield
        return
    torch.set_num_threads(1)
    _local.outer = saved
    try:
        yield
    finally:
        _local.outer = None
        torch.set_num_threads(saved)


def few_streams(x: torch.Tensor) -> bool:
    """Whether a batch ``x`` (B, ...) is few streams on the CPU: their small ops belong on one intra-op thread
    (:func:`one_thread`); the work worth both cores still spreads over them as whole items (:func:`map_threads`)."""
    return x.device.type == "cpu" and x.shape[0] < FEW_STREAMS


def _executor(workers: int) -> ThreadPoolExecutor:
    """The shared pool, grown (never shrunk) to ``workers`` threads; created on first use."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="streamtag-cpu")
            _pool_size = workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def map_threads(fn: Callable[[T_in], T_out], items: list[T_in], workers: int, *,
                transient: bool = False) -> list[T_out]:
    """``[fn(i) for i in items]`` on up to ``workers`` threads of one intra-op thread each (in order).

    The pool persists across calls (no thread start-up per call on the hot path). ``transient`` instead runs
    the items on threads made for this call, which end with it: for large, rare calls (a file's span), because
    a thread keeps per-thread memory of the native libraries (oneDNN's convolution scratch space) sized to the
    largest work it ran for as long as it lives, so a long file's peak would stay with the pool (docs/
    performance.md, "Memory of `tag` on long files"). A call made from a worker thread runs
    inline, so nested use cannot deadlock. The caller's thread count is restored on return (torch keeps part of
    it process-wide; the workers' own is per thread under OpenMP).
    """
    if workers <= 1 or len(items) <= 1 or threading.current_thread().name.startswith("streamtag-cpu"):
        return [fn(i) for i in items]
    saved = torch.get_num_threads()
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(item: T_in) -> T_out:
        lower_this_thread()
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    try:
        if transient:
            with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="streamtag-cpu") as own:
                return [f.result() for f in [own.submit(run, i) for i in items]]
        pool = _executor(workers)
        futures = [pool.submit(run, i) for i in items]
        return [f.result() for f in futures]
    finally:
        torch.set_num_threads(saved)
