"""What parsed command-line options mean, for cli.py and the command bodies (commands_tag.py, commands_live.py)
alike: the bundle ``--model`` names, the smoothing ``--smoothing`` names, the raw-stdin options. Importing this
module imports nothing heavy; each helper imports what it needs when called."""
from __future__ import annotations

import argparse
from typing import Any

from .errors import ConfigError

__all__ = ["SMOOTHING_CHOICES", "load_model", "smoothing_config", "stdin_opts"]

SMOOTHING_CHOICES = ("ema", "hmm", "none")


def load_model(args: argparse.Namespace) -> Any:
    """The Bundle ``--model`` names (the default model when none is given)."""
    from .registry import DEFAULT_MODEL, load_bundle

    return load_bundle(args.model or DEFAULT_MODEL)


def smoothing_config(method: str) -> Any:
    """The SmoothingConfig for ``--smoothing METHOD`` (the method's defaults: docs/smoothing.md)."""
    from .smoothing import SmoothingConfig

    if method not in SMOOTHING_CHOICES:
        raise ConfigError(f"--smoothing {method!r}: use one of {', '.join(SMOOTHING_CHOICES)}")
    return SmoothingConfig(method=method)


def stdin_opts(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a raw-PCM stdin source (``--raw-rate`` etc.); empty when stdin is a file format."""
    if getattr(args, "raw_rate", None) is None:
        return {}
    return {"raw_rate": args.raw_rate, "raw_format": args.raw_format, "raw_channels": args.raw_channels}
