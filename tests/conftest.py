"""Shared fixtures: the ../shared material (skipped cleanly when absent) and quiet, single-threaded torch."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A suite started as a background job of a non-interactive shell (`bash .ci/run &`) inherits SIGINT *ignored*, and
# so would every command the tests start, whose Ctrl-C tests would then wait in vain. Catching it here (a caught
# signal is reset to the default across exec) gives the commands the disposition a terminal user's have.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _shared() -> Path:
    env = os.environ.get("STREAMTAG_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    p = _shared()
    if not (p / "README.md").is_file():
        pytest.skip(f"../shared not present at {p} (set STREAMTAG_SHARED to point at it)")
    return p


@pytest.fixture(scope="session")
def audio_dir(shared_dir: Path) -> Path:
    return shared_dir / "audio"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for modules of tiny ops (recurrent steps, small forwards): on 2 shared cores a second
    intra-op thread only waits. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    yield from _torch_threads(1)


@pytest.fixture
def two_torch_threads():
    """Two torch threads, so the worker-thread paths (architectures/threads.py) run with two workers."""
    yield from _torch_threads(2)
