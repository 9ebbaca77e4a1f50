"""``streamtag serve --cluster ADDRESS``: the gateway runner built from the command line's options.

``commands_live.cmd_serve`` serves it with the usual server loop (``app.run_serve(..., runner=gateway)``).
"""
from __future__ import annotations

import argparse
from typing import Any

from .gateway import ClusterConfig, GatewayRunner, require_ray
from .worker import EngineSpec

__all__ = ["engine_spec", "start_gateway"]


def engine_spec(args: argparse.Namespace) -> tuple[EngineSpec, Any]:
    """The engine every worker builds (the same model and options a local ``serve`` would use), and the bundle,
    loaded here too: a model that does not load is a one-line error before the cluster is touched, and the
    gateway's sinks (segments, station log) read its taxonomy."""
    from ..options import smoothing_config
    from ..registry import DEFAULT_MODEL, load_bundle

    model = str(args.model or DEFAULT_MODEL)
    bundle = load_bundle(model)
    return EngineSpec(model=model, device=args.device, hop_seconds=args.hop, all_tags=args.all_tags,
                      smoothing=smoothing_config(args.smoothing), precision=args.precision), bundle


def start_gateway(args: argparse.Namespace) -> GatewayRunner:
    """Connect to the cluster at ``args.cluster`` and start its workers (one line saying how to install Ray when
    it is missing, before anything else)."""
    require_ray()
    cluster = ClusterConfig(address=args.cluster, worker_streams=args.worker_streams,
                            worker_cpu=args.worker_cpu if args.worker_cpu < 1 else None)
    spec, bundle = engine_spec(args)
    return GatewayRunner(spec, cluster, bundle=bundle).start()
