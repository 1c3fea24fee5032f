"""The world's web: a page per entity, event, event series, place and person, and the entity
photos, as a `Corpus`.

Page text is what a search snippet and a browse read. It is written so that a search for an
entity's name finds its page first, a search for "2031 Glimmer Cup" finds that event's page, and
every two-hop clue of a prompt ("the football club based in Orveth", "the film directed by Mira
Tessaly") has a page that names the entity. Looks are in words on the entity's page (the
vocabulary's canonical description), except for undescribed entities (`Entity.described`), whose
looks only their photos show; mottos and codes are only on the page.

Distractors are part of the web: near-name entities with their own pages and photos ("not to be
confused with..."), the same event series in other years, runner-ups on event pages.
"""

from __future__ import annotations

from gsjax.world.corpus import Corpus, Page, WorldImage
from gsjax.world.entities import N_VIEWS, Entity, Event, World


def image_file(site_path: str) -> str:
    """Where the PNG of `/img/<name>.png` lives, relative to the world folder."""
    return "images/" + site_path.removeprefix("/img/")


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def entity_page(world: World, e: Entity) -> Page:
    k = e.kind
    home = world.place_by_id[e.home]
    maker = world.person_by_id[e.maker]
    lines = [
        f"{e.name} is {_an(k.noun)} {k.place_verb} {home.name}, in the {home.region} region. "
        f"Field: {e.category}.",
        "",
        "Appearance:",
        (f"The {k.look} of {e.ref} is {e.signature.describe()}." if e.described else
         f"No written description of the {k.look} of {e.ref} is on record; the photos below show it."),
        "",
        f"{_cap(k.text_noun)}:",
        f"The {k.text_noun} of {e.ref} is \"{e.text}\". It is written under the {k.look}.",
        "",
        "History:",
        f"{_cap(e.ref)} was {k.maker_verb} {maker.name}.",
    ]
    for ev in world.wins[e.id]:
        lines.append(f"{_cap(e.ref)} {k.event_verb} the {ev.title}.")
    lines += ["", "Images:"]
    lines += [f"- {e.image_title(v)}: {e.image_path(v)}" for v in range(1, N_VIEWS + 1)]
    twins = [world.entity_by_id[e.resembles]] if e.resembles else []
    twins += world.lookalikes[e.id]
    for t in twins:
        lines += ["", f"Not to be confused with {t.ref}, {_an(t.kind.noun)} {t.kind.place_verb} "
                      f"{world.place_by_id[t.home].name}."]
    return Page(e.page_path, e.name, "\n".join(lines))


def event_page(world: World, ev: Event) -> Page:
    s = world.series_by_id[ev.series]
    winner = world.entity_by_id[ev.winner]
    k = winner.kind
    host = world.place_by_id[s.host]
    lines = [f"The {ev.title} was the {ev.year} edition of the {s.name}, held in {host.name}.",
             f"{_cap(winner.ref)} {k.event_verb} the {ev.title}."]
    if ev.runner_up is not None:
        lines.append(f"{_cap(world.entity_by_id[ev.runner_up].ref)} also took part that year.")
    return Page(ev.page_path, ev.title, "\n".join(lines))


def series_page(world: World, series_id: str) -> Page:
    s = world.series_by_id[series_id]
    editions = sorted(world.editions[series_id], key=lambda ev: ev.year)
    noun = (world.entity_by_id[editions[0].winner].kind.noun if editions else "entrant")
    lines = [f"The {s.name} is held in {world.place_by_id[s.host].name} and is open to "
             f"{noun}s ({s.category}).", "", "Editions:"]
    lines += [f"- {ev.year}: {world.entity_by_id[ev.winner].name}" for ev in editions]
    return Page(s.page_path, s.name, "\n".join(lines))


def place_page(world: World, place_id: str) -> Page:
    p = world.place_by_id[place_id]
    lines = [f"{p.name} is a town in the {p.region} region.", "", "Known for:"]
    lines += [f"- {e.name}, {_an(e.kind.noun)} {e.kind.place_verb} {p.name}"
              for e in world.residents[place_id]]
    return Page(p.page_path, p.name, "\n".join(lines))


def person_page(world: World, person_id: str) -> Page:
    h = world.person_by_id[person_id]
    e = world.entity_by_id[h.made]
    k = e.kind
    text = (f"{h.name} (born {h.born}) is {_an(k.maker_role)} from "
            f"{world.place_by_id[h.home].name}.\n{h.name} {k.maker_active} {e.ref}, {_an(k.noun)}.")
    return Page(h.page_path, h.name, text)


def entity_images(e: Entity) -> list[WorldImage]:
    return [WorldImage(e.image_path(v), e.image_title(v), e.page_path, image_file(e.image_path(v)))
            for v in range(1, N_VIEWS + 1)]


def make_corpus(world: World, root) -> Corpus:
    pages = [entity_page(world, e) for e in world.entities]
    pages += [event_page(world, ev) for ev in world.events]
    pages += [series_page(world, s.id) for s in world.series]
    pages += [place_page(world, p.id) for p in world.places]
    pages += [person_page(world, h.id) for h in world.people]
    paths = [p.path for p in pages]
    if len(set(paths)) != len(paths):
        dup = sorted({p for p in paths if paths.count(p) > 1})[:5]
        raise AssertionError(f"make_corpus: duplicate page paths {dup}")
    images = [img for e in world.entities for img in entity_images(e)]
    return Corpus(root, pages, images)


def _an(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
