"""The wheel is the product: it carries the shipped bundles, the web page, the demo clips and the training code
under streamtag.train (not the research tools), and installs nothing top-level but ``streamtag`` (.ci/run also installs it into a fresh venv
and runs it from another directory)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-w", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheels = list(out.glob("streamtag-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as z:
        return set(z.namelist())


@pytest.mark.slow
def test_wheel_carries_every_shipped_bundle(wheel_names: set[str]) -> None:
    bundles = sorted(p.name for p in (REPO / "models").iterdir() if (p / "config.json").is_file())
    assert len(bundles) >= 4
    for name in bundles:
        for f in ("config.json", "model.safetensors", "model_card.md"):
            assert f"streamtag/models/{name}/{f}" in wheel_names, f"{name}/{f} missing from the wheel"


@pytest.mark.slow
def test_wheel_installs_only_the_streamtag_package(wheel_names: set[str]) -> None:
    top = {n.split("/", 1)[0] for n in wheel_names}
    assert {t for t in top if not t.endswith((".dist-info", ".data"))} == {"streamtag"}
    train_modules = {n[len("streamtag/train/"):] for n in wheel_names if n.startswith("streamtag/train/")}
    assert {"__init__.py", "__main__.py", "cli.py", "train.py", "distill/__init__.py", "distill/__main__.py",
            "distill/run.py", "distill/corpus.py"} <= train_modules
    assert not any(n.startswith(("tests/", "bench/", "train/", "research/")) for n in wheel_names)
    assert not {"build_corpus.py", "extend_corpus.py", "liveness.py", "product_check.py", "lite.py"} & {
        Path(n).name for n in train_modules}  # the research tools stay in the checkout


@pytest.mark.slow
def test_wheel_carries_the_web_page_and_demo_clips(wheel_names: set[str]) -> None:
    for f in sorted(p.name for p in (REPO / "streamtag" / "web").iterdir() if p.suffix in (".html", ".js", ".css")):
        assert f"streamtag/web/{f}" in wheel_names
    from streamtag.commands_live import DEMO_CLIPS

    for clip in DEMO_CLIPS:
        assert f"streamtag/examples/{clip}" in wheel_names
    assert any(n.endswith(".dist-info/entry_points.txt") for n in wheel_names)  # the `streamtag` command


def test_demo_clips_are_found_from_the_checkout() -> None:
    from streamtag.commands_live import DEMO_CLIPS, examples_audio_dir

    d = examples_audio_dir()
    assert all((d / c).is_file() for c in DEMO_CLIPS)


@pytest.mark.slow
def test_wheel_carries_every_runtime_subpackage(wheel_names: set[str]) -> None:
    for sub in sorted(d.name for d in (REPO / "streamtag").iterdir() if (d / "__init__.py").is_file()):
        # a subpackage left out of pyproject's packages list would be missing from the wheel
        assert f"streamtag/{sub}/__init__.py" in wheel_names, f"streamtag.{sub} missing from the wheel"
