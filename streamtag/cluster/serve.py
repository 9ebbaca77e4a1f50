"""``streamtag serve --cluster ADDRESS``: the gateway runner in front of the cluster, served by the usual loop."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .gateway import ClusterConfig, GatewayRunner, require_ray
from .worker import EngineSpec

__all__ = ["cmd_serve_cluster", "engine_spec"]


def engine_spec(args: argparse.Namespace) -> tuple[EngineSpec, Any]:
    """The engine every worker builds (the same model and options a local ``serve`` would use), and the bundle,
    loaded here too: a model that does not load is a one-line error before the cluster is touched, and the
    gateway's sinks (segments, station log) read its taxonomy."""
    from ..cli import smoothing_config
    from ..registry import DEFAULT_MODEL, load_bundle

    model = str(args.model or DEFAULT_MODEL)
    bundle = load_bundle(model)
    return EngineSpec(model=model, device=args.device, hop_seconds=args.hop, all_tags=args.all_tags,
                      smoothing=smoothing_config(args.smoothing), precision=args.precision), bundle


def cmd_serve_cluster(args: argparse.Namespace, config: Any, sources: Sequence[tuple[str, str]]) -> int:
    """Connect to the cluster, start its workers, and serve (``config``: the server's ServerConfig)."""
    from ..app import run_serve

    require_ray()  # one line saying how to install it, before anything else
    cluster = ClusterConfig(address=args.cluster, worker_streams=args.worker_streams,
                            worker_cpu=args.worker_cpu if args.worker_cpu < 1 else None)
    spec, bundle = engine_spec(args)
    gateway = GatewayRunner(spec, cluster, bundle=bundle).start()
    return run_serve(None, config, sources, runner=gateway, record=getattr(args, "record", None),
                     keep=getattr(args, "keep", None))
