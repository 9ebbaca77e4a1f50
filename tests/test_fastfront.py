"""The bf16 path of the distilled students: musicnn's front end as GEMMs (architectures/fastfront.py) with integer
max/min over bands (architectures/bandmax.py). In float32 the GEMM formulation equals musicnn's convolutions to
float rounding; in bfloat16 it stays within bf16's precision of them; the streaming equalities (chunked == whole,
batched == alone, step_many == hop by hop) hold in bf16 too."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from bn_fixtures import randomize_batch_norms

from streamtag.architectures import build_model, fastfront
from streamtag.architectures.fastfront import FastFront
from streamtag.architectures.musicnn import MusicnnConfig, MusicnnFrames
from streamtag.registry import load_bundle
from streamtag.runner import ModelRunner, resolve_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_frames(seed: int, **cfg) -> MusicnnFrames:
    """A small musicnn feature extractor with random weights and batch norms of both signs."""
    torch.manual_seed(seed)
    fr = MusicnnFrames(MusicnnConfig(**{"timbral_filters": 12, "temporal_filters": 6, "midend_filters": 8, **cfg}))
    randomize_batch_norms(fr)
    return fr.eval()


def _fast(fr: MusicnnFrames, dtype: torch.dtype) -> FastFront:
    return FastFront(list(fr.timbral_blocks), list(fr.temporal_blocks), n_mels=96, left=fr.left, dtype=dtype)


def _input(B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 96, generator=g) * 3.0  # musicnn's log10(1 + 10^4 mel) range


@pytest.mark.parametrize("seed", [0, 1])
def test_gemm_front_equals_the_convolutions_in_fp32(seed: int) -> None:
    """Banded/Toeplitz GEMMs + bias row + integer max/min over bands == conv -> ReLU -> BN -> max, to rounding."""
    fr = _random_frames(seed)
    n = 37
    z = _input(2, fr.in_hist + n, seed)[:, None]
    with torch.no_grad():
        ref = fr._front(z, n)  # the convolutions, (B, C0, n)
        fast = _fast(fr, torch.float32).front(z, n)
    assert fast.shape == ref.shape
    assert (fast - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_gemm_front_in_bf16_stays_within_bf16_precision() -> None:
    fr = _random_frames(2)
    n = 31
    z = _input(3, fr.in_hist + n, 2)[:, None]
    with torch.no_grad():
        ref = fr._front(z, n)
        fast = _fast(fr, torch.bfloat16).front(z, n)
    rel = (fast - ref).abs().mean() / ref.abs().mean()
    assert 0 < rel.item() < 2e-2  # bf16 keeps 8 bits: about 0.4% per rounding


def test_numba_kernels_equal_torch_reductions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled max/min over bands and PyTorch's reductions (used where numba cannot be imported) agree
    to float rounding of the batch-norm map, in both precisions."""
    fr = _random_frames(3)
    n = 20
    z = _input(2, fr.in_hist + n, 3)[:, None]
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad():
            compiled = _fast(fr, dtype).front(z, n).clone()
            monkeypatch.setattr(fastfront, "_kernels", lambda: None)
            plain = _fast(fr, dtype).front(z, n)
            monkeypatch.undo()
        assert torch.allclose(compiled, plain, rtol=1e-6, atol=1e-6), dtype  # the affine map: FMA or not


def _feats(fr: MusicnnFrames, x: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    state, out, start = fr.init_state(x.shape[0]), [], 0
    for c in [*cuts, x.shape[1]]:
        f, state = fr.step(x[:, start:c], state)
        out.append(f)
        start = c
    return torch.cat(out, dim=1)


def test_bf16_streaming_equalities() -> None:
    """bf16 features: batched == alone exactly; chunked == whole to bf16 rounding of a few features; the conv path
    that CUDA takes, run here on the CPU, agrees with the GEMM path to bf16 precision."""
    fr = _random_frames(4)
    fr.set_precision("bf16")
    x = _input(5, 300, 4)  # 5 streams: more than one group of streams per worker
    with torch.no_grad():
        whole = _feats(fr, x, [])
        alone = torch.cat([_feats(fr, x[i : i + 1], []) for i in range(5)])
        assert torch.equal(whole, alone)
        chunked = _feats(fr, x, [31, 62, 70, 200])
        scale = whole.abs().mean()
        assert ((chunked - whole).abs().mean() / scale).item() < 1e-3
        fr.gemm_front = False
        conv = _feats(fr, x, [31, 62])
        fr.set_precision("fp32")
        ref = _feats(fr, x, [])
    assert ((conv - ref).abs().mean() / scale).item() < 2e-2
    assert ((whole - ref).abs().mean() / scale).item() < 2e-2


@pytest.mark.parametrize("head", ["stateful_gru", "transformer"])
def test_student_bf16_step_many_equals_hop_by_hop(head: str) -> None:
    torch.manual_seed(5)
    cfg = {"head": head, "window_frames": 64, "musicnn": {"timbral_filters": 8, "temporal_filters": 4,
                                                          "midend_filters": 8},
           "head_config": ({"d_embed": 16, "hidden": 16, "n_layers": 1, "dropout": 0.0} if head == "stateful_gru"
                           else {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "dropout": 0.0})}
    model = build_model("musicnn_student", cfg).eval()
    model.set_precision("bf16")
    x = _input(2, 250, 5)
    with torch.no_grad():
        ends = [31, 62, 93, 124, 155, 186, 217, 248]
        many, s_many = model.step_many(x, model.init_state(2), ends)
        state, hops, start = model.init_state(2), [], 0
        for e in ends:
            logits, state = model.step(x[:, start:e], state)
            hops.append(logits)
            start = e
    assert (torch.sigmoid(many) - torch.sigmoid(torch.stack(hops, 1))).abs().max().item() < 1e-4


def test_precision_choice() -> None:
    student = load_bundle("st-gru-msd")
    runner = ModelRunner(student, "cpu", precision="fp32")
    assert runner.precision == "fp32" and runner.model.frames.compute_dtype == torch.float32
    runner = ModelRunner(student, "cpu", precision="bf16")
    assert runner.precision == "bf16" and runner.model.frames.compute_dtype == torch.bfloat16
    auto = ModelRunner(student, "cpu").precision
    assert auto == ("bf16" if fastfront.bf16_native() else "fp32")
    teacher = ModelRunner(load_bundle("musicnn-msd"), "cpu")
    assert teacher.precision == "fp32"  # musicnn itself stays the fp32 reference
    from streamtag.errors import ConfigError

    with pytest.raises(ConfigError, match="runs only in fp32"):
        resolve_precision(teacher.model, torch.device("cpu"), "bf16")
    with pytest.raises(ConfigError, match="--precision"):
        resolve_precision(runner.model, torch.device("cpu"), "fp16")
    from streamtag import cli
    from streamtag import runner as runner_mod

    assert cli.PRECISIONS == runner_mod.PRECISIONS


def test_real_features_in_bf16_agree_with_fp32() -> None:
    """On the shipped student's real weights, bf16 features stay within 1% of fp32 on average."""
    fr = load_bundle("st-gru-msd").build_model().frames
    x = _input(2, 200, 6)
    with torch.no_grad():
        ref = fr.offline(x)
        fr.set_precision("bf16")
        got = fr.offline(x)
    assert np.isfinite(got.numpy()).all()
    assert ((got - ref).abs().mean() / ref.abs().mean()).item() < 1e-2


# -- live channels: the CPU computes only the front-end channels that fire (research/liveness.py) ----------------
def _fire_counts(fr: MusicnnFrames, x: torch.Tensor) -> np.ndarray:
    from research.liveness import channel_activity

    return sum(channel_activity(fr, x[i].numpy()) for i in range(x.shape[0]))


def test_live_channels_equal_the_full_front_end_where_the_others_are_silent() -> None:
    """On a random extractor: take as live exactly the channels that fire on this input; the pruned GEMM path
    (fp32) then gives the full features, and dropping a channel that does fire changes them."""
    fr = _random_frames(6)
    x = _input(3, 260, 6)
    fires = _fire_counts(fr, x) > 0
    assert 0 < fires.sum() < fires.size  # random batch norms: some channels never fire, some do
    with torch.no_grad():
        full = _feats(fr, x, [31, 62])
        fr.set_live_channels(np.nonzero(fires)[0].tolist())
        pruned = _feats(fr, x, [31, 62])
        values, inside, _ = fr.step_compact(x, fr.init_state(3))
        fr.set_live_channels([int(i) for i in np.nonzero(fires)[0][1:]])  # one firing channel dropped
        wrong = _feats(fr, x, [31, 62])
    assert values.shape[2] == int(fires.sum()) + 3 * 8 and inside is not None
    assert (pruned - full).abs().max().item() <= 1e-4 * full.abs().max().item()
    assert (wrong - full).abs().max().item() > 1e-3


@pytest.mark.parametrize("head", ["stateful_gru", "transformer"])
def test_shipped_live_set_and_compact_head_equal_the_full_student_on_real_music(head: str) -> None:
    """The shipped students' live channels on real music: fp32 answers of the pruned CPU path (compact GRU head
    included) equal the full front end's to 1e-5; bf16 stays within 1e-2 of them; step_many == hop by hop."""
    from streamtag.frontend import logmel
    from streamtag.sources import read_audio

    name = "st-gru-msd" if head == "stateful_gru" else "st-transformer-msd"
    bundle = load_bundle(name)
    live = bundle.arch_config.get("live_channels")
    assert live and len(live) == 163, "the shipped students carry research/liveness.py's live set"
    clip = fastfront_example()
    mel = torch.from_numpy(logmel(read_audio(str(clip), 16000)[: 16000 * 20], bundle.frontend))[None]
    ends = list(range(31, mel.shape[1] + 1, 31))

    def hops(model: torch.nn.Module) -> torch.Tensor:
        state, out, start = model.init_state(1), [], 0
        for e in ends:
            logits, state = model.step(mel[:, start:e], state)
            out.append(torch.sigmoid(logits))
            start = e
        return torch.stack(out, 1)

    with torch.no_grad():
        model = bundle.build_model().eval()
        model.frames.set_live_channels(None)
        full = hops(model)
        model.frames.set_live_channels(live)
        model.set_precision("fp32")
        pruned = hops(model)
        many = torch.sigmoid(model.step_many(mel, model.init_state(1), ends)[0])
        model.set_precision("bf16")
        bf16 = hops(model)
    assert (pruned - full).abs().max().item() <= 1e-5
    assert (many - pruned).abs().max().item() <= 1e-5
    assert 0 < (bf16 - full).abs().max().item() <= 1e-2


def fastfront_example():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "examples" / "audio" / "kevin-macleod-vibe-ace.ogg"


def test_compact_gru_head_equals_the_gru_on_full_features() -> None:
    """CompactGRUHead (LayerNorm + Linear from the live values and the in-stream flag, GRU stepped by hand, EMA
    read-out at the asked frames) == StatefulGRUTagger.step_many on the expanded features, in fp32."""
    from streamtag.architectures.fasthead import CompactGRUHead

    torch.manual_seed(7)
    cfg = {"head": "stateful_gru", "musicnn": {"timbral_filters": 8, "temporal_filters": 4, "midend_filters": 8},
           "head_config": {"d_embed": 16, "hidden": 12, "n_layers": 2, "dropout": 0.0, "tau_frames": 20.0}}
    model = build_model("musicnn_student", cfg).eval()
    fr = model.frames
    x = _input(2, 120, 7)
    fires = _fire_counts(fr, x) > 0
    fr.set_live_channels(np.nonzero(fires)[0].tolist())
    with torch.no_grad():
        values, inside, _ = fr.step_compact(x, fr.init_state(2))
        assert inside is not None and inside[:, 0].sum() == 0  # the first frames are musicnn's padding
        feats = fr.expand(values, inside)
        state = model.head.init_state(2)
        state[:, -1] = 3.0  # a stream already under way
        ends = [10, 40, 120]
        ref, ref_state = model.head.step_many(feats, state, ends)
        head = CompactGRUHead(model.head, fr.live, fr.inactive_features(), fr.config.frontend_channels,
                              torch.float32)
        got, got_state = head.run(values, inside, state, ends)
    assert (got - ref).abs().max().item() <= 1e-4
    assert (got_state - ref_state).abs().max().item() <= 1e-4


def test_liveness_tool_counts_what_fires(tmp_path) -> None:
    """channel_activity agrees with the conv path's own features: a channel counted 0 times sits at its inactive
    value on every frame."""
    from research.liveness import channel_activity

    fr = _random_frames(8)
    x = _input(1, 200, 8)
    counts = channel_activity(fr, x[0].numpy())
    with torch.no_grad():
        feats = fr.offline(x)[0, :, : fr.config.frontend_channels]  # (T, C_front)
    inactive = fr.inactive_features()
    silent = torch.from_numpy(counts == 0)
    assert silent.any() and (~silent).any()
    assert torch.allclose(feats[:, silent], inactive[silent].expand(feats.shape[0], -1), atol=1e-6)
    assert ((feats[:, ~silent] - inactive[~silent]).abs() > 1e-6).any(dim=0).all()


def test_gemm_path_works_in_and_out_of_inference_mode() -> None:
    """The per-thread buffers outlive the call that made them: a step under no_grad after one under
    inference_mode (the runner's) must still write them."""
    fr = _random_frames(9)
    fr.set_precision("bf16")
    x = _input(2, 40, 9)
    with torch.inference_mode():
        a, _ = fr.step(x, fr.init_state(2))
    with torch.no_grad():
        b, _ = fr.step(x, fr.init_state(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_one_group_equals_groups_on_worker_threads(precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live step's front end as one group on the calling thread (``split=False``, what a step of a few streams
    does) equals the same streams split into groups on two worker threads, bit for bit, features and state."""
    from streamtag.architectures import musicnn

    groups: list[int] = []
    real_map = musicnn._map_threads

    def counting_map(fn, items, workers, **kw):  # type: ignore[no-untyped-def]
        groups.append(len(items))
        return real_map(fn, items, workers, **kw)

    monkeypatch.setattr(musicnn, "_map_threads", counting_map)
    fr = _random_frames(5)
    fr.set_precision(precision)
    if precision == "fp32":
        fr.set_live_channels(range(0, fr.config.frontend_channels, 2))  # fp32 takes the GEMM path with live channels
    x = _input(6, 31, 5)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers: split=True cuts the 6 streams into groups
    try:
        with torch.no_grad():
            state = fr.init_state(6)
            for _ in range(3):  # a few hops, so the carried state matters
                groups.clear()
                split = fr.step_compact(x, state, split=True)
                one = fr.step_compact(x, state, split=False)
                assert groups == [2, 1]  # two groups on the workers, then one on this thread
                assert split[1] is not None and one[1] is not None  # the GEMM path
                for a, b in zip(split, one):
                    assert torch.equal(a, b)
                state = one[2]
    finally:
        torch.set_num_threads(saved)


def test_gru_student_live_step_keeps_one_intra_op_thread_at_any_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GRU head's frames of small ops run on one intra-op thread however many streams a step holds (two
    OpenMP threads spin at every op: 2-3x the CPU at 64-128 streams on a loaded 2-core machine); the caller's
    thread count is restored after."""
    from streamtag.architectures import fasthead

    seen: list[int] = []
    real_run = fasthead.CompactGRUHead.run

    def recording_run(self, *args, **kw):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return real_run(self, *args, **kw)

    monkeypatch.setattr(fasthead.CompactGRUHead, "run", recording_run)
    runner = ModelRunner(load_bundle("st-gru-msd"), "cpu", precision="bf16")
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for b in (4, 80):  # below and above threads.FEW_STREAMS
            runner.step([f"s{i}" for i in range(b)], np.zeros((b, 31, 96), dtype=np.float32))
        assert seen == [1, 1, 1]  # 4 streams on this thread; 80 in two groups, on a worker each
        assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize(("name", "path"), [("st-gru-msd", "bf16"), ("st-gru-msd", "fp32"),
                                            ("st-gru-msd", "convolutions"), ("st-transformer-msd", "bf16")])
def test_student_step_in_groups_equals_one_group(name: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live step of many streams runs front end and head per group of streams on the worker threads; the
    logits and carried state equal the same streams stepped as one group (front end split, head on this thread),
    hop after hop, and the answers differ between streams (real music, so the comparison means something). On the
    GEMM path (bf16, fp32 with the live channels) and on the convolutions' (full features, the GRU's own step);
    and with the transformer head (its state: the window of features)."""
    from streamtag.architectures import fasthead, student
    from streamtag.frontend import logmel
    from streamtag.sources import read_audio

    rows: list[int] = []  # streams per head call
    real_run, real_logits = fasthead.CompactGRUHead.run, student.MusicnnStudent.head_logits

    def recording_run(self, v, *args, **kw):  # type: ignore[no-untyped-def]
        rows.append(v.shape[0])
        return real_run(self, v, *args, **kw)

    def recording_logits(self, feats, *args, **kw):  # type: ignore[no-untyped-def]
        rows.append(feats.shape[0])
        return real_logits(self, feats, *args, **kw)

    monkeypatch.setattr(fasthead.CompactGRUHead, "run", recording_run)
    monkeypatch.setattr(student.MusicnnStudent, "head_logits", recording_logits)
    bundle = load_bundle(name)
    model = bundle.build_model().eval()
    model.set_precision("bf16" if path == "bf16" else "fp32")
    model.frames.gemm_front = path != "convolutions"
    B = 2 * student._SPLIT_STREAMS + 6  # enough streams for two groups
    mel = torch.from_numpy(logmel(read_audio(str(fastfront_example()), 16000)[: 16000 * 12], bundle.frontend))
    x = torch.stack([mel[5 * i : 5 * i + 93] for i in range(B)])  # (B, 93, 96): each stream its own part of the clip
    hops = [x[:, s : s + 31] for s in (0, 31, 62)]
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            grouped, state_g = [], model.init_state(B)
            for h in hops:
                rows.clear()
                logits, state_g = model.step(h, state_g)
                grouped.append(logits)
                assert len(rows) == 2 and sum(rows) == B  # one head call per group, every stream once
            monkeypatch.setattr(student, "_SPLIT_STREAMS", B + 1)  # the one-group step
            one, state_1 = [], model.init_state(B)
            for h in hops:
                rows.clear()
                logits, state_1 = model.step(h, state_1)
                one.append(logits)
                assert rows == [B]
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(grouped, one):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_g, state_1, atol=1e-5, rtol=1e-5)
    assert (grouped[-1][0] - grouped[-1][1]).abs().max().item() > 1e-3
