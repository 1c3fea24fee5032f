"""The things of the offline world and how they relate: entities, places, people, events.

`make_world(seed, n_train, n_eval)` draws a world. Everything is a pure function of the seed.

- An `Entity` belongs to one KnowGen category (`KINDS`: the fifteen science_and_knowledge and six
  pop_culture_and_news categories of KnowGen), has a fresh name, looks (`Signature`, drawn
  independently of the name, unique in the world), a short text (motto, slogan, code...), a home
  place and a maker (the person who founded, designed, discovered... it), and wins one or two
  events. Entities are split into `train`, `eval` (disjoint sets, disjoint names) and
  `distractor` (never the answer to a prompt; named after another entity, "Tassel Rovers" next to
  "Tessel Rovers", with different looks).
- A `Place` is home to at most one entity per category, so "the football club based in Orveth" is
  one entity. A `Person` made exactly one entity. An `Event` ("2031 Glimmer Cup") has one winner
  and one runner-up of its series' category; the same series runs in other years with other
  winners, which is what makes "the club that won the 2031 Glimmer Cup" need care.
"""

from __future__ import annotations

import dataclasses
import math
import random

from gsjax.world.corpus import slugify
from gsjax.world.names import NameGenerator
from gsjax.world.vocab import COLOURS, GLYPHS, PATTERNS, SHAPES, Signature

SCIENCE = "science_and_knowledge"
POP = "pop_culture_and_news"
GROUPS = (SCIENCE, POP)
SPLITS = ("train", "eval", "distractor")
N_VIEWS = 2  # photos of each entity in the corpus


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one category's entities are named, pictured and related (the words pages and prompts
    use). `look` is what a picture of the entity shows; `text_noun` what its short text is."""

    category: str  # the KnowGen category, e.g. "Sports"
    group: str  # SCIENCE or POP
    noun: str  # "football club"
    look: str  # "emblem"
    text_noun: str  # "motto"
    text_style: str  # "motto" (two words) or "code" ("KV-217")
    name_format: str  # "{base} {suffix}", or "person" for a 'First Last' name
    suffixes: tuple[str, ...]
    article: str  # "the" or "": how the name reads in a sentence
    place_verb: str  # "based in": "the football club based in Orveth"
    maker_verb: str  # "founded by"
    maker_role: str  # what the maker's page calls them: "founder"
    series_format: str  # "{base} Cup"
    event_verb: str  # "won": "the football club that won the 2031 Glimmer Cup"
    past: bool = False  # events between 1100 and 1899 instead of 1950 and 2045

    @property
    def who(self) -> str:
        return "who" if self.name_format == "person" else "that"

    @property
    def maker_active(self) -> str:  # "founded by" -> "founded"
        return self.maker_verb.removesuffix(" by")


def _k(category, group, noun, look, text_noun, text_style, name_format, suffixes, article,
       place_verb, maker_verb, maker_role, series_format, event_verb, past=False) -> Kind:
    return Kind(category, group, noun, look, text_noun, text_style, name_format, tuple(suffixes),
                article, place_verb, maker_verb, maker_role, series_format, event_verb, past)


KINDS: tuple[Kind, ...] = (
    _k("Astronomy", SCIENCE, "space probe", "mission patch", "call sign", "code", "{base} {suffix}",
       ("Probe", "Explorer", "Voyager", "Lander"), "the", "launched from", "designed by",
       "engineer", "{base} Space Prize", "won"),
    _k("Biology", SCIENCE, "beetle species", "shell", "specimen tag", "code", "{base} {suffix}",
       ("beetle", "weevil", "scarab"), "the", "found in", "discovered by", "naturalist",
       "{base} Species of the Year", "was named"),
    _k("Chemistry", SCIENCE, "mineral", "crystal", "catalogue code", "code", "{base}{suffix}",
       ("ite", "ine", "ium"), "", "mined in", "first described by", "chemist",
       "{base} Mineral Medal", "was awarded"),
    _k("Physics", SCIENCE, "research laboratory", "insignia", "motto", "motto", "{base} {suffix}",
       ("Laboratory", "Institute", "Observatory"), "the", "based in", "founded by", "physicist",
       "{base} Physics Prize", "won"),
    _k("Engineering", SCIENCE, "locomotive", "front plate", "running number", "code",
       "{base} {suffix}", ("Express", "Flyer", "Limited"), "the", "built in", "designed by",
       "engineer", "{base} Rail Trophy", "won"),
    _k("Medicine", SCIENCE, "hospital", "crest", "motto", "motto", "{base} {suffix}",
       ("Infirmary", "Hospital", "Clinic"), "the", "located in", "founded by", "physician",
       "{base} Care Award", "won"),
    _k("Industry", SCIENCE, "manufacturer", "logo", "slogan", "motto", "{base} {suffix}",
       ("Works", "Motors", "Industries", "Foundry"), "", "based in", "founded by", "industrialist",
       "{base} Industry Prize", "won"),
    _k("Architecture", SCIENCE, "tower", "mosaic", "inscription", "motto", "{base} {suffix}",
       ("Tower",), "the", "located in", "designed by", "architect", "{base} Design Medal",
       "was awarded"),
    _k("History", SCIENCE, "dynasty", "royal seal", "inscription", "motto", "{base} {suffix}",
       ("dynasty",), "the", "ruling from", "founded by", "ruler", "Treaty of {base}", "signed",
       past=True),
    _k("Geography", SCIENCE, "island", "coat of arms", "motto", "motto", "{base} {suffix}",
       ("Island",), "", "off the coast of", "charted by", "explorer", "{base} Regatta", "hosted"),
    _k("Religion", SCIENCE, "monastic order", "sigil", "creed", "motto", "{suffix} {base}",
       ("Order of",), "the", "based in", "founded by", "abbot", "Council of {base}", "convened",
       past=True),
    _k("Politics", SCIENCE, "political party", "emblem", "slogan", "motto", "{base} {suffix}",
       ("Party", "Alliance", "League"), "the", "based in", "founded by", "politician",
       "{base} Election", "won"),
    _k("Culture", SCIENCE, "festival", "emblem", "motto", "motto", "{base} {suffix}",
       ("Festival", "Carnival"), "the", "held in", "founded by", "organiser",
       "{base} Culture Prize", "won"),
    _k("Art", SCIENCE, "painting", "composition", "inscription", "motto", "{base} {suffix}",
       ("Study", "Nocturne", "Triptych"), "the", "kept in", "painted by", "painter",
       "{base} Art Prize", "won"),
    _k("Sports", SCIENCE, "football club", "emblem", "motto", "motto", "{base} {suffix}",
       ("Rovers", "United", "Athletic", "Wanderers", "Rangers"), "the", "based in", "founded by",
       "founder", "{base} Cup", "won"),
    _k("Anime", POP, "anime character", "crest", "catchphrase", "motto", "person", (), "", "from",
       "created by", "manga artist", "{base} Anime Awards", "won Best Character at"),
    _k("Game", POP, "video game", "logo", "tagline", "motto", "{base} {suffix}",
       ("Quest", "Legends", "Saga", "Tactics"), "", "developed in", "created by", "game designer",
       "{base} Game Awards", "won Game of the Year at"),
    _k("Film", POP, "film", "title emblem", "tagline", "motto", "{base} {suffix}",
       ("Rising", "Nights", "Road", "Tide"), "", "shot in", "directed by", "director",
       "{base} Film Festival", "won the top prize at"),
    _k("Celebrities", POP, "singer", "stage mask", "catchphrase", "motto", "person", (), "", "from",
       "discovered by", "talent scout", "{base} Music Awards", "won Best Newcomer at"),
    _k("Posters", POP, "concert tour", "tour emblem", "slogan", "motto", "{base} {suffix}",
       ("Tour",), "the", "launched in", "organised by", "promoter", "{base} Live Awards", "won"),
    _k("News", POP, "robot", "livery", "model code", "code", "{base} {suffix}",
       ("robot", "drone", "rover"), "the", "built in", "built by", "roboticist",
       "{base} Tech Expo", "was unveiled at"),
)
KIND_BY_CATEGORY: dict[str, Kind] = {k.category: k for k in KINDS}

# KnowGen's multi-subject categories and the category both subjects come from.
MULTI_SUBJECT: dict[str, str] = {
    "Multi-subject-anime": "Anime",
    "Multi-subject-celebrities": "Celebrities",
    "Multi-subject-game": "Game",
}
WORLD_CATEGORIES: dict[str, str] = {
    **{k.category: k.group for k in KINDS}, **{c: POP for c in MULTI_SUBJECT}}

# Words of mottos and slogans: none is a vocabulary word, so a motto never reads as looks.
MOTTO_FIRST = ("EVER", "ALWAYS", "BOLDLY", "STEADY", "TRUE", "FAR", "HIGH", "SWIFT", "QUIET",
               "BRIGHT", "DEEP", "WILD", "NOBLE", "PROUD", "FREE", "STRONG", "CLEAR", "FIRST",
               "OPEN", "KIND", "CALM", "DARING", "ENDLESS", "GENTLE", "HONEST", "IRON", "LOYAL",
               "MIGHTY", "RISING", "SILENT", "SOLID", "UNITED", "VALIANT", "WISE", "YOUNG",
               "ANCIENT", "FIERCE", "SHINING", "HIDDEN", "TIRELESS")
MOTTO_SECOND = ("ONWARD", "TOGETHER", "FOREVER", "RIVERS", "MOUNTAINS", "HANDS", "MINDS", "ROOTS",
                "WINGS", "LIGHT", "STONE", "TIDES", "SKIES", "ROADS", "FIELDS", "DREAMS", "VOICES",
                "EMBERS", "HARBOURS", "LANTERNS", "GARDENS", "BRIDGES", "MORNINGS", "SHORES",
                "PATHS", "SPIRITS", "HORIZONS", "SEEDS", "FORGES", "ECHOES", "SUMMITS",
                "CURRENTS", "KEEPERS", "HILLS", "VALLEYS", "WINDS", "ANCHORS", "ORCHARDS",
                "CANDLES", "FOOTSTEPS")
CODE_LETTERS = "ABCDEFGHJKLMNPRSTVXZ"
PLACE_SUFFIXES = ("Vale", "Harbour", "Hollow", "Ford", "Heights", "Bay")
MODERN_YEARS = range(1950, 2046)
PAST_YEARS = range(1100, 1900)


@dataclasses.dataclass(frozen=True)
class Entity:
    id: str  # "e00042"
    name: str  # "Tessel Rovers"
    category: str
    split: str  # "train" | "eval" | "distractor"
    signature: Signature
    text: str  # its motto, slogan or code, upper case
    home: str  # place id
    maker: str  # person id
    base: str  # the fresh word in the name ("Tessel"); for people, the last name
    resembles: str | None = None  # distractors: the id of the entity whose name it mimics
    described: bool = True  # False: its looks are in no page, only in its photos (`image_only_share`)

    @property
    def kind(self) -> Kind:
        return KIND_BY_CATEGORY[self.category]

    @property
    def slug(self) -> str:
        return slugify(self.name)

    @property
    def ref(self) -> str:
        """The name as it reads in a sentence: 'the Tessel Rovers', 'Tekrinite'."""
        return f"{self.kind.article} {self.name}".strip()

    @property
    def page_path(self) -> str:
        return f"/page/{self.slug}"

    def image_path(self, view: int) -> str:
        """Site path of photo `view` (1-based)."""
        return f"/img/{self.slug}-{slugify(self.kind.look)}-{view}.png"

    def image_title(self, view: int) -> str:
        return f"{self.name} {self.kind.look} (photo {view})"

    @property
    def image_paths(self) -> tuple[str, ...]:
        return tuple(self.image_path(v) for v in range(1, N_VIEWS + 1))


@dataclasses.dataclass(frozen=True)
class Place:
    id: str
    name: str
    region: str

    @property
    def page_path(self) -> str:
        return f"/page/{slugify(self.name)}"


@dataclasses.dataclass(frozen=True)
class Person:
    id: str
    name: str
    born: int
    home: str  # place id
    made: str  # entity id

    @property
    def page_path(self) -> str:
        return f"/page/{slugify(self.name)}"


@dataclasses.dataclass(frozen=True)
class Series:
    id: str
    name: str  # "Glimmer Cup"
    category: str
    host: str  # place id
    base: str

    @property
    def page_path(self) -> str:
        return f"/page/{slugify(self.name)}"


@dataclasses.dataclass(frozen=True)
class Event:
    series: str  # series id
    year: int
    winner: str  # entity id
    runner_up: str | None  # entity id; None when the category has a single entity
    title: str  # "2031 Glimmer Cup", "1312 Treaty of Varn"

    @property
    def page_path(self) -> str:
        return f"/page/{slugify(self.title)}"


@dataclasses.dataclass
class World:
    seed: int
    entities: list[Entity]
    places: list[Place]
    people: list[Person]
    series: list[Series]
    events: list[Event]
    names: tuple[str, ...] = ()  # every fictional word the world's NameGenerator handed out

    # Indexes, filled from the lists above.
    entity_by_id: dict[str, Entity] = dataclasses.field(init=False, repr=False)
    place_by_id: dict[str, Place] = dataclasses.field(init=False, repr=False)
    person_by_id: dict[str, Person] = dataclasses.field(init=False, repr=False)
    series_by_id: dict[str, Series] = dataclasses.field(init=False, repr=False)
    wins: dict[str, list[Event]] = dataclasses.field(init=False, repr=False)  # entity id -> events
    editions: dict[str, list[Event]] = dataclasses.field(init=False, repr=False)  # series id ->
    residents: dict[str, list[Entity]] = dataclasses.field(init=False, repr=False)  # place id ->
    lookalikes: dict[str, list[Entity]] = dataclasses.field(init=False, repr=False)  # entity id ->

    def __post_init__(self) -> None:
        self.entity_by_id = {e.id: e for e in self.entities}
        self.place_by_id = {p.id: p for p in self.places}
        self.person_by_id = {p.id: p for p in self.people}
        self.series_by_id = {s.id: s for s in self.series}
        self.wins = {e.id: [] for e in self.entities}
        self.editions = {s.id: [] for s in self.series}
        for ev in self.events:
            self.wins[ev.winner].append(ev)
            self.editions[ev.series].append(ev)
        self.residents = {p.id: [] for p in self.places}
        self.lookalikes = {e.id: [] for e in self.entities}
        for e in self.entities:
            self.residents[e.home].append(e)
            if e.resembles is not None:
                self.lookalikes[e.resembles].append(e)

    def split(self, name: str) -> list[Entity]:
        return [e for e in self.entities if e.split == name]

    def to_dict(self) -> dict:
        """Plain JSON-able form (written as world.json by the builder)."""
        def entity(e: Entity) -> dict:
            d = dataclasses.asdict(e)
            d["signature"] = e.signature.to_dict()
            return d
        return {"seed": self.seed,
                "entities": [entity(e) for e in self.entities],
                "places": [dataclasses.asdict(p) for p in self.places],
                "people": [dataclasses.asdict(p) for p in self.people],
                "series": [dataclasses.asdict(s) for s in self.series],
                "events": [dataclasses.asdict(ev) for ev in self.events],
                "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> "World":
        entities = [Entity(**{**e, "signature": Signature.from_dict(e["signature"])})
                    for e in d["entities"]]
        return cls(d["seed"], entities, [Place(**p) for p in d["places"]],
                   [Person(**p) for p in d["people"]], [Series(**s) for s in d["series"]],
                   [Event(**ev) for ev in d["events"]], tuple(d.get("names", ())))


def _categories(rng: random.Random, n: int) -> list[str]:
    """n categories cycling through all kinds in shuffled rounds; the first two are one of each
    group, so even a tiny split has both."""
    out: list[str] = []
    while len(out) < n:
        kinds = list(KINDS)
        rng.shuffle(kinds)
        if not out:
            first = next(k for k in kinds if k.group == SCIENCE)
            second = next(k for k in kinds if k.group == POP)
            kinds.remove(first)
            kinds.remove(second)
            kinds = [first, second, *kinds]
        out.extend(k.category for k in kinds)
    return out[:n]


def _text(kind: Kind, rng: random.Random) -> str:
    if kind.text_style == "code":
        return f"{rng.choice(CODE_LETTERS)}{rng.choice(CODE_LETTERS)}-{rng.randint(10, 999)}"
    return f"{rng.choice(MOTTO_FIRST)} {rng.choice(MOTTO_SECOND)}"


def _random_signature(rng: random.Random) -> Signature:
    primary, secondary = rng.sample(list(COLOURS), 2)
    return Signature(rng.choice(SHAPES), primary, secondary, rng.choice(PATTERNS),
                     rng.choice(GLYPHS))


def make_world(seed: int, n_train: int, n_eval: int, distractor_share_eval: float = 0.3,
               distractor_share_train: float = 0.05, image_only_share: float = 0.0) -> World:
    """Draw a world: `n_train` + `n_eval` entities, near-name distractors for a share of each
    split, and the places, people and events that relate them. A share `image_only_share` of each
    split's entities (never distractors) is undescribed: no page puts its looks in words, so only
    its photos show them. That draw has its own random stream, so a world with share 0 is the
    world drawn before the setting existed."""
    if n_train < 2 or n_eval < 2:
        raise ValueError(f"make_world: need at least 2 entities per split, got n_train={n_train}, "
                         f"n_eval={n_eval}")
    if not 0.0 <= image_only_share <= 1.0:
        raise ValueError(f"make_world: image_only_share={image_only_share} must be in [0, 1]")
    names = NameGenerator(seed)
    rng = random.Random(f"world/{seed}")
    sig_rng = random.Random(f"signatures/{seed}")  # looks are independent of names
    used_sigs: set[Signature] = set()

    def fresh_signature(avoid: Signature | None = None) -> Signature:
        while True:
            sig = _random_signature(sig_rng)
            if sig in used_sigs:
                continue
            if avoid is not None and (sig.shape == avoid.shape or sig.primary == avoid.primary):
                continue
            used_sigs.add(sig)
            return sig

    drafts: list[dict] = []  # entities before places and people are known

    def draft(category: str, split: str, name: str, base: str, resembles: str | None,
              sig: Signature) -> None:
        drafts.append(dict(id=f"e{len(drafts):05d}", name=name, category=category, split=split,
                           signature=sig, text=_text(KIND_BY_CATEGORY[category], rng), base=base,
                           resembles=resembles))

    for split, n in (("train", n_train), ("eval", n_eval)):
        for category in _categories(rng, n):
            kind = KIND_BY_CATEGORY[category]
            if kind.name_format == "person":
                name = names.person()
                base = name.split()[1]
            else:
                while True:
                    base = names.word()
                    name = kind.name_format.format(base=base, suffix=rng.choice(kind.suffixes))
                    name = name[0].upper() + name[1:]
                    if " " in name or names.reserve(name):  # one-word names are words too
                        break
            draft(category, split, name, base, None, fresh_signature())

    # Distractors: a name one vowel (or one suffix) away from an entity's, and other looks.
    for split, share in (("train", distractor_share_train), ("eval", distractor_share_eval)):
        pool = [d for d in drafts if d["split"] == split]
        for original in rng.sample(pool, round(share * len(pool))):
            kind = KIND_BY_CATEGORY[original["category"]]
            others = [s for s in kind.suffixes
                      if kind.name_format.format(base=original["base"], suffix=s).lower()
                      != original["name"].lower()]
            if kind.name_format != "person" and others and rng.random() < 0.5:
                base = original["base"]
                name = kind.name_format.format(base=base, suffix=rng.choice(others))
            else:
                base = names.variant(original["base"])
                if base is None:
                    continue
                name = original["name"].replace(original["base"], base)
            name = name[0].upper() + name[1:]
            if " " not in name and not names.reserve(name):
                continue
            draft(original["category"], "distractor", name, base, original["id"],
                  fresh_signature(avoid=original["signature"]))

    # Places: each is home to at most one entity of each category.
    per_category: dict[str, list[dict]] = {}
    for d in drafts:
        per_category.setdefault(d["category"], []).append(d)
    n_places = max(len(v) for v in per_category.values()) + 2
    regions = [names.word() for _ in range(max(3, n_places // 25))]
    places = []
    for i in range(n_places):
        base = names.word()
        name = f"{base} {rng.choice(PLACE_SUFFIXES)}" if rng.random() < 0.3 else base
        places.append(Place(f"p{i:04d}", name, rng.choice(regions)))
    for category in sorted(per_category):
        homes = rng.sample(places, len(per_category[category]))
        for d, place in zip(per_category[category], homes):
            d["home"] = place.id

    # Events: every entity wins once, a fifth of them twice, in series of its category.
    series: list[Series] = []
    events: list[Event] = []
    for category in sorted(per_category):
        kind = KIND_BY_CATEGORY[category]
        members = per_category[category]
        winners = [d["id"] for d in members] + [d["id"] for d in members if rng.random() < 0.2]
        years = PAST_YEARS if kind.past else MODERN_YEARS
        n_series = max(1, math.ceil(len(winners) / (0.5 * len(years))))
        cat_series = []
        for _ in range(n_series):
            base = names.word()
            cat_series.append(Series(f"s{len(series):04d}", kind.series_format.format(base=base),
                                     category, rng.choice(places).id, base))
            series.append(cat_series[-1])
        free = {s.id: rng.sample(list(years), len(years)) for s in cat_series}
        for winner in winners:
            s = rng.choice([s for s in cat_series if free[s.id]])
            year = free[s.id].pop()
            rivals = [d["id"] for d in members if d["id"] != winner]
            events.append(Event(s.id, year, winner, rng.choice(rivals) if rivals else None,
                                f"{year} {s.name}"))
    events.sort(key=lambda ev: (ev.series, ev.year))

    # People: one maker per entity, born a generation before its first event.
    first_year = {}
    for ev in events:
        first_year[ev.winner] = min(first_year.get(ev.winner, ev.year), ev.year)
    people = []
    for d in drafts:
        pid = f"h{len(people):05d}"
        born = first_year.get(d["id"], 1990) - rng.randint(25, 60)
        people.append(Person(pid, names.person(), born, rng.choice(places).id, d["id"]))
        d["maker"] = pid

    # Undescribed entities: an exact share of each split, drawn apart from everything above.
    shown_rng = random.Random(f"image_only/{seed}")
    for split in ("train", "eval"):
        pool = [d for d in drafts if d["split"] == split]
        for d in shown_rng.sample(pool, round(image_only_share * len(pool))):
            d["described"] = False

    entities = [Entity(**d) for d in drafts]
    return World(seed, entities, places, people, series, events, tuple(names.issued))
