"""Genre families: a two-level taxonomy (family -> genres) for each model's genre labels.

A bundle's ``config.json`` carries it as ``"taxonomy": {"families": {"rock": ["rock", "alternative", ...], ...}}``
(family names lowercase, each genre label in at most one family). :func:`bundle_taxonomy` reads it (a bundle
without one gets :func:`default_taxonomy`), :meth:`Taxonomy.resolve` turns it into the label indices the smoother
works with, and :func:`default_taxonomy` is what ``save_bundle`` (so every trainer) writes for a new bundle.

The tables, and why each label sits where it does:

- **musicnn-msd** (30 Last.fm genres, and the students that inherit its labels): the Last.fm taxonomy of the
  AcousticBrainz Genre dataset (Bogdanov et al., ISMIR 2019; built with Schreiber's tag co-occurrence method,
  ISMIR 2015). It puts alternative, indie, alternative rock, indie rock, classic rock, hard rock, punk,
  progressive rock and indie pop under rock, heavy metal under metal, ambient, house and electro under
  electronic, funk and rnb under soul; pop, dance, chillout, experimental, jazz, blues, folk, country and hip-hop
  are top levels. It lacks two of musicnn's labels, placed here by the same co-occurrence principle measured on
  musicnn-msd's own outputs (docs/smoothing.md, "Families"): **electronica** under electronic (the taxonomy files
  its kin, indietronica and metro-electronica, there, and musicnn's electronica output moves with electronic and
  electro) and **easy listening** under jazz (see EASY_LISTENING_FAMILY).
- **musicnn-mtt** (13 MagnaTagATune genre tags): the same taxonomy; classical stays a family and takes opera
  (classical---opera in the taxonomy) and MTT's "classic" tag (its clips are classical music); techno and ambient
  go under electronic, indian under world (the taxonomy's top level for it), new age is a top level.
- **FMA** (bundles trained with ``streamtag train --dataset fma``): FMA's own hierarchy from its ``genres.csv``,
  the 16 top-level genres as families, every one of the 147 subgenres under its top level.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ModelError

__all__ = ["Taxonomy", "MSD_FAMILIES", "MTT_FAMILIES", "FMA_TOP_LEVELS", "default_taxonomy", "bundle_taxonomy",
           "check_taxonomy"]

# where musicnn-msd's "easy listening" goes (a Last.fm tag the AcousticBrainz taxonomy lacks): jazz. On the
# model's own outputs it rises and falls with jazz (lounge, vocal standards, light instrumental music), far more
# than with pop: docs/smoothing.md "Families" gives the correlations measured on the 14 steady tracks.
EASY_LISTENING_FAMILY = "jazz"

MSD_FAMILIES: dict[str, tuple[str, ...]] = {
    "rock": ("rock", "alternative", "indie", "alternative rock", "classic rock", "indie rock", "punk", "hard rock",
             "Progressive rock", "indie pop"),
    "metal": ("metal", "heavy metal"),
    "electronic": ("electronic", "electronica", "ambient", "electro", "House"),
    "pop": ("pop",),
    "dance": ("dance",),
    "chillout": ("chillout",),
    "experimental": ("experimental",),
    "jazz": ("jazz", "easy listening"),
    "blues": ("blues",),
    "folk": ("folk",),
    "country": ("country",),
    "hip-hop": ("Hip-Hop",),
    "soul": ("soul", "funk", "rnb"),
}

MTT_FAMILIES: dict[str, tuple[str, ...]] = {
    "classical": ("classical", "classic", "opera"),
    "electronic": ("electronic", "techno", "ambient"),
    "rock": ("rock",),
    "metal": ("metal",),
    "pop": ("pop",),
    "dance": ("dance",),
    "country": ("country",),
    "world": ("indian",),
    "new age": ("new age",),
}

# FMA's genres.csv: each top-level genre (parent 0) and the titles of the genres whose top_level it is
FMA_TOP_LEVELS: dict[str, tuple[str, ...]] = {
    "International": ("Latin America", "French", "Reggae - Dub", "Afrobeat", "Indian", "African", "Middle East",
        "Polka", "Balkan", "Europe", "Brazilian", "Asia-Far East", "N. Indian Traditional",
        "South Indian Traditional", "Bollywood", "Pacific", "Celtic", "North African", "Flamenco", "Cumbia", "Latin",
        "Romany (Gypsy)", "Reggae - Dancehall", "Spanish", "Klezmer", "Salsa", "Turkish", "Tango", "Fado"),
    "Blues": ("Gospel",),
    "Jazz": ("Jazz: Vocal", "Free-Jazz", "Jazz: Out", "Be-Bop", "Big Band/Swing", "Modern Jazz"),
    "Classical": ("20th Century Classical", "Composed Music", "Opera", "Chamber Music", "Choral Music", "Symphony",
        "Contemporary Classical"),
    "Old-Time / Historic": (),
    "Country": ("Bluegrass", "Americana", "Rockabilly", "Western Swing", "Country & Western"),
    "Pop": ("Experimental Pop", "Synth Pop"),
    "Rock": ("Punk", "Post-Rock", "Lo-Fi", "Metal", "Krautrock", "Loud-Rock", "Noise-Rock", "Psych-Rock",
        "Electro-Punk", "Indie-Rock", "Industrial", "No Wave", "Garage", "New Wave", "Post-Punk", "Sludge",
        "Progressive", "Death-Metal", "Hardcore", "Power-Pop", "Space-Rock", "Black-Metal", "Goth", "Shoegaze",
        "Thrash", "Surf", "Grindcore", "Rock Opera"),
    "Easy Listening": ("Easy Listening: Vocal", "Lounge", "Nu-Jazz"),
    "Soul-RnB": ("Disco", "Funk", "Deep Funk"),
    "Electronic": ("Ambient Electronic", "Techno", "House", "Glitch", "Minimal Electronic", "Breakcore - Hard",
        "IDM", "Chiptune", "Trip-Hop", "Dance", "Chip Music", "Drum & Bass", "Chill-out", "Bigbeat", "Dubstep",
        "Skweee", "Downtempo", "Jungle"),
    "Folk": ("Psych-Folk", "Free-Folk", "Freak-Folk", "Singer-Songwriter", "British Folk"),
    "Spoken": ("Comedy", "Radio Art", "Radio", "Spoken Weird", "Interview", "Poetry", "Talk Radio", "Banter",
        "Spoken Word", "Radio Theater", "Musical Theater"),
    "Hip-Hop": ("Nerdcore", "Alternative Hip-Hop", "Rap", "Breakbeat", "Abstract Hip-Hop", "Wonky", "Hip-Hop Beats"),
    "Experimental": ("Avant-Garde", "Novelty", "Sound Effects", "Audio Collage", "Field Recordings", "Noise",
        "Electroacoustic", "Drone", "Unclassifiable", "Sound Poetry", "Sound Collage", "Musique Concrete", "Improv",
        "Kid-Friendly", "Minimalism", "Sound Art", "Holiday", "Christmas"),
    "Instrumental": ("Soundtrack", "Ambient", "New Age", "Compilation"),
}


_TABLES: tuple[dict[str, tuple[str, ...]], ...] = (
    MSD_FAMILIES, MTT_FAMILIES, {top.lower(): (top, *subs) for top, subs in FMA_TOP_LEVELS.items()})


@dataclass(frozen=True)
class Taxonomy:
    """Families in order, each with its genre labels: ``(("rock", ("rock", "indie rock")), ...)``."""

    families: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Taxonomy:
        """From a bundle's ``"taxonomy"`` object (``{"families": {name: [genre, ...]}}``); not checked."""
        fams = d.get("families", {})
        return cls(tuple((str(name), tuple(str(g) for g in genres)) for name, genres in fams.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"families": {name: list(genres) for name, genres in self.families}}

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.families]

    def family_of(self, genre: str) -> str | None:
        for name, genres in self.families:
            if genre in genres:
                return name
        return None

    def resolve(self, labels: Sequence[str], genres: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """Family names and, per family, the indices into ``labels`` of its genres among ``genres`` (label
        indices), in taxonomy order; families with none of them are left out, and a genre in no family becomes
        a family of its own (named by the lowercased label), so every genre belongs to exactly one family."""
        chosen = {labels[i]: i for i in genres}
        names: list[str] = []
        groups: list[list[int]] = []
        placed: set[int] = set()
        for name, members in self.families:
            idx = [chosen[g] for g in members if g in chosen and chosen[g] not in placed]
            if idx:
                names.append(name)
                groups.append(idx)
                placed.update(idx)
        for i in genres:
            if i not in placed:
                name = labels[i].lower()
                if name in names:  # a genre named like a family it is not in: keep the names distinct
                    name = f"{name} ({labels[i]})"
                names.append(name)
                groups.append([i])
                placed.add(i)
        return names, groups


def default_taxonomy(labels: Sequence[str], genre_labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The taxonomy a new bundle gets (``save_bundle`` writes it): the table above that places most of its genre
    labels (musicnn-msd's, musicnn-mtt's or FMA's), the genres it does not place each a family of its own."""
    genres = list(genre_labels or labels)

    def placed(table: dict[str, tuple[str, ...]]) -> int:
        members = {g for gs in table.values() for g in gs}
        return sum(g in members for g in genres)

    best = max(_TABLES, key=placed)
    families: dict[str, list[str]] = {}
    if placed(best):
        for name, members in best.items():
            inside = [g for g in members if g in genres]
            if inside:
                families[name] = inside
    done = {g for gs in families.values() for g in gs}
    for g in genres:
        if g not in done:
            families.setdefault(g.lower(), []).append(g)
            done.add(g)
    return {"families": families}


def check_taxonomy(d: Any, labels: Sequence[str], genre_labels: Sequence[str], *, where: str) -> Taxonomy:
    """``d`` (a bundle's "taxonomy" value) checked against its labels; raises ModelError naming the problem."""
    fams = d.get("families") if isinstance(d, dict) else None
    if not isinstance(fams, dict) or not fams:
        raise ModelError(f'{where}: "taxonomy" must be {{"families": {{name: [genre, ...]}}}}; re-create the bundle')
    seen: dict[str, str] = {}
    for name, members in fams.items():
        if not isinstance(name, str) or not name or name != name.lower():
            raise ModelError(f"{where}: taxonomy family names must be lowercase and non-empty, got {name!r}")
        if not isinstance(members, list) or not members or not all(isinstance(g, str) for g in members):
            raise ModelError(f"{where}: taxonomy family {name!r} must list its genres, got {members!r}")
        for g in members:
            if g not in labels:
                raise ModelError(f"{where}: taxonomy family {name!r} lists {g!r}, which is not one of the labels")
            if g in seen:
                raise ModelError(f"{where}: genre {g!r} is in two taxonomy families ({seen[g]!r}, {name!r})")
            seen[g] = name
    return Taxonomy.from_dict(d)


def bundle_taxonomy(bundle: Any) -> Taxonomy:
    """A bundle's taxonomy (its config's, or the default for its labels when the bundle predates families)."""
    d = getattr(bundle, "taxonomy", None) or default_taxonomy(bundle.labels, bundle.genre_labels)
    return Taxonomy.from_dict(d)
