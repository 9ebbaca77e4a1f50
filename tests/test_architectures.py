"""Every registered architecture (except musicnn, tested with its converter): forward, backward, bundle round trip;
the stateful GRU's chunked == full-sequence invariant; the transformer's size."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from streamtag.architectures import ARCHITECTURES, build_model, config_class
from streamtag.frontend import FrontendSpec
from streamtag.registry import load_bundle, save_bundle

ARCHS = sorted(a for a in ARCHITECTURES if a != "musicnn")
N_MELS, N_LABELS = 32, 7
SMALL = {  # shrink the default widths so the whole parametrized test stays fast on 2 busy cores
    "transformer": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_frames": 16},
    "bigru": {"d_embed": 24, "hidden": 16},
    "stateful_gru": {"d_embed": 24, "hidden": 16, "tau_frames": 8.0},
    "crnn": {"channels": [8, 8, 16], "time_pool": [2, 2, 1], "d_rnn_in": 16, "hidden": 16},
    "vit": {"patch": 8, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_time_patches": 4},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, {"n_mels": N_MELS, "n_labels": N_LABELS, **SMALL[name]})


def test_every_registered_architecture_is_covered() -> None:
    assert set(SMALL) == set(ARCHS)


@pytest.mark.parametrize("name", ARCHS)
def test_architecture(name: str, tmp_path: Path) -> None:
    model = _model(name).train()
    # variable T: shorter and longer than the learned positions / pooling sizes
    for T in (1, 5, 90):
        x = torch.randn(3, T, N_MELS)
        logits = model(x)
        assert logits.shape == (3, N_LABELS)
        assert torch.isfinite(logits).all()
    model.zero_grad()
    logits = model(torch.randn(4, 57, N_MELS))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.rand(4, N_LABELS)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert hasattr(model, "stateful")

    # bundle round trip: the config and weights rebuild a model with identical outputs
    model.eval()
    cfg = dataclasses.asdict(model.config)
    bundle = save_bundle(
        tmp_path / name, model, architecture=name, arch_config=cfg,
        frontend=FrontendSpec(n_mels=N_MELS), labels=[f"l{i}" for i in range(N_LABELS)],
        window_frames=40, hop_seconds=0.5, streaming="stateful" if model.stateful else "window",
    )
    loaded = load_bundle(tmp_path / name).build_model()
    assert bundle.architecture == name
    assert type(loaded.config) is config_class(name) and loaded.config == model.config
    x = torch.randn(2, 40, N_MELS)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_stateful_gru_chunked_equals_full() -> None:
    model = _model("stateful_gru").eval()
    assert model.stateful
    model._EMA_BLOCK = 64  # small EMA blocks, so block boundaries fall inside chunks at this short length
    gen = torch.Generator().manual_seed(123)
    T = 300
    x = torch.randn(2, T, N_MELS, generator=gen)
    with torch.no_grad():
        full, _ = model.forward_frames(x)  # (B, T, n_labels)
        assert torch.allclose(model(x), full[:, -1], atol=1e-6)
        state = model.init_state(2, "cpu")
        t = 0
        checked = 0
        while t < T:
            k = int(torch.randint(1, 120, (1,), generator=gen))
            logits, state = model.step(x[:, t : t + k], state)
            t = min(t + k, T)
            torch.testing.assert_close(logits, full[:, t - 1], atol=1e-5, rtol=0)
            checked += 1
        assert checked > 2
        # an empty chunk leaves the state alone and repeats the last read-out
        again, state2 = model.step(x[:, :0], state)
        assert torch.equal(state2, state)
        torch.testing.assert_close(again, full[:, -1], atol=1e-5, rtol=0)


def test_stateful_gru_streams_are_independent() -> None:
    """Batched streams == streams run one by one (the state is batch-first)."""
    model = _model("stateful_gru").eval()
    x = torch.randn(3, 50, N_MELS)
    with torch.no_grad():
        batched, state = model.step(x, model.init_state(3, "cpu"))
        for i in range(3):
            one, s1 = model.step(x[i : i + 1], model.init_state(1, "cpu"))
            torch.testing.assert_close(one, batched[i : i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(s1, state[i : i + 1], atol=1e-5, rtol=0)


def test_transformer_size_matches_the_seed() -> None:
    model = build_model("transformer", {"n_mels": 128, "n_labels": 163, "d_model": 128})
    n = sum(p.numel() for p in model.parameters())
    assert 0.7e6 * 0.7 <= n <= 0.7e6 * 1.3, n
