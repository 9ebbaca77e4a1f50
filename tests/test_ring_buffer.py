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


def test_grows_with_its_backlog_and_shrinks_when_drained_like_a_fixed_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random writes and reads against a plain list model of the same bounded FIFO: the same samples, the same
    losses; the buffer allocates only what the backlog needs (from 8, doubling, never past capacity) and returns
    to 8 once drained."""
    import streamtag.ring_buffer as rbm

    monkeypatch.setattr(rbm, "INITIAL_SAMPLES", 8)
    rng = np.random.default_rng(3)
    rb = RingBuffer(50)
    assert rb.allocated == 8
    model: list[float] = []
    lost_total, counter, grew = 0, 0, False
    for _ in range(2000):
        if rng.random() < 0.55:
            n = int(rng.integers(1, 70))
            x = np.arange(counter, counter + n, dtype=np.float32)
            counter += n
            model += x.tolist()
            lost = max(0, len(model) - 50)
            del model[:lost]
            assert rb.write(x) == lost
            lost_total += lost
        else:
            k = None if rng.random() < 0.3 else int(rng.integers(0, 40))
            got = rb.read(k)
            take = len(model) if k is None else min(k, len(model))
            assert got.tolist() == model[:take]
            del model[:take]
            assert rb.read_end == rb.written - len(model)
            if not model:
                assert rb.allocated == 8
        assert len(rb) == len(model) and 8 <= rb.allocated <= 50 and rb.allocated >= len(model)
        grew |= rb.allocated == 50
    assert grew and rb.overrun_samples == lost_total > 0 and rb.written == counter
