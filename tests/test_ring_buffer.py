from __future__ import annotations

import threading

import numpy as np
import pytest

from streamtag.errors import ConfigError
from streamtag.ring_buffer import RingBuffer


def test_fifo_order_across_wraparound() -> None:
    rb = RingBuffer(10)
    rb.write(np.arange(7))
    assert rb.read(5).tolist() == [0, 1, 2, 3, 4]
    rb.write(np.arange(7, 14))  # wraps around the end
    assert len(rb) == 9
    assert rb.read().tolist() == list(range(5, 14))
    assert rb.overruns == 0 and rb.written == 14


def test_overrun_drops_oldest_and_counts() -> None:
    rb = RingBuffer(8)
    rb.write(np.arange(6))
    lost = rb.write(np.arange(6, 11))
    assert lost == 3 and rb.overruns == 1 and rb.overrun_samples == 3
    assert rb.read().tolist() == list(range(3, 11))
    lost = rb.write(np.arange(20))  # bigger than the buffer: only the newest survive
    assert lost == 12 and rb.read().tolist() == list(range(12, 20))


def test_concurrent_writer_reader_loses_nothing_when_big_enough() -> None:
    rb = RingBuffer(1 << 16)
    got: list[np.ndarray] = []

    def writer() -> None:
        for i in range(200):
            rb.write(np.arange(i * 100, (i + 1) * 100, dtype=np.float32))

    th = threading.Thread(target=writer)
    th.start()
    while th.is_alive() or len(rb):
        got.append(rb.read(333))
    th.join()
    got.append(rb.read())
    assert np.array_equal(np.concatenate(got), np.arange(20000, dtype=np.float32))
    assert rb.overruns == 0


def test_bad_capacity() -> None:
    with pytest.raises(ConfigError):
        RingBuffer(0)
