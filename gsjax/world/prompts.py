"""Prompts of the offline world and their hidden answer keys.

A prompt asks for a picture of one entity ("easy") or two ("multiple subject", KnowGen's
multi-subject categories) in a scene from the vocabulary. Each subject is named (one hop: search
the name) or described by a relation (two hops: "the football club that won the 2031 Glimmer
Cup", "... based in Orveth", "... founded by Mira Tessaly": find the entity first). Some prompts
ask for the entity's motto (or code, or name) written under it; a motto is only on the entity's
page, so it needs a browse.

`AnswerKey` is everything a judge or a scripted expert needs and the policy must not see: the
entities, their looks, the scene, the text, the hop path and the tool calls an expert would make,
an ideal generation prompt, and the ground-truth image. Keys go to `truth.json`, apart from the
prompt files.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from gsjax.world.entities import KIND_BY_CATEGORY, MULTI_SUBJECT, Entity, World
from gsjax.world.render import MAX_TEXT_CHARS
from gsjax.world.vocab import SCENES, Signature

EASY = "easy"
MULTI = "multiple subject"
RELATIONS = ("event", "place", "maker")
TOOLS = ("search", "image_search", "browse")

# Shares of prompt kinds (of all prompts, of single-subject ones, of subjects).
P_MULTI = 0.2
P_TWO_HOP = 0.5
P_TEXT = 0.35
P_TEXT_IS_NAME = 0.3
RELATION_WEIGHTS = {"event": 0.6, "place": 0.2, "maker": 0.2}
ORDINALS = ("first", "second")

SINGLE_TEMPLATES = (
    "Draw {scene} bearing the {look} of {ref}{text}.",
    "Create an image of {scene} showing the {look} of {ref}{text}.",
    "Design {scene} that features the {look} of {ref}{text}.",
    "Make a picture of {scene} decorated with the {look} of {ref}{text}.",
)
MULTI_TEMPLATES = (
    "Draw {scene} showing the {look}s of {ref0} and {ref1} side by side.",
    "Create an image of {scene} with the {look} of {ref0} on the left and the {look} of {ref1} on "
    "the right.",
)


@dataclasses.dataclass(frozen=True)
class Hop:
    """A relation a prompt uses instead of the entity's name."""

    relation: str  # "event" | "place" | "maker"
    clue: str  # what the prompt names: "2031 Glimmer Cup", "Orveth", "Mira Tessaly"
    page: str  # the page that names the entity
    entity: str  # the entity id it leads to


@dataclasses.dataclass(frozen=True)
class Step:
    """One tool call of an expert's path."""

    tool: str  # "search" | "image_search" | "browse"
    query: str
    url: str = ""  # browse only: a site path


@dataclasses.dataclass(frozen=True)
class AnswerKey:
    id: str
    split: str  # "train" | "eval"
    prompt: str
    category: str
    difficulty: str  # EASY | MULTI
    entities: tuple[str, ...]  # subject entity ids, left to right in the ground truth
    names: tuple[str, ...]
    signatures: tuple[Signature, ...]
    scene: str
    text: str | None  # the text the picture must show, or None
    text_source: str | None  # "motto" (the entity's motto, slogan or code) | "name" | None
    hops: tuple[Hop, ...]
    steps: tuple[Step, ...]
    reference_images: tuple[tuple[str, ...], ...]  # per subject, the site paths of its photos
    gen_prompt: str  # an ideal grounded prompt (ordinal references, no ids or urls)
    gt_image: str  # relative to the world folder

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["signatures"] = [s.to_dict() for s in self.signatures]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AnswerKey":
        d = dict(d)
        d["entities"] = tuple(d["entities"])
        d["names"] = tuple(d["names"])
        d["signatures"] = tuple(Signature.from_dict(s) for s in d["signatures"])
        d["hops"] = tuple(Hop(**h) for h in d["hops"])
        d["steps"] = tuple(Step(**s) for s in d["steps"])
        d["reference_images"] = tuple(tuple(r) for r in d["reference_images"])
        return cls(**d)


def write_truth(path: Path, keys: list[AnswerKey]) -> None:
    doc = {k.id: k.to_dict() for k in keys}
    if len(doc) != len(keys):
        raise ValueError(f"{path}: duplicate answer-key ids")
    Path(path).write_text(json.dumps(doc, indent=1))


def read_truth(path: Path) -> dict[str, AnswerKey]:
    doc = json.loads(Path(path).read_text())
    out = {}
    for key_id, d in doc.items():
        try:
            out[key_id] = AnswerKey.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: answer key {key_id!r} is malformed ({e})") from e
    return out


# ---------------------------------------------------------------------------------------------


def _relation(world: World, e: Entity, relation: str) -> tuple[str, Hop, Step, Step]:
    """The phrase naming `e` through `relation`, the hop, and the expert's search + browse."""
    k = e.kind
    if relation == "event":
        ev = sorted(world.wins[e.id], key=lambda ev: ev.year)[0]
        phrase = f"the {k.noun} {k.who} {k.event_verb} the {ev.title}"
        hop = Hop("event", ev.title, ev.page_path, e.id)
        search = Step("search", ev.title)
        question = f"Which {k.noun} {k.event_verb} the {ev.title}?"
    elif relation == "place":
        place = world.place_by_id[e.home]
        phrase = f"the {k.noun} {k.place_verb} {place.name}"
        hop = Hop("place", place.name, place.page_path, e.id)
        search = Step("search", f"{k.noun} {k.place_verb} {place.name}")
        question = f"Which {k.noun} is {k.place_verb} {place.name}?"
    elif relation == "maker":
        person = world.person_by_id[e.maker]
        phrase = f"the {k.noun} {k.maker_verb} {person.name}"
        hop = Hop("maker", person.name, person.page_path, e.id)
        search = Step("search", f"{k.noun} {k.maker_verb} {person.name}")
        question = f"Which {k.noun} was {k.maker_verb} {person.name}?"
    else:
        raise ValueError(f"unknown relation {relation!r}: expected one of {RELATIONS}")
    return phrase, hop, search, Step("browse", question, hop.page)


def _entity_steps(e: Entity, want_text: bool) -> list[Step]:
    """Search the name, read the page (for the looks, and the motto when asked), image-search. An
    undescribed entity's page has no looks, so it is read only for a motto: its photo shows them."""
    k = e.kind
    if e.described:
        question = f"What does the {k.look} of {e.ref} look like?" + (f" What is its {k.text_noun}?" if want_text else "")
    else:
        question = f"What is the {k.text_noun} of {e.ref}?" if want_text else ""
    browse = [Step("browse", question, e.page_path)] if question else []
    return [Step("search", e.name), *browse, Step("image_search", f"{e.name} {k.look}")]


class _Cycle:
    """Entities handed out in shuffled rounds, so targets spread over the whole split."""

    def __init__(self, items: list[Entity], rng: random.Random):
        self._items, self._rng, self._queue = list(items), rng, []

    def next(self, exclude: set[str] = frozenset()) -> Entity:
        for _ in range(2):
            if not self._queue:
                self._queue = self._rng.sample(self._items, len(self._items))
            for i, e in enumerate(self._queue):
                if e.id not in exclude:
                    return self._queue.pop(i)
            self._queue = []
        raise ValueError("no entity left to choose")


def make_prompts(world: World, split: str, n: int, seed: int, id_prefix: str) -> list[AnswerKey]:
    """`n` prompts about the entities of `split`, ids `{id_prefix}-00000`...; GT paths are
    `gt/<id>.png`."""
    rng = random.Random(f"prompts/{seed}/{split}")
    pool = world.split(split)
    if not pool:
        raise ValueError(f"make_prompts: the world has no {split!r} entities")
    everyone = _Cycle(pool, rng)
    by_category = {c: _Cycle([e for e in pool if e.category == base], rng)
                   for c, base in MULTI_SUBJECT.items()
                   if sum(e.category == base for e in pool) >= 2}
    keys: list[AnswerKey] = []
    seen: set[str] = set()
    attempts = 0
    while len(keys) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise ValueError(f"make_prompts: could not make {n} distinct {split} prompts")
        item_id = f"{id_prefix}-{len(keys):05d}"
        if by_category and rng.random() < P_MULTI:
            category = rng.choice(sorted(by_category))
            first = by_category[category].next()
            subjects = [first, by_category[category].next(exclude={first.id})]
            key = _multi(world, item_id, split, category, subjects, rng)
        else:
            key = _single(world, item_id, split, everyone.next(), rng)
        if key.prompt in seen:
            continue
        seen.add(key.prompt)
        keys.append(key)
    return keys


def _pick_relation(world: World, e: Entity, rng: random.Random) -> str:
    options = [r for r in RELATIONS if r != "event" or world.wins[e.id]]
    return rng.choices(options, weights=[RELATION_WEIGHTS[r] for r in options])[0]


def _single(world: World, item_id: str, split: str, e: Entity, rng: random.Random) -> AnswerKey:
    k = e.kind
    scene = rng.choice(sorted(SCENES))
    hops, steps = [], []
    ref = e.ref
    if rng.random() < P_TWO_HOP:
        ref, hop, search, browse = _relation(world, e, _pick_relation(world, e, rng))
        hops.append(hop)
        steps += [search, browse]
    text = source = None
    text_clause = ""
    if rng.random() < P_TEXT:
        their = "their" if k.who == "who" else "its"
        if rng.random() < P_TEXT_IS_NAME and len(e.name) <= MAX_TEXT_CHARS:
            text, source = e.name.upper(), "name"
            text_clause = f", with {their} name written under it in capital letters"
        else:
            text, source = e.text, "motto"
            text_clause = f", with {their} {k.text_noun} written under it"
    steps += _entity_steps(e, want_text=source == "motto")
    template = rng.choice(SINGLE_TEMPLATES)
    prompt = template.format(look=k.look, ref=ref, scene=SCENES[scene], text=text_clause)
    gen = (f"{_scene_prefix(prompt, SCENES[scene])} showing the {k.look} of {e.ref} (the first reference image): "
           f"{e.signature.describe()}.")
    if text:
        # The name as the pages write it: the generator draws the text in capitals and the judges
        # compare without case, so the expert copies the words instead of spelling them in capitals.
        gen += f" Under it, the text \"{e.name if source == 'name' else text}\" in capital letters."
    return AnswerKey(item_id, split, _cap(prompt), e.category, EASY, (e.id,), (e.name,),
                     (e.signature,), scene, text, source, tuple(hops), tuple(steps),
                     (e.image_paths,), gen, f"gt/{item_id}.png")


def _multi(world: World, item_id: str, split: str, category: str, subjects: list[Entity],
           rng: random.Random) -> AnswerKey:
    k = KIND_BY_CATEGORY[MULTI_SUBJECT[category]]
    scene = rng.choice(sorted(SCENES))
    refs, hops, steps = [], [], []
    for e in subjects:
        if rng.random() < P_TWO_HOP / 2:
            ref, hop, search, browse = _relation(world, e, _pick_relation(world, e, rng))
            hops.append(hop)
            steps += [search, browse]
            refs.append(ref)
        else:
            refs.append(e.ref)
        steps += _entity_steps(e, want_text=False)
    prompt = rng.choice(MULTI_TEMPLATES).format(look=k.look, ref0=refs[0], ref1=refs[1],
                                                scene=SCENES[scene])
    parts = [f"the {k.look} of {e.ref} ({'the ' + ORDINALS[i]} reference image): "
             f"{e.signature.describe()}, on the {('left', 'right')[i]}"
             for i, e in enumerate(subjects)]
    gen = f"{_scene_prefix(prompt, SCENES[scene])} showing, side by side, {parts[0]}, and {parts[1]}."
    return AnswerKey(item_id, split, _cap(prompt), category, MULTI,
                     tuple(e.id for e in subjects), tuple(e.name for e in subjects),
                     tuple(e.signature for e in subjects), scene, None, None, tuple(hops),
                     tuple(steps), tuple(e.image_paths for e in subjects),
                     gen, f"gt/{item_id}.png")


def _scene_prefix(prompt: str, scene: str) -> str:
    """The prompt's words up to and including its scene ("Make a picture of a mug"): every template
    names the scene before any subject, so this part of the answer is a copy and names no one."""
    return _cap(prompt[:prompt.index(scene) + len(scene)])


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]
