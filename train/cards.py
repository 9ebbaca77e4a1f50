"""The model card of a supervised run, rendered from a template (``string.Template``) with the figures of its
``summary.json`` (:func:`render_train_card`). No figure is typed into a card by hand, so re-rendering a card from
its JSON gives the same text. A distilled student's card: ``distill/cards.py``.
"""
from __future__ import annotations

import json
from string import Template
from typing import Any

__all__ = ["TRAIN_CARD", "render_train_card"]

TRAIN_CARD = Template("""# ${name}

## Model Details
Architecture `${arch}` (${params_m} M parameters), config `${arch_config}`, trained with
`streamtag train` (AdamW lr ${lr}, batch ${batch_size}, ${crop_seconds} s crops, SpecAugment ${specaug},
mixup ${mixup}). Front end: ${sample_rate} Hz, n_fft ${n_fft}, hop_length ${hop_length},
${n_mels} mel bands, scaling "${scaling}".

## Intended Use
Genre tagging of music streams with streamtag; labels: ${labels} (${label_kind}).

## Training Data
${dataset}: ${n_train} training / ${n_valid} validation / ${n_test} test items${skipped_text}.

## Performance
Best ${metric}: ${best_metric} (epoch ${best_epoch} of ${epochs}, step ${best_step}; ${stop_reason}).
All validation metrics of that epoch: `${best_metrics}`.
Run `streamtag eval` for test figures.

## Limitations
Genre labels are coarse and culturally loaded; a model trained on one archive's tagging reflects its
uploaders' conventions. Validation figures of small runs are noisy.
""")


def render_train_card(summary: dict[str, Any]) -> str:
    """The card of a ``streamtag train`` run from its summary (the dict written to summary.json)."""
    cfg, fe = summary["train_config"], summary["frontend"]
    best = summary.get("best_metric")
    n_skipped = len(summary.get("skipped", {}))
    return TRAIN_CARD.substitute(
        name=summary["name"], arch=summary["arch"], params_m=f"{summary['n_params'] / 1e6:.2f}",
        arch_config=json.dumps(cfg["arch_config"]), lr=cfg["lr"], batch_size=cfg["batch_size"],
        crop_seconds=cfg["crop_seconds"], specaug=cfg["specaug"], mixup=cfg["mixup"],
        sample_rate=fe["sample_rate"], n_fft=fe["n_fft"], hop_length=fe["hop_length"], n_mels=fe["n_mels"],
        scaling=fe["scaling"], labels=summary["labels"],
        label_kind="multi-label" if summary["multilabel"] else "single-label", dataset=summary["dataset"],
        n_train=summary["n_train"], n_valid=summary["n_valid"], n_test=summary["n_test"],
        skipped_text=f" ({n_skipped} files skipped: unreadable)" if n_skipped else "",
        metric=summary["metric"], best_metric="n/a" if best is None else f"{best:.4f}",
        best_epoch=summary["best_epoch"], epochs=summary["epochs"], best_step=summary["best_step"],
        stop_reason=summary["stop_reason"],
        best_metrics=json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in summary.get("best_metrics", {}).items()}),
    )
