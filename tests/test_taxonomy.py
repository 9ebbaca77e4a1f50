"""Genre families: every shipped bundle carries a taxonomy that splits its genres, the tables say what the
AcousticBrainz / FMA hierarchies say, new bundles get one, bad ones are refused with a clear error."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from streamtag.errors import ModelError
from streamtag.registry import available_models, load_bundle
from streamtag.taxonomy import FMA_TOP_LEVELS, Taxonomy, bundle_taxonomy, default_taxonomy

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", available_models())
def test_every_shipped_bundle_splits_its_genres_into_lowercase_families(name: str) -> None:
    bundle = load_bundle(name)
    assert bundle.taxonomy, f"{name}: config.json has no taxonomy"
    tax = Taxonomy.from_dict(bundle.taxonomy)
    members = [g for _, genres in tax.families for g in genres]
    assert sorted(members) == sorted(bundle.genre_labels)  # each genre in exactly one family
    assert all(n == n.lower() and n for n in tax.names)
    names, groups = tax.resolve(bundle.labels, bundle.genre_indices())
    assert names == tax.names and sorted(i for g in groups for i in g) == sorted(bundle.genre_indices())


def test_msd_families_follow_the_acousticbrainz_lastfm_taxonomy() -> None:
    tax = bundle_taxonomy(load_bundle("musicnn-msd"))
    fam = tax.family_of
    for g in ("alternative", "indie", "alternative rock", "indie rock", "classic rock", "hard rock", "punk",
              "Progressive rock", "indie pop"):
        assert fam(g) == "rock", g
    assert fam("heavy metal") == "metal"
    assert {fam(g) for g in ("ambient", "House", "electro", "electronica")} == {"electronic"}
    assert fam("funk") == fam("rnb") == "soul"
    assert fam("easy listening") == "jazz"
    for top in ("pop", "dance", "chillout", "experimental", "jazz", "blues", "folk", "country"):
        assert fam(top) == top
    assert fam("Hip-Hop") == "hip-hop"
    assert fam("classical") == "classical"  # the derived head's label (train/distill/derived_head.py) is a family


def test_mtt_keeps_classical_and_students_inherit_their_teachers() -> None:
    mtt = bundle_taxonomy(load_bundle("musicnn-mtt"))
    assert mtt.family_of("classical") == mtt.family_of("opera") == mtt.family_of("classic") == "classical"
    def restricted(b) -> dict:  # a taxonomy restricted to a bundle's genres
        fams = {f: [g for g in gs if g in b.genre_labels] for f, gs in load_bundle("musicnn-msd").taxonomy[
            "families"].items()}
        return {"families": {f: gs for f, gs in fams.items() if gs}}

    students = 0
    for name in available_models():
        bundle = load_bundle(name)
        teacher = bundle.extra.get("teacher")
        if teacher:  # the teacher's families over the student's genres (classical too: they carry its head)
            assert teacher == "musicnn-msd" and bundle.taxonomy == restricted(bundle), name
            assert bundle_taxonomy(bundle).family_of("classical") == "classical", name
            students += 1
    assert students >= 2


def test_fma_families_are_its_16_top_levels_from_genres_csv(shared_dir: Path) -> None:
    rows = list(csv.DictReader((shared_dir / "data" / "fma_metadata" / "genres.csv").open()))
    by_id = {r["genre_id"]: r for r in rows}
    want: dict[str, set[str]] = {}
    for r in rows:
        want.setdefault(by_id[r["top_level"]]["title"], set()).add(r["title"])
    assert {top: {top, *subs} for top, subs in FMA_TOP_LEVELS.items()} == want
    tax = default_taxonomy([r["title"] for r in rows])  # an FMA "all genres" bundle's labels
    assert len(tax["families"]) == 16 and set(tax["families"]) == {t.lower() for t in want}
    assert tax["families"]["rock"].count("Death-Metal") == 1
    top = default_taxonomy(["Hip-Hop", "Rock", "Electronic"])  # an FMA "top" bundle: each its own family
    assert top == {"families": {"rock": ["Rock"], "electronic": ["Electronic"], "hip-hop": ["Hip-Hop"]}}


def test_new_bundles_get_a_taxonomy_and_unknown_genres_a_family_of_their_own(tmp_path: Path) -> None:
    import torch

    from streamtag.architectures import build_model
    from streamtag.frontend import FrontendSpec
    from streamtag.registry import save_bundle

    torch.manual_seed(0)
    cfg = dict(n_mels=32, n_labels=4, d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.0)
    spec = FrontendSpec(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, scaling="db")
    b = save_bundle(tmp_path / "b", build_model("transformer", cfg), architecture="transformer", arch_config=cfg,
                    frontend=spec, labels=["indie rock", "rock", "Polka Noir", "80s"],
                    genre_labels=["indie rock", "rock", "Polka Noir"], window_frames=62, hop_seconds=0.5)
    assert b.taxonomy == {"families": {"rock": ["rock", "indie rock"], "polka noir": ["Polka Noir"]}}
    assert json.loads((b.path / "config.json").read_text())["taxonomy"] == b.taxonomy


@pytest.mark.parametrize(
    "taxonomy, match",
    [
        ({"families": {"Rock": ["rock"]}}, "lowercase"),
        ({"families": {"rock": ["rock", "grunge"]}}, "not one of the labels"),
        ({"families": {"rock": ["rock"], "other": ["rock"]}}, "two taxonomy families"),
        ({"families": {"rock": "rock"}}, "must list its genres"),
        ({"rock": ["rock"]}, "re-create the bundle"),
    ],
)
def test_a_bad_taxonomy_is_refused_with_a_clear_error(tmp_path: Path, taxonomy: dict, match: str) -> None:
    src = load_bundle("musicnn-mtt").path
    dst = tmp_path / "bad"
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["taxonomy"] = taxonomy
    (dst / "config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    with pytest.raises(ModelError, match=match):
        load_bundle(dst)


def test_a_bundle_without_a_taxonomy_gets_the_default(tmp_path: Path) -> None:
    src = load_bundle("musicnn-msd").path
    cfg = json.loads((src / "config.json").read_text())
    del cfg["taxonomy"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    old = load_bundle(tmp_path / "old")
    assert old.taxonomy == {} and bundle_taxonomy(old) == bundle_taxonomy(load_bundle("musicnn-msd"))


def test_models_command_shows_the_families(capsys: pytest.CaptureFixture[str]) -> None:
    from streamtag.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "families: rock = rock, alternative" in out and "classical = classical, classic, opera" in out
