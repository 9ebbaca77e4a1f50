"""musicnn port: shapes for any window length, TF "same" padding, the converter's variable mapping, the shipped
bundles' settings, and parity with the original TensorFlow musicnn on the shared reference set."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamtag.architectures import build_model
from streamtag.architectures.musicnn import FrontendBlock, Musicnn, MusicnnConfig
from streamtag.errors import ModelError
from streamtag.frontend import FrontendSpec, logmel
from streamtag.registry import load_bundle, save_bundle
from streamtag.train.convert_musicnn import load_tf_weights, variable_map

BUNDLES = {"musicnn-msd": ("MSD_musicnn", "msd"), "musicnn-mtt": ("MTT_musicnn", "mtt")}
WINDOW = 187  # musicnn's 3 s patch, in frames


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {name: load_bundle(name).build_model() for name in BUNDLES}


def _probs(model: torch.nn.Module, windows: np.ndarray, batch_size: int = 2) -> np.ndarray:
    """Sigmoid outputs (P, 50) of windows (P, T, 96), a few at a time (CPU caches favour small batches)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            out.append(torch.sigmoid(model(torch.from_numpy(windows[i : i + batch_size]))).numpy())
    return np.concatenate(out)


# --- no ../shared needed ----------------------------------------------------------------------------------


def test_any_window_length_and_batch() -> None:
    torch.manual_seed(0)
    model = build_model("musicnn", {}).eval()
    assert model.stateful is False
    for T in (1, 2, 31, 64, 129, 200):  # shorter and longer than every kernel (7, 32, 64, 128)
        x = torch.randn(2, T, 96)
        with torch.no_grad():
            logits = model(x)
            assert logits.shape == (2, 50) and torch.isfinite(logits).all()
            # batching does not mix items
            assert torch.allclose(model(x[1:2]), logits[1:2], atol=1e-5)
    with pytest.raises(ValueError, match="96"):
        model(torch.randn(1, 10, 40))


def test_training_mode_backward() -> None:
    torch.manual_seed(0)
    model = Musicnn(MusicnnConfig(n_mels=24, n_labels=5, timbral_filters=8, timbral_bands=(6, 12),
                                  temporal_filters=4, temporal_frames=(16, 8), midend_filters=8,
                                  backend_units=16)).train()
    logits = model(torch.randn(4, 40, 24))
    F.binary_cross_entropy_with_logits(logits, torch.rand(4, 5)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_inference_pooling_equals_naive_with_negative_bn_scales() -> None:
    """The eval path takes max or min over bands by the sign of the BN scale; it must equal bn -> relu -> max."""
    torch.manual_seed(1)
    block = FrontendBlock(filters=16, frames=7, bands=10, eps=1e-3)
    with torch.no_grad():
        block.bn.weight.copy_(torch.randn(16))  # about half negative
        block.bn.bias.copy_(torch.randn(16))
        block.bn.running_mean.copy_(torch.randn(16))
        block.bn.running_var.copy_(torch.rand(16) + 0.1)
    assert (block.bn.weight < 0).any() and (block.bn.weight > 0).any()
    x = torch.randn(2, 1, 50, 32)
    block.eval()
    with torch.no_grad():
        fast = block(x)
        naive = block.bn(F.relu(block.conv(F.pad(x, (0, 0, 3, 3))))).amax(dim=3)
    assert fast.shape == (2, 16, 50)
    assert torch.allclose(fast, naive, atol=1e-6)


@pytest.mark.parametrize("frames", [4, 5, 32])
def test_same_padding_puts_the_extra_frame_at_the_end(frames: int) -> None:
    """TensorFlow "same" (stride 1): output t sees input t - (k-1)//2 ... t + k//2, zeros outside."""
    block = FrontendBlock(filters=frames, frames=frames, bands=1, eps=1e-3).eval()
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.bias.zero_()
        for j in range(frames):  # filter j picks kernel tap j
            block.conv.weight[j, 0, j, 0] = 1.0
    T = 40
    x = torch.arange(1, T + 1, dtype=torch.float32).view(1, 1, T, 1)  # positive, so ReLU keeps it
    with torch.no_grad():
        y = block(x)[0]  # (frames, T), bn is the identity up to eps
    scale = 1 / np.sqrt(1 + 1e-3)
    before = (frames - 1) // 2
    for j in range(frames):
        src = np.arange(T) + j - before
        expected = np.where((src >= 0) & (src < T), src + 1, 0) * scale
        np.testing.assert_allclose(y[j].numpy(), expected, rtol=1e-6)


def test_converter_maps_every_variable_and_rejects_extras() -> None:
    torch.manual_seed(0)
    source = Musicnn(MusicnnConfig())
    with torch.no_grad():
        for name, t in source.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t).abs() if "running_var" in name else torch.randn_like(t))
    state = source.state_dict()
    # the TF checkpoint those weights would come from, plus optimizer slots that must be skipped
    tf = {}
    for tf_name, (pt_name, kind) in variable_map(source).items():
        w = state[pt_name].numpy()
        if kind == "conv2d":  # torch (out, in, kh, kw) -> TF (kh, kw, in, out)
            w = w.transpose(2, 3, 1, 0)
        elif kind == "conv1d":  # torch (out, C_in, k) -> TF (k, C_in, 1, out)
            w = w.transpose(2, 1, 0)[:, :, None, :]
        elif kind == "dense":
            w = w.T
        tf[tf_name] = w
        tf[tf_name + "/Adam"] = np.zeros_like(w)
    tf["beta1_power"] = np.float32(0.9)
    assert len(variable_map(source)) == 64  # 11 batch norms x 4, 8 convs x 2, 2 dense x 2
    target = Musicnn(MusicnnConfig())
    load_tf_weights(target, tf)
    for k, v in target.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, state[k]), k
    with pytest.raises(ModelError, match="conv2d_8"):
        load_tf_weights(Musicnn(MusicnnConfig()), {**tf, "conv2d_8/kernel": np.zeros((1,))})
    missing = dict(tf)
    del missing["dense_1/bias"]
    with pytest.raises(ModelError, match="dense_1/bias"):
        load_tf_weights(Musicnn(MusicnnConfig()), missing)


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_bundle_settings_and_config_round_trip(name: str, tmp_path: Path) -> None:
    bundle = load_bundle(name)
    assert bundle.architecture == "musicnn" and bundle.streaming == "window" and bundle.activation == "sigmoid"
    assert bundle.frontend == FrontendSpec(
        sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, fmin=0.0, fmax=None, power=2.0, htk=False,
        norm="slaney", scaling="log10p", fp16_mel=True,
    )
    assert bundle.window_frames == WINDOW and bundle.hop_seconds == 1.0
    assert len(bundle.net_labels) == 50 and len(set(bundle.labels)) == 50 + len(bundle.derived)
    assert 0 < len(bundle.genre_labels) < 50 and set(bundle.genre_labels) <= set(bundle.labels)
    assert (bundle.path / "model.safetensors").stat().st_size < 5_000_000
    card = bundle.card_path.read_text()
    for heading in ("## Model Details", "## Intended Use", "## Training Data", "## Performance", "## Limitations"):
        assert heading in card
    assert "Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019" in card
    assert all(f"`{g}`" in card for g in bundle.genre_labels)

    model = bundle.build_model()
    config = MusicnnConfig(**bundle.arch_config)
    assert model.config == config and config.n_labels == 50
    saved = save_bundle(
        tmp_path / name, model, architecture="musicnn", arch_config=dataclasses.asdict(config),
        frontend=bundle.frontend, labels=bundle.labels, window_frames=bundle.window_frames,
        hop_seconds=bundle.hop_seconds, genre_labels=bundle.genre_labels, derived=bundle.derived,
    )
    again = load_bundle(saved.path)
    assert again.arch_config == bundle.arch_config and MusicnnConfig(**again.arch_config) == config
    assert again.labels == bundle.labels and again.genre_labels == bundle.genre_labels
    reloaded = again.build_model()
    x = torch.randn(2, WINDOW, 96)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))


# --- parity with TensorFlow musicnn (needs ../shared) -------------------------------------------------------


def test_labels_match_reference(shared_dir: Path) -> None:
    labels = json.loads((shared_dir / "reference" / "musicnn" / "labels.json").read_text())
    for name, (key, _) in BUNDLES.items():
        assert list(load_bundle(name).net_labels) == labels[key]


def test_patch_parity(shared_dir: Path, models: dict[str, torch.nn.Module]) -> None:
    """The reference's exact network inputs give the TF sigmoid outputs within 1e-4."""
    files = sorted((shared_dir / "reference" / "musicnn").glob("*.npz"))
    assert files
    for path in files:
        with np.load(path) as ref:
            patches = ref["patches"]  # (P, 187, 96)
            for name, (_, key) in BUNDLES.items():
                probs = _probs(models[name], patches)  # (P, 50)
                assert probs.shape == ref[key].shape
                diff = float(np.abs(probs - ref[key]).max())
                assert diff <= 1e-4, f"{name} on {path.name}: max abs diff {diff:.2e}"


@pytest.mark.slow
def test_clip_parity_from_audio(shared_dir: Path, models: dict[str, torch.nn.Module]) -> None:
    """Decoding + our front end + the port: per-clip mean of every tag within 0.03 of musicnn's."""
    import librosa

    ref_dir = shared_dir / "reference" / "musicnn"
    clips = [json.loads(line) for line in (ref_dir / "clip_tags.jsonl").read_text().splitlines() if line.strip()]
    assert clips
    spec = load_bundle("musicnn-msd").frontend
    assert load_bundle("musicnn-mtt").frontend == spec
    worst = {name: 0.0 for name in BUNDLES}
    for clip in clips:
        samples, _ = librosa.load(shared_dir / "audio" / clip["file"], sr=16000, res_type="soxr_hq", mono=True)
        frames = logmel(samples, spec)  # (T, 96)
        n = frames.shape[0] // WINDOW
        assert n == clip["n_patches"], f"{clip['file']}: {n} windows, musicnn had {clip['n_patches']}"
        windows = frames[: n * WINDOW].reshape(n, WINDOW, spec.n_mels)  # (P, 187, 96)
        for name, (key, _) in BUNDLES.items():
            mean = _probs(models[name], windows).mean(axis=0)  # (50,)
            expected = np.array([clip[key][t] for t in load_bundle(name).net_labels])
            dev = np.abs(mean - expected)
            worst[name] = max(worst[name], float(dev.max()))
            bad = {t: round(float(d), 4) for t, d in zip(load_bundle(name).net_labels, dev) if d > 0.03}
            assert not bad, f"{name} on {clip['file']}: {bad}"
    print(f"max clip-level deviation: {worst}")
