"""Stations spread over a Ray cluster: ``streamtag serve --cluster ADDRESS`` (docs/cluster.md).

``gateway.py`` is the serve side: a runner with the live runner's protocol whose stations run on worker actors;
the websocket server in front of it is the local one, unchanged. ``worker.py`` is the worker actor: the existing
engine and live runner for the stations placed on it. Importing this package does not import Ray; the gateway
imports it when it connects, and says how to install it when it is missing (``pip install "streamtag[cluster]"``).
"""
from __future__ import annotations

import argparse

__all__ = ["add_cluster_args"]


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """``serve``'s cluster flags (one block; ``streamtag.cluster.serve`` reads them back)."""
    g = p.add_argument_group("cluster (docs/cluster.md; needs pip install \"streamtag[cluster]\")")
    g.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="run the stations on a Ray cluster (HOST:PORT of its head, or auto); this process is the "
                        "gateway: clients connect here as without --cluster (default: none, all in this process)")
    g.add_argument("--worker-streams", type=int, default=256, metavar="N",
                   help="stations one worker takes at most; then the next worker, then 'cluster full' (default 256)")
    g.add_argument("--worker-cpu", type=float, default=0.85, metavar="X",
                   help="a worker whose measured CPU is above this share of its cores takes no new station "
                        "(default 0.85; 1 allows up to all of them)")
