"""The examples that are not Python: the systemd unit's commands must be ones this version understands."""
from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamtag.cli import build_parser

UNIT = Path(__file__).resolve().parents[1] / "examples" / "streamtag.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_the_systemd_unit_runs_serve_over_a_station_list_and_reloads_with_sighup():
    unit = _unit()
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/streamtag")
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on a flag this version does not have
    assert args.command == "serve" and args.func.__name__ == "commands_live.cmd_serve"
    assert args.sources and args.record and args.host == "127.0.0.1"  # a list, a log, and the safe default bind
    assert unit["Service"]["ExecReload"].split()[-2:] == ["-HUP", "$MAINPID"]  # serve reloads its list on SIGHUP
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert unit["Service"]["KillMode"] == "mixed"  # serve ends its decoder processes itself
    assert int(unit["Service"]["TimeoutStopSec"]) >= 5  # serve stops in ~1 s at 500 stations; room for a busy host


@pytest.mark.parametrize("key", ["NoNewPrivileges", "DynamicUser", "ProtectSystem"])
def test_the_systemd_unit_runs_unprivileged(key):
    assert _unit()["Service"][key] in ("yes", "strict")


def _analyze(tmp_path: Path) -> tuple[str, Path]:
    """The unit with ExecStart pointed at this environment's streamtag, for systemd-analyze (which checks the
    executable exists)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    exe = Path(sys.executable).with_name("streamtag")
    if not exe.exists():
        pytest.skip("streamtag is not installed beside this Python")
    unit = tmp_path / "streamtag.service"
    unit.write_text(UNIT.read_text().replace("/opt/streamtag/bin/streamtag", str(exe)))
    return tool, unit


def test_systemd_accepts_every_line_of_the_unit(tmp_path):
    tool, unit = _analyze(tmp_path)
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # systemd ignores a key it does not know with a warning: a misspelt hardening line would be silently lost
    assert done.returncode == 0, done.stderr
    assert "streamtag.service" not in done.stderr, done.stderr


def test_systemd_rates_the_unit_well_confined(tmp_path):
    tool, unit = _analyze(tmp_path)
    # the exposure level in tenths (0 = fully confined, 100 = not at all); the unit rates 1.4, "OK"
    done = subprocess.run([tool, "security", "--offline=true", "--threshold=20", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
