"""The one training configuration: every knob of the training loop, with its default, in one frozen dataclass.

``TrainConfig()`` holds the defaults of ``streamtag train`` (supervised training on labelled clips);
``DISTILL_DEFAULTS`` the defaults of ``streamtag distill`` (a student learning a teacher's probabilities).
argparse reads its defaults from these two objects (``cli.add_train_args``), so a default is written once.
The config of a run is saved beside its weights: ``<run>/train_config.json`` and the bundle's
``extra["train_config"]``; ``--resume`` reads it back.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streamtag.errors import ConfigError

__all__ = ["TrainConfig", "DISTILL_DEFAULTS", "DEFAULT_ARCH_CONFIGS", "STREAMING", "STATEFUL_TIME_MASK_FRAMES",
           "GRID_FRAMES", "CONFIG_NAME", "save_config", "load_config"]

CONFIG_NAME = "train_config.json"


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "transformer"
    arch_config: dict[str, Any] = field(default_factory=dict)  # overrides of the architecture's defaults
    # length of the run: the first limit reached ends it
    epochs: int | None = 30  # passes over the training set (None: no limit, for step/time-bound runs)
    max_steps: int | None = None  # optimizer steps
    minutes: float | None = None  # wall-clock budget; the schedule is re-planned from the speed after 20 steps
    # optimizer and schedule (schedule.py: linear warm-up, cosine down to schedule.FLOOR * lr)
    batch_size: int = 32
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW, on weight matrices only
    adam_beta2: float = 0.98
    warmup_steps: int = 500  # at most 10 % of the run
    grad_clip: float = 1.0  # max gradient norm
    # inputs
    crop_seconds: float = 5.0  # training crop = the window of window models
    hop_seconds: float = 0.5  # default hop between updates written into the bundle
    stateful_warmup_seconds: float = 1.0  # stateful models: frames before this carry no loss
    seq_seconds: tuple[float, float] = (20.0, 90.0)  # distillation, stateful students: sequence lengths, s
    # augmentation (augment.py)
    specaug: bool = True
    time_masks: int = 2
    time_mask_frames: int = 40  # widest time mask, frames
    freq_masks: int = 2
    freq_mask_bands: int = 16  # widest band mask, mel bands (or feature channels)
    mask_p: float = 1.0  # probability of each mask
    mixup: float = 0.2  # Beta(alpha, alpha) mixup of inputs and targets; 0 disables
    mix_linear: bool = False  # mix in the power domain (like mixing audio) instead of the log domain
    gain_db: float = 0.0  # random gain per example, uniform in +-gain_db dB, on the power
    # validation, best weights, early stopping
    val_every: int = 0  # steps between validations; 0: after every epoch
    val_from: float = 0.0  # fraction of the run before the first validation
    val_crops: int = 3  # windows averaged per validation clip
    patience: int = 5  # validations without a better score before stopping; 0: never stop early
    # machinery
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    loader_workers: int = 2
    log_every: int = 50  # steps between progress lines
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None and self.minutes is None:
            raise ConfigError("a training run needs a limit: epochs, max_steps or minutes")
        for name in ("batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, not {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, not {self.lr}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"--amp must be auto, bf16, fp16 or off, not {self.amp!r}")
        if not 0.0 <= self.val_from < 1.0:
            raise ConfigError(f"val_from must be in [0, 1), not {self.val_from}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "seq_seconds" in d:
            d["seq_seconds"] = tuple(d["seq_seconds"])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (self's value, other's value)} for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# streamtag distill: a step- and time-bound run on random windows of a small corpus
DISTILL_DEFAULTS = TrainConfig(
    epochs=None, max_steps=100_000, minutes=30.0, lr=1e-3, weight_decay=0.05, adam_beta2=0.999, warmup_steps=200,
    time_masks=1, time_mask_frames=16, freq_masks=1, freq_mask_bands=8, mask_p=0.5, mixup=0.0, patience=0,
    val_every=500, val_from=0.25, loader_workers=0,
)
# the students `streamtag distill --arch` makes: small, well under 5 MB of float32 weights each
DEFAULT_ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "transformer": dict(d_model=128, n_layers=3, n_heads=4, d_ff=256, embed_kernel=8, embed_stride=8,
                        max_frames=64, pooling="attention", dropout=0.1),
    "stateful_gru": dict(d_embed=128, hidden=160, n_layers=1, tau_frames=94.0, dropout=0.1),
}
STREAMING = {"transformer": "window", "stateful_gru": "stateful"}  # each student's bundle "streaming"
STATEFUL_TIME_MASK_FRAMES = 32  # stateful students read long sequences: wider time masks
GRID_FRAMES = 64  # frames between teacher windows in the label cache (64 x 16 ms = 1.024 s)


def save_config(cfg: TrainConfig, run_dir: str | Path) -> Path:
    path = Path(run_dir) / CONFIG_NAME
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return path


def load_config(run_dir: str | Path) -> TrainConfig | None:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{path} is not a training config ({e}); delete the run folder or choose another --out") from e
