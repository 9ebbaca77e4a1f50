"""The training module end to end on a mini FMA in FMA's exact layout: metadata, feature cache, train, eval,
bundle through the engine; plus the pieces (augmentation, schedule, metrics, checkpoints) as unit tests."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fma_fixture import MiniFMA, make_mini_fma, shared_or_none

from streamtag.errors import ConfigError, SourceError
from streamtag.frontend import FrontendSpec
from streamtag.registry import load_bundle
from streamtag.train.augment import mixup, power_domain, spec_augment
from streamtag.train.cache import build_cache, extract, open_cache
from streamtag.train.cards import render_train_card
from streamtag.train.config import TrainConfig
from streamtag.train.evaluate import crop_starts, metrics, windows
from streamtag.train.fma import load_fma, read_tracks
from streamtag.train.folders import load_folders, read_split_lists
from streamtag.train.schedule import FLOOR, lr_factor
from streamtag.train.train import pos_weights

SPEC = FrontendSpec(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=48, scaling="db")
TINY = {
    "transformer": '{"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}',
    "stateful_gru": '{"d_embed": 24, "hidden": 24}',
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fma(tmp_path_factory: pytest.TempPathFactory) -> MiniFMA:
    return make_mini_fma(tmp_path_factory.mktemp("fma"), shared_or_none())


@pytest.fixture(scope="module")
def cache_dir(fma: MiniFMA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the whole module (train and eval reuse it)."""
    root = tmp_path_factory.mktemp("cache")
    ds = load_fma(fma.metadata, fma.audio, subset="small", labels="top")
    rep = build_cache(ds.items, root, SPEC, workers=2, progress=False)  # parallel (spawned workers)
    assert rep.new == fma.n_small - len(fma.broken)
    return root


# ------------------------------------------------------------------------------------- metadata


def test_tracks_csv_is_read_like_fma(fma: MiniFMA) -> None:
    rows = read_tracks(fma.metadata / "tracks.csv")
    lines = (fma.metadata / "tracks.csv").read_text().splitlines()
    assert lines[0].startswith(",album,album") and lines[2].startswith("track_id,,")
    assert len(rows) == len(lines) - 3
    first = rows[0]
    assert isinstance(first["genres_all"], list) and all(isinstance(g, int) for g in first["genres_all"])
    assert set(first["genres"]) <= set(first["genres_all"])
    assert {r["subset"] for r in rows} == {"small", "medium", "large"}


def test_fma_subsets_labels_and_splits(fma: MiniFMA) -> None:
    top = load_fma(fma.metadata, fma.audio, subset="small", labels="top")
    assert top.labels == ["Classical", "Electronic", "Folk", "Jazz"] and not top.multilabel
    assert len(top.items) == fma.n_small
    assert {it.split for it in top.items} == {"train", "valid", "test"}
    assert all(len(it.target) == 1 for it in top.items)
    assert top.items[0].path.relative_to(fma.audio).as_posix() == f"{top.items[0].key[:3]}/{top.items[0].key}.mp3"
    # subsets are nested: medium also takes the small tracks, plus medium ones (whose audio is not in fma_small)
    medium = load_fma(fma.metadata, fma.audio, subset="medium", labels="top")
    assert len(medium.items) == fma.n_small and medium.notes["audio file missing"] == 4

    every = load_fma(fma.metadata, fma.audio, subset="small", labels="all")
    assert every.multilabel and set(top.labels) <= set(every.labels) and len(every.labels) > len(top.labels)
    assert every.genre_labels == sorted(top.labels, key=every.labels.index)  # top-level genres are shown
    y = every.targets(every.items)
    assert y.shape == (fma.n_small, len(every.labels)) and (y.sum(axis=1) >= 2).all()  # genre + its parent


def test_fma_errors_are_one_line(fma: MiniFMA, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="fma_metadata"):
        load_fma(tmp_path / "nope", fma.audio)
    with pytest.raises(SourceError, match="no FMA audio"):
        load_fma(fma.metadata, tmp_path, subset="small")
    with pytest.raises(ConfigError, match="subset"):
        load_fma(fma.metadata, fma.audio, subset="tiny")
    (tmp_path / "tracks.csv").write_text("a,b\n1,2\n")
    shutil.copy(fma.metadata / "genres.csv", tmp_path / "genres.csv")
    with pytest.raises(SourceError, match="not FMA's tracks.csv"):
        load_fma(tmp_path, fma.audio)


def test_genre_folders_with_and_without_split_lists(fma: MiniFMA, tmp_path: Path) -> None:
    root = tmp_path / "gtzan"
    files = sorted(fma.audio.rglob("*.mp3"))[:9]
    for i, f in enumerate(files):
        genre = ("blues", "jazz", "rock")[i % 3]
        (root / genre).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / genre / f"{genre}.{i:05d}.mp3")
    (tmp_path / "unrelated.txt").write_text("x")
    hashed = load_folders(root)
    assert hashed.labels == ["blues", "jazz", "rock"] and len(hashed.items) == 9
    assert load_folders(root).items == hashed.items  # the hash split is stable
    splits = tmp_path / "splits"
    splits.mkdir()
    rels = sorted(it.key for it in hashed.items)
    (splits / "train_filtered.txt").write_text("\n".join(rels[:5]) + "\n")
    (splits / "valid_filtered.txt").write_text("\n".join(rels[5:7]) + "\n")
    (splits / "test_filtered.txt").write_text("\n".join(rels[7:8]) + "\nmissing/file.wav\n")
    listed = load_folders(root, splits)
    assert [len(listed.split(s)) for s in ("train", "valid", "test")] == [5, 2, 1]
    assert listed.notes == {"not in split lists": 1}
    assert read_split_lists(splits)[rels[0]] == "train"


def test_gtzan_split_lists_parse(shared_dir: Path) -> None:
    splits = read_split_lists(shared_dir / "data" / "gtzan_splits")
    counts = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "valid", "test")}
    assert counts == {"train": 443, "valid": 197, "test": 290}


# ---------------------------------------------------------------------------------------- cache


def test_cache_skips_broken_files_and_resumes(fma: MiniFMA, cache_dir: Path, tmp_path: Path) -> None:
    ds = load_fma(fma.metadata, fma.audio)
    ds.items = ds.items[:12]
    first = build_cache(ds.items[:6], tmp_path, SPEC, progress=False)
    assert set(first.skipped) == set(fma.broken) and first.new == 5
    assert "FFmpeg" in next(iter(first.skipped.values())) or "decode" in next(iter(first.skipped.values()))
    # a crash after writing rows but before saving the index leaves garbage at the end: it is dropped
    with open(tmp_path / "frames.npy", "ab") as f:
        f.write(b"\x00" * 1000)
    second = build_cache(ds.items, tmp_path, SPEC, progress=False)
    assert second.new == len(ds.items) - 6 and second.done == len(ds.items) - 1
    again = build_cache(ds.items, tmp_path, SPEC, progress=False)
    assert again.new == 0 and again.done == second.done
    cache = open_cache(tmp_path, SPEC)
    arr = np.load(tmp_path / "frames.npy", mmap_mode="r")
    assert arr.shape == (sum(n for _, n in cache.items.values()), SPEC.n_mels) and arr.dtype == np.float16
    it = ds.items[-1]
    np.testing.assert_allclose(cache[it.key].astype(np.float32), extract(it.path, SPEC), atol=0.06)
    with pytest.raises(ConfigError, match="another front end"):
        open_cache(tmp_path, FrontendSpec(n_mels=64))
    parallel = open_cache(cache_dir)  # built by 2 worker processes: the same frames as this serial build
    assert set(cache.items) <= set(parallel.items) and parallel.skipped.keys() == cache.skipped.keys()
    for key in cache.items:
        np.testing.assert_array_equal(parallel[key], cache[key])


# ------------------------------------------------------------------------------------ pieces


def test_spec_augment_masks_and_mixup() -> None:
    rng = np.random.default_rng(0)
    x = torch.randn(4, 100, 48)
    y = spec_augment(x, rng, time_masks=2, time_mask_frames=20, freq_masks=2, freq_mask_bands=8)
    assert y.shape == x.shape
    changed = (y != x)
    assert changed.any() and changed.float().mean() < 0.6
    # masked cells hold each example's mean
    fill = x.mean(dim=(1, 2), keepdim=True).expand_as(x)
    assert torch.equal(y[changed], fill[changed])
    # p=0: no mask at all; the same seed gives the same masks
    assert torch.equal(spec_augment(x, rng, time_masks=2, time_mask_frames=20, freq_masks=2, freq_mask_bands=8, p=0.0), x)
    a = spec_augment(x, np.random.default_rng(1), time_masks=1, time_mask_frames=9, freq_masks=1, freq_mask_bands=9)
    b = spec_augment(x, np.random.default_rng(1), time_masks=1, time_mask_frames=9, freq_masks=1, freq_mask_bands=9)
    assert torch.equal(a, b)
    xm, ym = mixup(x, torch.eye(4), rng, alpha=0.4)
    assert torch.allclose(ym.sum(dim=1), torch.ones(4)) and xm.shape == x.shape


@pytest.mark.parametrize("scaling", ["log10p", "db", "log"])
def test_power_domain_inverts_the_bundles_scaling(scaling: str) -> None:
    from streamtag.frontend import _scale  # the front end's own scaling, so the two can never drift

    spec = FrontendSpec(scaling=scaling)
    mel = np.random.default_rng(0).random((3, 20, 8)) * 0.01 + 1e-4
    logged = torch.from_numpy(_scale(mel, spec)).float()
    to_power, to_log = power_domain(spec)
    assert torch.allclose(to_log(to_power(logged)), logged, atol=1e-3)
    p = to_power(logged).numpy()
    ratio = p / mel  # power up to one constant factor (it cancels in gain and mixing)
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-2)


def test_schedule_and_pos_weight() -> None:
    lrs = [lr_factor(s, warmup=10, total=100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.05
    assert lr_factor(100, warmup=10, total=100) == pytest.approx(FLOOR)
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
    w = pos_weights(y)
    assert w[0] == pytest.approx(1.0) and w[1] == pytest.approx(3.0) and w[2] == 1.0  # never positive: 1


def test_metrics_and_crops() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((40, 5)) < 0.3).astype(np.float32)
    y[:, 4] = 0  # a label absent from the split
    p = np.clip(y * 0.6 + rng.random((40, 5)) * 0.5, 0, 1)
    m = metrics(y, p, multilabel=True)
    assert m["n_labels_scored"] == 4 and all(0 <= m[k] <= 1 for k in ("micro_pr_auc", "macro_pr_auc", "seed_pr_auc"))
    from sklearn.metrics import average_precision_score

    assert m["seed_pr_auc"] == pytest.approx(average_precision_score(y[:, :4], p[:, :4], average="micro"))
    s = metrics(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 1, 2]], multilabel=False)
    assert s["accuracy"] == 0.75 and s["confusion"][2] == [0, 1, 1]
    assert crop_starts(100, 40, 3) == [0, 30, 60] and crop_starts(100, 40, 1) == [30]
    assert windows(np.ones((10, 4), np.float32), 25, 2).shape == (2, 25, 4)  # short clips are repeated


# ------------------------------------------------------------------------------- end to end


def _data_args(fma: MiniFMA, labels: str) -> list[str]:
    return ["--data", "fma", "--fma-metadata", str(fma.metadata), "--audio", str(fma.audio), "--labels", labels,
            "--quiet", "--cache-workers", "0"]


def _cli(argv: list[str]) -> int:
    try:
        from streamtag.cli import main
    except ImportError:  # the lead's CLI is not there yet: the training module's own entry point
        from streamtag.train.cli import main
    return main(argv)


@pytest.mark.slow
@pytest.mark.parametrize("labels,arch,epochs", [("top", "transformer", 2), ("all", "stateful_gru", 1)])
def test_train_then_eval_end_to_end(
    fma: MiniFMA, cache_dir: Path, tmp_path: Path, labels: str, arch: str, epochs: int
) -> None:
    run = tmp_path / "run"
    argv = ["train", *_data_args(fma, labels), "--arch", arch, "--arch-config", TINY[arch],
            "--frontend", json.dumps({"n_mels": SPEC.n_mels}), "--cache", str(cache_dir), "--out", str(run),
            "--epochs", str(epochs), "--batch-size", "8", "--loader-workers", "0", "--warmup-steps", "2"]
    assert _cli(argv) == 0
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + epochs and rows[0].startswith("epoch,step")
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["skipped"]) == set(fma.broken) and summary["n_train"] == 19

    bundle = load_bundle(run / "bundle")
    assert bundle.frontend == SPEC and bundle.window_frames == SPEC.frames_for(5.0)
    assert bundle.activation == ("sigmoid" if labels == "all" else "softmax")
    assert bundle.streaming == ("stateful" if arch == "stateful_gru" else "window")
    card = (run / "bundle" / "model_card.md").read_text()
    assert card.startswith("# run")
    # the card is rendered from summary.json: its counts and figures are the summary's
    assert card == render_train_card(summary)
    assert f"{summary['n_train']} training / {summary['n_valid']} validation / {summary['n_test']} test items" in card
    assert f"(epoch {summary['best_epoch']} of {summary['epochs']}, step {summary['best_step']};" in card
    assert f"{summary['best_metric']:.4f}" in card and summary["n_valid"] == 4
    saved = json.loads((run / "train_config.json").read_text())
    assert saved == bundle.extra["train_config"] == summary["train_config"] and saved["epochs"] == epochs

    if labels == "top":  # resume continues the same run; starting over in the same folder is refused
        assert _cli(argv) != 0
        assert _cli([*argv[:-6], "--epochs", "3", "--batch-size", "8", "--loader-workers", "0", "--resume"]) == 0
        assert len((run / "log.csv").read_text().splitlines()) == 4
        assert json.loads((run / "summary.json").read_text())["epochs"] == 3

    out = tmp_path / "eval"
    assert _cli(["eval", *_data_args(fma, labels), "--model", str(run / "bundle"), "--cache", str(cache_dir),
                 "--crops", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_items"] == 8 and set(report["metrics"]) == {"crops_1", "crops_3"}
    for m in report["metrics"].values():
        keys = ("micro_pr_auc", "macro_pr_auc", "micro_roc_auc", "seed_pr_auc") if labels == "all" else ("accuracy", "macro_f1")
        assert all(0.0 <= m[k] <= 1.0 for k in keys)
    assert (out / ("pr_curves.png" if labels == "all" else "confusion.png")).stat().st_size > 1000

    # the bundle runs through the streaming engine and gives probabilities for its labels
    audio = extract_audio(fma.audio / "000" / "000002.mp3", bundle.frontend.sample_rate)
    probs = engine_probs(bundle, audio)
    assert probs.shape == (len(bundle.labels),) and np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1)).all()
    if bundle.activation == "softmax":
        assert probs.sum() == pytest.approx(1.0, abs=1e-3)


def extract_audio(path: Path, sr: int) -> np.ndarray:
    from streamtag.train.data import decode_audio

    return decode_audio(path, sr)


def engine_probs(bundle, audio: np.ndarray) -> np.ndarray:
    """Raw probabilities of the last update after pushing ``audio`` through the engine."""
    try:
        from streamtag.pipeline import Engine
    except ImportError:  # no engine yet: the model directly on the offline log-mel
        from streamtag.frontend import logmel

        x = torch.from_numpy(logmel(audio, bundle.frontend))[None, -bundle.window_frames:]
        logits = bundle.build_model()(x)[0]
        return (torch.sigmoid(logits) if bundle.activation == "sigmoid" else torch.softmax(logits, -1)).detach().numpy()
    engine = Engine(bundle, device="cpu", all_tags=True)
    engine.add_stream("clip")
    updates = []
    for i in range(0, audio.shape[0], 4000):
        engine.push("clip", audio[i : i + 4000])
        updates += engine.step()
    assert updates, "the engine produced no update for 6 s of audio"
    raw = updates[-1].raw
    return np.array([raw[label] for label in bundle.labels])


def test_cli_errors_are_one_line(fma: MiniFMA, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _cli(["train", "--data", "fma", "--fma-metadata", str(tmp_path / "missing"), "--audio", str(fma.audio),
               "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "fma_metadata" in err and len(err.splitlines()) == 1
    rc = _cli(["train", "--data", "folders", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "--root" in err and len(err.splitlines()) == 1
    rc = _cli(["train", *_data_args(fma, "top"), "--arch-config", "{bad", "--out", str(tmp_path / "r")])
    assert rc != 0 and "JSON" in capsys.readouterr().err



@pytest.mark.slow
def test_ddp_two_processes_on_cpu(fma: MiniFMA, cache_dir: Path, tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 with gloo: DistributedSampler shards, rank 0 writes the bundle."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "streamtag.train.cli", "train", *_data_args(fma, "top"), "--arch", "transformer",
           "--arch-config", TINY["transformer"], "--frontend", json.dumps({"n_mels": SPEC.n_mels}),
           "--cache", str(cache_dir), "--out", str(run), "--epochs", "1", "--max-steps", "2", "--batch-size", "4",
           "--loader-workers", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert load_bundle(run / "bundle").architecture == "transformer"


@pytest.mark.slow
def test_baselines_on_mini_fma(fma: MiniFMA, tmp_path: Path) -> None:
    from streamtag.train.baseline import run_baselines

    ds = load_fma(fma.metadata, fma.audio, labels="top")
    rep = run_baselines(ds, tmp_path, progress=False)
    assert set(rep["skipped"]) == set(fma.broken) and rep["n_train"] == 19 and rep["n_features"] > 100
    for name in ("logreg", "svm", "knn", "forest"):
        test = rep["results"][name]["test"]
        assert test["n"] == 8 and 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["macro_f1"] <= 1.0
    assert json.loads((tmp_path / "baseline.json").read_text())["results"].keys() == rep["results"].keys()
    again = run_baselines(ds, tmp_path, classifiers=("knn",), progress=False)  # features come from the cache
    assert again["results"]["knn"] == rep["results"]["knn"]
    with pytest.raises(ConfigError, match="single-label"):
        run_baselines(load_fma(fma.metadata, fma.audio, labels="all"), tmp_path, progress=False)


# ----------------------------------------------------------------------- training that explains itself


def _tiny_cfg(**kw) -> TrainConfig:
    base = dict(arch="transformer", arch_config=json.loads(TINY["transformer"]), epochs=3, batch_size=8,
                warmup_steps=2, loader_workers=0, val_crops=1, mixup=0.0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow  # three short trainings
def test_resume_continues_the_lr_schedule(fma: MiniFMA, cache_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted and resumed run applies the same learning rate at every step as an uninterrupted one."""
    from streamtag.train import loop
    from streamtag.train.train import train

    ds = load_fma(fma.metadata, fma.audio, subset="small", labels="top")
    applied: list[float] = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *a, **k):  # the lr the optimizer really uses, step by step
        applied.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    kw = dict(frontend=SPEC, cache_dir=cache_dir, device="cpu", progress=False)
    full = train(_tiny_cfg(), ds, tmp_path / "full", **kw)
    straight = list(applied)
    assert full["steps"] == len(straight) == 6 and len(set(straight)) > 3  # warm-up and decay: not constant

    applied.clear()
    real_save = loop._save_checkpoint

    def save_then_interrupt(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt  # as if Ctrl-C came right after the first epoch's checkpoint

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_cfg(), ds, tmp_path / "cut", **kw)
    monkeypatch.setattr(loop, "_save_checkpoint", real_save)
    first = len(applied)
    assert 0 < first < len(straight)
    resumed = train(_tiny_cfg(lr=1.0), ds, tmp_path / "cut", resume=True, **kw)  # the saved lr wins on resume
    assert applied == pytest.approx(straight, rel=1e-12)
    assert resumed["steps"] == full["steps"] and resumed["epochs"] == 3
    assert json.loads((tmp_path / "cut" / "train_config.json").read_text())["lr"] == TrainConfig().lr


class _MeanHead(torch.nn.Module):
    def __init__(self, channels: int, labels: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(channels, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, L)
        return self.fc(x.mean(dim=1))


class _NoiseFeed:
    steps_per_epoch = 2

    def epoch(self, index: int, rng: np.random.Generator):
        from streamtag.train.loop import Batch

        for _ in range(self.steps_per_epoch):
            x = torch.from_numpy(rng.standard_normal((4, 10, 6)).astype(np.float32))
            yield Batch(x, torch.eye(3)[rng.integers(0, 3, 4)])


def test_early_stop_says_why_and_when(caplog: pytest.LogCaptureFixture) -> None:
    from streamtag.train.loop import Score, fit

    scores = iter([0.41, 0.30, 0.45, 0.44, 0.40, 0.39, 0.2, 0.1])

    def validate(model: torch.nn.Module) -> Score:
        v = next(scores)
        return Score((v,), {"accuracy": v}, "validation accuracy")

    cfg = TrainConfig(epochs=8, patience=3, warmup_steps=1, specaug=False, mixup=0.0, log_every=100)
    with caplog.at_level("WARNING", logger="streamtag.train"):
        res = fit(_MeanHead(6, 3), cfg, _NoiseFeed(), multilabel=False, validate=validate)
    # best 0.45 at epoch 3; epochs 4, 5, 6 do not improve on it: stop after epoch 6, not 8
    assert res.epochs == 6 and res.steps == 12 and res.best_epoch == 3 and res.best_score == (0.45,)
    line = "early stop at epoch 6: validation accuracy did not improve for 3 epochs (best 0.4500 at epoch 3)"
    assert res.stop_reason == line
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [line]


def test_frame_loss_masks_and_matches_plain_losses() -> None:
    from streamtag.train.loop import frame_loss

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 5, 4, generator=g), torch.rand(3, 4, generator=g)
    mask = torch.zeros(3, 5)
    mask[:, 2:] = 1.0
    expect = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 2:], y[:, None].expand(-1, 3, -1))
    assert frame_loss(logits, y, mask) == pytest.approx(float(expect), rel=1e-6)
    onehot = torch.eye(4)[[0, 2, 3]]
    ce = torch.nn.functional.cross_entropy(logits[:, 0], torch.tensor([0, 2, 3]))
    assert frame_loss(logits[:, 0], onehot, multilabel=False) == pytest.approx(float(ce), rel=1e-6)


def test_stratified_folder_split_keeps_every_genre_in_every_split(tmp_path: Path) -> None:
    from streamtag.train.folders import MIN_CLIPS_PER_GENRE

    root = tmp_path / "genres"
    sizes = {"blues": 3, "jazz": 4, "rock": 12, "folk": 25}
    for g, n in sizes.items():
        (root / g).mkdir(parents=True)
        for i in range(n):
            (root / g / f"{g}.{i:05d}.wav").write_bytes(b"")
    ds = load_folders(root)
    for gi, g in enumerate(ds.labels):
        counts = {s: sum(1 for it in ds.split(s) if it.target == (gi,)) for s in ("train", "valid", "test")}
        assert min(counts.values()) >= 1, (g, counts)
        assert sum(counts.values()) == sizes[g]
        assert counts["valid"] == counts["test"] == max(1, round(0.1 * sizes[g]))
    assert load_folders(root).items == ds.items  # stable
    (root / "punk").mkdir()
    for i in range(MIN_CLIPS_PER_GENRE - 1):
        (root / "punk" / f"p{i}.wav").write_bytes(b"")
    with pytest.raises(ConfigError, match=f"'punk' has 2; each genre needs at least {MIN_CLIPS_PER_GENRE}"):
        load_folders(root)


def test_split_lists_without_validation_are_refused(tmp_path: Path) -> None:
    root, splits = tmp_path / "g", tmp_path / "s"
    (root / "a").mkdir(parents=True)
    splits.mkdir()
    for i in range(4):
        (root / "a" / f"{i}.wav").write_bytes(b"")
    (splits / "train.txt").write_text("a/0.wav\na/1.wav\n")
    (splits / "valid.txt").write_text("# none\n")
    (splits / "test.txt").write_text("a/2.wav\n")
    with pytest.raises(ConfigError, match="no file .* in the validation split"):
        load_folders(root, splits)


def _train_parsers() -> dict:
    import argparse

    from streamtag.train.cli import register

    parser = argparse.ArgumentParser(prog="streamtag")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    return dict(sub.choices)


def test_help_states_every_default_and_reads_it_from_the_config() -> None:
    parsers = _train_parsers()
    cfg = TrainConfig()
    train_p = parsers["train"]
    actions = {a.dest: a for a in train_p._actions}
    for dest in ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "patience", "val_every", "mixup",
                 "val_crops", "crop_seconds", "loader_workers", "amp", "seed"):
        assert actions[dest].default == getattr(cfg, dest), dest  # argparse reads the dataclass
    text = " ".join(train_p.format_help().split()).split("options:", 1)[1]  # past the usage line
    for flag, value in (("--epochs EPOCHS", cfg.epochs), ("--lr LR", cfg.lr), ("--patience PATIENCE", cfg.patience),
                        ("--batch BATCH_SIZE", cfg.batch_size)):
        after = text.split(flag, 1)[1]
        assert f"(default: {value})" in after.split(" --", 1)[0], flag
    for p in parsers.values():  # every option says something, and every option with a default states it
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help, (p.prog, a.dest)
                if a.default not in (None, False) and a.help is not argparse.SUPPRESS:
                    assert "(default" in a.help, (p.prog, a.dest)
    eval_text = " ".join(parsers["eval"].format_help().split())
    assert "--crops CROPS windows averaged per clip (default: 5)" in eval_text


def test_docs_numbers_are_the_codes(fma: MiniFMA, caplog: pytest.LogCaptureFixture) -> None:
    """docs/training.md's figures that the code determines are checked against the code."""
    import re

    from streamtag.train.baseline import clip_features
    from streamtag.train.schedule import FLOOR

    doc = " ".join((Path(__file__).parents[1] / "docs" / "training.md").read_text().split())
    n = clip_features(np.random.default_rng(0).standard_normal(22050 * 3).astype(np.float32)).shape[0]
    assert re.search(r"\((\d+) numbers\)", doc).group(1) == str(n) == "206"
    assert f"cosine decay to {FLOOR * 100:g} % of `--lr`" in doc
    cfg = TrainConfig()
    assert (f"SpecAugment ({cfg.time_masks} time masks <= {cfg.time_mask_frames} frames, {cfg.freq_masks} "
            f"frequency masks <= {cfg.freq_mask_bands} bands") in doc
    assert f"`--mixup {cfg.mixup}`" in doc and f"`--patience` ({cfg.patience})" in doc
    # "left out N tracks" is a WARNING: shown by default, without -v
    with caplog.at_level("WARNING"):
        load_fma(fma.metadata, fma.audio, subset="medium", labels="top")
    assert "left out 4 tracks (audio file missing)" in [r.getMessage().split(": ", 1)[1] for r in caplog.records
                                                          if r.levelname == "WARNING" and "left out" in r.getMessage()]
    assert 'log line "left out N tracks (audio file missing)", shown without `-v`' in doc
