"""CPU threading of inference (streamtag/architectures/threads.py) and the paths that use it with more than one
worker: results equal the one-thread results, thread counts are restored, nested use cannot deadlock."""
from __future__ import annotations

import threading

import pytest
import torch

from streamtag.architectures import build_model
from streamtag.architectures.threads import map_threads, one_thread, workers


def test_map_threads_keeps_order_and_restores_the_thread_count(two_torch_threads) -> None:
    names: set[str] = set()

    def work(i: int) -> int:
        names.add(threading.current_thread().name)
        assert torch.get_num_threads() == 1  # a worker runs on one intra-op thread
        return i * i

    assert map_threads(work, list(range(20)), 2) == [i * i for i in range(20)]
    assert torch.get_num_threads() == 2
    assert names and all(n.startswith("streamtag-cpu") for n in names)
    # nested: a worker's own map_threads runs inline instead of waiting on its own pool
    assert map_threads(lambda i: sum(map_threads(lambda j: j, list(range(i)), 2)), [3, 4, 5], 2) == [3, 6, 10]


def test_map_threads_propagates_errors(two_torch_threads) -> None:
    def boom(i: int) -> int:
        if i == 3:
            raise ValueError("bad item")
        return i

    with pytest.raises(ValueError, match="bad item"):
        map_threads(boom, list(range(6)), 2)
    assert torch.get_num_threads() == 2


def test_transient_map_threads_runs_on_threads_that_end_with_the_call(two_torch_threads) -> None:
    """A file's span runs on threads of its own: same results, and none of its threads outlives the call
    (their native per-thread memory goes with them), while the persistent pool's threads stay."""
    seen: list[threading.Thread] = []

    def work(i: int) -> int:
        seen.append(threading.current_thread())
        assert torch.get_num_threads() == 1
        return i + 1

    assert map_threads(work, list(range(8)), 2, transient=True) == list(range(1, 9))
    assert torch.get_num_threads() == 2
    transient = set(seen)
    assert transient and threading.main_thread() not in transient
    assert not any(t.is_alive() for t in transient)
    seen.clear()
    map_threads(work, list(range(8)), 2)
    assert seen and any(t.is_alive() for t in set(seen))  # the persistent pool's


def test_one_thread_restores_and_workers_sees_the_outer_count(two_torch_threads) -> None:
    with one_thread():
        assert torch.get_num_threads() == 1
        assert workers() == 2  # the pool may still use both cores
        with one_thread():  # nested: a no-op
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and workers() == 2
    with one_thread(False):
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("kernel,stride", [(3, 2), (8, 8), (4, 4), (5, 3)])
def test_transformer_embed_windows_equals_the_conv_per_window(kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    model = build_model("transformer", {"n_mels": 12, "n_labels": 5, "d_model": 16, "n_layers": 1, "n_heads": 2,
                                        "d_ff": 32, "embed_kernel": kernel, "embed_stride": stride,
                                        "max_frames": 32}).eval()
    seq = torch.randn(2, 140, 12)
    starts = [0, 7, 31, 62, 100]
    window = 40
    with torch.no_grad():
        normed = model.in_norm(seq)
        got = model.embed_windows(normed, torch.tensor(starts), window)  # (B n, T', D)
        ref = torch.cat([model.embed(normed[b : b + 1, s : s + window].transpose(1, 2)).transpose(1, 2)
                         for b in range(2) for s in starts])
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        logits = model.head(model.encode(got))
        torch.testing.assert_close(logits, torch.cat([model(seq[b : b + 1, s : s + window]) for b in range(2)
                                                      for s in starts]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["stateful_gru", "transformer"])
@pytest.mark.parametrize("batch", [1, 3])
def test_student_step_many_on_two_threads_equals_stepping_on_one(head: str, batch: int, two_torch_threads) -> None:
    """The file path with both workers (front end split in time, head windows in groups, GRU on one thread)
    gives what stepping hop by hop on one thread gives."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    head_config = ({"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "embed_kernel": 4, "embed_stride": 4,
                    "max_frames": 16} if head == "transformer" else {"d_embed": 24, "hidden": 16, "tau_frames": 8.0})
    model = build_model("musicnn_student", {
        "n_mels": 32, "n_labels": 7, "head": head, "head_config": head_config, "window_frames": 40,
        "musicnn": {"timbral_filters": 6, "timbral_bands": [12, 22], "temporal_filters": 4,
                    "temporal_frames": [32, 16, 8], "midend_filters": 5}}).eval()
    x = torch.randn(batch, 900, 32, generator=gen) + 1.0
    ends = list(range(31, 900, 31))
    with torch.no_grad():
        got, state_many = model.step_many(x, model.init_state(batch), ends)
        assert torch.get_num_threads() == 2
        with one_thread():
            state, ref, start = model.init_state(batch), [], 0
            for e in ends:
                logits, state = model.step(x[:, start:e], state)
                ref.append(logits)
                start = e
    torch.testing.assert_close(got, torch.stack(ref, dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_many, state, atol=1e-5, rtol=1e-5)
