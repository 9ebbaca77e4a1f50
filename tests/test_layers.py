"""The import rules of docs/architecture.md, checked by parsing every module's imports (ast): a new import that
runs back up the layers fails here, whoever writes it.

    core stages (ring_buffer, frontend, runner, smoothing, pipeline, ...)  import no I/O library
    sources/     never import publishers, the runner (live), the app loops or the CLI
    publishers/  never import the runner (live), the engine, the app loops or the CLI
    live.py      imports the core and the Sink contract (publishers/base.py), no other publisher
    app.py, cli.py, commands_live.py, commands_tag.py  are imported by nobody but the CLI modules
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamtag"

CORE = ("streamtag.ring_buffer", "streamtag.frontend", "streamtag.runner", "streamtag.smoothing",
        "streamtag.pipeline", "streamtag.events", "streamtag.errors", "streamtag.registry", "streamtag.architectures")
# I/O: sockets, HTTP, event loops, processes, decoders, audio devices, terminals (threading is allowed: locks)
IO_LIBRARIES = ("socket", "ssl", "http", "urllib", "asyncio", "selectors", "subprocess", "websockets", "av",
                "sounddevice", "rich", "requests")
APP_LAYER = ("streamtag.app", "streamtag.cli", "streamtag.commands_live", "streamtag.commands_tag", "streamtag.__main__")
UPPER_FOR_CORE = ("streamtag.sources", "streamtag.publishers", "streamtag.live", "streamtag.protocol", *APP_LAYER)

# Imports that break a rule today and are being removed on another branch; delete an entry when its fix lands.
KNOWN: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from x import y`` also counts ``x.y``, which may be a
    submodule), at any depth: function-local and TYPE_CHECKING imports count too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = sorted(PACKAGE.rglob("*.py"))


def forbidden_for(module: str) -> tuple[str, ...]:
    """Module-name prefixes ``module`` must not import."""
    if within(module, CORE):
        return (*IO_LIBRARIES, *UPPER_FOR_CORE)
    if within(module, ("streamtag.sources",)):
        return ("streamtag.publishers", "streamtag.live", "streamtag.pipeline", "streamtag.runner", *APP_LAYER)
    if within(module, ("streamtag.publishers",)):
        return ("streamtag.live", "streamtag.pipeline", "streamtag.runner", *APP_LAYER)
    if module == "streamtag.live":
        return ("streamtag.publishers.dashboard", "streamtag.publishers.jsonl", "streamtag.publishers.websocket",
                "rich", "websockets", *APP_LAYER)
    if module in ("streamtag.protocol",):  # the sans-I/O websocket core
        return (*IO_LIBRARIES, "streamtag.live", "streamtag.publishers", *APP_LAYER)
    if within(module, APP_LAYER):
        return ()
    if module in ("streamtag.segments", "streamtag.tables"):  # pure: updates in, segments and rows out
        return (*IO_LIBRARIES, *UPPER_FOR_CORE)
    if within(module, ("streamtag.store",)):  # the station log: a sink fed by the runner, never its driver
        return ("streamtag.live", "streamtag.pipeline", "streamtag.runner", "streamtag.publishers", *APP_LAYER)
    if module == "streamtag.api":  # the Python API drives the engine itself; no terminal, server or CLI
        return ("streamtag.publishers", "rich", "websockets", *APP_LAYER)
    return APP_LAYER  # everything else (registry helpers, architectures, web, ...): nobody imports the app layer


def violations(path: Path) -> list[str]:
    module = module_name(path)
    banned = forbidden_for(module)
    return sorted(imp for imp in imports_of(path) if within(imp, banned) and (module, _root(imp, banned)) not in KNOWN)


def _root(imp: str, banned: tuple[str, ...]) -> str:
    return next(p for p in banned if within(imp, (p,)))


def test_every_module_is_checked():
    names = {module_name(p) for p in MODULES}
    assert {"streamtag.live", "streamtag.app", "streamtag.pipeline", "streamtag.publishers.dashboard",
            "streamtag.publishers.jsonl", "streamtag.sources.playlist"} <= names
    assert len(names) >= 25


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_import_runs_back_up_the_layers(path):
    bad = violations(path)
    assert not bad, f"{module_name(path)} must not import {', '.join(bad)} (see docs/architecture.md)"


def test_the_checker_catches_a_violation(monkeypatch):
    """A publisher importing the runner, and a core stage importing the runner and a socket library, are caught."""
    def source(text: str) -> None:
        monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text)

    source("from ..live import LiveRunner\nfrom . import base\n")
    assert violations(PACKAGE / "publishers" / "dashboard.py") == ["streamtag.live", "streamtag.live.LiveRunner"]
    source("def f():\n    from .live import LiveRunner\n    import websockets.asyncio.server\n")
    assert violations(PACKAGE / "ring_buffer.py") == ["streamtag.live", "streamtag.live.LiveRunner",
                                                       "websockets.asyncio.server"]
    source("from .publishers.base import Sink\n")
    assert violations(PACKAGE / "live.py") == []


def test_known_exceptions_are_still_real():
    """Each KNOWN entry names an import that exists; when its fix lands, this fails: delete the entry."""
    for module, target in KNOWN:
        path = next(p for p in MODULES if module_name(p) == module)
        assert any(within(imp, (target,)) for imp in imports_of(path)), f"{module} no longer imports {target}"


# -- no hidden ties (issue 19): the command bodies, the fast front end and the runner stand on their own ----------
TIES = [  # (module, what it must not import)
    ("streamtag.commands_tag", "streamtag.cli"),  # the bodies share streamtag.options with the CLI
    ("streamtag.commands_live", "streamtag.cli"),
    ("streamtag.architectures.fastfront", "streamtag.architectures.musicnn"),  # musicnn uses fastfront, not back
    ("streamtag.runner", "streamtag.architectures.fastfront"),  # the model answers for its precision
    ("streamtag.runner", "streamtag.architectures.musicnn"),
    ("streamtag.runner", "streamtag.architectures.student"),
]
TRAINING = sorted((PACKAGE.parent / "train").rglob("*.py"))


@pytest.mark.parametrize(("module", "target"), TIES)
def test_no_hidden_ties(module: str, target: str) -> None:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    assert not [i for i in imports_of(path) if within(i, (target,))], f"{module} must not import {target}"


def test_training_layers() -> None:
    """The runtime never imports the training code but for the CLI's training commands; the training code never
    imports the research tools; distillation never imports the training CLI (no circle: the CLI calls it)."""
    assert len(TRAINING) >= 20
    for path in MODULES:
        module = module_name(path)
        if module != "streamtag.cli":
            assert not [i for i in imports_of(path) if within(i, ("streamtag.train",))], module
    for path in TRAINING:  # named as train.*: the checkout's folder, installed as streamtag.train
        module = module_name(path)
        bad = [i for i in imports_of(path) if within(i, ("research", "streamtag.train"))]
        if within(module, ("train.distill",)) and not module.endswith("__main__"):
            bad += [i for i in imports_of(path) if within(i, ("train.cli",))]
        assert not bad, f"{module} must not import {', '.join(bad)}"
