"""gsjax.world: the offline KnowGen-mini world (names, entities, pictures, pages, prompts, build).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsjax.data.formats import (
    POP_CULTURE_AND_NEWS,
    SCIENCE_AND_KNOWLEDGE,
    category_group,
    read_knowgen,
    read_rl_data,
)
from gsjax.world.build import (
    PRESETS,
    WorldPaths,
    build_preset,
    build_world,
    load_world,
    main,
)
from gsjax.world.corpus import Corpus
from gsjax.world.entities import KINDS, MULTI_SUBJECT, WORLD_CATEGORIES, make_world
from gsjax.world.names import NameGenerator
from gsjax.world.imagegen import WorldImageGenerator
from gsjax.world.pages import image_file, make_corpus
from gsjax.world.prompts import MULTI, make_prompts, read_truth
from gsjax.world.render import draw_subject, render_reference, render_scene
from gsjax.world.vocab import (
    ALL_WORDS,
    COLOURS,
    GLYPHS,
    PATTERNS,
    SCENES,
    SHAPES,
    Signature,
    find_attributes,
    signature_from_text,
)

TINY = PRESETS["tiny"]


def _build(root: Path, seed: int = 0) -> WorldPaths:
    return build_preset(root, "tiny", seed)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> WorldPaths:
    return _build(tmp_path_factory.mktemp("tiny0"))


@pytest.fixture(scope="module")
def world(tiny):
    return load_world(tiny)


@pytest.fixture(scope="module")
def truth(tiny):
    return read_truth(tiny.truth)


@pytest.fixture(scope="module")
def corpus(tiny):
    return Corpus.load(tiny.root)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# names and vocabularies


def test_names_are_unique_pronounceable_ascii_words():
    gen = NameGenerator(7)
    words = [gen.word() for _ in range(5000)]
    assert len({w.lower() for w in words}) == 5000
    for w in words:
        assert w.isascii() and w.isalpha() and 4 <= len(w) <= 10 and w[0].isupper()
        assert not re.search(r"[^aeiou]{3}", w.lower()), w  # no three consonants in a row
        assert w.lower() not in ALL_WORDS


def test_names_depend_on_the_seed_only():
    def words(seed):
        gen = NameGenerator(seed)
        return [gen.word() for _ in range(50)]

    assert words(3) == words(3)
    assert words(3) != words(4)


def test_variant_changes_one_vowel_and_is_fresh():
    gen = NameGenerator(0)
    gen.reserve("Tessel")
    v = gen.variant("Tessel")
    assert v is not None and v != "Tessel" and len(v) == 6
    assert sum(a != b for a, b in zip(v.lower(), "tessel")) == 1
    assert not gen.reserve(v)  # already taken


def test_generator_records_every_word_it_hands_out_and_the_world_keeps_them(world, tiny):
    gen = NameGenerator(5)
    words = [gen.word() for _ in range(20)] + [gen.person()]
    words += [gen.variant(words[0])]
    assert gen.issued == words[:20] + words[20].split() + [words[21]]
    assert len(world.names) > len(world.entities) // 2
    bases = {e.base for e in world.entities}
    assert bases <= set(world.names)  # every entity's fictional word, distractors' variants too
    assert load_world(tiny).names == world.names  # kept in world.json


def _could_be_a_name(word: str) -> bool:
    """The shape NameGenerator.word gives: 2-3 (onset + vowel) syllables and an optional coda."""
    from gsjax.world.names import CODAS, ONSETS, VOWELS

    def alt(xs):
        return "|".join(sorted(set(xs) - {""}, key=len, reverse=True))

    shape = f"(?:(?:{alt(ONSETS)})(?:{alt(VOWELS)})){{2,3}}(?:{alt(CODAS)})?"
    return 4 <= len(word) <= 10 and re.fullmatch(shape, word) is not None


def test_no_english_word_of_the_world_could_be_drawn_as_a_name(tiny, corpus):
    # An entity called 'Logo' would turn 'logo' into a name wherever the pages say it (and the
    # tokenizer's corpus would scramble it with the names: assets.tokenizer_corpus).
    texts = [p.text for p in corpus.pages] + [i.title for i in corpus.images]
    texts += [k.prompt + " " + k.gen_prompt for k in read_truth(tiny.truth).values()]
    english = {w for t in texts for w in re.findall(r"(?<![A-Za-z/-])[a-z]+(?![A-Za-z/-])", t)}
    from gsjax.world.names import RESERVED
    assert sorted(w for w in english if _could_be_a_name(w) and w not in RESERVED) == []


def test_name_replacer_gives_each_occurrence_a_new_word_in_its_case():
    from gsjax.world.names import name_replacer

    replace = name_replacer(["Noujen", "Toum"], NameGenerator("t"), suffixes=["ite"])
    out = replace("Noujen won; NOUJEN again at /page/noujen-athletic. Toumite and the logo stay.")
    words = re.findall(r"[A-Za-z]+", out)
    assert "Noujen" not in out and "noujen" not in out.lower()
    first, upper, low = words[0], words[2], words[6]
    assert first[0].isupper() and first[1:].islower() and upper.isupper() and low.islower()
    assert len({first.lower(), upper.lower(), low.lower()}) == 3  # a new word each time
    mineral = next(w for w in words if w.endswith("ite"))
    assert mineral != "Toumite" and mineral[0].isupper()
    assert out.endswith(" and the logo stay.") and "won; " in out and "-athletic." in out


def test_vocabularies_are_disjoint_and_describe_reads_back():
    sizes = [len(COLOURS), len(SHAPES), len(PATTERNS), len(GLYPHS), len(SCENES)]
    assert len(ALL_WORDS) == sum(sizes)
    sig = Signature("hexagon", "red", "blue", "stripes", "star")
    assert sig.describe() == "a red hexagon with blue stripes and a blue star in the middle"
    assert Signature("oval", "orange", "teal", "plain", "arrow").describe() == \
        "a plain orange oval with a teal arrow in the middle"
    for shape in SHAPES:
        for pattern in PATTERNS:
            s = Signature(shape, "orange", "grey", pattern, GLYPHS[len(shape) % len(GLYPHS)])
            assert signature_from_text(f"A mug showing the emblem: {s.describe()}.") == s


def test_find_attributes_reads_plurals_adjectives_and_hyphens_as_vocabulary_words():
    found = find_attributes("Two gray hexagons, red-striped, on a T-shirt; dotted stars and leaves")
    assert found == {"colour": ["grey", "red"], "shape": ["hexagon"],
                     "pattern": ["stripes", "dots"], "glyph": ["star", "leaf"], "scene": ["shirt"]}
    assert find_attributes("Tessel Rovers, EVER ONWARD, 2031")["colour"] == []


def test_signature_rejects_words_outside_the_vocabulary():
    with pytest.raises(ValueError, match="shape='blob'"):
        Signature("blob", "red", "blue", "dots", "star")
    with pytest.raises(ValueError, match="primary and secondary"):
        Signature("circle", "red", "red", "dots", "star")


# ---------------------------------------------------------------------------------------------
# the world


def test_world_categories_are_knowgen_categories_in_the_right_group():
    for category, group in WORLD_CATEGORIES.items():
        assert category_group(category) == group
    assert {k.group for k in KINDS} == {SCIENCE_AND_KNOWLEDGE, POP_CULTURE_AND_NEWS}
    assert len(KINDS) == 21 and len(MULTI_SUBJECT) == 3


def test_train_and_eval_entities_are_disjoint_sets_with_disjoint_names(world):
    train, evals, distractors = world.split("train"), world.split("eval"), world.split("distractor")
    assert len(train) == TINY.n_train_entities and len(evals) == TINY.n_eval_entities
    assert not {e.id for e in train} & {e.id for e in evals}
    names = [e.name for e in world.entities]
    assert len(set(names)) == len(names)  # no name twice, distractors included
    assert not {e.base for e in train} & {e.base for e in evals}
    assert distractors and all(d.resembles is not None for d in distractors)


def test_signatures_are_unique_and_distractors_look_different(world):
    sigs = [e.signature for e in world.entities]
    assert len(set(sigs)) == len(sigs)
    for d in world.split("distractor"):
        original = world.entity_by_id[d.resembles]
        assert d.signature.shape != original.signature.shape
        assert d.signature.primary != original.signature.primary


def test_each_place_holds_at_most_one_entity_per_category(world):
    for residents in world.residents.values():
        cats = [e.category for e in residents]
        assert len(cats) == len(set(cats))


def test_default_size_world_has_thousands_of_fresh_names():
    w = make_world(0, PRESETS["default"].n_train_entities, PRESETS["default"].n_eval_entities)
    assert len(w.split("train")) == 3000 and len(w.split("eval")) == 300
    words = [e.base for e in w.entities if e.split != "distractor"]
    assert len(set(words)) == len(words)
    events = {(ev.series, ev.year) for ev in w.events}
    assert len(events) == len(w.events)


# ---------------------------------------------------------------------------------------------
# the build


def test_same_seed_gives_byte_identical_files(tiny, tmp_path):
    again = _build(tmp_path / "again")
    first, second = _files(tiny.root), _files(again.root)
    assert sorted(first) == sorted(second)
    assert all(first[k] == second[k] for k in first)


def test_rebuilding_into_a_built_world_replaces_it(tiny, tmp_path):
    root = tmp_path / "w"
    _build(root, seed=1)
    (root / "gt" / "stale.png").write_bytes(b"x")
    _build(root, seed=0)
    assert _files(root) == _files(tiny.root)


def test_building_into_a_folder_that_is_not_a_world_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a built world"):
        _build(tmp_path)


def test_different_seed_gives_a_different_world(tiny, tmp_path):
    other = _build(tmp_path / "seed1", seed=1)
    assert other.corpus.read_bytes() != tiny.corpus.read_bytes()
    names0 = {e.name for e in load_world(tiny).entities}
    names1 = {e.name for e in load_world(other).entities}
    assert len(names0 & names1) < len(names0) // 10


def test_prompt_files_hold_no_answers_and_match_the_truth(tiny, truth):
    eval_items = read_knowgen(tiny.knowgen_eval)
    rl_items = read_rl_data(tiny.rl_data)
    assert len(eval_items) == TINY.n_eval_prompts and len(rl_items) == TINY.n_train_prompts
    assert {i.id for i in eval_items} | {i.id for i in rl_items} == set(truth)
    for item in eval_items:
        key = truth[item.id]
        assert (key.split, item.prompt, item.category, item.difficulty) == \
            ("eval", key.prompt, key.category, key.difficulty)
        assert Path(item.gt_image) == tiny.root / key.gt_image
    for row in json.loads(tiny.knowgen_eval.read_text()):
        assert set(row) == {"id", "prompt", "meta", "gt_image"}
        assert not row["gt_image"].startswith("/")
    for row in json.loads(tiny.rl_data.read_text()):
        assert set(row) == {"id", "prompt", "gt_image"}


def test_prompts_are_about_entities_of_their_own_split(world, truth):
    for key in truth.values():
        assert {world.entity_by_id[e].split for e in key.entities} == {key.split}


def test_eval_items_cover_both_category_groups(tiny):
    groups = {item.group for item in read_knowgen(tiny.knowgen_eval)}
    assert groups == {SCIENCE_AND_KNOWLEDGE, POP_CULTURE_AND_NEWS}


def test_every_answer_entity_has_a_page_and_photos_in_the_corpus(tiny, world, truth, corpus):
    pages = {p.path: p for p in corpus.pages}
    images = {i.path: i for i in corpus.images}
    for key in truth.values():
        for eid, photos in zip(key.entities, key.reference_images):
            e = world.entity_by_id[eid]
            assert pages[e.page_path].title == e.name
            assert photos and all(images[p].page_path == e.page_path for p in photos)
            assert all((tiny.root / images[p].file).is_file() for p in photos)
            assert all(e.name in images[p].title for p in photos)


def test_entity_page_describes_looks_text_maker_and_wins(world, corpus):
    pages = {p.path: p for p in corpus.pages}
    for e in world.entities:
        text = pages[e.page_path].text
        assert e.signature.describe() in text
        assert f'"{e.text}"' in text
        assert world.person_by_id[e.maker].name in text
        for ev in world.wins[e.id]:
            assert ev.title in text


def test_two_hop_clue_page_names_the_right_entity(world, truth, corpus):
    pages = {p.path: p for p in corpus.pages}
    hops = [h for key in truth.values() for h in key.hops]
    assert {h.relation for h in hops} >= {"event"}
    for hop in hops:
        e = world.entity_by_id[hop.entity]
        page = pages[hop.page]
        assert hop.clue in page.title and e.name in page.text
        if hop.relation == "event":
            assert f"{e.ref} {e.kind.event_verb} the {hop.clue}".lower() in page.text.lower()


def test_prompt_names_only_its_scene_from_the_vocabularies(truth):
    for key in truth.values():
        found = find_attributes(key.prompt)
        assert found["scene"] == [key.scene], key.prompt
        looks = found["colour"] + found["shape"] + found["pattern"] + found["glyph"]
        assert not looks, key.prompt
        if len(key.signatures) == 1:
            assert signature_from_text(key.gen_prompt) == key.signatures[0]


def test_ideal_answer_opens_with_the_prompt_words_up_to_its_scene_and_no_name(truth):
    """The scene of the expert's answer is a copy of the prompt's opening words (what a copying
    policy can write), which name no entity and no clue; the generator draws that scene."""
    for key in truth.values():
        scene = SCENES[key.scene]
        opening = key.prompt[:key.prompt.index(scene) + len(scene)]
        assert key.gen_prompt.startswith(opening + " showing"), (key.prompt, key.gen_prompt)
        assert find_attributes(key.gen_prompt)["scene"][0] == key.scene
        assert not any(n in opening for n in key.names) and not any(h.clue in opening for h in key.hops)


def test_text_prompts_carry_the_text_in_the_truth_file(world, truth):
    with_text = [k for k in truth.values() if k.text]
    assert with_text and any(k.text_source == "motto" for k in with_text)
    for key in with_text:
        e = world.entity_by_id[key.entities[0]]
        assert "written under it" in key.prompt
        if key.text_source == "motto":
            assert key.text == e.text and key.text not in key.prompt
            assert f'"{key.text}"' in key.gen_prompt
        else:  # the expert quotes the name as the pages write it (drawn in capitals, judged without case)
            assert key.text == e.name.upper()
            assert f'the text "{e.name}" in capital letters' in key.gen_prompt
    assert all(k.text_source is None for k in truth.values() if not k.text)


def test_multi_subject_prompts_pair_two_entities_of_one_category(world, truth):
    multi = [k for k in truth.values() if k.difficulty == MULTI]
    assert multi
    for key in multi:
        cats = {world.entity_by_id[e].category for e in key.entities}
        assert len(key.entities) == 2 and cats == {MULTI_SUBJECT[key.category]}


def test_ground_truth_is_a_function_of_looks_scene_and_text(tiny, truth):
    for key in truth.values():
        img = render_scene(key.signatures, key.scene, key.text)
        with Image.open(tiny.root / key.gt_image) as gt:
            assert np.array_equal(np.asarray(gt.convert("RGB")), np.asarray(img))


def test_ground_truth_of_another_entity_differs_clearly(world, truth):
    key = next(k for k in truth.values() if len(k.entities) == 1)
    right = key.signatures[0]
    other = next(e.signature for e in world.entities
                 if e.signature.primary != right.primary and e.signature.shape != right.shape)
    a = np.asarray(render_scene([right], key.scene, key.text), dtype=np.float32)
    b = np.asarray(render_scene([other], key.scene, key.text), dtype=np.float32)
    again = np.asarray(render_scene([right], key.scene, key.text), dtype=np.float32)
    assert np.array_equal(a, again)
    assert np.abs(a - b).mean() > 15  # over the whole picture; the subject is a third of it


def _histogram(img: Image.Image) -> np.ndarray:
    q = np.asarray(img, dtype=np.int64) // 64  # 4 levels a channel
    bins = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel()
    return np.bincount(bins, minlength=64) / bins.size


def test_photos_of_an_entity_share_its_colours_and_differ_from_other_entities():
    sig = Signature("hexagon", "red", "blue", "stripes", "star")
    other = Signature("circle", "green", "yellow", "dots", "cross")
    p1, p2 = render_reference(sig, 1, "x"), render_reference(sig, 2, "x")
    q1 = render_reference(other, 1, "x")
    assert np.asarray(p1).tobytes() != np.asarray(p2).tobytes()  # views differ
    same = np.abs(_histogram(p1) - _histogram(p2)).sum()
    different = np.abs(_histogram(p1) - _histogram(q1)).sum()
    assert same < 0.5 * different
    assert draw_subject(sig, 64).getpixel((32, 32))[3] == 255  # opaque inside
    assert draw_subject(sig, 64).getpixel((0, 0))[3] == 0  # transparent outside


def test_images_are_valid_pngs_over_1kb(tiny):
    files = sorted(tiny.images.glob("*.png")) + sorted(tiny.gt.glob("*.png"))
    assert len(files) > 100
    for f in files:
        assert f.stat().st_size > 1024, f
        with Image.open(f) as im:
            assert im.format == "PNG"
            im.verify()


def test_cli_builds_the_tiny_preset(tmp_path, capsys):
    main(["--out", str(tmp_path / "w"), "--preset", "tiny", "--quiet", "--n-eval-prompts", "6"])
    assert len(read_knowgen(tmp_path / "w" / "knowgen_eval.json")) == 6
    assert "written to" in capsys.readouterr().out


@pytest.mark.slow
def test_default_build_takes_well_under_a_minute(tmp_path):
    t0 = time.perf_counter()
    paths = build_world(tmp_path / "default", seed=0, workers=2)  # as the command line does
    seconds = time.perf_counter() - t0
    assert seconds < 60, f"default build took {seconds:.1f} s"
    items = read_knowgen(paths.knowgen_eval)
    assert len(items) == PRESETS["default"].n_eval_prompts
    assert len(read_rl_data(paths.rl_data)) == PRESETS["default"].n_train_prompts
    print(f"default world build: {seconds:.1f} s")


def test_search_finds_names_event_clues_and_photos_among_thousands():
    """The pages are written for search: with a plain BM25 over title + text (and, for images,
    their title + their page's title), an eval prompt's name finds the entity's page first, an
    event clue finds its event page (or the winner's page) first, and '<name> <look>' finds one of
    the entity's photos first."""
    import bm25s

    size = PRESETS["default"]
    w = make_world(0, size.n_train_entities, size.n_eval_entities)
    corpus = make_corpus(w, Path("."))
    keys = make_prompts(w, "eval", size.n_eval_prompts, 0, "eval")
    titles = {p.path: p.title for p in corpus.pages}
    pages = bm25s.BM25()
    pages.index(bm25s.tokenize([f"{p.title}\n{p.text}" for p in corpus.pages], show_progress=False),
                show_progress=False)
    images = bm25s.BM25()
    images.index(bm25s.tokenize([f"{i.title} {titles[i.page_path]}" for i in corpus.images],
                                show_progress=False), show_progress=False)

    def first(index, query):
        query_tokens = bm25s.tokenize([query], show_progress=False)
        ids, _ = index.retrieve(query_tokens, k=1, show_progress=False)
        return int(ids[0][0])

    hits: dict[str, list[bool]] = {"name": [], "event": [], "place": [], "maker": [], "image": []}
    for key in keys:
        entity_pages = {w.entity_by_id[e].page_path for e in key.entities}
        photos = {p for ps in key.reference_images for p in ps}
        for step in key.steps:
            if step.tool == "image_search":
                hits["image"].append(corpus.images[first(images, step.query)].path in photos)
            elif step.tool == "search":
                top = corpus.pages[first(pages, step.query)].path
                hop = next((h for h in key.hops if step.query.endswith(h.clue)), None)
                if hop is None:
                    hits["name"].append(top in entity_pages)
                else:
                    hits[hop.relation].append(top in entity_pages | {hop.page})
    assert all(hits["name"]) and all(hits["event"]) and all(hits["image"])
    assert np.mean(hits["place"] + hits["maker"]) > 0.9


def test_a_world_built_into_a_relative_folder_names_files_that_exist(tmp_path, monkeypatch):
    from gsjax.data.formats import read_knowgen, read_rl_data
    from gsjax.world.build import build_preset

    monkeypatch.chdir(tmp_path)
    build_preset("rel/world", "tiny")
    items = read_knowgen("rel/world/knowgen_eval.json") + read_rl_data("rel/world/rl_data.json")
    assert items and all(Path(i.gt_image).is_file() for i in items)


def test_image_only_share_marks_an_exact_share_and_changes_nothing_else():
    plain = make_world(5, 60, 20)
    shown = make_world(5, 60, 20, image_only_share=0.5)
    assert [dataclasses.replace(e, described=True) for e in shown.entities] == plain.entities
    assert all(e.described for e in plain.entities)
    for split, n in (("train", 60), ("eval", 20)):
        assert sum(not e.described for e in shown.split(split)) == n // 2
    assert all(e.described for e in shown.split("distractor"))
    with pytest.raises(ValueError, match="image_only_share=1.5"):
        make_world(5, 60, 20, image_only_share=1.5)


def test_undescribed_looks_are_in_no_page_only_in_the_photos(tmp_path):
    root = tmp_path / "w"
    build_preset(root, "tiny", image_only_share=1.0)
    world = load_world(root)
    corpus = Corpus.load(root)
    text = "\n".join(p.text for p in corpus.pages)
    generator = WorldImageGenerator(world, root)
    undescribed = [e for e in world.entities if not e.described]
    assert undescribed and all(e.split != "distractor" for e in undescribed)
    for e in undescribed:
        assert e.signature.describe() not in text  # not in words anywhere
        page = next(p for p in corpus.pages if p.path == e.page_path)
        assert "Appearance:" in page.text and signature_from_text(page.text) is None
        for path in e.image_paths:  # ... but its photos show it
            assert generator.recognise(str(root / image_file(path))) == e.signature
    described = [e for e in world.entities if e.described]
    assert described and all(e.signature.describe() in text for e in described)


# ---------------------------------------------------------------------------------------------
# the tokenizer learned for training on the world (gsjax.world.assets)


def _name_pieces(tok, names):
    """Mean tokens per fictional word of `names` as it appears after a space."""
    counts = [len(tok.backend.encode(" " + n, add_special_tokens=False).ids) for n in names]
    return sum(counts) / len(counts)


def test_fresh_tokenizer_names_split_train_and_held_out_names_alike(tiny, world, tmp_path):
    from gsjax.data.formats import Message, SFTExample
    from gsjax.world.assets import tokenizer_once

    keys = list(read_truth(tiny.truth).values())
    # SFT trajectories repeat their entity's name (prompt, thought, query, results, answer).
    examples = [SFTExample((Message("user", k.prompt), Message("assistant", (k.gen_prompt + " ") * 6)), ())
                for k in keys if k.split == "train"] * 3
    split_words = {}
    for split in ("train", "eval"):
        ids = {i for k in keys if k.split == split for i in k.entities}
        split_words[split] = sorted({world.entity_by_id[i].base for i in ids})
    pieces = {}
    for names in ("kept", "fresh"):
        tok = tokenizer_once(tmp_path / names, examples, 700, names, tiny.root, "qwen")
        pieces[names] = {s: _name_pieces(tok, w) for s, w in split_words.items()}
    # Kept, the train names become (nearly) whole tokens and the held-out ones do not; fresh, both
    # are spelled in the same syllable pieces.
    assert pieces["kept"]["train"] < 0.75 * pieces["kept"]["eval"], pieces
    assert abs(pieces["fresh"]["train"] - pieces["fresh"]["eval"]) < 0.2 * pieces["fresh"]["eval"], pieces
    assert pieces["fresh"]["train"] > 1.5 * pieces["kept"]["train"], pieces


def test_tokenizer_folder_learned_another_way_is_refused(tiny, tmp_path):
    from gsjax.data.formats import Message, SFTExample
    from gsjax.world.assets import tokenizer_once

    examples = [SFTExample((Message("user", k.prompt),), ()) for k in read_truth(tiny.truth).values()]
    tokenizer_once(tmp_path / "tok", examples, 400, "kept", tiny.root, "qwen")
    assert tokenizer_once(tmp_path / "tok", examples, 400, "kept", tiny.root, "qwen").vocab_size == 400  # reused
    learned = r"learned with \{'vocab_size': 400, 'names': 'kept', 'split': 'qwen'\}"
    with pytest.raises(ValueError, match=learned + ".*'fresh'"):
        tokenizer_once(tmp_path / "tok", examples, 400, "fresh", tiny.root, "qwen")
    with pytest.raises(ValueError, match=learned + ".*'capitalised'"):
        tokenizer_once(tmp_path / "tok", examples, 400, "kept", tiny.root, "capitalised")
    (tmp_path / "tok" / "corpus.json").write_text('{"vocab_size": 400, "names": "kept"}\n')  # before splits
    assert tokenizer_once(tmp_path / "tok", examples, 400, "kept", tiny.root, "qwen").vocab_size == 400
    with pytest.raises(ValueError, match="tokenizer_names must be one of"):
        tokenizer_once(tmp_path / "other", examples, 400, "scrambled", tiny.root, "qwen")
    with pytest.raises(ValueError, match=r"tokenizer_split must be one of \['capitalised', 'qwen'\], got 'words'"):
        tokenizer_once(tmp_path / "other", examples, 400, "kept", tiny.root, "words")


def test_fresh_tokenizer_names_need_a_world_that_recorded_its_names(tiny, tmp_path):
    from gsjax.data.formats import Message, SFTExample
    from gsjax.world.assets import tokenizer_corpus

    old = json.loads(tiny.world.read_text())
    del old["names"]  # a world built before worlds recorded their names
    (tmp_path / "world.json").write_text(json.dumps(old))
    examples = [SFTExample((Message("user", "a prompt"),), ())]
    assert tokenizer_corpus(examples, "kept", tmp_path) == ["a prompt"]
    with pytest.raises(ValueError, match="has none .*rebuild it, or pass 'kept'"):
        tokenizer_corpus(examples, "fresh", tmp_path)
