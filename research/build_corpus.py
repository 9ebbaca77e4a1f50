"""Build an unlabelled corpus of real, freely licensed music for distillation.

Research tool (not in the wheel; run from a checkout). It produced ``/work/corpus`` (98 tracks, about three
hours), the first corpus of docs/distill.md, from which research/extend_corpus.py made the shipped students'
corpus. Run it again only to rebuild a corpus from scratch (it calls ``apt-get download``, so it needs Debian's
package servers); the format it writes is train/distill/corpus.py's.

Sources:

- ``../shared/audio`` (15 clips, licences from its ``CREDITS.md`` and the ``.txt`` beside each clip);
- Debian's game-music packages (``apt-get download PKG`` then ``dpkg -x``, nothing is installed); the licence of
  every file comes from the package's ``/usr/share/doc/PKG/copyright`` (DEP-5 ``Files:`` stanzas when present).

Every track is decoded (PyAV), mixed to mono and resampled to 16 kHz with soxr "HQ" (the resampler librosa
uses by default), cut to at most ``--max-track-seconds`` (its first seconds), and stored as float32 ``.npy``
under ``DIR/audio/``. ``DIR/corpus.jsonl`` records for each track: id, source package, path inside the package,
full duration, seconds kept, licence, and the split. Whole tracks are held out for evaluation ("eval"),
deterministically by SHA-1 of the id, per source, so the held-out set spans every package; shared clips whose
licence does not let the project redistribute them are held out always (evaluation only). Files shorter than
``--min-track-seconds`` (sound effects) are left out; files that cannot be decoded are listed in
``DIR/skipped.jsonl``.

The cap (``--max-package-minutes`` per source, ``--max-track-seconds`` per track) keeps the corpus to about
three hours, which the teacher can label and the students can train on with two CPU cores in well under an hour.

Usage::

    python -m research.build_corpus --out /work/corpus
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import re
import subprocess
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from streamtag.train.distill.corpus import SAMPLE_RATE, Track, summary, track_hash, write_manifest

log = logging.getLogger(__name__)

AUDIO_EXTS = (".ogg", ".oga", ".opus", ".mp3", ".flac", ".wav")
DEFAULT_PACKAGES = (
    "nexuiz-music",
    "warzone2100-music",
    "wesnoth-1.16-music",
    "hyperrogue-music",
    "ufoai-music",
    "singularity-music",
    "planetblupi-music-ogg",
    "drascula-music",
)
# Inside .pk3 (zip) archives only these members are music (the rest are sound effects and ambience).
PK3_MUSIC = ("*/music/*", "music/*", "*/cdtracks/*")


def _shared_dir() -> Path:
    env = os.environ.get("STREAMTAG_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


# ---------------------------------------------------------------------------------------------- decoding


def decode(path: Path, *, max_seconds: float | None = None, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, float]:
    """Decode ``path`` to mono float32 at ``sr`` (soxr HQ). Returns (samples (N,), full duration in seconds)."""
    import av

    from streamtag.audio import downmix, to_float32, to_mono

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        native = stream.rate or stream.codec_context.sample_rate
        duration = float(container.duration / 1e6) if container.duration else 0.0
        limit = int(max_seconds * native) if max_seconds else None
        got = 0
        for frame in container.decode(stream):
            # the engine's own conversion: integers / 2**(bits-1), channel mean (streamtag.audio)
            a = frame.to_ndarray()  # planar (channels, n) or packed (1, n * channels)
            a = a if frame.format.is_planar else a.reshape(-1)
            mono = downmix(to_float32(a), channels=len(frame.layout.channels), planar=frame.format.is_planar)
            chunks.append(mono)
            got += mono.shape[0]
            if limit is not None and got >= limit:
                break
    if not chunks:
        raise ValueError("no audio frames")
    x = np.concatenate(chunks)
    if limit is not None:
        x = x[:limit]
    if not duration:
        duration = x.shape[0] / native
    x = to_mono(x, sample_rate=native, target_rate=sr)  # soxr HQ, length ceil(n * sr / native)
    return np.ascontiguousarray(x, dtype=np.float32), duration


# ---------------------------------------------------------------------------------------------- licences


def _dep5_stanzas(text: str) -> list[tuple[list[str], str]]:
    """(patterns, licence short name) of every DEP-5 ``Files:`` stanza, in file order."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        files: list[str] = []
        licence = ""
        field = None
        for line in para.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                field = m.group(1).lower()
                if field == "files":
                    files.extend(m.group(2).split())
                elif field == "license" and not licence:
                    licence = m.group(2).strip()
            elif line.startswith((" ", "\t")) and field == "files":
                files.extend(line.split())
        if files and licence:
            out.append((files, licence))
    return out


def licence_for(copyright_text: str, member_path: str) -> str:
    """The licence of ``member_path`` (a path inside the package or its .pk3) according to a copyright file."""
    if copyright_text.startswith("Format:"):
        match = ""
        parts = member_path.replace("!", "/").split("/")
        for patterns, licence in _dep5_stanzas(copyright_text):
            for pat in patterns:
                depth = pat.count("/") + 1
                tail = "/".join(parts[-depth:])
                if pat == "*" or fnmatch.fnmatch(tail, pat):
                    match = licence  # DEP-5: the last matching stanza wins
        if match:
            return match
    low = copyright_text.lower()
    if "creative commons" in low or "creativecommons" in low:
        sa = "sharealike" in low.replace("-", "").replace(" ", "")
        return "CC-BY-SA (see copyright file)" if sa else "Creative Commons (see copyright file)"
    if "general public license" in low:
        later = "any later version" in low
        v = "3" if "version 3" in low else "2"
        return f"GPL-{v}{'+' if later else ''}"
    return "see copyright file"


def shared_licences(audio_dir: Path) -> dict[str, tuple[str, bool]]:
    """File name -> (licence, may the clip train a shipped model) from ../shared/audio/CREDITS.md's table.

    Only clips that CREDITS.md lets the project redistribute ("yes") may train; the others (non-commercial,
    unknown or no-redistribution licences) are always held out, so they are used for evaluation only.
    """
    out: dict[str, tuple[str, bool]] = {}
    credits = audio_dir / "CREDITS.md"
    if not credits.is_file():
        return out
    for line in credits.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("file", "---"):
            continue
        ok = len(cells) >= 4 and cells[3].lower().startswith("yes")
        for name in (n.strip() for n in cells[0].split(",")):
            out[name] = (cells[2], ok)
    return out


# ---------------------------------------------------------------------------------------------- sources


def fetch_package(pkg: str, work: Path) -> Path:
    """``apt-get download`` (if not already there) and ``dpkg -x`` a package; returns the extracted root."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
    root = work / "pkgs" / pkg
    if not root.is_dir():
        root.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(found[-1]), str(root)], check=True)
    return root


def package_files(root: Path, work: Path, pkg: str) -> Iterable[tuple[str, Path]]:
    """(path inside the package, file on disk) of every audio file; .pk3 music members are extracted."""
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            p = Path(dirpath) / name
            if p.is_symlink() or "/usr/share/doc/" in str(p):
                continue
            rel = str(p.relative_to(root))
            if name.lower().endswith(AUDIO_EXTS):
                yield "/" + rel, p
            elif name.lower().endswith(".pk3"):
                out = work / "pk3" / pkg / name
                with zipfile.ZipFile(p) as z:
                    for member in sorted(z.namelist()):
                        if member.lower().endswith(AUDIO_EXTS) and any(fnmatch.fnmatch(member, g) for g in PK3_MUSIC):
                            target = out / member
                            if not target.is_file():
                                z.extract(member, out)
                            yield f"/{rel}!{member}", target


def _probe_duration(path: Path) -> float:
    import av

    try:
        with av.open(str(path)) as c:
            return float(c.duration / 1e6) if c.duration else math.inf
    except Exception:  # noqa: BLE001  (PyAV raises many types; unreadable files are reported later)
        return math.inf


# ---------------------------------------------------------------------------------------------- build


def split_tracks(tracks: list[Track], holdout: float) -> None:
    """Mark whole tracks "eval": per source, the ``holdout`` fraction with the smallest SHA-1 of their id."""
    by_source: dict[str, list[Track]] = {}
    for t in tracks:
        if t.eval_only:
            t.split = "eval"
        else:
            by_source.setdefault(t.source, []).append(t)
    for group in by_source.values():
        group.sort(key=lambda t: track_hash(t.id))
        n_eval = int(round(holdout * len(group))) if len(group) >= 3 else 0
        if len(group) >= 3:
            n_eval = max(1, n_eval)
        for i, t in enumerate(group):
            t.split = "eval" if i < n_eval else "train"


def build(
    out: Path,
    *,
    packages: tuple[str, ...] = DEFAULT_PACKAGES,
    shared_audio: Path | None = None,
    max_track_seconds: float = 150.0,
    max_package_minutes: float = 20.0,
    min_track_seconds: float = 20.0,
    holdout: float = 0.18,
) -> list[Track]:
    """Fetch, decode and split the corpus into ``out``; writes corpus.jsonl and skipped.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    candidates: list[tuple[str, str, Path, str, str]] = []  # (source, path, file, licence, licence_file)
    eval_only: set[str] = set()
    if shared_audio is not None and shared_audio.is_dir():
        lic = shared_licences(shared_audio)
        for p in sorted(shared_audio.iterdir()):
            if p.suffix.lower() in AUDIO_EXTS:
                licence, ok = lic.get(p.name, ("see CREDITS.md", False))
                candidates.append(("shared", p.name, p, licence, str(shared_audio / "CREDITS.md")))
                if not ok:
                    eval_only.add(f"shared/{p.name}")
    for pkg in packages:
        try:
            root = fetch_package(pkg, out)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            log.warning("cannot fetch %s (%s); left out", pkg, e)
            continue
        cfile = root / "usr/share/doc" / pkg / "copyright"
        ctext = cfile.read_text(errors="replace") if cfile.is_file() else ""
        for rel, p in package_files(root, out, pkg):
            candidates.append((pkg, rel, p, licence_for(ctext, rel), f"/usr/share/doc/{pkg}/copyright"))

    tracks: list[Track] = []
    skipped: list[dict[str, str]] = []
    used: dict[str, float] = {}
    # deterministic order per source (by hash), so the per-source cap picks a fixed, varied subset
    candidates.sort(key=lambda c: (c[0], track_hash(f"{c[0]}/{c[1]}")))
    for source, rel, p, licence, lfile in candidates:
        if source != "shared" and used.get(source, 0.0) >= max_package_minutes * 60:
            continue
        dur = _probe_duration(p)
        if dur < min_track_seconds and source != "shared":
            continue
        tid = f"{source}/{rel.lstrip('/')}"
        try:
            x, duration = decode(p, max_seconds=max_track_seconds)
        except Exception as e:  # noqa: BLE001  (decoders raise many types; the file is reported and skipped)
            log.warning("skipping unreadable %s: %s", tid, e)
            skipped.append({"id": tid, "file": str(p), "error": f"{type(e).__name__}: {e}"})
            continue
        if x.shape[0] < SAMPLE_RATE * 3 or not np.isfinite(x).all() or float(np.abs(x).max()) < 1e-4:
            skipped.append({"id": tid, "file": str(p), "error": "shorter than 3 s, silent or not finite"})
            continue
        fname = f"audio/{track_hash(tid)[:12]}.npy"
        np.save(out / fname, x)
        seconds = x.shape[0] / SAMPLE_RATE
        used[source] = used.get(source, 0.0) + seconds
        tracks.append(
            Track(tid, source, rel, licence, lfile, round(duration, 3), round(seconds, 3), fname, eval_only=tid in eval_only)
        )
        log.info("%-60s %6.1f s  %s", tid[:60], seconds, licence)
    split_tracks(tracks, holdout)
    write_manifest(out, tracks)
    with open(out / "skipped.jsonl", "w") as f:
        for s in skipped:
            f.write(json.dumps(s) + "\n")
    return tracks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.build_corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="corpus directory (outside the repo; never commit audio)")
    ap.add_argument("--packages", nargs="*", default=list(DEFAULT_PACKAGES), help="Debian game-music packages")
    ap.add_argument("--shared-audio", type=Path, default=_shared_dir() / "audio", help="../shared/audio")
    ap.add_argument("--max-track-seconds", type=float, default=150.0, help="keep the first N s of each track")
    ap.add_argument("--max-package-minutes", type=float, default=20.0, help="stop adding a package's tracks past N min")
    ap.add_argument("--min-track-seconds", type=float, default=20.0, help="skip shorter files (sound effects)")
    ap.add_argument("--holdout", type=float, default=0.18, help="fraction of each source's tracks held out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tracks = build(
        args.out,
        packages=tuple(args.packages),
        shared_audio=args.shared_audio,
        max_track_seconds=args.max_track_seconds,
        max_package_minutes=args.max_package_minutes,
        min_track_seconds=args.min_track_seconds,
        holdout=args.holdout,
    )
    print(summary(tracks))
    skipped = (args.out / "skipped.jsonl").read_text().count("\n")
    print(f"{len(tracks)} tracks written to {args.out}/corpus.jsonl; {skipped} skipped (see skipped.jsonl)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
