"""`streamtag tag` vs the original TensorFlow musicnn: whole-process wall time on the same real files, same run.

The peer is PyPI's ``musicnn==0.1.0`` (TensorFlow 1.x-style graph, run by ``tensorflow-cpu==2.15.1``) in a
throwaway venv that this script builds once and caches (``--peer-venv``, default ``$STREAMTAG_PEER_VENV`` or
/work/peer-venv): ``tensorflow-cpu==2.15.1 numpy==1.26.4 librosa==0.10.2.post1`` and ``pip install --no-deps
musicnn==0.1.0``. When it cannot be built (no network, no matching Python) the script says so and exits 0.

Each run is one fresh process over all files, imports included:

- peer: ``musicnn.extractor.extractor(f, model="MSD_musicnn", input_length=3, input_overlap=1)`` per file,
  its own API batching every 3 s patch at a 1 s hop (the same windows as ours);
- ours: ``streamtag tag --format jsonl FILES`` (default model musicnn-msd, default hop 1 s), as a user runs it.

The two alternate (peer first on even rounds, ours first on odd ones) for ``--runs`` rounds; the script prints
every run, the median and spread of each, the ratio of the medians, the median of the per-round ratios, the
peak RSS of each process, and how often the two agree on each file's top tag (a faster wrong answer is a bug).

    python bench/bench_vs_musicnn.py [--runs 3] [--dir ../shared/audio] [--files 15] [--peer-venv DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_PACKAGES = ["tensorflow-cpu==2.15.1", "numpy==1.26.4", "librosa==0.10.2.post1"]
PEER_NODEPS = ["musicnn==0.1.0"]
AUDIO_SUFFIXES = {".ogg", ".mp3", ".wav", ".flac"}
# ../shared beside the checkout (the main checkout), or two levels up (a git worktree under wt/)
SHARED_AUDIO = next((d / "shared" / "audio" for d in REPO.parents[:2] if (d / "shared" / "audio").is_dir()),
                    REPO.parent / "shared" / "audio")

# The peer's driver: one process, every file through musicnn's own extractor; prints one JSON line per file
# with the mean taggram (musicnn's clip-level estimate) so the answers can be compared.
PEER_DRIVER = r"""
import json, os, sys, contextlib
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from musicnn.extractor import extractor
for f in sys.argv[1:]:
    with contextlib.redirect_stdout(sys.stderr):
        taggram, tags = extractor(f, model="MSD_musicnn", input_length=3, input_overlap=1, extract_features=False)
    print(json.dumps({"stream": f, "windows": int(taggram.shape[0]),
                      "mean": dict(zip(tags, map(float, taggram.mean(axis=0))))}), flush=True)
"""


def peer_python(venv: Path, *, build: bool) -> Path | None:
    """The peer venv's python, building the venv first when ``build``; None (with a message) when unavailable."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import musicnn.extractor, tensorflow"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if py.exists() and subprocess.run(check, capture_output=True, env=env).returncode == 0:
        return py
    if not build:
        print(f"skip: no working peer venv at {venv}; rerun without --no-build to build it")
        return None
    print(f"building the peer venv at {venv} (once; pip needs the package index) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES],
        [str(py), "-m", "pip", "install", "-q", "--no-deps", *PEER_NODEPS],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"skip: could not build the peer venv ({' '.join(cmd[2:5])} ...): {last}")
            return None
    if subprocess.run(check, capture_output=True, env=env).returncode != 0:
        print(f"skip: the peer venv at {venv} was built but `import musicnn.extractor` fails")
        return None
    return py


def timed_rss(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` as one process: (wall seconds, its own peak RSS in MiB from wait4, stdout). Exits on failure."""
    t0 = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        r_out, w_out = os.pipe()
        pid = os.posix_spawn(cmd[0], cmd, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                             file_actions=[(os.POSIX_SPAWN_DUP2, w_out, 1), (os.POSIX_SPAWN_DUP2, devnull.fileno(), 2),
                                           (os.POSIX_SPAWN_CLOSE, r_out)])
        os.close(w_out)
        with os.fdopen(r_out) as f:
            out = f.read()
        _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed (exit {os.waitstatus_to_exitcode(status)}); run it by hand to see why")
    return wall, usage.ru_maxrss / 1024, out


def top_tags(jsonl: str) -> dict[str, str]:
    """file -> top tag of the clip-level mean, from one JSON object per line (ours also has updates: skip)."""
    tops = {}
    for line in jsonl.splitlines():
        d = json.loads(line)
        if "mean" in d:
            tops[Path(d["stream"]).name] = max(d["mean"], key=d["mean"].get)
    return tops


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):6.2f} s  (min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds of (peer, ours), alternating order (>= 3)")
    ap.add_argument("--dir", type=Path, default=SHARED_AUDIO)
    ap.add_argument("--files", type=int, default=15, help="first N audio files of --dir, sorted by name")
    default_venv = os.environ.get("STREAMTAG_PEER_VENV", "/work/peer-venv")
    ap.add_argument("--peer-venv", type=Path, default=Path(default_venv))
    ap.add_argument("--no-build", action="store_true", help="skip instead of building a missing peer venv")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = ap.parse_args()
    if not args.dir.is_dir():
        print(f"skip: no audio directory {args.dir}; pass --dir with real audio files")
        return 0
    files = sorted(p for p in args.dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)[: args.files]
    if not files:
        print(f"skip: no audio files in {args.dir}")
        return 0
    py = peer_python(args.peer_venv, build=not args.no_build)
    if py is None:
        return 0
    streamtag = Path(sys.executable).with_name("streamtag")
    ours_cmd = [str(streamtag) if streamtag.exists() else sys.executable,
                *([] if streamtag.exists() else ["-m", "streamtag"]), "tag", "--format", "jsonl",
                *map(str, files)]
    peer_cmd = [str(py), "-c", PEER_DRIVER, *map(str, files)]

    import soundfile  # the project's decoder is PyAV; soundfile only for the duration figure
    seconds = 0.0
    for f in files:
        try:
            seconds += soundfile.info(str(f)).duration
        except RuntimeError:
            seconds = float("nan")
    print(f"{len(files)} files, {seconds:.0f} s of audio, {args.runs} alternating rounds; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, list[float]] = {"peer": [], "ours": []}
    rss: dict[str, list[float]] = {"peer": [], "ours": []}
    outs: dict[str, str] = {}
    for r in range(max(1, args.runs)):
        order = ("peer", "ours") if r % 2 == 0 else ("ours", "peer")
        for who in order:
            wall, peak, out = timed_rss(peer_cmd if who == "peer" else ours_cmd)
            runs[who].append(wall)
            rss[who].append(peak)
            outs[who] = out
            print(f"  round {r + 1} {who:4s}: {wall:6.2f} s  peak RSS {peak:6.0f} MiB", flush=True)
    per_round = [p / o for p, o in zip(runs["peer"], runs["ours"])]
    peer_top, our_top = top_tags(outs["peer"]), top_tags(outs["ours"])
    same = sum(peer_top.get(k) == v for k, v in our_top.items())
    print(f"peer  (musicnn 0.1.0, TF): {spread(runs['peer'])}  peak RSS {max(rss['peer']):.0f} MiB")
    print(f"ours  (streamtag tag):     {spread(runs['ours'])}  peak RSS {max(rss['ours']):.0f} MiB")
    ratio = statistics.median(runs["peer"]) / statistics.median(runs["ours"])
    print(f"streamtag tag is {ratio:.2f}x faster than the original musicnn (ratio of medians); "
          f"per-round ratios {', '.join(f'{x:.2f}' for x in per_round)} (median {statistics.median(per_round):.2f})")
    print(f"audio per wall second: ours {seconds / statistics.median(runs['ours']):.1f}x real time, "
          f"peer {seconds / statistics.median(runs['peer']):.1f}x")
    print(f"top tag agreement: {same}/{len(our_top)} files")
    if args.json:
        args.json.write_text(json.dumps({"files": [f.name for f in files], "seconds": seconds, "runs": runs,
                                         "rss_mib": rss, "ratio": ratio, "per_round": per_round,
                                         "top_agree": same}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
